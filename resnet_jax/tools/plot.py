"""Training curves of one or more runs from their metrics.jsonl, as one PNG.

    python -m resnet_jax.plot WORKDIR [WORKDIR ...] [--out curves.png]

Two panels, loss and top-1 error (%), against the step: thin lines are the logged training
windows, bold lines with markers the evaluations. Each run keeps one colour and is labelled by its
workdir. Works on a run that is still training (a half-written last line is skipped).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags

from resnet_jax import entry
from resnet_jax.engine.metrics import read_metrics

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string(
        "out", None, "PNG to write (default: WORKDIR/curves.png for one run, ./curves.png else)."
    )


def _series(records: Sequence[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
    scale = 100.0 if key == "top1" else 1.0
    return [s for s, _ in points], [scale * (1 - v if key == "top1" else v) for _, v in points]


def plot_runs(workdirs: Sequence[str], out: str) -> str:
    """Draws every run's curves into `out` (PNG); returns its path.

    Raises ValueError naming a workdir that has no metrics.jsonl records.
    """
    import matplotlib

    matplotlib.use("Agg")  # headless machines
    import matplotlib.pyplot as plt

    runs = {}
    for workdir in workdirs:
        records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if not records:
            raise ValueError(f"{workdir} has no metrics.jsonl records: is it a run's workdir?")
        runs[workdir] = records
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (workdir, records) in enumerate(runs.items()):
        colour, label = colours[i % len(colours)], os.path.basename(os.path.normpath(workdir))
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
        print(plot_runs(workdirs, out))
    except ValueError as e:
        raise app.UsageError(str(e)) from None


def run() -> None:
    """`python -m resnet_jax.plot`."""
    define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
