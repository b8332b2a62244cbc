"""Pretrained weights into a fresh train state (`--config.init_from=DIR|FILE`), and the variables
of a run directory's checkpoint.

init_from names either a run directory (its newest checkpoint: a run of ours, or one written by
`python -m resnet_jax.pretrained import`) or a weights file in PyTorch naming (`.safetensors`,
`.npz`, `.pth` with torch; see `resnet_jax.weights`). Only `params` and `batch_stats` are taken:
the step, the optimizer state and the RNG of the new run start fresh. Where the new run has another
number of classes, the head (the last dense layer) keeps its fresh initialisation, and the run says
so. The trainer calls this only when the workdir has no checkpoint, so a resumed fine-tune
continues from its own checkpoints.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import traverse_util

from resnet_jax import weights as weights_lib
from resnet_jax.engine import evaluate, faults, parallel, steps

_COLLECTIONS = ("params", "batch_stats")
_HEAD = "head"


def run_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a run directory was written with (its `config.json`)."""
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise faults.ConfigError(
            f"{workdir} has no config.json: it is not a run directory of resnet_jax (a training "
            "workdir, or one written by `python -m resnet_jax.pretrained import`)"
        )
    with open(path, encoding="utf-8") as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_variables(
    workdir: str, step: int | None = None, weights: str = "raw"
) -> tuple[dict, int, Any]:
    """(`{'params', 'batch_stats'}` as numpy, step, resolved config) of a run's checkpoint `step`
    (default: the newest that loads), `weights` as `evaluate.inference_variables`. The state's
    shapes come from the run's own config.json, so any optimizer and class count restore."""
    c = run_config(workdir)
    try:
        _, variables, step = evaluate.inference_variables(
            c, workdir, parallel.make_mesh(), step, weights
        )
    except faults.CheckpointLoadError as e:
        raise faults.ConfigError(f"{e} to take weights from") from None
    return jax.tree.map(np.asarray, variables), step, c


def missing_source(init_from: str) -> str | None:
    """Why `init_from` (`~` and variables expanded) names nothing to start from, or None."""
    path = os.path.expandvars(os.path.expanduser(init_from))
    if os.path.exists(path):
        return None
    return (
        f"init_from={path!r} does not exist: it is neither a run directory nor a weights file "
        f"({', '.join(weights_lib.files.READABLE)}); give the path of one"
    )


def load_variables(init_from: str, model_name: str, overrides=None) -> tuple[dict, str]:
    """(`{'params', 'batch_stats'}` as numpy, a description) from a run directory or a file.

    `overrides`: the config's model_overrides (a weights file is read for that variant).
    `~` and environment variables in `init_from` are expanded.
    """
    init_from = os.path.expandvars(os.path.expanduser(init_from))
    if os.path.isdir(init_from):
        variables, step, c = restore_variables(init_from)
        if c.model != model_name:
            raise faults.ConfigError(
                f"init_from={init_from} holds a {c.model}, the config trains a {model_name}"
            )
        return variables, f"{init_from} (checkpoint {step})"
    missing = missing_source(init_from)
    if missing:
        raise faults.ConfigError(missing)
    try:
        weights_lib.check_mapped(model_name, weights_lib.default_source(model_name))
        state_dict = weights_lib.load_state_dict(init_from)
        source = weights_lib.default_source(model_name)
        variables = weights_lib.from_torch_state_dict(
            model_name, state_dict, source=source, overrides=overrides
        )
        return variables, init_from
    except weights_lib.WeightsError as e:
        raise faults.ConfigError(f"init_from={init_from}: {e}") from None


def merge(fresh: dict, loaded: dict, what: str) -> tuple[dict, list[str]]:
    """`fresh` (`{'params', 'batch_stats'}`) with every leaf of `loaded` put in its place.

    A head whose shape differs keeps its fresh values (listed in the returned notes); any other
    leaf that is missing, extra or of another shape raises ConfigError naming it.
    """
    old = traverse_util.flatten_dict({k: loaded.get(k, {}) for k in _COLLECTIONS}, sep="/")
    new = traverse_util.flatten_dict({k: fresh[k] for k in _COLLECTIONS}, sep="/")
    out, notes, problems = {}, [], []
    for path, leaf in new.items():
        is_head = path.split("/")[1] == _HEAD
        if path not in old:
            problems.append(f"{path} is missing")
        elif np.shape(old[path]) == leaf.shape:
            out[path] = old[path]
        elif is_head:
            notes.append(f"{path} {np.shape(old[path])} -> {leaf.shape}")
            out[path] = leaf
        else:
            problems.append(f"{path} has shape {np.shape(old[path])}, the model {leaf.shape}")
    problems += [f"{path} is not in the model" for path in old if path not in new]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise faults.ConfigError(f"init_from={what} does not fit the model: {problems[0]}{more}")
    return traverse_util.unflatten_dict(out, sep="/"), notes


def _place_like(value, like: jax.Array) -> jax.Array:
    """`value` (numpy or jax) as a global array with `like`'s sharding (works multi-process)."""
    if value is like:
        return like
    host = np.asarray(value, dtype=like.dtype)
    return jax.make_array_from_callback(host.shape, like.sharding, lambda index: host[index])


def apply_variables(state, variables: dict, what: str):
    """`state` with `variables` (`{'params', 'batch_stats'}`, numpy) merged in (`merge`) and placed
    like the state's own arrays; says on stdout where they came from and what stayed fresh."""
    fresh = state.variables
    merged, notes = merge(fresh, variables, what)
    placed = jax.tree.map(_place_like, merged, fresh)
    if jax.process_index() == 0:
        print(f"init_from: params and BN statistics from {what}", flush=True)
        if notes:
            print(
                "init_from: the class count differs, so the head is re-initialised: "
                + "; ".join(notes),
                flush=True,
            )
    state = state.replace(params=placed["params"], batch_stats=placed["batch_stats"])
    return state if state.ema is None else steps.start_ema(state)  # averaged from these on


def init_from(state, source: str, model_name: str, overrides=None):
    """`state` (a fresh TrainState) with the params and BN statistics of `source` (see module)."""
    variables, what = load_variables(source, model_name, overrides)
    return apply_variables(state, variables, what)
