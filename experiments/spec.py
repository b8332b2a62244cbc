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
    """A claim about two entries, `a op b` on an error metric, decided over seeds
    (experiments/stats.py): `<` / `>` say a is better / worse than b; `<=` / `>=` say a is no
    worse / no better than b, within `margin` percentage points (non-inferiority), which such a
    claim must state with where the margin comes from (`margin_source`; the paper's own
    differences are the natural scale).

    E.g. Check('plain56', '>', 'plain20', 'top1_err', 'degradation') for He2015 Fig. 6.
    """

    a: str
    op: str  # one of '<', '<=', '>', '>='
    b: str
    metric: str
    claim: str
    margin: float | None = None
    margin_source: str = ""

    def __post_init__(self):
        if self.op not in ("<", "<=", ">", ">="):
            raise ValueError(f"{self.claim}: op must be one of <, <=, >, >=, got {self.op!r}")
        if self.metric not in METRICS:
            raise ValueError(f"{self.claim}: metric must be one of {METRICS}, got {self.metric!r}")
        if self.op in ("<=", ">=") and not (self.margin and self.margin > 0 and self.margin_source):
            raise ValueError(
                f"{self.claim}: a '{self.op}' (no worse / no better) claim needs a margin > 0 in "
                "percentage points and its margin_source"
            )
        if self.op in ("<", ">") and self.margin is not None:
            raise ValueError(f"{self.claim}: a margin applies to '<=' and '>=' claims only")


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A table, figure or ablation.

    dataset: what the entries train on (`cifar10`, `imagenet2012`, `shapes10`).
    paper_dataset: what the paper's numbers were measured on; reports warn when it differs.
    source: where the paper numbers come from (`He2015 Table 3, 10-crop`).
    kind: `table` (numbers), `curves` (also training curves, Figs. 4/6), `ablation` (also error vs
      params / multiply-adds / throughput).
    layer_responses: the report also measures each trained net's per-layer response std (Fig. 7).
    baseline: the entry the report compares every other entry with (default: the first).
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
    baseline: str = ""

    def __post_init__(self):
        names = [e.name for e in self.entries]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"{self.name}: duplicate entry names {sorted(dupes)}")
        if not names:
            raise ValueError(f"{self.name}: an experiment needs at least one entry")
        for c in self.checks:
            if c.a not in names or c.b not in names:
                raise ValueError(f"{self.name}: check {c.claim!r} names an entry not in {names}")
        if self.baseline and self.baseline not in names:
            raise ValueError(f"{self.name}: baseline {self.baseline!r} is not one of {names}")

    @property
    def baseline_entry(self) -> Entry:
        """What every other entry is compared with: `baseline`, else the first entry."""
        return self.entry(self.baseline) if self.baseline else self.entries[0]

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


def to_record(exp: Experiment) -> dict:
    """The experiment as JSON-able data: `experiments.run` leaves it in its root, so that the
    report needs neither the file that defined it nor a registered name (a grid has neither)."""
    return dataclasses.asdict(exp)


def _tuples(value: Any) -> Any:
    """JSON's lists back to the tuples the configs and model specs hold (`stage_sizes`)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def from_record(record: Mapping[str, Any]) -> Experiment:
    fields = dict(record)
    fields["entries"] = tuple(
        Entry(**{k: _tuples(v) if k.endswith("overrides") else v for k, v in e.items()})
        for e in fields["entries"]
    )
    fields["checks"] = tuple(Check(**c) for c in fields.get("checks", ()))
    return Experiment(**fields)


def variant(
    base: Entry,
    name: str,
    label: str,
    series: str = "",
    overrides: Mapping[str, Any] | None = None,
    **model_overrides,
) -> Entry:
    """`base` with config keys (`overrides`) and model spec fields (`model_overrides`, e.g.
    `block="se_basic"`, `shortcut="C"`) changed, under a new name: one line per ablated design.
    The base's recipe, seeds and evaluation protocol carry over; its paper numbers do not."""
    return dataclasses.replace(
        base,
        name=name,
        label=label,
        series=series or name,
        overrides={**base.overrides, **(overrides or {})},
        model_overrides={**base.model_overrides, **model_overrides},
        paper={},
    )
