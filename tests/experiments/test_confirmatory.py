"""The confirmatory study files implement their pre-registered protocol: fresh seeds, a large test
set apart from validation, selection never on test, the arms and regimes the protocol names."""

from pathlib import Path

import yaml

from raycontrast.tune.study import Cell, load_study

STUDIES = Path(__file__).resolve().parents[2] / "experiments" / "studies"
CONFIRMATORY = ("confirmatory.yaml", "confirmatory_convergence.yaml")


def _earlier_seeds() -> set[int]:
    seeds: set[int] = set()
    for path in STUDIES.glob("*.yaml"):
        if path.name in CONFIRMATORY:
            continue
        raw = yaml.safe_load(path.read_text()).get("seeds")
        if raw is not None:
            seeds |= set(range(raw)) if isinstance(raw, int) else set(raw)
    return seeds


def test_confirmatory_studies_follow_the_protocol():
    assert (STUDIES / "confirmatory.protocol.md").is_file()
    earlier = _earlier_seeds()
    assert earlier  # the other study files were read
    for name in CONFIRMATORY:
        study = load_study(STUDIES / name)
        assert len(study.seeds) >= 10 and not set(study.seeds) & earlier, name
        assert study.config.reference == "ce_only"
        for cell in study.cells():
            cfg = study.run_config(cell)
            data = cfg.data
            assert (data.val_split, data.test_split) == ("val", "test"), cell
            assert data.synthetic.num_test >= 512 and data.synthetic.num_val >= 64
    main = load_study(STUDIES / "confirmatory.yaml")
    assert set(main.regimes) == {"all", "scarce", "pretrained"}
    assert set(main.arms) == {"ce_only", "inbatch_w0.01", "memory_w0.01", "full_w0.01",
                              "full_w0.003", "full_w0.1"}  # fmt: skip
    primary = main.run_config(Cell("full_w0.01", "pretrained", 100))
    assert primary.contrast.loss_weight == 0.01 and primary.contrast.inbatch
    assert primary.contrast.memory == "both"
    assert str(primary.model.pretrained).endswith("runs/pretrain_synthetic/backbone.pth")
    assert main.run_config(Cell("full_w0.1", "all", 100)).contrast.loss_weight == 0.1
