"""PNG figures for reports: error curves (He2015 Figs. 4 and 6 style) and cost trade-offs."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines
import matplotlib.pyplot as plt

from experiments import Experiment
from experiments.results import EntryResult

# Moving-average window (in logged points) for the training curves: a single mini-batch's error
# jumps by several percent, which hides the trend the figure is about.
SMOOTH = 5


def _smooth(values: Sequence[float], k: int = SMOOTH) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def curves(exp: Experiment, results: Sequence[EntryResult], path: pathlib.Path) -> bool:
    """One panel per series (e.g. plain | ResNet); thin dashed = training, bold = test error.

    Returns False (and writes nothing) when no run has logged anything yet.
    """
    series = list(dict.fromkeys(r.entry.series for r in results))
    if not any(r.curve("train") or r.curve("eval") for r in results):
        return False
    fig, axes = plt.subplots(
        1, len(series), figsize=(5.2 * len(series), 4.2), sharey=True, squeeze=False
    )
    top = 0.0
    for ax, name in zip(axes[0], series, strict=True):
        members = [r for r in results if r.entry.series == name]
        colours = plt.cm.viridis_r if name == "plain" else plt.cm.plasma_r
        for i, r in enumerate(members):
            colour = colours(0.25 + 0.6 * i / max(1, len(members) - 1))
            train, test = r.curve("train"), r.curve("eval")
            # The legend shows the bold test line; the dashed train line only when there is no test.
            if train:
                ys = _smooth([e for _, e in train])
                ax.plot(
                    [s for s, _ in train],
                    ys,
                    lw=0.8,
                    ls="--",
                    color=colour,
                    alpha=0.9,
                    label=None if test else r.entry.label,
                )
                top = max(top, max(ys))
            if test:
                ax.plot(
                    [s for s, _ in test],
                    [e for _, e in test],
                    lw=2.4,
                    color=colour,
                    label=r.entry.label,
                    marker="o" if len(test) < 15 else None,
                    ms=4,
                )
                top = max(top, max(e for _, e in test))
        ax.set_title(f"{name}" if name else exp.title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    axes[0][0].set_ylabel("error (%)")
    axes[0][0].set_ylim(0, min(100, top * 1.05 + 1))
    fig.suptitle(
        f"{exp.name} on {exp.dataset}: dashed = training error (smoothed), bold = test error",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def tradeoffs(
    exp: Experiment,
    results: Sequence[EntryResult],
    costs: dict[str, dict],
    path: pathlib.Path,
    metric: str = "top1_err",
) -> bool:
    """Test error (mean ± std over seeds) against params, multiply-adds and measured images/s.

    costs: entry name -> {'params', 'macs', 'images_per_sec'} (any may be missing). Panels with no
    data point are left out; returns False when there is nothing to plot.
    """
    axes_spec = [
        ("params", "parameters (M)", 1e-6),
        ("macs", "multiply-adds (G)", 1e-9),
        ("images_per_sec", "training throughput (images/s)", 1.0),
    ]
    points = {key: [] for key, _, _ in axes_spec}
    for r in results:
        mean, std = r.stat(metric)
        if mean is None:
            continue
        for key, _, scale in axes_spec:
            x = (costs.get(r.entry.name) or {}).get(key)
            if x:
                points[key].append((x * scale, mean, std or 0.0, r.entry.label))
    panels = [(key, label) for key, label, _ in axes_spec if points[key]]
    if not panels:
        return False
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.6 * len(panels), 3.8), sharey=True, squeeze=False
    )
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        for x, y, err, name in points[key]:
            ax.errorbar([x], [y], yerr=[err], fmt="o", capsize=3)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric.replace('_err', '')} error (%)")
    fig.suptitle(f"{exp.name} on {exp.dataset}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
