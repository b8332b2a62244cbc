"""The device input path: a whole 32x32 split in accelerator memory, shuffled and augmented there.

The split's uint8 images and int32 labels (`arrays`) are copied once to every device of the mesh
(CIFAR-10 is 150 MB); each process places them on its own devices. A batch is then one small
jitted gather per step, beside the train step, and is born sharded over the mesh's data axis like
every other batch, so the host does no per-example work and training runs at the step's speed.

Order. Epoch e is the permutation `jax.random.permutation(key(seed, e), N)`; step k takes the
examples at positions [j*B, (j+1)*B) of epoch k // (N // B), j = k % (N // B) (the N mod B examples
at the end of each permutation wait for another epoch). The augmentation of step k is drawn from
key(seed, k). Everything is a pure function of (seed, step) and of the global batch, not of the
number of processes or devices, so a resumed run sees exactly the batches of an uninterrupted one
and re-reads nothing.

Batches are the input contract of every path (`resnet_jax.data.finish`): uint8 images gathered
from the split, plus the augmentation draws, which `finish.Finish` applies inside the jitted step.
Augmentation ('cifar', He2015 Sec. 4.2, as the host path's `augment.cifar_draws`): the normalised
image padded by 4 zero pixels per side, a 32x32 crop at an offset drawn uniformly from {0, ..., 8}
in each axis, and a horizontal flip with probability 1/2 ('crop' and 'flip'). 'none' takes the
images as they are.

Evaluation visits every example of the split once, in order, in batches padded at the end with
rows marked mask=False.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.data import arrays, catalog
from resnet_jax.data import finish as finish_lib
from resnet_jax.data import stats as stats_lib

AUGMENTS = ("cifar", "none")
_ORDER, _AUGMENT = 0, 1  # key streams: the epoch permutations and the augmentation draws


class DeviceSplit(NamedTuple):
    """A split held whole on every device of a mesh (replicated)."""

    images: jax.Array  # uint8 [N, 32, 32, 3]
    labels: jax.Array  # int32 [N]


def put(split: arrays.Split, mesh: jax.sharding.Mesh) -> DeviceSplit:
    """Copies a host split to every device of `mesh`; each process fills only its own devices."""
    replicated = NamedSharding(mesh, P())
    return DeviceSplit(
        *(
            jax.make_array_from_callback(a.shape, replicated, lambda index, a=a: a[index])
            for a in (split.images, split.labels)
        )
    )


def _key(seed, stream, index):
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), index)


def epoch_order(seed, epoch, n: int) -> jax.Array:
    """int32 [n]: the order of epoch `epoch`, a permutation that depends on (seed, epoch) alone."""
    return jax.random.permutation(_key(seed, _ORDER, epoch), n).astype(jnp.int32)


def augment_draws(
    seed, step, batch_size: int, pad: int = finish_lib.PAD
) -> tuple[jax.Array, jax.Array]:
    """(offsets int32 [B, 2] (dy, dx) in [0, 2 * pad], flips bool [B]) of step `step`."""
    k_offset, k_flip = jax.random.split(_key(seed, _AUGMENT, step))
    offsets = jax.random.randint(k_offset, (batch_size, 2), 0, 2 * pad + 1, jnp.int32)
    return offsets, jax.random.bernoulli(k_flip, 0.5, (batch_size,))


@functools.cache
def _jit_cached(fn, out_sharding, static):
    return jax.jit(functools.partial(fn, **dict(static)), out_shardings=out_sharding)


def _jit(fn, out_sharding, **static):
    """`fn` with the `static` keywords bound, jitted once per (fn, sharding, static) in a process:
    a resumed or second iterator reuses the compiled function."""
    return _jit_cached(fn, out_sharding, tuple(sorted(static.items())))


def _check_batch(batch_size, mesh):
    if batch_size < 1 or batch_size % mesh.devices.size:
        raise ValueError(
            f"global batch size {batch_size} must be a positive multiple of the "
            f"{mesh.devices.size} devices of the mesh"
        )


class TrainBatches:
    """Endless iterator of global batches {'image' uint8 [B, S, S, 3], 'label' int32 [B]}, with
    'crop' int32 [B, 2] and 'flip' bool [B] under augment 'cifar' (see `finish`).

    `seed` may also be a sequence of K seeds: each batch then stacks K runs' batches on a leading
    axis ([K, B, ...]), the k-th equal to the batch of `seed[k]` alone, all gathered from the one
    copy of the split in one program.

    `step` is the index of the next batch. See the module docstring for the order.
    """

    def __init__(
        self,
        split: DeviceSplit,
        *,
        batch_sharding: NamedSharding,
        batch_size: int,
        seed: int | Sequence[int],
        start_step: int = 0,
        augment: str = "cifar",
    ):
        n = split.labels.shape[0]
        _check_batch(batch_size, batch_sharding.mesh)
        if augment not in AUGMENTS:
            raise ValueError(f"augment={augment!r} is not one of {', '.join(AUGMENTS)}")
        if n < batch_size or start_step < 0:
            raise ValueError(
                f"need a split of at least one batch ({batch_size}) and start_step >= 0; got "
                f"{n} examples and start_step {start_step}"
            )
        self.split, self.step, self.steps_per_epoch = split, int(start_step), n // batch_size
        self._seed = np.asarray(seed, np.int32)
        stacked = self._seed.ndim == 1
        replicated = NamedSharding(batch_sharding.mesh, P())
        self._order_fn = _jit(_run_orders if stacked else epoch_order, replicated, n=n)
        self._fetch = _jit(
            _run_batches if stacked else _train_batch,
            batch_sharding,
            batch_size=batch_size,
            augment=augment,
        )
        self._epoch, self._order = None, None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        epoch, j = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:  # one permutation per epoch, kept on the devices
            self._epoch, self._order = epoch, self._order_fn(self._seed, np.int32(epoch))
        batch = self._fetch(self.split, self._order, self._seed, np.int32(j), np.int32(self.step))
        self.step += 1
        return batch


def _train_batch(split, order, seed, j, step, *, batch_size, augment):
    index = jax.lax.dynamic_slice_in_dim(order, j * batch_size, batch_size)
    batch = {"image": split.images[index], "label": split.labels[index]}
    if augment == "cifar":
        pad = finish_lib.pad_for(split.images.shape[1])
        batch["crop"], batch["flip"] = augment_draws(seed, step, batch_size, pad)
    return batch


def _run_orders(seeds, epoch, *, n):
    return jax.vmap(lambda seed: epoch_order(seed, epoch, n))(seeds)


def _run_batches(split, orders, seeds, j, step, **static):
    return jax.vmap(lambda order, seed: _train_batch(split, order, seed, j, step, **static))(
        orders, seeds
    )


class EvalBatches:
    """Re-iterable: every example of the split once, in order, in global batches
    {'image' uint8 [B, S, S, 3] (or [B, V, ., ., 3], see `views`), 'label' int32 [B], 'mask' bool
    [B]}; the last batch is padded with rows of mask=False. `len()` is the number of batches."""

    def __init__(
        self,
        split: DeviceSplit,
        *,
        batch_sharding: NamedSharding,
        batch_size: int,
        views: str = "center",
        scale: int | None = None,
    ):
        _check_batch(batch_size, batch_sharding.mesh)
        if views not in catalog.EVAL_VIEWS or (views == "multiscale") != (scale is not None):
            raise ValueError(
                f"views={views!r} (one of {catalog.EVAL_VIEWS}) takes a scale only for multiscale"
            )
        self.split, self.batch_size, self._sharding = split, batch_size, batch_sharding
        self._fetch = _jit(
            _eval_batch, batch_sharding, batch_size=batch_size, views=views, scale=scale
        )

    def with_scale(self, side: int) -> EvalBatches:
        """The same held split in views 'multiscale' at shorter side `side` (pixels; a record's
        `test_scale` of He2015's)."""
        return EvalBatches(
            self.split,
            batch_sharding=self._sharding,
            batch_size=self.batch_size,
            views="multiscale",
            scale=side,
        )

    def __len__(self) -> int:
        return math.ceil(self.split.labels.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self._fetch(self.split, np.int32(i * self.batch_size))


def _eval_batch(split, start, *, batch_size, views="center", scale=None):
    n = split.labels.shape[0]
    position = start + jnp.arange(batch_size)
    index = jnp.minimum(position, n - 1)
    images = split.images[index]
    if views != "center":
        images = _views(images, views, scale)
    return {"image": images, "label": split.labels[index], "mask": position < n}


def _resized_uint8(images, size):
    shape = images.shape[:-3] + (size, size, 3)
    out = jax.image.resize(images.astype(jnp.float32), shape, "bilinear", antialias=False)
    return jnp.clip(jnp.round(out), 0, 255).astype(jnp.uint8)


def _views(images, views, scale):
    """uint8 [B, V, ., ., 3]: He2015's test views of held square images [B, S, S, 3].

    10crop: the image enlarged by 256/224 (He2015's shorter side 256 for 224 crops), its four
    corner and its centre S x S crops, then their mirrors. multiscale: the whole image at
    `scale` x `scale` and its mirror.
    """
    if views == "multiscale":
        big = _resized_uint8(images, scale)
        return jnp.stack([big, big[:, :, ::-1]], axis=1)
    size = images.shape[1]
    big = _resized_uint8(images, int(round(size * 256 / 224)))
    m = big.shape[1] - size
    corners = [(0, 0), (0, m), (m, 0), (m, m), (m // 2, m // 2)]
    crops = jnp.stack([big[:, y : y + size, x : x + size] for y, x in corners], axis=1)
    return jnp.concatenate([crops, crops[:, :, :, ::-1]], axis=1)


def finish_for(d: catalog.Dataset, *, normalization: str | None = None):
    """The `finish.Finish` of this path's batches of the record `d`:
    `normalization` (None: the record's default) with the statistics stored beside the arrays
    (`arrays.load_stats`), or 'mean_std', ImageNet's channel statistics (what pretrained weights
    expect). A training size other than the arrays' own makes the finish upsample its batches."""
    normalization = normalization or d.normalizations[0]
    size = None if d.image_size == d.array_size else d.image_size  # upsampled in the step
    if normalization == "mean_std":
        return finish_lib.Finish(finish_lib.IMAGENET.mean, finish_lib.IMAGENET.std, size)
    mean, std = stats_lib.mean_and_std(arrays.load_stats(d), normalization)
    return finish_lib.Finish(mean, std, size)


def train_batches(
    d: catalog.Dataset,
    *,
    batch_sharding: NamedSharding,
    global_batch_size: int,
    seed: int | Sequence[int],
    start_step: int = 0,
    split: str | None = None,
    augment: str | None = None,
) -> TrainBatches:
    """The training batches of the record `d` from `start_step` on (defaults: train split, the
    record's default augmentation), held on `batch_sharding`'s mesh."""
    return TrainBatches(
        put(arrays.load(d, split), batch_sharding.mesh),
        batch_sharding=batch_sharding,
        batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        augment=augment or d.augments[0],
    )


def eval_batches(
    d: catalog.Dataset,
    *,
    batch_sharding: NamedSharding,
    global_batch_size: int,
    split: str | None = None,
    views: str = "center",
) -> EvalBatches:
    """The evaluation batches of the record `d` (default: its eval split), held on the mesh, in
    `views` 'center' or '10crop' (`with_scale` gives the multiscale ones of the same split)."""
    held = put(arrays.load(d, split or d.eval_split), batch_sharding.mesh)
    return EvalBatches(
        held, batch_sharding=batch_sharding, batch_size=global_batch_size, views=views
    )
