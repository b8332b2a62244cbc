"""What an experiment is: entries, checks and the registry they are declared into.

The table modules (he2015, he2016, ablations, cpu) import from here; `experiments` itself loads
them on first use (see its docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# Evaluation protocols (`--config.eval_views`). The trainer's own final evaluation is `center`;
# the others are a second step on the finished workdir (`--mode=eval`), which writes
# eval_<views>.json. Entries that differ only in protocol therefore share one training run.
from resnet_jax.config import EVAL_VIEWS

# Metrics a paper number can be given for. Errors are percentages (the papers' unit); `top1_err`
# is the test/validation error of the entry's evaluation protocol, `train_err` the final training
# error (read off the training curve).
METRICS = ("top1_err", "top5_err", "train_err")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One model + recipe of a table, trained once per seed.

    name: workdir folder, unique inside an experiment.
    label: the name the paper gives it (`ResNet-34 A`).
    config: `configs/X.py:arg` as passed to `--config`.
    model: registry name (for parameter / multiply-add counts in reports).
    model_overrides: keyword overrides of the model spec (`shortcut='B'`), passed to the trainer.
    overrides: other config overrides, dotted keys (`bn_group_size=32`).
    eval_views: evaluation protocol of the reported numbers (EVAL_VIEWS).
    paper: metric -> the paper's number (percent), measured with the same protocol; empty where the
      paper gives none.
    seeds: how many seeds to run by default (seeds 0..seeds-1).
    series: curve / colour group in plots (`plain`, `resnet`).
    """

    name: str
    label: str
    config: str
    model: str
    model_overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    paper: Mapping[str, float] = dataclasses.field(default_factory=dict)
    seeds: int = 1
    series: str = ""
    eval_views: str = "center"

    def __post_init__(self):
        if self.eval_views not in EVAL_VIEWS:
            raise ValueError(f"{self.name}: eval_views must be one of {EVAL_VIEWS}")
        unknown = set(self.paper) - set(METRICS)
        if unknown:
            raise ValueError(f"{self.name}: unknown paper metrics {sorted(unknown)}; use {METRICS}")


@dataclasses.dataclass(frozen=True)
class Check:
    """A qualitative claim of the paper, tested on our means: `a op b` on `metric`.

    E.g. Check('plain56', '>', 'plain20', 'top1_err', 'degradation') for He2015 Fig. 6.
    """

    a: str
    op: str  # one of '<', '<=', '>', '>='
    b: str
    metric: str
    claim: str


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A table, figure or ablation.

    dataset: what the entries train on (`cifar10`, `imagenet2012`, `shapes10`).
    paper_dataset: what the paper's numbers were measured on; reports warn when it differs.
    source: where the paper numbers come from (`He2015 Table 3, 10-crop`).
    kind: `table` (numbers), `curves` (also training curves, Figs. 4/6), `ablation` (also error vs
      params / multiply-adds / throughput).
    layer_responses: the report also measures each trained net's per-layer response std (Fig. 7).
    """

    name: str
    title: str
    dataset: str
    paper_dataset: str
    source: str
    entries: tuple[Entry, ...]
    kind: str = "table"
    checks: tuple[Check, ...] = ()
    notes: str = ""
    layer_responses: bool = False

    def __post_init__(self):
        names = [e.name for e in self.entries]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"{self.name}: duplicate entry names {sorted(dupes)}")
        for c in self.checks:
            if c.a not in names or c.b not in names or c.op not in ("<", "<=", ">", ">="):
                raise ValueError(f"{self.name}: bad check {c}")

    def entry(self, name: str) -> Entry:
        for e in self.entries:
            if e.name == name:
                return e
        raise ValueError(
            f"{self.name} has no entry {name!r}; entries: {[e.name for e in self.entries]}"
        )


_REGISTRY: dict[str, Experiment] = {}


def register(*experiments: Experiment) -> None:
    for exp in experiments:
        if exp.name in _REGISTRY and _REGISTRY[exp.name] != exp:
            raise ValueError(f"experiment {exp.name!r} registered twice")
        _REGISTRY[exp.name] = exp
