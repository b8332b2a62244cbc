"""Training curves of one or more runs from their metrics.jsonl, as one PNG.

    python -m resnet_jax.plot WORKDIR [WORKDIR ...] [--out curves.png] [--label NAME ...]

Two panels, loss and top-1 error (%), against the step: thin lines are the logged training
windows, bold lines with markers the evaluations. Each run keeps one colour and is labelled by its
workdir's last folders, as many as tell the runs apart (an experiment's ROOT/<entry>/seed<k>
reads `<entry>/seed<k>`), or by `--label`, one per workdir in order. Works on a run that is still
training (a half-written last line is skipped).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from absl import app, flags

from resnet_jax import entry
from resnet_jax.engine.metrics import read_metrics

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string(
        "out", None, "PNG to write (default: WORKDIR/curves.png for one run, ./curves.png else)."
    )
    flags.DEFINE_multi_string(
        "label", None, "legend name of each workdir, in order (repeat once per workdir)."
    )


def run_labels(workdirs: Sequence[str]) -> list[str]:
    """The shortest trailing paths that tell the workdirs apart, never a bare `seed<k>`:
    runs/cpu/resnet20_cpu/seed0 and runs/cpu/resnet56_cpu/seed0 -> resnet20_cpu/seed0, ..."""
    parts = [os.path.normpath(os.path.abspath(w)).split(os.sep) for w in workdirs]
    longest = max(len(p) for p in parts)
    for depth in range(1, longest + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        bare_seed = any(re.fullmatch(r"seed\d+", p[-1]) for p in parts) and depth == 1
        if len(set(labels)) == len(labels) and not bare_seed:
            return labels
    return list(workdirs)


def _series(records: Sequence[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    scale = 100.0 if key == "top1" else 1.0
    return [s for s, _ in points], [scale * (1 - v if key == "top1" else v) for _, v in points]


def plot_runs(workdirs: Sequence[str], out: str, labels: Sequence[str] | None = None) -> str:
    """Draws every run's curves into `out` (PNG), labelled by `labels` (default `run_labels`);
    returns its path.

    Raises ValueError naming a workdir that has no metrics.jsonl records, or for a count of
    labels other than the count of workdirs.
    """
    if labels is not None and len(labels) != len(workdirs):
        raise ValueError(f"{len(labels)} labels for {len(workdirs)} workdirs: give one per workdir")
    import matplotlib

    matplotlib.use("Agg")  # headless machines
    import matplotlib.pyplot as plt

    runs = []
    for workdir in workdirs:
        records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if not records:
            raise ValueError(f"{workdir} has no metrics.jsonl records: is it a run's workdir?")
        runs.append(records)
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    names = list(labels) if labels is not None else run_labels(workdirs)
    for i, (label, records) in enumerate(zip(names, runs, strict=True)):
        colour = colours[i % len(colours)]
        for ax, key in ((ax_loss, "loss"), (ax_err, "top1")):
            ax.plot(*_series(records, "train", key), color=colour, lw=1, alpha=0.7,
                    label=f"{label} train")  # fmt: skip
            ax.plot(*_series(records, "eval", key), color=colour, lw=2, marker="o", ms=4,
                    label=f"{label} eval")  # fmt: skip
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    ax_err.set(xlabel="step", ylabel="top-1 error (%)", title="top-1 error", ylim=(0, 100))
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: Sequence[str]) -> None:
    workdirs = list(argv[1:])
    if not workdirs:
        raise app.UsageError("give one or more run workdirs: python -m resnet_jax.plot WORKDIR...")
    out = FLAGS.out or (
        os.path.join(workdirs[0], "curves.png") if len(workdirs) == 1 else "curves.png"
    )
    try:
        print(plot_runs(workdirs, out, FLAGS.label))
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def run() -> None:
    """`python -m resnet_jax.plot`."""
    define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
