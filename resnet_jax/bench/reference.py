"""A minimal reference ResNet and train step: the yardstick the project's default step is timed against.

It is written the way the flax ImageNet example writes its own (models.py + train_step), with
nothing a research codebase adds: `nn.Conv` without bias, `nn.BatchNorm` over the batch, ReLU,
1x1 projection shortcuts where the shape changes (option B, in every net, so a CIFAR net pays more
for its shortcuts than the project's option A), global average pooling, a dense head; the step is
softmax cross-entropy, SGD with momentum 0.9 through optax, BN statistics updated, the state
donated, no weight decay and no metric but the loss. Timing the project's step beside this one in
the same process tells what the project's extras cost (`python -m resnet_jax.benchmark --step
default,minimal`); on a GPU it stands in for the flax example's step.

Only the architecture's shape comes from the project's spec (stage sizes, widths, strides, block
kind, stem), so both nets do the same convolutions apart from the shortcuts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax.data.finish import images_for_model
from resnet_jax.engine.steps import TrainState
from resnet_jax.models import ResNetSpec


class MinimalBlock(nn.Module):
    """Post-activation basic (3x3, 3x3) or bottleneck (1x1, 3x3, 1x1) unit, projection shortcut."""

    inner: int
    features: int
    strides: int
    bottleneck: bool
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x):
        s = (self.strides, self.strides)
        if self.bottleneck:
            y = nn.relu(self.norm()(self.conv(self.inner, (1, 1))(x)))
            y = nn.relu(self.norm()(self.conv(self.inner, (3, 3), s)(y)))
            y = self.norm()(self.conv(self.features, (1, 1))(y))
        else:
            y = nn.relu(self.norm()(self.conv(self.inner, (3, 3), s)(x)))
            y = self.norm()(self.conv(self.features, (3, 3))(y))
        if x.shape != y.shape:
            x = self.norm()(self.conv(self.features, (1, 1), s)(x))
        return nn.relu(x + y)


class MinimalResNet(nn.Module):
    """`[B, H, W, 3]` -> logits `[B, spec.num_classes]` float32; convs and BN in `dtype`."""

    spec: ResNetSpec
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = True):
        s = self.spec
        conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype
        )
        if s.stem == "cifar":
            x = nn.relu(norm()(conv(s.stem_width, (3, 3))(x)))
        else:  # the 7x7/2 conv + 3x3/2 max pool of ImageNet nets (a deep stem is timed as this)
            x = nn.relu(norm()(conv(s.stem_width, (7, 7), (2, 2), padding=((3, 3), (3, 3)))(x)))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (n, stride) in enumerate(zip(s.stage_sizes, s.strides, strict=True)):
            inner, features = s.unit_widths(i)
            for j in range(n):
                x = MinimalBlock(
                    inner, features, stride if j == 0 else 1, s.unit.weight_layers == 3, conv, norm
                )(x)
        x = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
        return nn.Dense(s.num_classes, dtype=jnp.float32)(x)


def minimal_train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: nn.Module,
    tx: Any,
    finish: Callable[[Mapping[str, jax.Array]], jax.Array] | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on {'image': [B, H, W, 3], 'label': int [B]}; metrics: the mean loss only.

    `finish` turns the batch into model inputs as in `steps.train_step`, so every step kind times
    the same input work."""
    images = images_for_model(batch, finish)

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, {"loss": loss}


def minimal_optimizer(learning_rate: float = 0.1) -> optax.GradientTransformation:
    """SGD with momentum 0.9, no weight decay."""
    return optax.sgd(learning_rate, momentum=0.9)
