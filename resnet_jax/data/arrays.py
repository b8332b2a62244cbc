"""Prepared arrays of the 32x32 datasets: one .npz per split, read with numpy alone (no TensorFlow).

The device input path (`device_input`) holds a whole split in accelerator memory, so what it needs
from disk is two arrays: uint8 images [N, 32, 32, 3] and int32 labels [N]. They are written once,
next to the tfds data, to DATA_DIR/resnet_jax_arrays/NAME/SPLIT.npz (uncompressed: a 150 MB CIFAR
train split loads in well under a second), so a training process never imports TensorFlow and a
machine without it (the GPU machines) only needs this folder copied over.

Where they come from. shapes10 is rendered by its numpy generator (`shapes.render`), so it needs no
TensorFlow at all, ever. cifar10 / cifar100 are read once from their prepared tfds data, in tfds's
file order, so a slice such as `train[:90%]` (the 45k/5k protocol) holds the same examples as on
the host path. The train split's file also holds its normalisation statistics (`stats`).

Damage and staleness are never used silently. Each file records a sha256 digest of every array and
a fingerprint of its source (the renderer's code and sizes for shapes10; the tfds `dataset_info.json`
of every prepared version for CIFAR, which tfds rewrites whenever it prepares the data again). A
file whose digest or fingerprint does not match is reported on stderr and rebuilt from the source;
when the source is not there, `ArraysError` says what to do.
"""

import hashlib
import json
import os
from typing import NamedTuple

import numpy as np

from resnet_jax.data import prepared
from resnet_jax.data import stats as stats_lib
from resnet_jax.data.errors import DatasetNotPreparedError

FOLDER = prepared.FOLDER
_FORMAT = 1
_STATS_KEYS = ("mean_image", "channel_mean", "channel_std", "pixel_std", "count")


class ArraysError(DatasetNotPreparedError):
    """Prepared arrays that cannot be used and cannot be rebuilt here; the message says why.

    A kind of DatasetNotPreparedError: the run stops with the same exit code (no input)."""


class Split(NamedTuple):
    images: np.ndarray  # uint8 [N, S, S, 3]
    labels: np.ndarray  # int32 [N]


def check_held(d):
    """Raises ValueError unless the record `d` can be held in device memory."""
    if "device" not in d.input_pipelines:
        raise ValueError(
            f"{d.name} cannot be held in device memory (it is not a 32x32 dataset); the device "
            f"input path takes the 32x32 sets and folders, and {d.name} takes "
            "input_pipeline='host'"
        )


def path(d, split):
    """Where the arrays of canonical split `split` ('train' / 'test') of the record `d` live."""
    return os.path.join(d.prepared, f"{split}.npz")


def _sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def build(d, split):
    """Writes the arrays of canonical split `split` (atomically); returns what it wrote as a dict."""
    images, labels = d.source.read(split, d.array_size)
    arrays = {"images": np.ascontiguousarray(images, np.uint8), "labels": labels.astype(np.int32)}
    if split == d.train_split:
        arrays.update(
            stats_lib.from_batches(images[i : i + 5000] for i in range(0, len(images), 5000))
        )
    meta = {
        "format": _FORMAT,
        "source": d.source.fingerprint(split, d.array_size),
        "digests": {k: _sha256(v) for k, v in arrays.items()},
    }
    target = path(d, split)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, target)  # readers see the old file or the new one, never half of one
    return arrays


def _problem(d, split, keys):
    """(arrays, None) when the file is sound and current, else (None, what is wrong with it)."""
    target = path(d, split)
    if not os.path.exists(target):
        return None, "missing"
    try:
        with np.load(target) as f:
            meta = json.loads(str(f["meta"]))
            arrays = {k: f[k] for k in keys}
    except Exception as e:  # a truncated or overwritten file fails in zipfile, numpy or json
        return None, f"unreadable ({type(e).__name__}: {e})"
    if meta.get("format") != _FORMAT:
        return None, f"written in format {meta.get('format')}, this code reads format {_FORMAT}"
    bad = [k for k, v in arrays.items() if meta["digests"].get(k) != _sha256(v)]
    if bad:
        return None, f"damaged: the sha256 of {', '.join(bad)} does not match the one recorded"
    current = d.source.fingerprint(split, d.array_size)
    if current is not None and current != meta["source"]:
        return None, f"stale: built from {meta['source']!r}, the source is now {current!r}"
    return arrays, None


def _load(d, split, keys):
    target = path(d, split)

    def cannot_build(problem):
        if d.source.fingerprint(split, d.array_size) is None:  # not here: the arrays carried alone
            d.source.missing(f"{target} is {problem}", ArraysError)

    return prepared.once(
        target,
        lambda: _problem(d, split, keys),
        lambda: {k: v for k, v in build(d, split).items() if k in keys},
        cannot_build=cannot_build,
    )


def _window(d, split, keys):
    """The arrays `keys` of `split`, sliced as the split string asks."""
    check_held(d)
    canonical, bounds = d.window(split)
    arrays = _load(d, canonical, keys)
    window = d.bounded(bounds, len(arrays[keys[0]]))
    return [arrays[k][window] for k in keys]


def load(d, split=None):
    """`Split` (images uint8 [N, S, S, 3], labels int32 [N]) of `split` (default: train) of the
    record `d`.

    Builds the arrays on first use: shapes10 by rendering (no TensorFlow), CIFAR from its prepared
    tfds data (raises `DatasetNotPreparedError` naming the command when it is not there), a folder
    by decoding each file once at its training size.
    """
    return Split(*_window(d, split, ("images", "labels")))


def load_stats(d):
    """Normalisation statistics of the full train split (see `stats.from_batches`), 0-255 scale."""
    check_held(d)
    return _load(d, d.train_split, _STATS_KEYS)


def count(d, split=None):
    """Examples in `split`, building the arrays when needed (reads only the labels)."""
    return len(_window(d, split, ("labels",))[0])
