"""Sweep files over the tiny synthetic experiment, written into the test's tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.train.conftest import TINY

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def write_sweep(tmp_path):
    """``write_sweep(name, search_space, *overrides, **fields)`` -> path of a sweep YAML."""

    def make(name: str, space: dict, *overrides: str, **fields) -> Path:
        doc = {
            "base": str(REPO / "experiments" / "synthetic.yaml"),
            "name": name,
            "storage_path": str(tmp_path / "sweeps"),
            "overrides": [
                *TINY,
                "train.num_workers=1",
                "train.batch_size=2",
                "train.cpus_per_worker=1",
                *overrides,
            ],
            "search_space": space,
            "max_concurrent_trials": 1,
            "trial_cpus": 0.25,
            **fields,
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return make
