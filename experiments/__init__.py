"""The papers' tables and figures, and the ablations, declared as data.

An `Experiment` is a list of `Entry`s; an entry is one model trained from one config with a few
overrides, repeated over seeds, and carries the paper's numbers to compare with. `run.py` turns
entries into `python -m resnet_jax.main` commands; `report.py` reads the workdirs they fill.

Workdir layout: ROOT/<entry.name>/seed<k>/. Entry names are chosen so that the same model trained
the same way has the same name in every experiment (e.g. `resnet56` in fig6 and table6, `resnet34`
in table3 (10-crop) and table4 (multi-scale)): point the experiments at one ROOT and each run is
trained once. `run.py` refuses to reuse a workdir whose
recorded command differs, so a clash of names can never mix two different runs.
"""

from __future__ import annotations

import difflib

from experiments.spec import _REGISTRY, EVAL_VIEWS, METRICS, Check, Entry, Experiment, register

__all__ = [
    "EVAL_VIEWS",
    "METRICS",
    "Check",
    "Entry",
    "Experiment",
    "available_experiments",
    "get_experiment",
    "register",
]


def available_experiments() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get_experiment(name: str) -> Experiment:
    _load()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown experiment {name!r}{hint}; valid: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def _load() -> None:
    # Definitions register themselves into experiments.spec on import; loaded on first use so
    # that importing `experiments` stays cheap.
    from experiments import ablations, cpu, he2015, he2016  # noqa: F401
