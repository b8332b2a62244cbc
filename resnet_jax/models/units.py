"""Residual units, each a class chosen by name: `block='bottleneck'` in a spec is
`get_block('bottleneck')`, and a new unit is one `Unit` subclass under `@register_block(name)`.

A unit maps `[B, H, W, C_in]` to `[B, ceil(H/s), ceil(W/s), features]` (NHWC).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn

from resnet_jax import entry
from resnet_jax.models.blocks import ModuleDef, Shortcut, add_relu, conv_padding, he_fan_out

_BLOCKS: dict[str, type[Unit]] = {}
# The class variables a net reads from its unit (see `Unit`).
NET_READS = ("expansion", "weight_layers", "preact", "grouped")


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_block(name: str) -> Callable[[type[Unit]], type[Unit]]:
    """Class decorator: the `Unit` subclass that `block=name` chooses in every ResNet.

    The same class registered again (its module or notebook cell run twice) replaces itself;
    another class under a taken name is refused.
    """

    def add(cls: type[Unit]) -> type[Unit]:
        if not (isinstance(cls, type) and issubclass(cls, Unit)):
            raise TypeError(f"block {name!r}: {cls!r} is not a subclass of {_qualified(Unit)}")
        unset = [k for k in NET_READS if not hasattr(cls, k)]
        if unset:
            raise TypeError(
                f"block {name!r}: {_qualified(cls)} does not set {', '.join(unset)} (the class "
                "variables a net reads; subclass a unit that sets them, e.g. BasicUnit)"
            )
        taken = _BLOCKS.get(name)
        if taken is not None and _qualified(taken) != _qualified(cls):
            raise ValueError(
                f"block name {name!r} is taken by {_qualified(taken)}; register "
                f"{_qualified(cls)} under another name"
            )
        _BLOCKS[name] = cls
        return cls

    return add


def get_block(name: str) -> type[Unit]:
    """The unit class registered as `name`; ValueError naming the closest and all names."""
    if name not in _BLOCKS:
        raise ValueError(
            f"unknown block {name!r}{entry.did_you_mean(name, _BLOCKS)}; registered blocks: "
            f"{', '.join(_BLOCKS)}"
        )
    return _BLOCKS[name]


def available_blocks() -> list[str]:
    """Every registered block name, in registration order (the built-in four first)."""
    return list(_BLOCKS)


class Unit(nn.Module):
    """A residual unit; each registered block is a subclass, and every one takes these fields,
    so the net builds any of them alike.

    features: output width. inner: width of the convs before the last. strides: the unit's.
    conv, norm: the layer constructors the net configures once (bias-free conv, batch norm).
    plain: no shortcut and no addition (He2015's plain nets). shortcut: 'A'-'D' (`Shortcut`).
    stride_on_3x3: a bottleneck's stride on its 3x3 ("v1.5") instead of its first 1x1.
    groups: the 3x3's groups (ResNeXt), for units that are `grouped`.
    zero_init_last: the branch starts at zero (Goyal et al.), so the unit starts as its shortcut.
    preact_shortcut (pre-activation units): the shortcut reads the pre-activated input even where
      it is an identity; He2016 does this for the unit right after a bare conv stem.

    What the net reads from the class:
    expansion: output width / the stage's base width ("planes"), 4 for a bottleneck; 1: the unit
      outputs its inner width (a basic unit, which the width multiplier widens whole).
    weight_layers: weight layers of the branch (`ResNetSpec.depth` counts them).
    preact: pre-activation (He2016): the stem leaves out its last BN-ReLU and the net adds a
      `final_bn` + ReLU before pooling.
    grouped: takes groups / width_per_group.

    `convs()` lays out the branch as (kernel, out_features, stride, groups) tuples; `branch(x)`
    is the branch's output before the addition. Override `branch` (calling `super().branch`) to
    change what the branch computes; name the layers it adds (`name=`): the names are their
    parameters' paths.
    Sows every 3x3 conv's response into 'intermediates'/'response'.
    """

    features: int
    inner: int
    strides: int
    conv: ModuleDef
    norm: ModuleDef
    plain: bool = False
    shortcut: str = "B"
    stride_on_3x3: bool = True
    groups: int = 1
    zero_init_last: bool = False
    preact_shortcut: bool = False
    act: Callable[[Any], Any] = nn.relu

    expansion: ClassVar[int]
    weight_layers: ClassVar[int]
    preact: ClassVar[bool]
    grouped: ClassVar[bool]

    def convs(self) -> tuple[tuple[int, int, int, int], ...]:
        raise NotImplementedError(f"{type(self).__name__} lays out no convs")

    def branch(self, x):
        raise NotImplementedError(f"{type(self).__name__} has no branch")

    def _conv(self, i: int, k: int, f: int, s: int, g: int, **kwargs):
        """The branch's conv `conv{i + 1}`: k x k, f outputs, stride s, g groups."""
        return self.conv(
            f,
            (k, k),
            (s, s),
            padding=conv_padding(k),
            feature_group_count=g,
            name=f"conv{i + 1}",
            **kwargs,
        )


class BasicLayout:
    """3x3, 3x3 (He2015 Fig. 5 left)."""

    expansion: ClassVar[int] = 1
    weight_layers: ClassVar[int] = 2
    grouped: ClassVar[bool] = False

    def convs(self):
        return ((3, self.inner, self.strides, 1), (3, self.features, 1, 1))


class BottleneckLayout:
    """1x1, 3x3 (grouped for ResNeXt), 1x1 (He2015 Fig. 5 right)."""

    expansion: ClassVar[int] = 4
    weight_layers: ClassVar[int] = 3
    grouped: ClassVar[bool] = True

    def convs(self):
        s1, s3 = (1, self.strides) if self.stride_on_3x3 else (self.strides, 1)
        return ((1, self.inner, s1, 1), (3, self.inner, s3, self.groups), (1, self.features, 1, 1))


class PostActUnit(Unit):
    """relu(branch(x) + shortcut(x)), each conv of the branch followed by BN (He2015).

    The 3x3 responses are sown after their BN.
    """

    preact: ClassVar[bool] = False

    @nn.compact
    def __call__(self, x):
        y = self.branch(x)
        if self.plain:
            return self.act(y)
        shortcut = Shortcut(
            self.shortcut, self.features, self.strides, self.conv, self.norm, name="shortcut"
        )(x)
        return add_relu(y, shortcut) if self.act is nn.relu else self.act(y + shortcut)

    def branch(self, x):
        """`x`: the unit's input. Returns the last conv's BN output (no ReLU)."""
        layers = self.convs()
        last = len(layers) - 1
        y = x
        for i, (k, f, s, g) in enumerate(layers):
            y = self._conv(i, k, f, s, g)(y)
            zero = self.zero_init_last and i == last
            y = self.norm(
                name=f"bn{i + 1}",
                scale_init=nn.initializers.zeros if zero else nn.initializers.ones,
            )(y)
            if k == 3:
                self.sow("intermediates", "response", y)
            if i < last:
                y = self.act(y)
        return y


class PreActUnit(Unit):
    """branch(relu(bn1(x))) + shortcut, each conv preceded by BN-ReLU (He2016).

    The 3x3 responses are sown as the raw conv output (no BN follows it in the unit before the
    next conv or the addition). Projections have no BN.
    """

    preact: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x):
        pre = self.act(self.norm(name="bn1")(x))
        y = self.branch(pre)
        if self.plain:
            return y
        identity = Shortcut.is_identity(self.shortcut, x.shape[-1], self.features, self.strides)
        # He2016: where the shortcut is a projection (or follows a bare stem) both paths start
        # after the pre-activation; elsewhere the identity path stays clean.
        sc_in = x if identity and not self.preact_shortcut else pre
        return y + Shortcut(
            self.shortcut, self.features, self.strides, self.conv, None, name="shortcut"
        )(sc_in)

    def branch(self, x):
        """`x`: the unit's pre-activated input, relu(bn1(input)). Returns the last conv's output."""
        layers = self.convs()
        last = len(layers) - 1
        y = x
        for i, (k, f, s, g) in enumerate(layers):
            if i > 0:
                y = self.act(self.norm(name=f"bn{i + 1}")(y))
            # Pre-activation units end in a conv, so zero-init (Goyal et al.) zeroes that conv instead.
            init = nn.initializers.zeros if self.zero_init_last and i == last else he_fan_out
            y = self._conv(i, k, f, s, g, kernel_init=init)(y)
            if k == 3:
                self.sow("intermediates", "response", y)
        return y


@register_block("basic")
class BasicUnit(BasicLayout, PostActUnit):
    """He2015's basic unit (ResNet-18/34, ResNet-20 to 1202 on CIFAR)."""


@register_block("bottleneck")
class BottleneckUnit(BottleneckLayout, PostActUnit):
    """He2015's bottleneck unit (ResNet-50 and deeper, ResNeXt, Wide ResNet-50-2)."""


@register_block("preact_basic")
class PreActBasicUnit(BasicLayout, PreActUnit):
    """He2016's pre-activation basic unit (pre-activation ResNet-110, Wide ResNet)."""


@register_block("preact_bottleneck")
class PreActBottleneckUnit(BottleneckLayout, PreActUnit):
    """He2016's pre-activation bottleneck unit (pre-activation ResNet-164 and 1001)."""


# The project's own units, registered above; `available_blocks()` adds those of the user's code.
BUILT_IN_BLOCKS = tuple(_BLOCKS)
