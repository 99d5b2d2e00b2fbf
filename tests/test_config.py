from pathlib import Path

import pytest
import yaml

from raycontrast.config import (
    ConfigError,
    ExperimentConfig,
    config_keys,
    describe_config,
    load_config,
    parse_overrides,
    save_config,
)

EXPERIMENTS = sorted(Path(__file__).resolve().parents[1].joinpath("experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_experiment_loads(path):
    cfg = load_config(path)
    assert cfg.name == path.stem


def test_no_contrast_baseline_exists_for_each_experiment():
    names = {p.stem for p in EXPERIMENTS}
    for name in names - {n for n in names if n.endswith("_baseline")}:
        family = name.rsplit("_", 1)[0] if name.endswith(("_contrast", "_memory")) else name
        assert f"{family}_baseline" in names, name


def test_unknown_key_names_the_file_and_suggests(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("contrast:\n  memroy_size: 10\n")
    with pytest.raises(
        ConfigError,
        match=r"'contrast.memroy_size' \(in .*exp.yaml\); did you mean 'contrast.memory_size'",
    ):
        load_config(f)
    with pytest.raises(ConfigError, match=r"command-line overrides.*'train.iterations'"):
        load_config(None, ["train.iteration=5"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.iterations=-3", r"train.iterations=-3 is out of range: must be >= 1"),
        ("train.iterations=2.5", r"train.iterations must be int, got 2.5"),
        ("contrast.memory=all", r"contrast.memory='all' is not one of: none, pixel, region, both"),
        ("contrast.tau=0", r"contrast.tau=0.0 is out of range: must be > 0"),
        ("train.use_gpu=maybe", r"train.use_gpu must be bool"),
        ("data.crop_size=[10]", r"data.crop_size must be \[height, width\]"),
        ("train.batch_size=5", r"must be divisible by train.num_workers=2"),
        ("data.ingest=ray_data", r"data.source=parquet"),
        ("model=3", r"model must be a mapping"),
        ("train.sync_bn=true", r"train.sync_bn=true needs train.use_gpu=true"),
        ("bank.overlap=true bank.mode=local", r"bank.overlap=true applies to bank.mode=actor"),
        ("bank.overlap=true", r"bank.overlap=true applies to bank.data_plane=object_store"),
        ("bank.data_plane=nccl", r"bank.data_plane='nccl' is not one of: collective, object_store"),
        ("contrast.compute_dtype=fp16", r"contrast.compute_dtype='fp16' is not one of"),
    ],
)
def test_bad_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override.split(" "))


def test_base_inheritance_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("name: a\ntrain:\n  iterations: 7\n  seed: 3\n")
    (tmp_path / "child.yaml").write_text("_base_: base.yaml\nname: b\ntrain:\n  iterations: 9\n")
    cfg = load_config(tmp_path / "child.yaml", ["train.seed=4", "data.crop_size=[32,48]"])
    assert (cfg.name, cfg.train.iterations, cfg.train.seed, cfg.data.crop_size) == (
        "b",
        9,
        4,
        [32, 48],
    )


def test_base_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="_base_ cycle"):
        load_config(tmp_path / "a.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    (tmp_path / "evil.yaml").write_text("name: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "evil.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["contrast.memory=both", "model.pretrained=/w.pth"])
    save_config(cfg, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "resolved.yaml").read_text())["contrast"]["memory"] == "both"


def test_overrides_parse_yaml_values():
    assert parse_overrides(["a.b=1", "a.c=[1, 2]", "d=null", "e=x=y"]) == {
        "a": {"b": 1, "c": [1, 2]},
        "d": None,
        "e": "x=y",
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.iterations"])


def test_every_key_is_documented():
    rows = describe_config()
    assert {r[0] for r in rows} == set(config_keys())
    assert all(r[3] for r in rows)
    assert ExperimentConfig().contrast.tau == 0.1  # docs/concepts/spec.md defaults
