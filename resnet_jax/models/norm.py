"""Batch normalisation over the whole batch or over groups of N consecutive examples.

`bn_group_size=None` uses `nn.BatchNorm`: statistics over the global batch (under `jit` with a
batch sharded over devices XLA makes this synchronised BN). `bn_group_size=N` reproduces the
paper's per-GPU statistics (He2015 used 32 images per GPU): the batch `[B, ...]` is viewed as
`[B/N, N, ...]` and each group is normalised with its own mean and variance. When N divides
the per-device batch, the reshape keeps every group on one device, so no communication is added.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

Dtype = Any


class GroupedBatchNorm(nn.Module):
    """BatchNorm with statistics per group of `group_size` consecutive examples.

    Same variables as `nn.BatchNorm` (`params`: scale, bias; `batch_stats`: mean, var), so
    checkpoints and parameter counts do not depend on the grouping. Running statistics move
    towards the mean over groups of the per-group statistics (biased variance, as flax).

    Input `[B, ..., C]` with `B % group_size == 0`; output the same shape in `dtype`.
    """

    group_size: int
    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    scale_init: Callable[..., Any] = nn.initializers.ones
    bias_init: Callable[..., Any] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None):
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", self.scale_init, (c,), self.param_dtype)
        bias = self.param("bias", self.bias_init, (c,), self.param_dtype)

        if use_running_average:
            mean, var = ra_mean.value, ra_var.value
            xg = x
        else:
            b = x.shape[0]
            if self.group_size <= 0 or b % self.group_size:
                raise ValueError(
                    f"bn_group_size={self.group_size} must divide the batch size, got a batch of {b}; "
                    "pick a batch (per step, all devices) that is a multiple of the group size."
                )
            # Statistics in float32 whatever the compute dtype (as nn.BatchNorm does).
            xg = x.reshape((b // self.group_size, self.group_size) + x.shape[1:])
            x32 = xg.astype(jnp.promote_types(x.dtype, jnp.float32))
            axes = tuple(range(1, xg.ndim - 1))
            mean = jnp.mean(x32, axis=axes, keepdims=True)
            # E[x^2] - E[x]^2 in one fusion, clipped at 0 against round-off, like flax's fast variance.
            var = jnp.maximum(
                0.0, jnp.mean(jnp.square(x32), axis=axes, keepdims=True) - jnp.square(mean)
            )
            if not self.is_initializing():
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, axis=(0,) + axes)
                ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(var, axis=(0,) + axes)

        y = (xg - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        dtype = self.dtype if self.dtype is not None else x.dtype
        return y.reshape(x.shape).astype(dtype)


def make_norm(
    *,
    train: bool,
    group_size: int | None,
    momentum: float,
    epsilon: float,
    dtype: Dtype,
    param_dtype: Dtype,
) -> Callable[..., nn.Module]:
    """Returns the norm-layer constructor every unit uses (call it with `name=`, `scale_init=`)."""
    common = dict(
        use_running_average=not train,
        momentum=momentum,
        epsilon=epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
    )
    if group_size is None:
        return functools.partial(nn.BatchNorm, **common)
    return functools.partial(GroupedBatchNorm, group_size=group_size, **common)
