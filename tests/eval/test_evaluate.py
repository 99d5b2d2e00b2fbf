import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from raycontrast.config import EvalConfig
from raycontrast.eval import evaluate

K = 4


def _items(n=5, size=(6, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        label = torch.randint(0, K, size, generator=g)
        label[0, 0] = 255
        # the image encodes the label in channel 0, so an "oracle" model can read it back
        image = torch.stack([label.clamp(max=K - 1).float(), torch.zeros(size), torch.ones(size)])
        items.append({"image": image, "label": label, "id": f"im{i}"})
    return items


def oracle(x):
    return F.one_hot(x[:, 0].round().long(), K).permute(0, 3, 1, 2).float()


class MapDataset(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):  # no IndexError past the end: must be indexed by len()
        return self.items[i % len(self.items)]


def test_perfect_model_on_every_input_form():
    items = _items()
    forms = [
        items,
        MapDataset(items),
        DataLoader(MapDataset(items), batch_size=2),  # collated batch dicts
        DataLoader(MapDataset(items), batch_size=2, collate_fn=list),  # lists of items
        [(it["image"], it["label"]) for it in items],
    ]
    for data in forms:
        m = evaluate(oracle, data, K, 255, EvalConfig())
        out = m.compute()
        assert out["mIoU"] == 1.0 and m.num_images == 5
        assert out["num_pixels"] == 5 * (6 * 8 - 1)


def test_matches_direct_metric_updates_and_modes():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, K, 3, padding=1)
    items = _items(3, size=(10, 12))
    for cfg in [
        EvalConfig(),
        EvalConfig(mode="slide", crop_size=[6, 6], stride=[4, 4]),
        EvalConfig(mode="multiscale", scales=[0.75, 1.0], flip=True),
    ]:
        from raycontrast.eval import SegMetrics, infer

        expected = SegMetrics(K)
        for it in items:
            logits = infer(
                net, it["image"][None], K, cfg.mode, cfg.crop_size, cfg.stride, cfg.scales, cfg.flip
            )
            expected.update(logits.argmax(1), it["label"][None])
        got = evaluate(net, items, K, 255, cfg)
        assert torch.equal(got.confusion, expected.confusion), cfg


def test_max_images_and_batches():
    items = _items(5)
    loader = DataLoader(MapDataset(items), batch_size=2)
    assert evaluate(oracle, loader, K, 255, EvalConfig(max_images=3)).num_images == 3
    assert evaluate(oracle, items, K, 255, EvalConfig(max_images=3), max_images=1).num_images == 1


def test_module_mode_is_restored():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, K, 1), torch.nn.Dropout(0.9))
    seen = []

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def predict(self, x):
            seen.append(self.training)
            return self.net(x)

    model = Wrapped().train()
    evaluate(model.predict, _items(2), K, 255)
    assert seen == [False, False] and model.training


def test_logits_resized_to_the_label():
    items = [{"image": torch.zeros(3, 4, 4), "label": torch.zeros(8, 8, dtype=torch.long)}]
    m = evaluate(lambda x: torch.ones(x.shape[0], K, 4, 4), items, K)
    assert m.compute()["num_pixels"] == 64


def test_bad_items():
    with pytest.raises(KeyError, match="'image' and 'label'"):
        evaluate(oracle, [{"img": torch.zeros(3, 2, 2)}], K)
    with pytest.raises(ValueError, match="do not form a batch"):
        evaluate(oracle, [{"image": torch.zeros(2, 3, 4, 4), "label": torch.zeros(3, 4, 4)}], K)


def test_slide_without_crop_explains_the_fix():
    with pytest.raises(ValueError, match="resolve_eval_config"):
        evaluate(oracle, _items(1), K, 255, EvalConfig(mode="slide"))
