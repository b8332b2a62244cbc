"""One ResNet module driven by a frozen spec: stem -> stages of residual units -> pool -> dense.

Input `[B, H, W, 3]` float (NHWC), output logits `[B, num_classes]` float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.blocks import conv_padding, he_fan_out
from resnet_jax.models.norm import make_norm
from resnet_jax.models.units import Unit, available_blocks, get_block

SHORTCUTS = ("A", "B", "C", "D")
STEMS = ("imagenet", "cifar", "deep")
FAMILIES = ("imagenet", "cifar")


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """Architecture of one network; registry entries are instances, overrides replace fields.

    block: a registered unit name (`models.available_blocks()`: basic, bottleneck, preact_basic,
      preact_bottleneck, and any unit registered with `register_block`).
    preact: True chooses the pre-activation form of `block`, the unit registered as
      `'preact_' + block` (preact=True with 'basic' is 'preact_basic'). A pre-activation block
      is pre-activation whatever `preact` says. `unit` is the class the two choose.
    widths: per-stage base width ("planes"). Units have inner width
      `int(widths[i] * width_multiplier * width_per_group / 64) * groups` (torchvision's rule,
      which gives wide_resnet50_2 and ResNeXt) and output `widths[i] * unit.expansion`
      channels; a unit of expansion 1 (basic) outputs its inner width, so the multiplier
      widens it whole (Wide ResNet).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max pool), 'cifar' (3x3 conv), 'deep' (ResNet-D: three
      3x3 convs of stem_width/2, stem_width/2, stem_width, the first with stride 2, + max pool).
    shortcut: 'A', 'B', 'C' (He2015 Sec. 3.3) or 'D' (ResNet-D average-pool projection).
    stride_on_3x3: bottleneck stride on the 3x3 ("v1.5", True) or the first 1x1 (paper, False).
    bn_momentum: flax convention, running = momentum * running + (1 - momentum) * batch
      (0.9 equals torchvision's momentum=0.1).
    """

    name: str
    family: str
    stage_sizes: tuple[int, ...]
    block: str = "basic"
    widths: tuple[int, ...] = (64, 128, 256, 512)
    strides: tuple[int, ...] = (1, 2, 2, 2)
    stem: str = "imagenet"
    stem_width: int = 64
    shortcut: str = "B"
    preact: bool = False
    plain: bool = False
    stride_on_3x3: bool = True
    groups: int = 1
    width_per_group: int = 64
    width_multiplier: float = 1.0
    zero_init_residual: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    num_classes: int = 1000
    input_size: int = 224

    def __post_init__(self):
        try:
            unit = self.unit
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None
        checks = [
            (self.family in FAMILIES, f"family must be one of {FAMILIES}, got {self.family!r}"),
            (
                self.shortcut in SHORTCUTS,
                f"shortcut must be one of {SHORTCUTS}, got {self.shortcut!r}",
            ),
            (self.stem in STEMS, f"stem must be one of {STEMS}, got {self.stem!r}"),
            (
                len(self.stage_sizes) == len(self.widths) == len(self.strides),
                "stage_sizes, widths and strides must have the same length",
            ),
            (
                unit.grouped or (self.groups == 1 and self.width_per_group == 64),
                f"block {self.block!r} takes no groups / width_per_group (blocks that do: "
                f"{', '.join(b for b in available_blocks() if get_block(b).grouped)})",
            ),
            # A plain unit with a zero last BN scale outputs zeros for every input: the net is dead.
            (
                not (self.plain and self.zero_init_residual),
                "zero_init_residual needs a residual path; plain nets would output a constant",
            ),
            (
                self.num_classes > 0 and self.width_multiplier > 0,
                "num_classes, width_multiplier must be > 0",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"{self.name}: {msg}")

    @property
    def unit(self) -> type[Unit]:
        """The residual unit class `block` and `preact` choose."""
        unit = get_block(self.block)
        if self.preact and not unit.preact:
            try:
                unit = get_block(f"preact_{self.block}")
            except ValueError as e:
                raise ValueError(
                    f"preact=True asks for the pre-activation form of block {self.block!r}: {e}"
                ) from None
        return unit

    def min_input_size(self) -> int:
        """Smallest input side that leaves the last stage a feature map of at least 1x1."""
        stem = (
            1 if self.stem == "cifar" else 4
        )  # imagenet/deep stems: stride-2 conv + stride-2 pool
        return stem * math.prod(self.strides)

    def unit_widths(self, stage: int) -> tuple[int, int]:
        """(inner, output) channel widths of the units of `stage` (0-based)."""
        planes, expansion = self.widths[stage], self.unit.expansion
        inner = int(planes * self.width_multiplier * self.width_per_group / 64) * self.groups
        return inner, inner if expansion == 1 else planes * expansion

    @property
    def depth(self) -> int:
        """Weight layers in the paper's convention: one stem conv + branch convs + the dense."""
        return 1 + self.unit.weight_layers * sum(self.stage_sizes) + 1


class Stem(nn.Module):
    """`[B, H, W, 3] -> [B, H/4, W/4, width]` (ImageNet, deep) or `[B, H, W, width]` (CIFAR).

    Pre-activation nets leave out the BN + ReLU after the last conv: the first unit's
    pre-activation provides it (He2016).
    """

    kind: str
    width: int
    preact: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        if self.kind == "imagenet":
            convs = [(7, self.width, 2)]
        elif self.kind == "cifar":
            convs = [(3, self.width, 1)]
        else:
            convs = [(3, self.width // 2, 2), (3, self.width // 2, 1), (3, self.width, 1)]
        for i, (k, f, s) in enumerate(convs):
            x = self.conv(f, (k, k), (s, s), padding=conv_padding(k), name=f"conv{i + 1}")(x)
            if not (self.preact and i == len(convs) - 1):
                x = nn.relu(self.norm(name=f"bn{i + 1}")(x))
        if self.kind != "cifar":
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return x


class ResNet(nn.Module):
    """`[B, H, W, 3]` -> logits `[B, spec.num_classes]` float32.

    dtype: compute dtype of convs and BN outputs; params are `param_dtype` (float32).
    bn_group_size: None for statistics over the whole batch, N for groups of N examples.
    """

    spec: ResNetSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    bn_group_size: int | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        s = self.spec
        conv = functools.partial(
            nn.Conv,
            use_bias=False,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=he_fan_out,
        )
        norm = make_norm(
            train=train,
            group_size=self.bn_group_size,
            momentum=s.bn_momentum,
            epsilon=s.bn_epsilon,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
        )
        unit = s.unit
        x = Stem(s.stem, s.stem_width, unit.preact, conv, norm, name="stem")(x)
        for i, (n, stride) in enumerate(zip(s.stage_sizes, s.strides, strict=True)):
            inner, features = s.unit_widths(i)
            for j in range(n):
                x = unit(
                    features=features,
                    inner=inner,
                    strides=stride if j == 0 else 1,
                    conv=conv,
                    norm=norm,
                    plain=s.plain,
                    shortcut=s.shortcut,
                    stride_on_3x3=s.stride_on_3x3,
                    groups=s.groups,
                    zero_init_last=s.zero_init_residual,
                    # A pre-activation stem ends in a conv (+ pool), not BN-ReLU: the first unit's
                    # pre-activation then feeds both paths (He2016).
                    preact_shortcut=unit.preact and i == 0 and j == 0,
                    name=f"stage{i + 1}_unit{j + 1}",
                )(x)
        if unit.preact:
            x = nn.relu(norm(name="final_bn")(x))
        # Pool and classify in float32: the cost is negligible and logits keep full precision.
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        # Kernel init = torchvision's Linear default (uniform, bound 1/sqrt(fan_in)).
        return nn.Dense(
            s.num_classes,
            dtype=jnp.float32,
            param_dtype=self.param_dtype,
            kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
            name="head",
        )(x)
