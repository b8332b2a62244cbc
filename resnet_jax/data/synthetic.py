"""`synthetic`: random images and labels generated on the devices; no files, TensorFlow or host copy.

`--config.dataset=synthetic` trains any config end to end on a machine that has neither a prepared
dataset nor TensorFlow: a GPU box on which to time real training, or a check of the multi-host
plumbing. Unless the config sets `num_classes` / `image_size` it is shaped like the data the model
was made for: an ImageNet net gets 1000 classes, 224x224 images and epochs of 1,281,167 examples (so
an epoch-based schedule keeps ImageNet's length), a CIFAR net 10 classes, 32x32 images and epochs of
50,000, so a small config stays small.

A pool of `num_batches` global batches is generated once from `seed`: uint8 images uniform over
0-255 and uniform labels, in the input contract of the real paths (`finish`): training batches
carry ImageNet 'paper' augmentation's 'flip' and 'light' draws (all False and zero, so the
step runs the same finishing work without changing the images), and `FINISH` (ImageNet's mean
and std) turns them into model inputs inside the step. Each batch is born
sharded over the mesh like a real one, and every process materialises only its own shard. Step k
trains on batch k mod num_batches, so the order is a pure function of (seed, step) and a resumed run
continues exactly. Evaluation scores the same examples: random labels can only be memorised, so an
eval top-1 well above chance shows that training works, and it is not the accuracy of anything.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp

from resnet_jax.data import finish

NAME = "synthetic"  # --config.dataset=synthetic
FINISH = finish.IMAGENET


def make_batches(
    sharding: jax.sharding.Sharding,
    num_batches: int,
    batch_size: int,
    image_size: int,
    num_classes: int,
    *,
    seed: int | Sequence[int] = 0,
    with_mask: bool = False,
) -> list[dict[str, jax.Array]]:
    """`num_batches` global batches {'image' uint8 [B, S, S, 3], 'label' int32 [B], ...}; with a
    sequence of K seeds, each batch stacks the K runs' batches of those seeds on a leading axis.

    `sharding`: where each batch is born, the mesh's batch sharding (`parallel.batch_sharded`).

    Training batches add 'flip' bool [B] (False) and 'light' float32 [B, 3] (zero). `with_mask`
    makes evaluation batches instead, with 'mask' bool [B] (all True); the images and labels do
    not depend on it, so an eval pool holds exactly the training examples.
    """

    def make(key):
        out = []
        for i in range(num_batches):
            k_img, k_lbl = jax.random.split(jax.random.fold_in(key, i))
            batch = {
                "image": jax.random.bits(k_img, (batch_size, image_size, image_size, 3), jnp.uint8),
                "label": jax.random.randint(k_lbl, (batch_size,), 0, num_classes, jnp.int32),
            }
            if with_mask:
                batch["mask"] = jnp.ones((batch_size,), jnp.bool_)
            else:
                batch["flip"] = jnp.zeros((batch_size,), jnp.bool_)
                batch["light"] = jnp.zeros((batch_size, 3), jnp.float32)
            out.append(batch)
        return out

    if isinstance(seed, int):
        return jax.jit(make, out_shardings=sharding)(jax.random.key(seed))
    # vmap over the keys: run k's batches are those its single run makes from its seed.
    keys = jax.vmap(jax.random.key)(jnp.asarray(seed))
    return jax.jit(jax.vmap(make), out_shardings=sharding)(keys)


def train_batches(
    pool: Sequence[dict[str, jax.Array]], start_step: int = 0
) -> Iterator[dict[str, jax.Array]]:
    """Endless: the batch of step k is pool[k % len(pool)], from `start_step` on."""
    n = len(pool)
    return (pool[k % n] for k in itertools.count(start_step))
