"""Each list of allowed names lives once, in its registry; the config's choices are that registry.

``config.py`` stands on the bottom floor and cannot import the registries, so the tie is this test:
adding a head, dataset, inference mode or bank mode in code without the config (or the other way
round) fails here.
"""

import dataclasses

import pytest

from raycontrast.bank.sync import BANK_SYNCS
from raycontrast.config import (
    MEMORY_KINDS,
    BankConfig,
    ContrastConfig,
    DataConfig,
    EvalConfig,
    ModelConfig,
)
from raycontrast.contrast.memory import KINDS
from raycontrast.data.build import DATASETS
from raycontrast.eval.inference import MODES
from raycontrast.models.heads import HEADS
from raycontrast.models.heads._common import HEAD_INPUTS


def _choices(cls, name):
    (field,) = [f for f in dataclasses.fields(cls) if f.name == name]
    return tuple(field.metadata["choices"])


@pytest.mark.parametrize(
    ("cls", "key", "registry"),
    [
        (ModelConfig, "head", HEADS),
        (ModelConfig, "head_input", HEAD_INPUTS),
        (DataConfig, "dataset", DATASETS),
        (EvalConfig, "mode", MODES),
        (BankConfig, "mode", BANK_SYNCS),
        (ContrastConfig, "memory", MEMORY_KINDS),
    ],
    ids=lambda v: v if isinstance(v, str) else getattr(v, "__name__", ""),
)
def test_config_choices_are_the_registry(cls, key, registry):
    assert set(_choices(cls, key)) == set(registry)


def test_memory_kinds_name_only_queues_the_bank_keeps():
    assert {k for kinds in MEMORY_KINDS.values() for k in kinds} == set(KINDS)


def test_every_head_builds_through_the_shared_contract():
    import torch

    feats = [torch.zeros(1, c, 16 // 2**i, 16 // 2**i) for i, c in enumerate([4, 8])]
    for name, head in HEADS.items():
        built = head.from_levels([4, 8], [4, 8], 8, 3, dropout=0.0)
        assert isinstance(built, head), name
        assert built.eval()(feats).shape[:2] == (1, 3), name
