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

Augmentation ('cifar', He2015 Sec. 4.2, the host path's `augment.cifar_train`): the normalised image
padded by 4 zero pixels per side, a 32x32 crop at an offset drawn uniformly from {0, ..., 8} in each
axis, and a horizontal flip with probability 1/2. Padding, crop and flip are one gather with a
mask, so no padded copy is ever made. 'none' takes the images as they are.

Evaluation visits every example of the split once, in order, in batches padded at the end with
rows marked mask=False.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.data import arrays, datasets
from resnet_jax.data import stats as stats_lib
from resnet_jax.data.normalize import normalize

AUGMENTS = ("cifar", "none")
PAD = 4  # pixels of zero padding per side before the random crop
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


def augment_draws(seed, step, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """(offsets int32 [B, 2] (dy, dx) in [0, 2 * PAD], flips bool [B]) of step `step`."""
    k_offset, k_flip = jax.random.split(_key(seed, _AUGMENT, step))
    offsets = jax.random.randint(k_offset, (batch_size, 2), 0, 2 * PAD + 1, jnp.int32)
    return offsets, jax.random.bernoulli(k_flip, 0.5, (batch_size,))


def pad_crop_flip(images, index, offsets, flips, mean, std) -> jax.Array:
    """float32 [B, S, S, 3]: images[index] normalised, padded by PAD zeros, cropped, mirrored.

    images: uint8 [N, S, S, 3]; index: int [B]; offsets: int [B, 2], the crop's top-left corner in
    the padded image; flips: bool [B]; mean / std: see `normalize.normalize`. Output pixel (y, x)
    is source pixel (y + dy - PAD, x' + dx - PAD) with x' = S - 1 - x when flipped, or 0 (the
    mean, after normalisation) when that lies outside the image.
    """
    size = images.shape[1]
    r = jnp.arange(size)
    ys = r[None, :] + offsets[:, :1] - PAD  # [B, S] source rows
    xs = jnp.where(flips[:, None], size - 1 - r, r) + offsets[:, 1:] - PAD  # [B, S] source columns
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
    ys, xs = jnp.clip(ys, 0, size - 1)[:, :, None], jnp.clip(xs, 0, size - 1)[:, None, :]
    mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), images.shape[1:])[
        ys, xs
    ]  # per source pixel
    pixels = normalize(images[index[:, None, None], ys, xs], mean, std)
    return jnp.where(inside[..., None], pixels, 0.0)


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
    """Endless iterator of global batches {'image' float32 [B, S, S, 3], 'label' int32 [B]}.

    `step` is the index of the next batch. See the module docstring for the order.
    """

    def __init__(
        self,
        split: DeviceSplit,
        mean,
        std,
        *,
        batch_sharding: NamedSharding,
        batch_size: int,
        seed: int,
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
        self._seed = np.int32(seed)
        replicated = NamedSharding(batch_sharding.mesh, P())
        self._mean, self._std = (jax.device_put(np.asarray(v), replicated) for v in (mean, std))
        self._order_fn = _jit(epoch_order, replicated, n=n)
        self._fetch = _jit(_train_batch, batch_sharding, batch_size=batch_size, augment=augment)
        self._epoch, self._order = None, None

    def __iter__(self) -> Iterator[dict]:
        return self

    def __next__(self) -> dict:
        epoch, j = divmod(self.step, self.steps_per_epoch)
        if epoch != self._epoch:  # one permutation per epoch, kept on the devices
            self._epoch, self._order = epoch, self._order_fn(self._seed, np.int32(epoch))
        batch = self._fetch(
            self.split,
            self._order,
            self._mean,
            self._std,
            self._seed,
            np.int32(j),
            np.int32(self.step),
        )
        self.step += 1
        return batch


def _train_batch(split, order, mean, std, seed, j, step, *, batch_size, augment):
    index = jax.lax.dynamic_slice_in_dim(order, j * batch_size, batch_size)
    if augment == "cifar":
        offsets, flips = augment_draws(seed, step, batch_size)
        image = pad_crop_flip(split.images, index, offsets, flips, mean, std)
    else:
        image = normalize(split.images[index], mean, std)
    return {"image": image, "label": split.labels[index]}


class EvalBatches:
    """Re-iterable: every example of the split once, in order, in global batches
    {'image' float32 [B, S, S, 3], 'label' int32 [B], 'mask' bool [B]}; the last batch is padded
    with rows of mask=False. `len()` is the number of batches."""

    def __init__(
        self, split: DeviceSplit, mean, std, *, batch_sharding: NamedSharding, batch_size: int
    ):
        _check_batch(batch_size, batch_sharding.mesh)
        self.split, self.batch_size = split, batch_size
        replicated = NamedSharding(batch_sharding.mesh, P())
        self._mean, self._std = (jax.device_put(np.asarray(v), replicated) for v in (mean, std))
        self._fetch = _jit(_eval_batch, batch_sharding, batch_size=batch_size)

    def __len__(self) -> int:
        return math.ceil(self.split.labels.shape[0] / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self._fetch(self.split, self._mean, self._std, np.int32(i * self.batch_size))


def _eval_batch(split, mean, std, start, *, batch_size):
    n = split.labels.shape[0]
    position = start + jnp.arange(batch_size)
    index = jnp.minimum(position, n - 1)
    return {
        "image": normalize(split.images[index], mean, std),
        "label": split.labels[index],
        "mask": position < n,
    }


def _held(dataset, data_dir, split, normalization, batch_sharding):
    """(DeviceSplit on the sharding's mesh, mean, std) of a split and the chosen normalisation
    (None: the dataset's default)."""
    held = put(arrays.load(dataset, split, data_dir), batch_sharding.mesh)
    normalization = datasets.normalization_of(dataset, normalization)
    mean, std = stats_lib.mean_and_std(arrays.load_stats(dataset, data_dir), normalization)
    return held, mean, std


def train_batches(
    dataset: str,
    *,
    data_dir: str | None,
    batch_sharding: NamedSharding,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    split: str | None = None,
    augment: str | None = None,
    normalization: str | None = None,
) -> TrainBatches:
    """The training batches of `dataset` from `start_step` on (defaults: train split, 'cifar'
    augmentation, 'per_pixel_mean' normalisation), held on `batch_sharding`'s mesh."""
    held, mean, std = _held(dataset, data_dir, split, normalization, batch_sharding)
    return TrainBatches(
        held,
        mean,
        std,
        batch_sharding=batch_sharding,
        batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        augment=augment or "cifar",
    )


def eval_batches(
    dataset: str,
    *,
    data_dir: str | None,
    batch_sharding: NamedSharding,
    global_batch_size: int,
    split: str | None = None,
    normalization: str | None = None,
) -> EvalBatches:
    """The evaluation batches of `dataset` (default: its test split), held on the mesh."""
    held, mean, std = _held(
        dataset,
        data_dir,
        split or datasets.facts(dataset)["eval_split"],
        normalization,
        batch_sharding,
    )
    return EvalBatches(held, mean, std, batch_sharding=batch_sharding, batch_size=global_batch_size)
