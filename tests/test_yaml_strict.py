"""A key written twice in any YAML the project reads is an error naming the key, file and lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from raycontrast.config import ConfigError, load_config, read_yaml_mapping
from raycontrast.yaml_strict import DuplicateKeyError, load
from tests.test_bad_inputs import run_cli

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "experiments" / "synthetic.yaml"


def test_loader_matches_safe_load_without_duplicates():
    import yaml

    text = "a: 1\nb: {c: [1, 2], d: x}\nbase: &b {k: 1}\nother:\n  <<: *b\n  j: 2\n"
    assert load(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("text", "key", "line", "first"),
    [
        ("a: 1\nb: 2\na: 3\n", "a", 3, 1),
        ("train:\n  lr: 0.1\n  iterations: 3\n  lr: 0.2\n", "lr", 4, 2),
        ("arms:\n  ce: {}\n  contrast: {}\n  ce: {x: 1}\n", "ce", 4, 2),
        ("x: {k: 1, k: 2}\n", "k", 1, 1),
    ],
)
def test_duplicates_name_key_and_lines(text, key, line, first):
    with pytest.raises(DuplicateKeyError) as err:
        load(text, "f.yaml")
    assert err.value.problem_mark.line + 1 == line
    assert f"duplicate key {key!r} (first at line {first})" in str(err.value)


def test_config_with_a_duplicate_key(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(f"_base_: {BASE}\ntrain:\n  iterations: 5\n  iterations: 6\n")
    with pytest.raises(
        ConfigError, match=rf"{path}:4: duplicate key 'iterations' \(first at line 3\)"
    ):
        load_config(path)
    code, msg = run_cli(capsys, "config", path)
    assert code == 2 and f"{path}:4: duplicate key 'iterations'" in msg


def test_sweep_with_a_duplicate_key(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    sweep = (REPO / "experiments" / "sweeps" / "synthetic_smoke.yaml").read_text()
    path.write_text(sweep.replace("base: ", "num_samples: 2\nnum_samples: 3\nbase: ", 1))
    with pytest.raises(ConfigError, match=r"duplicate key 'num_samples'"):
        read_yaml_mapping(path, "sweep")
    code, msg = run_cli(capsys, "tune", path, "--dry-run")
    assert code == 2 and f"{path}:4: duplicate key 'num_samples' (first at line 3)" in msg, msg


def test_study_with_the_same_arm_twice(tmp_path, capsys):
    path = tmp_path / "study.yaml"
    path.write_text(
        f"base: {BASE}\nname: s\nstorage_path: {tmp_path}\nseeds: [0, 1]\nreference: ce\n"
        "arms:\n  ce: {contrast.enabled: false}\n  contrast: {}\n  ce: {optim.lr: 0.1}\n"
    )
    code, msg = run_cli(capsys, "study", path, "--dry-run")
    assert code == 2 and f"{path}:9: duplicate key 'ce' (first at line 7)" in msg, msg
    assert not (tmp_path / "s").exists()
