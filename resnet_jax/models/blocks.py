"""Residual units and shortcuts (He2015, He2016, ResNet-D, ResNeXt, Wide ResNet).

All tensors are NHWC: a unit maps `[B, H, W, C_in]` to `[B, ceil(H/s), ceil(W/s), features]`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


def unit_layers(
    bottleneck: bool, features: int, inner: int, strides: int, stride_on_3x3: bool, groups: int
):
    """The branch's convs as (kernel, out_features, stride, groups) tuples."""
    if not bottleneck:
        return ((3, inner, strides, 1), (3, features, 1, 1))
    s1, s3 = (1, strides) if stride_on_3x3 else (strides, 1)
    return ((1, inner, s1, 1), (3, inner, s3, groups), (1, features, 1, 1))


class ResidualUnit(nn.Module):
    """Basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) unit, post- or pre-activation.

    `plain=True` drops the shortcut and the addition (He2015's plain nets).
    `inner` is the width of the first conv(s); `features` the output width.
    `stride_on_3x3` puts a bottleneck's stride on the 3x3 ("v1.5") instead of the first 1x1.
    `preact_shortcut` (pre-activation only) feeds the shortcut from the pre-activated input even
    when it is an identity; He2016 does this for the unit right after a bare conv stem.
    Sows every 3x3 conv's response into 'intermediates'/'response': after its BN for
    post-activation units; the raw conv output for pre-activation units (no BN follows it in
    the unit before the next conv or the addition).
    """

    features: int
    inner: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    bottleneck: bool = False
    preact: bool = False
    plain: bool = False
    shortcut: str = "B"
    stride_on_3x3: bool = True
    groups: int = 1
    zero_init_last: bool = False
    preact_shortcut: bool = False
    act: Callable[[Any], Any] = nn.relu

    @nn.compact
    def __call__(self, x):
        layers = unit_layers(
            self.bottleneck,
            self.features,
            self.inner,
            self.strides,
            self.stride_on_3x3,
            self.groups,
        )
        return (self._preact if self.preact else self._postact)(x, layers, len(layers) - 1)

    def _postact(self, x, layers, last):
        y = x
        for i, (k, f, s, g) in enumerate(layers):
            y = self.conv(
                f,
                (k, k),
                (s, s),
                padding=conv_padding(k),
                feature_group_count=g,
                name=f"conv{i + 1}",
            )(y)
            zero = self.zero_init_last and i == last
            y = self.norm(
                name=f"bn{i + 1}",
                scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
            )(y)
            if k == 3:
                self.sow("intermediates", "response", y)
            if i < last:
                y = self.act(y)
        if self.plain:
            return self.act(y)
        shortcut = Shortcut(
            self.shortcut, self.features, self.strides, self.conv, self.norm, name="shortcut"
        )(x)
        return add_relu(y, shortcut) if self.act is nn.relu else self.act(y + shortcut)

    def _preact(self, x, layers, last):
        pre = self.act(self.norm(name="bn1")(x))
        y = pre
        for i, (k, f, s, g) in enumerate(layers):
            if i > 0:
                y = self.act(self.norm(name=f"bn{i + 1}")(y))
            # Pre-activation units end in a conv, so zero-init (Goyal et al.) zeroes that conv instead.
            init = nn.initializers.zeros if self.zero_init_last and i == last else he_fan_out
            y = self.conv(
                f,
                (k, k),
                (s, s),
                padding=conv_padding(k),
                feature_group_count=g,
                kernel_init=init,
                name=f"conv{i + 1}",
            )(y)
            if k == 3:
                self.sow("intermediates", "response", y)
        if self.plain:
            return y
        identity = Shortcut.is_identity(self.shortcut, x.shape[-1], self.features, self.strides)
        # He2016: where the shortcut is a projection (or follows a bare stem) both paths start
        # after the pre-activation; elsewhere the identity path stays clean.
        sc_in = x if identity and not self.preact_shortcut else pre
        return y + Shortcut(
            self.shortcut, self.features, self.strides, self.conv, None, name="shortcut"
        )(sc_in)
