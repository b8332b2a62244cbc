"""Evaluation: single crop, 10-crop and multi-scale (softmax scores averaged over views and scales).

Eval batches come from `resnet_jax.data.pipeline.eval_iterator`; padding rows carry mask=False and
count nowhere, so the means are over the split's real examples. Each device sums the metrics of its
own share of every batch (`parallel.per_device_sums`: no collective, so no XLA:CPU thread waits
on another device); the sums stay on the devices until the split is done and are added up on the
host (one transfer per evaluation).
"""

from __future__ import annotations

import collections
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from resnet_jax import config as config_lib
from resnet_jax.data import catalog, inputs  # no TensorFlow until a host batch is asked for
from resnet_jax.engine import faults, metrics, parallel, steps

# Batches dispatched ahead of the one the host waits for. XLA's CPU client runs each device's
# part of a program on a pool of max(cores, devices) threads, and a part holds its thread until
# it is done, collectives included; dispatching a 33rd computation queued for one device blocks
# a pool thread as well. With 2 CPU devices on 2 cores both threads were then held, the partner
# of a running collective never started, and XLA aborted the process after 40 s: under load the
# devices fall behind the host and the queue fills (measured on a 2-core AMD EPYC on 2026-12-07:
# with 8 eval batches of 5 computations each, the step and an add per metric, 1 of 8 runs of
# `--mode=eval` of two seeds aborted under load 14-17, and a loop of that evaluation in its
# first pass; a step with a collective and no wait aborted at 40 batches and finished 2,000 with
# this bound). The eval step has no collective now (`parallel.per_device_sums`); the bound keeps
# the queue short all the same.
MAX_BATCHES_AHEAD = 4


@jax.jit
def _add_sums(total, new):  # one computation for every metric, not one per metric
    return jax.tree.map(jnp.add, total, new)


def _add(total, new):
    return new if total is None else _add_sums(total, new)


def _wait_ahead(in_flight: collections.deque, value) -> None:
    """Queues `value` (a device value just dispatched) and waits for the one queued
    MAX_BATCHES_AHEAD before it."""
    in_flight.append(value)
    if len(in_flight) > MAX_BATCHES_AHEAD:
        jax.block_until_ready(in_flight.popleft())


def host_sums(sums: dict) -> dict:
    """{name: [devices] sums on the mesh} -> {name: numpy [devices]} on every process (each
    process holds only its own devices' sums where there are several)."""
    leaves = jax.tree.leaves(sums)
    if all(x.is_fully_addressable for x in leaves):
        return jax.device_get(sums)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(sums, tiled=True)


def evaluate_batches(eval_step: Callable, state: steps.TrainState, batches, mesh: Mesh) -> dict:
    """Means of loss/top1/top5 over the masked-in examples of `batches` (host numpy batches, or
    global arrays already on the mesh); `eval_step` as `parallel.jit_eval_step`."""
    sums, in_flight = None, collections.deque()
    for batch in parallel.prefetch_to_mesh(batches, mesh):
        sums = _add(sums, eval_step(state, batch))
        _wait_ahead(in_flight, sums)
    if sums is None:
        raise ValueError("the evaluation split yielded no batches")
    return metrics.means_from_sums(host_sums(sums))


def evaluate_multiscale(
    predict: Callable,
    score: Callable,
    state: steps.TrainState,
    per_scale_batches: Sequence[Any],
    mesh: Mesh,
) -> dict:
    """Averages each example's class probabilities over scales (and each scale's views).

    `per_scale_batches`: one batch iterable per scale, all yielding the examples in the same order.
    Probabilities stay on device, sharded like the batch, until every scale is done. `score`:
    `(probs, labels, mask) -> {name: [devices]}` sums (`score_step`).
    """
    probs, labels, masks, in_flight = [], [], [], collections.deque()
    for s, batches in enumerate(per_scale_batches):
        for i, batch in enumerate(parallel.prefetch_to_mesh(batches, mesh)):
            p = predict(state, batch)
            if s == 0:
                probs.append(p)
                labels.append(batch["label"])
                masks.append(batch["mask"])
            else:
                probs[i] = probs[i] + p
            _wait_ahead(in_flight, probs[i])
    n = len(per_scale_batches)
    sums = None
    for p, y, m in zip(probs, labels, masks, strict=True):
        sums = _add(sums, score(p / n, y, m))
        _wait_ahead(in_flight, sums)
    return metrics.means_from_sums(host_sums(sums))


def score_step(mesh: Mesh) -> Callable[..., dict]:
    """Compiled `steps.metrics_from_probs(probs, labels, mask)` of batch-sharded arrays, one sum
    per device (`parallel.per_device_sums`)."""
    batch = P(parallel.DATA_AXIS)
    return parallel.per_device_sums(steps.metrics_from_probs, mesh, (batch, batch, batch))


def make_evaluator(
    model,
    mesh: Mesh,
    d: catalog.Dataset,
    plan: catalog.Plan,
    *,
    finish: steps.FinishFn,
    views: str = "center",
    seed: int | Sequence[int] = 0,
) -> Callable[..., dict]:
    """Returns `evaluate(state, run=0) -> {'loss', 'top1', 'top5', 'count'}` over the record's eval
    split as `plan` reads it, for the run of seed `seed` (of seeds `seed[run]`).

    views: `center` (one crop), `10crop` (4 corners + centre and their flips, He2015), or
    `multiscale` (fully convolutional at each of `plan.eval_scales` with flips, scores averaged).
    finish: what turns the eval batches into model inputs inside the step (`inputs.finish`).
    seed: the run's, or the runs' (synthetic data scores a run's training pool, made from it).
    """
    if views not in config_lib.EVAL_VIEWS:
        raise ValueError(f"eval views must be one of {config_lib.EVAL_VIEWS}, got {views!r}")
    if views not in d.eval_views:
        raise faults.ConfigError(
            f"eval_views={views!r} is not available for {d.name} on the {d.input_pipeline} input "
            f"path, which has only eval_views {', '.join(map(repr, d.eval_views))}"
        )
    if views == "multiscale" and np.ndim(finish.mean) == 3:
        raise faults.ConfigError(
            "eval_views='multiscale' rescales the images, and a per-pixel mean image has one "
            "size: evaluate it with a run normalised per channel (normalization=per_channel "
            "or mean_std)"
        )
    if views == "multiscale" and not plan.eval_scales:
        raise ValueError("multiscale evaluation needs eval_scales")
    # The compiled steps first, then the data they read: the record's split is asked for last.
    if views != "multiscale":
        eval_step = parallel.jit_eval_step(model, mesh, finish)
        one_pass = lambda state, data: evaluate_batches(eval_step, state, data(), mesh)
    else:
        score = score_step(mesh)
        predict = parallel.jit_predict_step(model, mesh, finish)
        one_pass = lambda state, data: evaluate_multiscale(
            predict, score, state, [data(s) for s in plan.eval_scales], mesh
        )
    data = inputs.eval_batches(
        d,
        plan,
        views,
        batch_sharding=parallel.batch_sharded(mesh),
        local_batch_size=parallel.local_batch_size(plan.eval_batch_size, mesh),
        seeds=(seed,) if isinstance(seed, int) else tuple(seed),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return lambda state, run=0: one_pass(state, functools.partial(data, run=run))


# Which weights a run is evaluated, served or predicted with: those trained ("raw"), or their
# exponential moving average ("ema", a run with ema_decay > 0).
WEIGHTS = ("raw", "ema")


def restore_checkpoint(
    c, workdir: str, mesh: Mesh, step: int | None = None, weights: str = "raw"
) -> tuple[Any, steps.TrainState, int]:
    """(model, state, step) of checkpoint `step` in `workdir` (default: the newest that loads),
    for the resolved config `c`, whose model and optimizer give the state its shapes.

    weights: 'raw', or 'ema' for a state whose params and BN statistics are the averaged ones.
    Raises CheckpointLoadError (exit 66) when the workdir holds no checkpoint, ConfigError
    (exit 78) for 'ema' on a checkpoint without an average of the weights.
    """
    from resnet_jax.engine import checkpoint

    if weights not in WEIGHTS:
        raise faults.ConfigError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    model, _, tx = config_lib.build(c)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=0, keep=None)
    image_shape = (c.image_size, c.image_size, 3)
    abstract = parallel.abstract_train_state(model, tx, image_shape, mesh, ema=config_lib.ema_on(c))
    try:
        restored = ckpt.restore(abstract, step)
    finally:
        ckpt.close()
    if restored is None:
        raise faults.CheckpointLoadError(f"no checkpoint in {ckpt.directory}")
    state, position = restored
    step = int(position["step"])
    if weights == "ema":
        if state.ema is None:
            raise faults.ConfigError(
                f"checkpoint {step} in {ckpt.directory} holds no averaged (EMA) weights (its run "
                "had ema_decay=0), only the trained ones: use weights=raw"
            )
        state = steps.ema_weights(state)
    return model, state, step


def inference_variables(
    c, workdir: str, mesh: Mesh, step: int | None = None, weights: str = "raw"
) -> tuple[Any, dict, int]:
    """(model, {'params', 'batch_stats'}, step) of checkpoint `step` in `workdir` (default: the
    newest that loads): what predict, export, `init_from` and the PyTorch export take from a run.
    `weights` and errors as `restore_checkpoint`."""
    model, state, step = restore_checkpoint(c, workdir, mesh, step, weights)
    return model, state.variables, step


def evaluate_state(evaluate: Callable[[steps.TrainState], dict], state: steps.TrainState) -> dict:
    """`evaluate(state)`, and for a state that keeps an average of the weights the same metrics
    of the averaged ones under `ema_` names (`ema_loss`, `ema_top1`, `ema_top5`)."""
    result = evaluate(state)
    if state.ema is None:
        return result
    averaged = evaluate(steps.ema_weights(state))
    return {**result, **{f"ema_{k}": v for k, v in averaged.items() if k != "count"}}


def saved_config(workdir: str) -> dict | None:
    """The resolved config a run wrote to WORKDIR/config.json, or None where there is none."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def evaluate_checkpoint(config, workdir: str) -> dict:
    """`--mode=eval`: evaluates the newest checkpoint in `workdir` with `config.eval_views` (and
    its averaged weights too where the run keeps them, `evaluate_state`).

    The dataset's record is rebuilt from the run's config.json (a folder is not scanned again).
    Appends an `eval` record (with `views`) to metrics.jsonl and writes `eval_<views>.json`.
    """
    run = config_lib.resolve_run(config, saved=saved_config(workdir))
    c = run.c
    mesh = parallel.make_mesh()
    model, state, step = restore_checkpoint(c, workdir, mesh)
    finish = inputs.finish(run.data, run.plan)
    evaluate = make_evaluator(
        model, mesh, run.data, run.plan, finish=finish, views=c.eval_views, seed=c.seed
    )
    result = evaluate_state(evaluate, state)
    logger = metrics.MetricsLogger(
        workdir,
        total_steps=c.num_train_steps,
        global_batch_size=c.eval_batch_size,
        tensorboard=False,
        num_classes=c.num_classes,
    )
    logger.log_eval(step, dict(result, views=c.eval_views))
    logger.close()
    out = dict(
        result,
        step=step,
        views=c.eval_views,
        scales=list(c.eval_scales) if c.eval_views == "multiscale" else None,
    )
    metrics.write_json(os.path.join(workdir, f"eval_{c.eval_views}.json"), out)
    return out
