"""Ray Tune sweeps of experiment config keys, and multi-seed studies comparing arms."""

from raycontrast.tune.study import Study, StudyConfig, load_study
from raycontrast.tune.study_run import run_study
from raycontrast.tune.sweep import (
    SchedulerConfig,
    Sweep,
    SweepConfig,
    load_sweep,
    run_sweep,
    summarise_results,
)

__all__ = [
    "SchedulerConfig",
    "Study",
    "StudyConfig",
    "Sweep",
    "SweepConfig",
    "load_study",
    "load_sweep",
    "run_study",
    "run_sweep",
    "summarise_results",
]
