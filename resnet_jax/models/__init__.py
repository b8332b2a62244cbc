"""ResNet model zoo: `create_model(name, **overrides)`, `available_models()`, `get_spec(name)`;
residual units by name: `register_block(name)`, `get_block(name)`, `available_blocks()`.

model = create_model('resnet50', dtype=jnp.bfloat16)
variables = model.init(rng, jnp.zeros((1, 224, 224, 3)), train=False)
logits, upd = model.apply(variables, x, train=True, mutable=['batch_stats'])
model = create_model('resnet20', block='preact_basic')  # any registered unit, in any net
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from resnet_jax.models.norm import GroupedBatchNorm
from resnet_jax.models.registry import Published, available_models, get_published, get_spec
from resnet_jax.models.resnet import ResNet, ResNetSpec
from resnet_jax.models.units import (
    BasicUnit,
    BottleneckUnit,
    PostActUnit,
    PreActBasicUnit,
    PreActBottleneckUnit,
    PreActUnit,
    Unit,
    available_blocks,
    get_block,
    register_block,
)

__all__ = [
    "create_model",
    "available_models",
    "get_spec",
    "get_published",
    "ResNet",
    "ResNetSpec",
    "Published",
    "GroupedBatchNorm",
    "register_block",
    "get_block",
    "available_blocks",
    "Unit",
    "PostActUnit",
    "PreActUnit",
    "BasicUnit",
    "BottleneckUnit",
    "PreActBasicUnit",
    "PreActBottleneckUnit",
]


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    dtype: Any = jnp.float32,
    bn_group_size: int | None = None,
    **overrides,
) -> ResNet:
    """The registered model `name`, with spec fields replaced by `overrides`.

    num_classes: None keeps the spec's (1000 ImageNet, 10 CIFAR). dtype: compute dtype; params
    stay float32. bn_group_size: BN statistics per group of N examples (None: whole batch).
    """
    spec = get_spec(name)
    valid = sorted(f.name for f in dataclasses.fields(ResNetSpec) if f.name != "name")
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown override(s) {unknown} for {name!r}; valid keys: {', '.join(valid)}"
        )
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if bn_group_size is not None and (not isinstance(bn_group_size, int) or bn_group_size <= 0):
        raise ValueError(f"bn_group_size must be a positive int or None, got {bn_group_size!r}")
    if overrides:
        spec = dataclasses.replace(spec, **overrides)
    return ResNet(spec=spec, dtype=dtype, bn_group_size=bn_group_size)
