"""Shared helpers for the benchmarks: timing, peak-memory measurement, result files."""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in bytes."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_kb("VmRSS") * 1024


def peak_rss() -> int:
    """Peak RSS in bytes since the last :func:`reset_peak_rss`."""
    return _status_kb("VmHWM") * 1024


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def fmt_spread(times: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """``median [min-max]`` of ``times`` (times ``scale``) for printing."""
    med = statistics.median(times) * scale
    return f"{med:.{digits}f} [{min(times) * scale:.{digits}f}-{max(times) * scale:.{digits}f}]"


def ratio_spread(num: list[float], den: list[float]) -> dict:
    """Ratio of the medians of two timing series, with the range the repeats allow."""
    return {
        "median": statistics.median(num) / statistics.median(den),
        "min": min(num) / max(den),
        "max": max(num) / min(den),
    }


def run_isolated(script: str, name: str, *args: str) -> dict:
    """Run ``script --measure name args`` in a fresh interpreter; it prints one JSON line last."""
    cmd = [sys.executable, script, "--measure", name, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {name} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_avg() -> float:
    """The 1-minute load average (what "idle" is judged by)."""
    return os.getloadavg()[0]


_START_LOAD: list[float] = []


def machine() -> dict:
    """The machine's description and its state: call once at the start of a benchmark (it records
    the load average then) and again through :func:`save`, which adds the load at the end."""
    import torch

    if not _START_LOAD:
        _START_LOAD.append(load_avg())
    cores = os.cpu_count() or 1
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": cores,
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "device": "cpu",
        "load_avg_start": _START_LOAD[0],
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }


def is_loaded(load: float) -> bool:
    """A run counts as loaded when the 1-minute load average exceeds half the cores."""
    return load > (os.cpu_count() or 1) / 2


def add_force_flag(parser) -> None:
    """``--force``: write a loaded run's results where the README reads them."""
    parser.add_argument(
        "--force",
        action="store_true",
        help="write results/<name> even when the machine was loaded at the start (the JSON still "
        "says loaded: true)",
    )


def save(name: str, payload: dict, force: bool = False) -> Path:
    """Write ``results/<name>`` with the machine's state at the start and end.

    A run that started on a loaded machine (1-minute load average above half the cores) is marked
    ``loaded: true`` and, unless ``force``, goes to ``results/<stem>_loaded.json`` instead, so the
    figures the README quotes always come from idle runs.
    """
    RESULTS.mkdir(parents=True, exist_ok=True)
    info = dict(payload.get("machine") or machine())
    info.setdefault("load_avg_start", _START_LOAD[0] if _START_LOAD else load_avg())
    info["load_avg_end"] = load_avg()
    loaded = is_loaded(info["load_avg_start"])
    info["loaded"] = loaded
    payload = {**payload, "machine": info, "loaded": loaded}
    path = RESULTS / name
    if loaded and not force:
        path = RESULTS / (Path(name).stem + "_loaded.json")
        print(
            f"WARNING: the 1-minute load average was {info['load_avg_start']:.2f} at the start "
            f"(> {(os.cpu_count() or 1) / 2:g}): the machine was not idle. Results written to "
            f"{path} (marked loaded: true); rerun on an idle machine, or pass --force to write "
            f"{RESULTS / name}.",
            file=sys.stderr,
        )
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
