"""Evaluation: single crop, 10-crop and multi-scale (softmax scores averaged over views and scales).

Eval batches come from `resnet_jax.data.pipeline.eval_iterator`; padding rows carry mask=False and
count nowhere, so the means are over the split's real examples. Metric sums stay on device until
the split is done (one host transfer per evaluation).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from resnet_jax import config as config_lib
from resnet_jax.data import synthetic  # JAX only: no TensorFlow
from resnet_jax.engine import faults, metrics, parallel, steps


def eval_data_args(c) -> dict:
    """The eval-data keyword arguments of `make_evaluator` taken from a resolved config, with the
    input path's `finish` (`config.build_finish`)."""
    finish = config_lib.build_finish(c)
    if c.dataset == synthetic.NAME:  # scores the training pool, so its batch size and seed
        return dict(
            finish=finish,
            dataset=c.dataset,
            data_dir=None,
            global_batch_size=c.batch_size,
            image_size=c.image_size,
            synthetic_pool=(c.synthetic_batches, c.num_classes, c.seed),
        )
    return dict(
        finish=finish,
        dataset=c.dataset,
        data_dir=c.data_dir,
        global_batch_size=c.eval_batch_size,
        image_size=c.image_size,
        scales=tuple(c.eval_scales),
        split=c.eval_split,
        input_pipeline=config_lib.input_pipeline(c),
    )


def _eval_batches(dataset, *, views, local_batch, **kwargs):
    from resnet_jax.data import pipeline  # TensorFlow only on the data path

    return pipeline.eval_iterator(
        dataset,
        local_batch_size=local_batch,
        views=views,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        **kwargs,
    )


def _add(total, new):
    return new if total is None else jax.tree.map(jnp.add, total, new)


def evaluate_batches(eval_step: Callable, state: steps.TrainState, batches, mesh: Mesh) -> dict:
    """Means of loss/top1/top5 over the masked-in examples of `batches` (host numpy batches, or
    global arrays already on the mesh)."""
    sums = None
    for batch in parallel.prefetch_to_mesh(batches, mesh):
        sums = _add(sums, eval_step(state, batch))
    if sums is None:
        raise ValueError("the evaluation split yielded no batches")
    return metrics.means_from_sums(sums)


def evaluate_multiscale(
    predict: Callable,
    score: Callable,
    state: steps.TrainState,
    per_scale_batches: Sequence[Any],
    mesh: Mesh,
) -> dict:
    """Averages each example's class probabilities over scales (and each scale's views).

    `per_scale_batches`: one batch iterable per scale, all yielding the examples in the same order.
    Probabilities stay on device, sharded like the batch, until every scale is done.
    """
    probs, labels, masks = [], [], []
    for s, batches in enumerate(per_scale_batches):
        for i, batch in enumerate(parallel.prefetch_to_mesh(batches, mesh)):
            p = predict(state, batch)
            if s == 0:
                probs.append(p)
                labels.append(batch["label"])
                masks.append(batch["mask"])
            else:
                probs[i] = probs[i] + p
    n = len(per_scale_batches)
    sums = None
    for p, y, m in zip(probs, labels, masks, strict=True):
        sums = _add(sums, score(p / n, y, m))
    return metrics.means_from_sums(sums)


def make_evaluator(
    model,
    mesh: Mesh,
    *,
    dataset: str,
    data_dir: str | None,
    global_batch_size: int,
    views: str = "center",
    scales: Sequence[int] = (),
    image_size: int | None = None,
    split: str | None = None,
    synthetic_pool: tuple[int, int, int] | None = None,
    input_pipeline: str | None = "host",
    finish: steps.FinishFn = None,
) -> Callable[[steps.TrainState], dict]:
    """Returns `evaluate(state) -> {'loss', 'top1', 'top5', 'count'}` over the eval split.

    views: `center` (one crop), `10crop` (4 corners + centre and their flips, He2015), or
    `multiscale` (fully convolutional at each of `scales` with flips, scores averaged).
    synthetic_pool: (num_batches, num_classes, seed) of the training pool that `synthetic` scores.
    input_pipeline: 'device' holds the split on the devices (loaded once, here; its views are made
    there from the held images, `device_input`).
    finish: what turns the eval batches into model inputs inside the step (`config.build_finish`;
    None: the input path's own, with the dataset's default normalisation).
    """
    if views not in config_lib.EVAL_VIEWS:
        raise ValueError(f"eval views must be one of {config_lib.EVAL_VIEWS}, got {views!r}")
    local_batch = parallel.local_batch_size(global_batch_size, mesh)
    if dataset == synthetic.NAME:
        if views != "center":
            raise faults.ConfigError(
                f"eval_views={views!r} needs real images to crop and rescale; "
                "synthetic data has only eval_views='center'"
            )
        num_batches, num_classes, seed = synthetic_pool
        eval_step = parallel.jit_eval_step(model, mesh, finish or synthetic.FINISH)
        # Made again at each evaluation (a pure function of the seed) rather than kept in memory.
        return lambda state: evaluate_batches(
            eval_step,
            state,
            synthetic.make_batches(
                parallel.batch_sharded(mesh),
                num_batches,
                global_batch_size,
                image_size,
                num_classes,
                seed=seed,
                with_mask=True,
            ),
            mesh,
        )
    if input_pipeline == "device":
        from resnet_jax.data import device_input

        held = device_input.eval_batches(
            dataset,
            data_dir=data_dir,
            batch_sharding=parallel.batch_sharded(mesh),
            global_batch_size=global_batch_size,
            split=split,
            image_size=image_size,
            views="center" if views == "multiscale" else views,
        )
        finish = finish or device_input.finish_for(
            dataset, data_dir=data_dir, image_size=image_size
        )
        if views == "multiscale" and np.ndim(finish.mean) == 3:
            raise faults.ConfigError(
                "eval_views='multiscale' rescales the images, and a per-pixel mean image has one "
                "size: evaluate it with a run normalised per channel (normalization=per_channel "
                "or mean_std)"
            )
        data = lambda scale=None: held if scale is None else held.with_scale(scale)
    else:
        host = functools.partial(
            _eval_batches, dataset, data_dir=data_dir, local_batch=local_batch, split=split
        )
        if finish is None:
            from resnet_jax.data import pipeline  # TensorFlow only on the data path

            finish = pipeline.finish_for(dataset, data_dir=data_dir, image_size=image_size)
        data = lambda scale=None: (
            host(views=views, image_size=image_size)
            if scale is None
            else host(views="multiscale", scale=scale, image_size=image_size)
        )
    if views != "multiscale":
        eval_step = parallel.jit_eval_step(model, mesh, finish)
        return lambda state: evaluate_batches(eval_step, state, data(), mesh)
    if not scales:
        raise ValueError("multiscale evaluation needs eval_scales")
    predict = parallel.jit_predict_step(model, mesh, finish)
    score = jax.jit(steps.metrics_from_probs, out_shardings=parallel.replicated(mesh))
    return lambda state: evaluate_multiscale(predict, score, state, [data(s) for s in scales], mesh)


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
    model = config_lib.build_model(c)
    _, tx = config_lib.build_optimizer(c)
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


def evaluate_checkpoint(config, workdir: str) -> dict:
    """`--mode=eval`: evaluates the newest checkpoint in `workdir` with `config.eval_views` (and
    its averaged weights too where the run keeps them, `evaluate_state`).

    Appends an `eval` record (with `views`) to metrics.jsonl and writes `eval_<views>.json`.
    """
    c = config_lib.resolve_config(config)
    mesh = parallel.make_mesh()
    model, state, step = restore_checkpoint(c, workdir, mesh)
    evaluate = make_evaluator(model, mesh, **eval_data_args(c), views=c.eval_views)
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
