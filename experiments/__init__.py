"""The papers' tables and figures, and the ablations, declared as data.

An `Experiment` is a list of `Entry`s; an entry is one model trained from one config with a few
overrides, repeated over seeds, and carries the paper's numbers to compare with. `run.py` turns
entries into `python -m resnet_jax.main` commands; `report.py` reads the workdirs they fill.

An experiment file is any Python file that defines `Experiment` objects at module level; nothing
registers them. The project's own are the files of `experiments/defs/`, found by listing that
folder; `python -m experiments.run PATH/TO/my_ablation.py` loads a file of yours the same way.

Workdir layout: ROOT/<entry.name>/seed<k>/. Entry names are chosen so that the same model trained
the same way has the same name in every experiment (e.g. `resnet56` in fig6 and table6, `resnet34`
in table3 (10-crop) and table4 (multi-scale)): point the experiments at one ROOT and each run is
trained once. `run.py` refuses to reuse a workdir whose
recorded command differs, so a clash of names can never mix two different runs.
"""

from __future__ import annotations

import difflib
import importlib
import pathlib

from experiments.spec import (
    _REGISTRY,
    EVAL_VIEWS,
    METRICS,
    Check,
    Entry,
    Experiment,
    from_record,
    register,
    to_record,
    variant,
)
from resnet_jax import plugins

__all__ = [
    "EVAL_VIEWS",
    "METRICS",
    "Check",
    "Entry",
    "Experiment",
    "available_experiments",
    "from_record",
    "get_experiment",
    "load_file",
    "project_experiments",
    "register",
    "resolve",
    "to_record",
    "variant",
]

DEFS = pathlib.Path(__file__).resolve().parent / "defs"
REPO = DEFS.parent.parent  # the checkout, where the runs start


def load_file(path: str | pathlib.Path) -> tuple[Experiment, ...]:
    """The experiments a file defines at module level, in file order; each is registered (a name
    defined differently in two files is refused). A file of `experiments/defs/` is imported as
    its package module, so the project's files may import each other."""
    path = pathlib.Path(path).resolve()
    if not path.is_file() or path.suffix != ".py":
        raise ValueError(f"{path}: not a Python file")
    if path.parent == DEFS:
        module = importlib.import_module(f"experiments.defs.{path.stem}")
    else:
        # Imported as a plugin file is: one module per file, so loading it twice is a no-op.
        (module,) = plugins.load([str(path)])
    found = {id(v): v for v in vars(module).values() if isinstance(v, Experiment)}
    register(*found.values())
    return tuple(found.values())


def project_experiments() -> list[str]:
    """The names defined by the project's own files (experiments/defs), loaded on first use so
    that importing `experiments` stays cheap; a file of yours adds to `available_experiments`."""
    return sorted(
        {
            e.name
            for path in sorted(DEFS.glob("*.py"))
            if not path.name.startswith("_")
            for e in load_file(path)
        }
    )


def available_experiments() -> list[str]:
    project_experiments()
    return sorted(_REGISTRY)


def get_experiment(name: str) -> Experiment:
    project_experiments()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown experiment {name!r}{hint}; valid: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def resolve(what: str) -> Experiment:
    """An experiment by name (the project's), or from a file: `PATH.py` (a file that defines one
    experiment) or `PATH.py:NAME`."""
    path, _, name = what.partition(".py:") if ".py:" in what else (what, "", "")
    if ".py:" in what:
        path += ".py"
    if not path.endswith(".py"):
        return get_experiment(what)
    if not pathlib.Path(path).is_file():
        raise ValueError(f"no experiment file {path}")
    found = load_file(path)
    if name:
        for exp in found:
            if exp.name == name:
                return exp
        raise ValueError(f"{path} defines no experiment {name!r}; it defines {_names(found)}")
    if len(found) != 1:
        raise ValueError(
            f"{path} defines {len(found)} experiments ({_names(found) or 'none'}); "
            f"name one as {path}:NAME"
        )
    return found[0]


def _names(found) -> str:
    return ", ".join(e.name for e in found)
