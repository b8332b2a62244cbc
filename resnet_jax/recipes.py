"""The papers' training recipes as rules: the published hyper-parameters, and how they scale.

A recipe run at another batch size or length is derived here, by stated rules, and nowhere else:
configs/cifar10.py takes He2015's CIFAR recipe at its own batch and length (so it gives the paper's
numbers exactly), and the CPU-sized experiments take it at batch 32 and a few thousand steps.

The rules:
- learning rate (and warm-up rate): linear in the batch size from the paper's (Goyal et al. 2017),
  0.1 at 128 -> 0.025 at 32;
- the rate decays at the same fractions of the run (He2015: 32k and 48k of 64k = 1/2 and 3/4);
- weight decay, momentum and the decay factor unchanged;
- the deep nets' warm-up as the paper words it: the warm-up rate until the training error is below
  80%, then the full rate (no step count; `optim.error_gated_warmup`).
"""

from __future__ import annotations

import dataclasses

from resnet_jax.models import get_spec


@dataclasses.dataclass(frozen=True)
class PaperRecipe:
    """A published SGD recipe (batch, rates and steps as printed in the paper)."""

    source: str
    batch_size: int
    learning_rate: float
    num_steps: int
    decay_steps: tuple[int, ...]
    decay_factor: float
    weight_decay: float
    momentum: float
    warmup_learning_rate: float  # for nets of at least `warmup_min_depth` layers
    warmup_until_error: float
    warmup_min_depth: int


# He2015 Sec. 4.2: "weight decay of 0.0001 and momentum of 0.9 ... mini-batch size of 128 ...
# start with a learning rate of 0.1, divide it by 10 at 32k and 48k iterations, and terminate
# training at 64k iterations". For the 110-layer net: "0.01 to warm up the training until the
# training error is below 80% (about 400 iterations), and then go back to 0.1" (its 1202-layer net
# is trained the same way).
HE2015_CIFAR = PaperRecipe(
    source="He2015 Sec. 4.2",
    batch_size=128,
    learning_rate=0.1,
    num_steps=64_000,
    decay_steps=(32_000, 48_000),
    decay_factor=0.1,
    weight_decay=1e-4,
    momentum=0.9,
    warmup_learning_rate=0.01,
    warmup_until_error=0.8,
    warmup_min_depth=110,
)


def scaled(
    recipe: PaperRecipe,
    model: str,
    *,
    batch_size: int | None = None,
    num_steps: int | None = None,
    model_overrides: dict | None = None,
) -> dict:
    """Config keys of `recipe` for `model` at `batch_size` and `num_steps` (default: the paper's).

    The model's depth (its spec, with `model_overrides`) decides the warm-up, by the paper's rule.
    """
    batch_size = batch_size or recipe.batch_size
    num_steps = num_steps or recipe.num_steps
    ratio = batch_size / recipe.batch_size
    keys = {
        "batch_size": batch_size,
        "num_train_steps": num_steps,
        "optimizer": "sgd",
        "learning_rate": recipe.learning_rate * ratio,
        "lr_scaling": "none",  # scaled here, from the paper's batch (config's rule is from 256)
        "lr_schedule": "step",
        "lr_decay_steps": tuple(
            round(s * num_steps / recipe.num_steps) for s in recipe.decay_steps
        ),
        "lr_decay_factor": recipe.decay_factor,
        "weight_decay": recipe.weight_decay,
        "weight_decay_on": "all",  # Caffe's solver decays every parameter
        "momentum": recipe.momentum,
        "nesterov": False,
        "warmup": "linear",
        "warmup_steps": 0,  # no warm-up ...
        "warmup_learning_rate": 0.0,
    }
    spec = dataclasses.replace(get_spec(model), **(model_overrides or {}))
    if spec.depth >= recipe.warmup_min_depth:  # ... except the paper's deep nets'
        keys.update(
            warmup="until_error",
            warmup_learning_rate=recipe.warmup_learning_rate * ratio,
            warmup_until_error=recipe.warmup_until_error,
        )
    return keys
