"""Optimisers, learning-rate schedules, weight-decay masks and the classification loss — all optax.

Nothing here reads a config: each function takes the few numbers it needs, so the benchmark and the
tests can build the exact optimiser the trainer uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("step", "cosine", "constant")
# `until_error`: He2015's ResNet-110 warm-up, a low rate until the training error falls below a
# threshold (`error_gated_warmup`), not over a fixed number of steps.
WARMUPS = ("linear", "constant", "until_error")
DECAY_TARGETS = ("all", "kernels")
OPTIMIZERS = ("sgd", "lars")


def scaled_learning_rate(base_lr: float, batch_size: int, reference_batch_size: int = 256) -> float:
    """Linear scaling rule (Goyal et al. 2017): lr = base_lr * batch_size / reference_batch_size."""
    return base_lr * batch_size / reference_batch_size


def make_schedule(
    base_lr: float,
    total_steps: int,
    *,
    schedule: str = "step",
    boundaries: Sequence[int] = (),
    decay_factor: float = 0.1,
    warmup_steps: int = 0,
    warmup: str = "linear",
    warmup_lr: float = 0.0,
    end_lr: float = 0.0,
) -> optax.Schedule:
    """Learning rate as a function of the (0-based) optimizer step.

    schedule: `step` multiplies by `decay_factor` at each of `boundaries` (absolute steps, the paper's
    "/10 at 32k and 48k"); `cosine` decays from base_lr to end_lr at total_steps; `constant`.
    warmup (first `warmup_steps` steps): `linear` ramps warmup_lr -> base_lr (Goyal et al.);
    `constant` holds warmup_lr, then jumps to base_lr. `until_error` is not a function of the step:
    pass warmup_steps=0 here and chain `error_gated_warmup` into the optimizer.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {schedule!r}")
    if warmup not in WARMUPS:
        raise ValueError(f"warmup must be one of {WARMUPS}, got {warmup!r}")
    warmup_steps = int(warmup_steps)
    if schedule == "step":
        late = [b for b in boundaries if int(b) <= warmup_steps]
        if late:
            raise ValueError(f"lr boundaries {late} fall inside the {warmup_steps}-step warm-up")
        # join_schedules restarts the count at the join, so absolute boundaries shift by the warm-up.
        main = optax.piecewise_constant_schedule(
            base_lr, {int(b) - warmup_steps: decay_factor for b in boundaries}
        )
    elif schedule == "cosine":
        alpha = end_lr / base_lr if base_lr else 0.0
        main = optax.cosine_decay_schedule(base_lr, max(total_steps - warmup_steps, 1), alpha=alpha)
    else:
        main = optax.constant_schedule(base_lr)
    if warmup_steps <= 0:
        return main
    if warmup == "linear":
        ramp = optax.linear_schedule(warmup_lr, base_lr, warmup_steps)
    else:
        ramp = optax.constant_schedule(warmup_lr)
    return optax.join_schedules([ramp, main], [warmup_steps])


class ErrorGateState(NamedTuple):
    """State of `error_gated_warmup`: float32 scalars, saved with the optimizer state."""

    error_average: jax.Array  # moving average of the training-batch error, starts at 1.0
    lr_multiplier: jax.Array  # `factor` until the switch, 1.0 from then on


def error_gated_warmup(
    factor: float, threshold: float, window_steps: float
) -> optax.GradientTransformationExtraArgs:
    """Scales updates by `factor` until the training error falls below `threshold`, then by 1.

    He2015 Sec. 4.2 for ResNet-110: "we use 0.01 to warm up the training until the training error
    is below 80% (about 400 iterations), and then go back to 0.1" (factor 0.1, threshold 0.8).
    Chained last, after momentum, it scales the learning rate exactly. Its `update` takes the
    batch's error (`train_error`, a float32 scalar in [0, 1], measured before this update) as an
    extra argument. One batch is too noisy to judge by (at chance, 32 images show under 80% error
    about 4% of the time), so the switch reads an exponential moving average with a time
    constant of `window_steps` steps, started at 1.0 so that the first batches cannot trip it.
    The switch happens once: the rate never returns to the warm-up value.
    """
    decay = 1.0 - 1.0 / max(float(window_steps), 1.0)

    def init(params):
        del params
        return ErrorGateState(jnp.ones([], jnp.float32), jnp.asarray(factor, jnp.float32))

    def update(updates, state, params=None, *, train_error=None, **extra_args):
        del params, extra_args
        if train_error is None:
            raise ValueError("error_gated_warmup needs the batch's train_error in tx.update")
        updates = jax.tree.map(lambda u: u * state.lr_multiplier.astype(u.dtype), updates)
        average = decay * state.error_average + (1.0 - decay) * jnp.float32(train_error)
        multiplier = jnp.where(average < threshold, jnp.float32(1.0), state.lr_multiplier)
        return updates, ErrorGateState(average, multiplier)

    return optax.GradientTransformationExtraArgs(init, update)


def lr_multiplier(opt_state: Any) -> jax.Array:
    """The factor `error_gated_warmup` applies to the scheduled rate now (1.0 without one)."""
    return optax.tree_utils.tree_get(opt_state, "lr_multiplier", jnp.float32(1.0))


def weight_decay_mask(params: Any, which: str = "all") -> Any:
    """Bool tree over `params`: True where weight decay applies.

    `all`: every parameter (the papers' Caffe setting: decay on weights, BN scale/shift and biases).
    `kernels`: conv and dense kernels only (leaves named `kernel`), no BN scale/shift and no biases.
    """
    if which not in DECAY_TARGETS:
        raise ValueError(f"weight_decay_on must be one of {DECAY_TARGETS}, got {which!r}")
    if which == "all":
        return jax.tree.map(lambda _: True, params)

    def is_kernel(path, _):
        last = path[-1]
        return getattr(last, "key", getattr(last, "name", None)) == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(
    learning_rate: optax.ScalarOrSchedule,
    *,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    weight_decay_on: str = "all",
    lars_trust_coefficient: float = 0.001,
    gate: optax.GradientTransformationExtraArgs | None = None,
) -> optax.GradientTransformation:
    """SGD with momentum (optionally Nesterov) and masked L2 weight decay, or LARS for huge batches.

    Weight decay is added to the gradient before momentum (`g + wd * w`), which is what the papers'
    Caffe solver did with `weight_decay: 0.0001`; the reported training loss excludes it.
    `gate` (e.g. `error_gated_warmup`) is chained last, so it scales the final update.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    mask = lambda params: weight_decay_mask(params, weight_decay_on)
    if optimizer == "lars":
        # LARS (You et al. 2017) leaves BN and biases out of both decay and trust ratio, as is usual.
        tx = optax.lars(
            learning_rate,
            weight_decay=weight_decay,
            weight_decay_mask=mask,
            trust_ratio_mask=lambda p: weight_decay_mask(p, "kernels"),
            trust_coefficient=lars_trust_coefficient,
            momentum=momentum,
            nesterov=nesterov,
        )
        return tx if gate is None else optax.chain(tx, gate)
    parts = []
    if weight_decay:
        parts.append(optax.add_decayed_weights(weight_decay, mask))
    parts.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov))
    if gate is not None:
        parts.append(gate)
    return optax.chain(*parts)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Per-example softmax cross-entropy, logits [B, K] and int labels [B] -> [B] (float32)."""
    logits = logits.astype(jnp.float32)
    if not label_smoothing:
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)
