"""What residual units are made of: the conv init and padding, the shortcuts (He2015 options
A-C, ResNet-D's D) and the unit's final addition. The units themselves: `models.units`.

All tensors are NHWC.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

ModuleDef = Callable[..., nn.Module]

# He et al. 2015 ("MSRA") init as torchvision applies it: plain (untruncated) normal, std
# sqrt(2 / fan_out); in JAX 'normal' is the untruncated distribution.
he_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_padding(k: int):
    # Symmetric padding as torchvision (padding=k//2), not 'SAME' which pads (0, 1) on stride 2
    # and would shift every downsampled map by half a pixel relative to ported weights.
    return ((k // 2, k // 2), (k // 2, k // 2))


def avg_pool_2x2(x):
    """2x2/2 average pool, ceil mode, padding excluded from the mean (ResNet-D shortcut)."""
    pad = ((0, x.shape[1] % 2), (0, x.shape[2] % 2))
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding=pad, count_include_pad=False)


def add_relu(branch, shortcut):
    """relu(branch + shortcut), with the same values and gradients bit for bit, written as a
    select so that XLA keeps a unit's output in memory once.

    XLA's CPU fusion copies an elementwise op into each consumer when it reads at most one large
    input; `max(s, 0)` does, so each unit's output was recomputed inside every later consumer,
    back through the whole chain of additions of its stage (the ninth unit of a ResNet-56 stage
    redid all nine). The select reads two large inputs (`s` and `s <= 0`) and feeds the next
    convolution, which cannot fuse it, so XLA materialises it instead. ResNet-56's train step
    with one XLA thread: 1.3x (docs/measurements/cpu.md). NaN stays NaN, as in max.
    """
    s = branch + shortcut
    return jnp.where(s <= 0, 0, s)


class Shortcut(nn.Module):
    """The identity path of a unit: `[B, H, W, C_in] -> [B, H/s, W/s, features]`.

    kind 'A': identity, or stride-subsample + zero channels where the shape changes (no params).
    kind 'B': 1x1/s conv (+ BN) where the shape changes, identity elsewhere.
    kind 'C': 1x1/s conv (+ BN) in every unit.
    kind 'D': as B, but a 2x2/2 average pool does the subsampling and the 1x1 conv has stride 1.
    `norm=None` leaves the projection without BN (pre-activation units, He2016).
    """

    kind: str
    features: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef | None

    @staticmethod
    def is_identity(kind: str, in_features: int, features: int, strides: int) -> bool:
        return kind != "C" and strides == 1 and in_features == features

    @nn.compact
    def __call__(self, x):
        if self.is_identity(self.kind, x.shape[-1], self.features, self.strides):
            return x
        if self.kind == "A":
            extra = self.features - x.shape[-1]
            if extra < 0:
                raise ValueError(
                    f"option A cannot reduce channels ({x.shape[-1]} -> {self.features})"
                )
            x = x[:, :: self.strides, :: self.strides, :]
            return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
        strides = self.strides
        if self.kind == "D" and strides > 1:
            x = (
                avg_pool_2x2(x)
                if strides == 2
                else nn.avg_pool(x, (strides, strides), (strides, strides))
            )
            strides = 1
        x = self.conv(self.features, (1, 1), (strides, strides), padding="VALID", name="proj_conv")(
            x
        )
        if self.norm is not None:
            x = self.norm(name="proj_bn")(x)
        return x
