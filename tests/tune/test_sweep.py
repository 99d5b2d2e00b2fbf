"""Sweep files: validation before any trial starts (no Ray needed)."""

import pytest

from raycontrast.config import ConfigError
from raycontrast.tune import load_sweep


@pytest.mark.parametrize(
    ("space", "fields", "message"),
    [
        (
            {"contrast.memroy_size": {"grid": [1, 2]}},
            {},
            r"'contrast.memroy_size' is not a config key; did you mean 'contrast.memory_size'",
        ),
        ({"contrast": {"grid": [1]}}, {}, r"'contrast' is not a config key"),
        (
            {"contrast.memory_size": {"range": [1, 2]}},
            {},
            r"search_space.contrast.memory_size: expected one of \{grid, choice",
        ),
        ({"contrast.memory_size": {"grid": []}}, {}, r"expected a non-empty list"),
        ({"contrast.loss_weight": {"uniform": [1.0, 0.5]}}, {}, r"low < high"),
        ({"contrast.loss_weight": {"loguniform": [0.0, 1.0]}}, {}, r"bounds must be > 0"),
        ({"contrast.memory_size": {"randint": [1.5, 9]}}, {}, r"randint: bounds must be integers"),
        (
            {"contrast.memory_size": {"grid": [100, "big"]}},
            {},
            r"value 'big' is invalid: contrast.memory_size must be int",
        ),
        (
            {"contrast.memory": {"choice": ["pixel", "all"]}},
            {},
            r"value 'all' is invalid: contrast.memory='all' is not one of",
        ),
        (
            {"contrast.loss_weight": {"uniform": [-1.0, 1.0]}},
            {},
            r"value -1.0 is invalid: contrast.loss_weight=-1.0 is out of range",
        ),
        (
            {"contrast.tau": {"grid": [0.1]}},
            {"metrc": "mIoU"},
            r"unknown config key 'metrc'.*did you mean 'metric'",
        ),
        (
            {"contrast.tau": {"grid": [0.1]}},
            {"mode": "best"},
            r"mode='best' is not one of: max, min",
        ),
        (None, {}, r"search_space must be a non-empty mapping"),
    ],
)
def test_bad_sweep_files_fail_fast_naming_the_key(write_sweep, space, fields, message):
    path = write_sweep("bad", space, **fields)
    with pytest.raises(ConfigError, match=message):
        load_sweep(path)


def test_fixed_overrides_are_validated_too(write_sweep):
    path = write_sweep("bad", {"contrast.tau": {"grid": [0.1]}}, "train.iterashuns=3")
    with pytest.raises(ConfigError, match=r"train\.iterashuns"):
        load_sweep(path)


def test_trial_configs_apply_base_overrides_and_values(write_sweep, tmp_path):
    sweep = load_sweep(write_sweep("ok", {"contrast.memory_size": {"grid": [100, 200]}}))
    cfg = sweep.trial_config({"contrast.memory_size": 200, "contrast.loss_weight": 0.25}, "abc")
    assert cfg.contrast.memory_size == 200 and cfg.contrast.loss_weight == 0.25
    assert cfg.name == "ok_abc" and cfg.train.num_workers == 1
    assert cfg.storage_path == str(tmp_path / "sweeps" / "ok" / "runs")
    space = sweep.tune_space()
    assert list(space) == ["contrast.memory_size"]


def test_num_trials_counts_every_grid_combination_num_samples_times(write_sweep):
    space = {
        "contrast.memory_size": {"grid": [100, 200, 300]},
        "contrast.loss_weight": {"grid": [0.01, 0.1]},
        "optim.lr": {"loguniform": [0.001, 0.1]},
    }
    assert load_sweep(write_sweep("g", space)).num_trials() == 6
    assert load_sweep(write_sweep("g", space, num_samples=4)).num_trials() == 24


def test_command_line_name_and_storage_path_apply_to_the_sweep(write_sweep, tmp_path):
    path = write_sweep("ok", {"contrast.tau": {"grid": [0.1]}})
    sweep = load_sweep(
        path, [f"storage_path={tmp_path / 'elsewhere'}", "name=renamed", "train.seed=3"]
    )
    assert sweep.root == str(tmp_path / "elsewhere" / "renamed")
    cfg = sweep.trial_config({}, "t1")
    assert cfg.train.seed == 3 and cfg.name == "renamed_t1"


def test_relative_storage_is_refused_inside_a_ray_job(monkeypatch):
    from raycontrast.train.preflight import check_storage

    check_storage("runs")  # fine outside a job
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")
    with pytest.raises(ConfigError, match="storage_path='runs' is relative"):
        check_storage("runs")
    check_storage("/mnt/nfs/runs")
    check_storage("s3://bucket/runs")
