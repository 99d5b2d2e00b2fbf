"""Driver checks that need no Ray: bank shards against the class count, and who uses a bank."""

import pytest

from raycontrast.config import ConfigError, load_config
from raycontrast.data import dataset_info
from raycontrast.train.preflight import check_bank, check_metric, preflight
from tests.train.conftest import TINY


def _cfg(*overrides: str):
    return load_config("experiments/synthetic.yaml", [*TINY, *overrides])


def test_more_bank_shards_than_classes_fails_before_any_worker(tmp_path):
    cfg = _cfg(f"storage_path={tmp_path}")
    classes = dataset_info(cfg.data).num_classes
    check_bank(_cfg(f"bank.shards={classes}"), classes)  # one class per shard: fine
    too_many = _cfg(f"storage_path={tmp_path}", f"bank.shards={classes + 1}")
    with pytest.raises(
        ConfigError, match=rf"bank.shards={classes + 1} exceeds .* {classes} classes"
    ):
        preflight(too_many, cluster=False)  # what --dry-run runs


def test_shards_are_not_checked_for_a_run_without_a_bank():
    cfg = _cfg("contrast.memory=none", "bank.shards=99")
    assert cfg.bank_kinds == ()
    check_bank(cfg, 7)


@pytest.mark.parametrize(
    ("overrides", "kinds"),
    [
        ((), ("pixel", "region")),
        (("contrast.memory=pixel",), ("pixel",)),
        (("contrast.memory=none",), ()),
        (("contrast.enabled=false",), ()),
    ],
)
def test_bank_kinds_decide_the_bank_metrics(overrides, kinds):
    cfg = _cfg(*overrides)
    assert cfg.bank_kinds == kinds
    if kinds:
        check_metric("bank_entries", cfg)
    else:
        with pytest.raises(ConfigError, match="never reported"):
            check_metric("bank_entries", cfg)
