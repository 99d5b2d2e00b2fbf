"""The once-only test evaluation: per-image confusion counts that sum to the whole-split evaluation,
written and read back compactly."""

import json

import numpy as np
import torch

from raycontrast.eval import evaluate
from raycontrast.eval.final_test import (
    TEST_JSON,
    per_image_confusion,
    read_per_image,
    write_final_test,
)
from raycontrast.eval.metrics import metrics_from_confusion


def _data(n=5, k=3):
    g = torch.Generator().manual_seed(0)
    return [
        {"image": torch.randn(3, 8, 10, generator=g), "label": torch.randint(0, k, (8, 10), generator=g),
         "id": f"img{i}"}
        for i in range(n)
    ]  # fmt: skip


def _model(k=3):
    torch.manual_seed(1)
    return torch.nn.Conv2d(3, k, 1)


def test_per_image_counts_sum_to_the_whole_split_evaluation(tmp_path):
    data, model = _data(), _model()
    per_image, ids = per_image_confusion(model, data, 3)
    assert per_image.shape == (5, 3, 3) and ids == [f"img{i}" for i in range(5)]
    whole = evaluate(model, data, 3).confusion.numpy()
    np.testing.assert_array_equal(per_image.sum(0), whole)
    # image i's counts are exactly that image's (plain reference: argmax and bincount)
    with torch.no_grad():
        pred = model(data[2]["image"][None]).argmax(1)[0]
    ref = np.bincount((data[2]["label"] * 3 + pred).flatten().numpy(), minlength=9).reshape(3, 3)
    np.testing.assert_array_equal(per_image[2], ref)

    record = write_final_test(str(tmp_path), per_image, ids, ["a", "b", "c"], 40, "test")
    saved = json.loads((tmp_path / TEST_JSON).read_text())
    expected = metrics_from_confusion(torch.as_tensor(whole))["mIoU"]
    assert saved["mIoU"] == record["mIoU"] == expected and saved["weights"] == "last"
    assert saved["num_images"] == 5 and saved["iteration"] == 40
    np.testing.assert_array_equal(read_per_image(str(tmp_path)), per_image)
    assert read_per_image(str(tmp_path / "none")) is None


def test_a_test_split_that_is_also_trained_on_or_selected_by_is_refused():
    import pytest

    from raycontrast.config import ConfigError, load_config
    from raycontrast.train.preflight import check_data

    for split in ("val", "train"):
        cfg = load_config(None, [f"data.test_split={split}"])
        with pytest.raises(ConfigError, match=f"data.test_split='{split}' is also"):
            check_data(cfg)
    check_data(load_config(None, ["data.test_split=test", "data.synthetic.num_test=2"]))
