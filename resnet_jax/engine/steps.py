"""Train state and the pure train / eval step functions (no sharding, no config, no host I/O).

`parallel.py` wraps these in `jax.jit` with shardings; here they are plain functions of arrays, so a
test can call them on a toy module and the benchmark can time exactly what the trainer runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax import optim
from resnet_jax.data.finish import images_for_model
from resnet_jax.engine import numerics
from resnet_jax.optim import cross_entropy

# `finish`: the input path's batch -> model inputs (resnet_jax.data.finish.Finish: cast, lighting,
# normalisation, crop and flip), run inside the step so batches cross to the device as uint8.
# None: batch['image'] is already the model input.
FinishFn = Callable[[Mapping[str, jax.Array]], jax.Array] | None


class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training; all leaves are arrays, so Orbax saves it whole."""

    step: jax.Array  # int32 [], optimizer steps taken
    params: Any  # float32 tree
    batch_stats: Any  # BN running statistics
    opt_state: Any
    rng: jax.Array  # uint32 [2]; step-specific keys are fold_in(rng, step), so resume is exact
    # {'params', 'batch_stats'} averaged over steps (`update_ema`), or None when the run keeps no
    # average. Last and defaulted: a checkpoint written before the field existed restores with
    # None (`checkpoint.Checkpointer.restore`).
    ema: Any = None

    @property
    def variables(self) -> dict:
        """{'params', 'batch_stats'}: what `model.apply` takes."""
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: Sequence[int],
    *,
    ema: bool = False,
) -> TrainState:
    """Initialises variables from one dummy image of `image_shape` ([H, W, C]).

    `rng` may be a raw uint32 [2] key or a typed key; the state keeps raw key data, which every
    checkpoint format stores as a plain array. `ema`: keep an average of the weights, starting at
    the initial ones.
    """
    if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        rng = jax.random.key_data(rng)
    init_rng, state_rng = jax.random.split(rng)
    variables = model.init(init_rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    params = variables["params"]
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        rng=state_rng,
    )
    return start_ema(state) if ema else state


def start_ema(state: TrainState) -> TrainState:
    """`state` whose average of the weights starts at (a copy of) its current params and BN
    statistics: at initialisation, after `init_from`, or on a checkpoint written without one."""
    return state.replace(ema=jax.tree.map(jnp.copy, state.variables))


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
    """The decay of update `step` (0 for the first): min(decay, (1 + step) / (10 + step)).

    The warm-up (TensorFlow's ExponentialMovingAverage with num_updates) keeps the average from
    clinging to the random initial weights: after t steps it spans about the last t / 9 of them,
    until that window reaches the 1 / (1 - decay) steps of the decay itself.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.float32(decay), (1.0 + step) / (10.0 + step))


def update_ema(ema: dict, params: Any, batch_stats: Any, step: jax.Array, decay: float) -> dict:
    """`ema` moved towards the new weights: d * ema + (1 - d) * new, d = `ema_decay_at`."""
    new = {"params": params, "batch_stats": batch_stats}
    return optax.incremental_update(new, ema, 1.0 - ema_decay_at(decay, step))


def ema_weights(state: TrainState) -> TrainState:
    """`state` with its averaged params and BN statistics in place of the trained ones (what
    evaluation and prediction read)."""
    if state.ema is None:
        raise ValueError("this train state keeps no average of the weights (ema_decay was 0)")
    return state.replace(params=state.ema["params"], batch_stats=state.ema["batch_stats"])


def topk_correct(logits: jax.Array, labels: jax.Array, ks: Sequence[int]) -> list[jax.Array]:
    """For each k in `ks`, [B] float32: 1 where the label is among the k highest scores.

    One `top_k` (a sort on GPU) serves every k: lax.top_k orders ties by index, so its first k
    columns are exactly `top_k(logits, k)`.
    """
    kmax = min(max(ks), logits.shape[-1])
    _, top = jax.lax.top_k(logits, kmax)
    hit = top == labels[:, None]
    return [jnp.any(hit[:, : min(k, kmax)], axis=-1).astype(jnp.float32) for k in ks]


def _extra_args(tx: optax.GradientTransformation, train_error: jax.Array) -> dict:
    return (
        {"train_error": train_error}
        if isinstance(tx, optax.GradientTransformationExtraArgs)
        else {}
    )


def micro_batches(batch: Mapping[str, jax.Array], k: int, chunk: int = 1) -> dict:
    """Leaves [B, ...] -> [k, B / k, ...]: the batch cut into chunks of `chunk` consecutive rows,
    chunk c going to micro-batch c mod k (so micro-batch j holds chunks j, j + k, j + 2k, ...).

    The composition is a function of the global batch alone, not of the devices it is sharded
    over, so a run resumed on another device count takes the same micro-batches. It also needs
    no row to move: the batch is sharded in contiguous blocks, one per device, and when a block
    holds a whole number of k-chunk rounds (B divisible by k * chunk * devices, which
    `validation` checks) each micro-batch has an equal share of every block, in place. A chunk
    of `bn_group_size` rows keeps each BN group whole: the groups are the global batch's
    consecutive runs of that many rows, as across devices without accumulation.
    """
    b = jax.tree.leaves(batch)[0].shape[0]
    if b % (k * chunk):
        raise ValueError(
            f"a batch of {b} cannot be split into {k} micro-batches of whole chunks of {chunk} "
            f"rows; use a multiple of {k * chunk}"
        )

    def split(x):
        x = x.reshape((b // (k * chunk), k, chunk, *x.shape[1:]))
        return jnp.swapaxes(x, 0, 1).reshape((k, b // k, *x.shape[3:]))

    return {name: split(x) for name, x in batch.items()}


def _gradients(state, batch, rng, *, model, label_smoothing, finish):
    """(grads, new BN statistics, {loss, top1, top5} means) of one (micro-)batch."""
    images = images_for_model(batch, finish)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    top1, top5 = topk_correct(logits, batch["label"], (1, 5))
    return grads, batch_stats, {"loss": loss, "top1": top1.mean(), "top5": top5.mean()}


def _after(tree: Any, batch: Mapping[str, jax.Array]) -> dict:
    """`batch` unchanged, but computable only once every leaf of `tree` is.

    Micro-batch j + 1 must wait for micro-batch j's gradients, or XLA may run every forward pass
    before any backward one and keep all k micro-batches' activations alive, the memory that
    accumulation exists to save. XLA:CPU drops `lax.optimization_barrier` before it schedules, so
    the order is made a data dependency: no value is greater than +inf (NaN included), so `late`
    is always False, which XLA cannot know. It costs a comparison over the gradients and a select
    over the micro-batch's inputs."""
    late = jnp.stack([jnp.any(x > jnp.inf) for x in jax.tree.leaves(tree)]).any()
    return {name: jnp.where(late, jnp.zeros_like(x), x) for name, x in batch.items()}


def _accumulated_gradients(state, batch, rng, k, chunk, unroll, **kwargs):
    """`_gradients` of the whole batch as the mean over k micro-batches (`micro_batches`), one
    after another, so only one micro-batch's activations are alive at a time.

    `unroll`: the micro-batches as k copies of the micro-batch step, each waiting for the one
    before (`_after`), instead of a `lax.scan`. XLA:CPU rewrites a convolution into the dimension
    order its fast convolutions (Eigen, YNNPACK) take only in the program's top level, not inside
    a loop's body, so in a scan the gradient convolutions fall to its generic loops and the step
    runs 10-20x slower (ResNet-20: docs/measurements/cpu.md). Elsewhere the scan keeps the
    program, and its compile time, one micro-batch long.

    Each micro-batch is normalised on its own, and the BN statistics come back as the mean of the
    k micro-batches' updates of the same running statistics. BN's update is affine in the batch
    statistics, so that is momentum * old + (1 - momentum) * (mean over micro-batches of their
    statistics): the update k devices make with BN per device (`models.norm.GroupedBatchNorm`),
    not k updates in a row (docs/training.md).
    """
    micro = micro_batches(batch, k, chunk)
    one = lambda j, mb: _gradients(state, mb, jax.random.fold_in(rng, j), **kwargs)
    if unroll:
        total = one(0, {name: x[0] for name, x in micro.items()})
        for j in range(1, k):
            mb = _after(total, {name: x[j] for name, x in micro.items()})
            total = jax.tree.map(jnp.add, total, one(j, mb))
    else:

        def body(total, xs):
            return jax.tree.map(jnp.add, total, one(*xs)), None

        shapes = jax.eval_shape(one, 0, jax.tree.map(lambda x: x[0], micro))
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        total, _ = jax.lax.scan(body, zeros, (jnp.arange(k), micro))
    return jax.tree.map(lambda x: x / k, total)


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    label_smoothing: float = 0.0,
    skip_nonfinite: bool = False,
    finish: FinishFn = None,
    grad_accum_steps: int = 1,
    accum_chunk: int = 1,
    unroll_micro_batches: bool = False,
    ema_decay: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on batch {'image': [B, H, W, 3], 'label': int [B], ...} (see `FinishFn`).

    Returns the new state and scalar metrics: loss (cross-entropy, without weight decay), top1, top5
    (fractions of the batch), learning_rate (the one used for this update, warm-up gate included),
    grad_norm (global L2).
    With `skip_nonfinite`, an update whose loss or gradient norm is NaN/Inf is dropped (the state
    comes back unchanged) and the metric `skipped` is 1.0 for it, else 0.0.
    `grad_accum_steps` k > 1: the gradient is the mean over k micro-batches of B / k, each with
    its own BN statistics, then one update (`_accumulated_gradients`; `accum_chunk`: the rows kept
    together in a micro-batch, see `micro_batches`; `unroll_micro_batches`: k copies of the
    micro-batch step instead of a loop, for XLA:CPU). `ema_decay`: the decay of the state's
    average of the weights (`update_ema`); the state must hold one exactly when it is > 0.
    """
    if (state.ema is not None) != (ema_decay > 0):
        raise ValueError(
            f"ema_decay={ema_decay} but the train state {'holds' if state.ema else 'lacks'} an "
            "average of the weights; create it with create_train_state(..., ema=ema_decay > 0)"
        )
    dropout_rng = jax.random.fold_in(state.rng, state.step)
    kwargs = dict(model=model, label_smoothing=label_smoothing, finish=finish)
    if grad_accum_steps == 1:
        grads, batch_stats, m = _gradients(state, batch, dropout_rng, **kwargs)
    else:
        grads, batch_stats, m = _accumulated_gradients(
            state,
            batch,
            dropout_rng,
            grad_accum_steps,
            accum_chunk,
            unroll_micro_batches,
            **kwargs,
        )
    # The error-gated warm-up (optim.error_gated_warmup) reads the batch's error; a plain chain
    # ignores it.
    updates, opt_state = tx.update(
        grads, state.opt_state, state.params, **_extra_args(tx, 1.0 - m["top1"])
    )
    params = optax.apply_updates(state.params, updates)
    metrics = {
        **m,
        "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32)
        * optim.lr_multiplier(state.opt_state),
        "grad_norm": optax.tree.norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    if state.ema is not None:
        new_state = new_state.replace(
            ema=update_ema(state.ema, params, batch_stats, state.step, ema_decay)
        )
    if skip_nonfinite:
        finite = jnp.isfinite(m["loss"]) & jnp.isfinite(metrics["grad_norm"])
        new_state = numerics.guard_update(finite, new_state, state)
        metrics["skipped"] = 1.0 - finite.astype(jnp.float32)
    return new_state, metrics


def predict_probs(
    variables: Mapping[str, Any],
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    finish: FinishFn = None,
) -> jax.Array:
    """Class probabilities [B, K] under `variables` ({'params', 'batch_stats'}), averaged over
    views; batch['image'] [B, H, W, 3] or [B, V, H, W, 3]."""
    images = images_for_model(batch, finish)
    multi_view = images.ndim == 5
    if multi_view:
        b, v = images.shape[:2]
        images = images.reshape((b * v, *images.shape[2:]))
    logits = model.apply(variables, images, train=False)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    if multi_view:
        probs = probs.reshape((b, v, -1)).mean(axis=1)
    return probs


def predict_step(
    state: TrainState, batch: Mapping[str, jax.Array], *, model: nn.Module, finish: FinishFn = None
) -> jax.Array:
    """`predict_probs` under the state's weights and BN statistics."""
    return predict_probs(state.variables, batch, model=model, finish=finish)


def metrics_from_probs(
    probs: jax.Array, labels: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
    """Sums over real examples (mask True): loss (-log p[label]), top1, top5 and count."""
    mask = mask.astype(jnp.float32)
    p_true = jnp.take_along_axis(probs, labels[:, None].astype(jnp.int32), axis=-1)[:, 0]
    # The floor keeps a confident miss finite (tiny is ~1e-38, so -log stays under 88).
    nll = -jnp.log(jnp.maximum(p_true, jnp.finfo(jnp.float32).tiny))
    top1, top5 = topk_correct(probs, labels, (1, 5))
    return {
        "loss": jnp.sum(nll * mask),
        "top1": jnp.sum(top1 * mask),
        "top5": jnp.sum(top5 * mask),
        "count": jnp.sum(mask),
    }


def eval_step(
    state: TrainState, batch: Mapping[str, jax.Array], *, model: nn.Module, finish: FinishFn = None
) -> dict[str, jax.Array]:
    """Masked metric sums for {'image', 'label' [B], 'mask' bool [B]}; divide by `count` for means."""
    probs = predict_step(state, batch, model=model, finish=finish)
    return metrics_from_probs(probs, batch["label"], batch["mask"])
