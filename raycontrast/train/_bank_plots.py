"""Pictures of the memory bank: health curves over evaluations and a 2D map of its entries.

- ``plots/bank_health.png`` (:func:`plot_bank_health`): fill, entry ages, class geometry and what the
  loss sees, per evaluation, plus the latest per-class fill and spread;
- ``plots/bank_map_<iteration>.png`` (:func:`plot_bank_map`): a PCA projection of sampled entries,
  coloured by class.

The metrics are those of :func:`raycontrast.contrast.health.bank_health`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from raycontrast.contrast.health import BankSample, pca_2d
from raycontrast.contrast.memory import KINDS

__all__ = ["bank_health_figure", "bank_map_figure", "plot_bank_health", "plot_bank_map"]

_MARKERS = {"pixel": "o", "region": "x"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(n: int) -> list:
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    if n <= 20:  # the ten strong tab20 hues first, then their light partners
        return [
            matplotlib.colormaps["tab20"](2 * i if i < 10 else 2 * (i - 10) + 1) for i in range(n)
        ]
    return [matplotlib.colormaps["turbo"](i / (n - 1)) for i in range(n)]


def _value(row: Mapping[str, float | str], key: str) -> float:
    try:
        value = row.get(key)
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def plot_bank_health(
    rows: Sequence[Mapping[str, float | str]], class_names: Sequence[str], path: str | Path
) -> Path:
    """Save :func:`bank_health_figure` as ``path``."""
    return _save(bank_health_figure(rows, class_names), path)


def plot_bank_map(
    sample: BankSample, class_names: Sequence[str], path: str | Path, title: str = "bank map"
) -> Path:
    """Save :func:`bank_map_figure` as ``path``."""
    return _save(bank_map_figure(sample, class_names, title), path)


def bank_health_figure(rows: Sequence[Mapping[str, float | str]], class_names: Sequence[str]):
    """Curves of ``rows`` (one per evaluation: ``iteration`` and the ``bank_health`` keys, as numbers
    or CSV strings) and the last row per class; kinds are read from the keys."""
    if not rows:
        raise ValueError("plot_bank_health needs at least one row of bank metrics")
    plt = _pyplot()
    kinds = [k for k in KINDS if f"bank/{k}/fill" in rows[-1]]
    its = [_value(r, "iteration") for r in rows]
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))

    def curves(ax, keys_labels, title, ylabel):
        for key, label, style in keys_labels:
            ax.plot(its, [_value(r, key) for r in rows], style, marker="o", ms=3, label=label)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylabel(ylabel)
        if keys_labels:
            ax.legend(fontsize=8)

    curves(axes[0, 0], [(f"bank/{k}/fill", k, "-") for k in kinds], "fill (share of slots)", "fill")
    curves(
        axes[0, 1],
        [(f"bank/{k}/age_mean", f"{k} mean", "-") for k in kinds]
        + [(f"bank/{k}/age_max", f"{k} oldest", "--") for k in kinds],
        "entry age",
        "steps",
    )
    curves(
        axes[0, 2],
        [(f"bank/{k}/spread", f"{k} spread (mean over classes)", "-") for k in kinds]
        + [(f"bank/{k}/nearest", f"{k} closest class pair", "--") for k in kinds],
        "class geometry (cosine)",
        "cosine",
    )
    curves(
        axes[1, 0],
        [
            ("bank/loss/positive_share", "anchors with a positive", "-"),
            ("bank/loss/positive_cos", "mean positive cos", "-"),
            ("bank/loss/hardest_negative_cos", "mean hardest-negative cos", "--"),
        ],
        "what the memory loss sees",
        "share / cosine",
    )
    last = rows[-1]
    x = range(len(class_names))
    width = 0.8 / max(len(kinds), 1)
    for panel, metric, title in ((axes[1, 1], "fill", "fill"), (axes[1, 2], "spread", "spread")):
        for j, kind in enumerate(kinds):
            values = [_value(last, f"bank/{kind}/{metric}/{n}") for n in class_names]
            panel.bar([i + j * width for i in x], values, width, label=kind)
        if metric == "spread":
            for j, kind in enumerate(kinds):
                near = [_value(last, f"bank/{kind}/nearest/{n}") for n in class_names]
                panel.plot(
                    [i + j * width for i in x],
                    near,
                    linestyle="none",
                    marker="_",
                    color="k",
                    ms=14,
                    mew=2,
                    label="closest other class" if j == 0 else None,
                )
            title += " (bars) and closest other class, cosine"
        panel.set_xticks(
            [i + width * (len(kinds) - 1) / 2 for i in x], class_names, rotation=60, ha="right"
        )
        panel.tick_params(axis="x", labelsize=7 if len(class_names) <= 40 else 4)
        panel.set_title(f"per class at iteration {int(its[-1])}: {title}", fontsize=9)
        panel.set_ylim(top=1.3)  # both in [0, 1] (nearest may dip below 0): room for the legend
        panel.legend(fontsize=7, loc="upper center", ncol=3)
    fig.tight_layout()
    return fig


def _bank_map_legends(ax, sample: BankSample, class_names: Sequence[str], colours) -> None:
    """Two legends: colour per class (squares: no kind implied) and marker per kind (grey)."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    present = sorted(set(sample.cls.tolist()))
    classes = [Patch(color=colours[c], label=class_names[c]) for c in present]
    first = ax.legend(
        handles=classes,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=7,
        ncol=max(1, math.ceil(len(classes) / 30)),
        title="class",
    )
    ax.add_artist(first)
    held = sorted(set(sample.kind.tolist()))
    kinds = [
        Line2D([], [], marker=_MARKERS[KINDS[k]], linestyle="", color="grey", label=KINDS[k])
        for k in held
    ]
    ax.legend(handles=kinds, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=7, title="kind")


def bank_map_figure(sample: BankSample, class_names: Sequence[str], title: str = "bank map"):
    """PCA (2D) of the sampled entries, one colour per class (legend), one marker per kind."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 7))
    xy = pca_2d(sample.vec).numpy() if len(sample) else None
    colours = _colours(len(class_names))
    if xy is not None:
        cls, kind = sample.cls.numpy(), sample.kind.numpy()
        for c, _name in enumerate(class_names):
            for k, kind_name in enumerate(KINDS):
                mask = (cls == c) & (kind == k)
                if mask.any():
                    ax.scatter(
                        xy[mask, 0],
                        xy[mask, 1],
                        s=10 if kind_name == "pixel" else 28,
                        marker=_MARKERS[kind_name],
                        color=colours[c],
                        alpha=0.6,
                    )
    else:
        ax.text(0.5, 0.5, "the bank is empty", ha="center", va="center", transform=ax.transAxes)
    held = sorted({KINDS[k] for k in sample.kind.tolist()})
    ax.set_title(
        f"{title}: PCA of {len(sample)} entries ({', '.join(held) or 'none'}; pixel o, region x)"
    )
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if xy is not None:
        _bank_map_legends(ax, sample, class_names, colours)
    fig.tight_layout()
    return fig
