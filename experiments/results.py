"""Reading experiment workdirs: final errors, curves and mean ± std over seeds.

Works on partial results: a run without `summary.json` is counted as not done, but its curves (from
`metrics.jsonl`, which may end in a half-written line while the trainer runs) are still read.
Errors are percentages, the papers' unit; the trainer logs accuracies as fractions in [0, 1].
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
from collections.abc import Sequence

from experiments import Check, Entry, Experiment, stats
from experiments import run as run_lib
from resnet_jax.engine.metrics import read_metrics

# The training error reported beside the test error is the mean over the last few logged training
# batches: one mini-batch's error is too noisy to compare nets by.
TRAIN_ERR_WINDOW = 5


def read_json(path: pathlib.Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def error_pct(metrics: dict, key: str) -> float | None:
    """100 * (1 - accuracy) for `top1` / `top5`; None when absent or not a number."""
    value = metrics.get(key)
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return 100.0 * (1.0 - float(value))


@dataclasses.dataclass
class RunResult:
    seed: int
    workdir: pathlib.Path
    done: bool
    step: int  # last step seen in metrics.jsonl / summary.json
    total_steps: int | None  # from config.json
    final: dict[str, float]  # metric name (experiments.METRICS) -> percent
    train_curve: list[tuple[int, float]]  # (step, top-1 error %)
    eval_curve: list[tuple[int, float]]
    images_per_sec: float | None
    params: int | None
    wall_time_s: float | None  # the training run's, from summary.json
    record: dict  # experiments.run's run.json (command, host, start time), {} if absent


def read_run(workdir: pathlib.Path, seed: int, eval_views: str = "center") -> RunResult:
    """A run's results; the final test errors are those of `eval_views` (the trainer's own final
    evaluation for `center`, else the eval_<views>.json of `--mode=eval`)."""
    records = read_metrics(workdir / "metrics.jsonl")
    summary = read_json(workdir / "summary.json")
    final_eval = (
        (summary or {}).get("eval")
        if eval_views == "center"
        else read_json(run_lib.eval_file(workdir, eval_views))
    )
    config = read_json(workdir / "config.json") or {}
    train = [
        (int(r["step"]), e)
        for r in records
        if r.get("split") == "train" and (e := error_pct(r, "top1")) is not None
    ]
    # The curve is the trainer's periodic centre-crop test; `--mode=eval` appends records with a
    # `views` key, which belong to no curve.
    evals = [
        (int(r["step"]), e)
        for r in records
        if r.get("split") == "eval"
        and r.get("views", "center") == "center"
        and (e := error_pct(r, "top1")) is not None
    ]
    done = summary is not None and final_eval is not None
    final: dict[str, float] = {}
    for metric, key in (("top1_err", "top1"), ("top5_err", "top5")):
        e = error_pct(final_eval or {}, key)
        if e is not None:
            final[metric] = e
    if train:
        window = [e for _, e in train[-TRAIN_ERR_WINDOW:]]
        final["train_err"] = sum(window) / len(window)
    steps = [s for s, _ in train + evals] + [int((summary or {}).get("step", 0))]
    return RunResult(
        seed=seed,
        workdir=workdir,
        done=done,
        step=max(steps),
        total_steps=config.get("num_train_steps"),
        final=final if done else {},
        train_curve=train,
        eval_curve=evals,
        images_per_sec=(summary or {}).get("images_per_sec"),
        params=(summary or {}).get("params"),
        wall_time_s=(summary or {}).get("wall_time_s"),
        record=read_json(workdir / run_lib.RUN_RECORD) or {},
    )


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1; None for fewer than two values)."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


@dataclasses.dataclass
class EntryResult:
    entry: Entry
    runs: list[RunResult]  # every expected seed, done or not

    @property
    def done(self) -> list[RunResult]:
        return [r for r in self.runs if r.done]

    @property
    def n_done(self) -> int:
        return len(self.done)

    @property
    def n_missing(self) -> int:
        return len(self.runs) - self.n_done

    def values(self, metric: str) -> list[float]:
        """The finished seeds' final `metric`, in seed order."""
        return [r.final[metric] for r in self.done if metric in r.final]

    def stat(self, metric: str) -> tuple[float | None, float | None]:
        return mean_std(self.values(metric))

    def sample(self, metric: str) -> stats.Sample | None:
        values = self.values(metric)
        if not values:
            return None
        mean, std = mean_std(values)
        return stats.Sample(mean, std, len(values))

    def mean_of(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.done if getattr(r, attr) is not None]
        return sum(values) / len(values) if values else None

    def curve(self, split: str) -> list[tuple[int, float]]:
        """Mean over seeds at the steps every seed with data has logged (partial runs included)."""
        curves = [getattr(r, f"{split}_curve") for r in self.runs]
        curves = [dict(c) for c in curves if c]
        if not curves:
            return []
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        return [(s, sum(c[s] for c in curves) / len(curves)) for s in steps]


def collect(exp: Experiment, root: os.PathLike, seeds: int | None = None) -> list[EntryResult]:
    out = []
    for entry in exp.entries:
        runs = [
            read_run(run_lib.run_dir(root, entry, s), s, entry.eval_views)
            for s in run_lib.seeds_of(entry, seeds)
        ]
        out.append(EntryResult(entry, runs))
    return out


@dataclasses.dataclass(frozen=True)
class Decision:
    """A claim decided over seeds: the two samples, the interval of mean(a) - mean(b), the
    verdict (stats.SHOWN / UNDECIDED / CONTRADICTED, or None while a side has no finished run)
    and, when undecided, the seeds per net that would decide it at the observed spread."""

    a: stats.Sample | None
    b: stats.Sample | None
    interval: stats.Interval | None
    verdict: str | None
    seeds_needed: int | None


def decide(
    a: stats.Sample | None, b: stats.Sample | None, op: str, margin: float | None = None
) -> Decision:
    if a is None or b is None:
        return Decision(a, b, None, None, None)
    ci = stats.interval(a, b)
    verdict = stats.verdict(op, ci, margin or 0.0)
    needed = stats.seeds_to_decide(a, b, op, margin or 0.0) if verdict == stats.UNDECIDED else None
    return Decision(a, b, ci, verdict, needed)


def evaluate_check(check: Check, results: Sequence[EntryResult]) -> Decision:
    by_name = {r.entry.name: r for r in results}
    return decide(
        by_name[check.a].sample(check.metric),
        by_name[check.b].sample(check.metric),
        check.op,
        check.margin,
    )
