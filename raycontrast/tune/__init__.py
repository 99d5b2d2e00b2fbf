"""Ray Tune sweeps of experiment config keys (memory size, anchor counts, loss weight ...)."""

from raycontrast.tune.runner import run_sweep, summarise_results
from raycontrast.tune.sweep import SchedulerConfig, Sweep, SweepConfig, load_sweep

__all__ = [
    "SchedulerConfig",
    "Sweep",
    "SweepConfig",
    "load_sweep",
    "run_sweep",
    "summarise_results",
]
