"""A grid of config values from the command line, as an experiment with no file:

  python -m experiments.run --config configs/X.py[:arg] --grid KEY=V1,V2 [--grid KEY2=...]
                            --seeds N --workdir ROOT [--config.KEY=V ...]

Each cell of the product of the `--grid` axes is an entry named by its values
(`learning_rate=0.05+block=se_basic`), trained from the config file with the `--config.KEY=V`
overrides and the cell's values. A key `model_overrides.FIELD` varies a model spec field (`block`,
`shortcut`, `preact`, ...). The first value of every axis is the baseline cell, the one the report
compares the others with.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import itertools
import json
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from experiments import REPO
from experiments.spec import Entry, Experiment

MODEL_PREFIX = "model_overrides."


def _literal(value: Any) -> str:
    """A Python literal with double-quoted strings and no spaces (little shell quoting needed)."""
    if isinstance(value, dict):
        return "{" + ",".join(f"{_literal(str(k))}:{_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_literal(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def format_value(value: Any) -> str:
    """A config value as ml_collections' `--config.k=v` parser reads it: strings and numbers as
    they are, tuples and dicts as Python literals."""
    return _literal(value) if isinstance(value, (tuple, list, dict)) else str(value)


def parse_value(text: str) -> Any:
    """A command-line value as the config holds it: a Python literal where it reads as one
    (`0.05`, `True`, `(2,2,2)`), else the string itself (`se_basic`, `configs/x.py`)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def split_top_level(text: str) -> list[str]:
    """`a,(1,2),b` -> ['a', '(1,2)', 'b']: commas inside brackets or quotes do not split."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_axis(text: str) -> tuple[str, list[Any]]:
    """`KEY=V1,V2` -> (KEY, [V1, V2])."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise ValueError(f"--grid {text!r}: write KEY=V1,V2[,...]")
    parsed = [parse_value(v) for v in split_top_level(values)]
    if len(parsed) != len({repr(v) for v in parsed}):
        raise ValueError(f"--grid {text!r}: a value is repeated")
    return key.strip(), parsed


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--config.KEY=V` arguments -> {KEY: value}."""
    out = {}
    for arg in args:
        key, sep, value = arg.removeprefix("--config.").partition("=")
        if not sep:
            raise ValueError(f"{arg!r}: config overrides are --config.KEY=VALUE")
        out[key] = parse_value(value)
    return out


def load_config(config: str):
    """The ConfigDict of `PATH.py[:arg]`, as `--config=` loads it."""
    path, _, arg = config.partition(":")
    if not pathlib.Path(path).is_file():
        if not (REPO / path).is_file():
            raise ValueError(f"--config {config}: no file {path}")
        path = str(REPO / path)  # the project's configs/, named from another directory
    spec = importlib.util.spec_from_file_location("_grid_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def here(path: str) -> str:
    """`path` made absolute when it names a file in the current directory other than the
    checkout, where the runs start; else as it is (the project's `configs/X.py`, a module name)."""
    p = pathlib.Path(path)
    if p.is_absolute() or pathlib.Path.cwd() == REPO or not p.is_file():
        return path
    return str(p.absolute())


def _check_keys(keys: Sequence[str], config) -> None:
    from resnet_jax.models import ResNetSpec

    fields = {f.name for f in dataclasses.fields(ResNetSpec)}
    for key in keys:
        if key.startswith(MODEL_PREFIX):
            field = key.removeprefix(MODEL_PREFIX)
            if field not in fields:
                raise ValueError(
                    f"{key}: {field!r} is no model spec field; fields: {', '.join(sorted(fields))}"
                )
        elif key not in config:
            raise ValueError(f"{key}: no such config key (python -m resnet_jax.main --show_config)")


def _name_part(key: str, value: Any) -> str:
    shown = re.sub(r"[^A-Za-z0-9._-]+", "x", format_value(value)).strip("x") or "x"
    return f"{key.removeprefix(MODEL_PREFIX)}={shown}"


def grid_experiment(
    name: str,
    config: str,
    axes: Sequence[str],
    overrides: Mapping[str, Any],
    seeds: int,
) -> Experiment:
    """The experiment of a command-line grid: one entry per cell of the axes' product."""
    if not axes:
        raise ValueError("--config needs at least one --grid KEY=V1,V2")
    parsed = [parse_axis(a) for a in axes]
    keys = [k for k, _ in parsed]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is gridded twice: {keys}")
    c = load_config(config)
    _check_keys([*keys, *overrides], c)
    # The runs start in the checkout: files named from another directory are given whole.
    path, colon, arg = config.partition(":")
    config = here(path) + colon + arg
    base = dict(overrides)
    if "plugins" in base:
        base["plugins"] = tuple(here(p) for p in base["plugins"])
    base_model = dict(base.pop("model_overrides", None) or {})
    entries = []
    for values in itertools.product(*(v for _, v in parsed)):
        cell = dict(zip(keys, values, strict=True))
        plain = {k: v for k, v in cell.items() if not k.startswith(MODEL_PREFIX)}
        spec = {
            k.removeprefix(MODEL_PREFIX): v for k, v in cell.items() if k.startswith(MODEL_PREFIX)
        }
        cell_overrides = {**base, **plain}
        entries.append(
            Entry(
                name="+".join(_name_part(k, v) for k, v in cell.items()),
                label=", ".join(f"{k.removeprefix(MODEL_PREFIX)}={v}" for k, v in cell.items()),
                config=config,
                model=cell_overrides.get("model", c.model),
                model_overrides={**base_model, **spec},
                overrides=cell_overrides,
                seeds=seeds,
            )
        )
    dataset = base.get("dataset", c.dataset)
    return Experiment(
        name=name,
        title=f"Grid over {', '.join(keys)} ({config})",
        dataset=dataset,
        paper_dataset=dataset,
        source="",
        entries=tuple(entries),
        kind="ablation",
    )
