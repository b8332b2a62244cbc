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

import glob
import hashlib
import json
import os
import re
from typing import NamedTuple

import numpy as np

from resnet_jax.data import datasets, folder, prepared, shapes
from resnet_jax.data import stats as stats_lib

FOLDER = prepared.FOLDER
_FORMAT = 1
_STATS_KEYS = ("mean_image", "channel_mean", "channel_std", "pixel_std", "count")


class ArraysError(datasets.DatasetNotPreparedError):
    """Prepared arrays that cannot be used and cannot be rebuilt here; the message says why.

    A kind of DatasetNotPreparedError: the run stops with the same exit code (no input)."""


class Split(NamedTuple):
    images: np.ndarray  # uint8 [N, 32, 32, 3]
    labels: np.ndarray  # int32 [N]


def check_family(name):
    """Raises ValueError unless `name` is a 32x32 dataset or a folder: what the device path holds
    (a folder is not scanned here: its arrays are read where the folder is not)."""
    if datasets.is_folder(name) or datasets.facts(name)["family"] == "cifar":
        return
    small = [d for d in datasets.DATASETS if datasets.facts(d)["family"] == "cifar"]
    raise ValueError(
        f"{name} cannot be held in device memory (it is not a 32x32 dataset); the device "
        f"input path takes {', '.join(small)} and folders, and {name} takes input_pipeline='host'"
    )


def path(name, data_dir, split, image_size=None):
    """Where the arrays of canonical split `split` ('train' / 'test') of `name` live.

    A folder's live in `prepared.folder_dir`: one prepared copy per folder and training size."""
    if datasets.is_folder(name):
        return os.path.join(prepared.folder_dir(name, data_dir, image_size), f"{split}.npz")
    return os.path.join(datasets.resolve_data_dir(data_dir), FOLDER, name, f"{split}.npz")


def _size(name, image_size):
    """The side the arrays of `name` hold: the config's for a folder (it has no native size)."""
    if datasets.is_folder(name):
        if not image_size:
            raise ValueError(f"{name}: the prepared arrays of a folder need an image_size")
        return int(image_size)
    return datasets.facts(name)["image_size"]


def _sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def source_fingerprint(name, data_dir, split, image_size=None):
    """What the arrays are built from, or None when that source is absent here.

    shapes10: its renderer (code, size, seed), always present. CIFAR: the digests of every prepared
    tfds version's dataset_info.json in data_dir; None when none is prepared (the arrays were
    carried to this machine alone, and nothing here can be newer than they are). A folder: its
    files' names, sizes and modification times (`folder.fingerprint`) and the size they are
    resized to; a folder that is gone raises `folder.FolderError`.
    """
    if datasets.is_folder(name):
        if not os.path.isdir(folder.root_of(name)):
            return None  # the arrays were carried here without their folder (predict, eval)
        layout = folder.layout_of(name)
        size = _size(name, image_size)
        return f"{folder.fingerprint(layout, split)} at {size}x{size}"
    if name == "shapes10":
        with open(shapes.__file__, "rb") as f:
            code = hashlib.sha256(f.read()).hexdigest()
        size, seed = {
            "train": (shapes.NUM_TRAIN, shapes.SEED),
            "test": (shapes.NUM_TEST, shapes.SEED + 1),
        }[split]
        return f"shapes.render({size}, {seed}) of shapes.py sha256 {code}"
    infos = sorted(
        glob.glob(os.path.join(datasets.resolve_data_dir(data_dir), name, "*", "dataset_info.json"))
    )
    if not infos:
        return None
    digests = []
    for info in infos:
        with open(info, "rb") as f:
            digests.append(
                f"{os.path.basename(os.path.dirname(info))}:{hashlib.sha256(f.read()).hexdigest()}"
            )
    return f"tfds {name} {split} " + " ".join(digests)


def _read_source(name, data_dir, split, image_size=None):
    """(images uint8 [N, S, S, 3], labels [N]) of a canonical split, from its source."""
    if datasets.is_folder(name):
        return folder.read_images(folder.layout_of(name), split, _size(name, image_size))
    if name == "shapes10":
        size, seed = {
            "train": (shapes.NUM_TRAIN, shapes.SEED),
            "test": (shapes.NUM_TEST, shapes.SEED + 1),
        }[split]
        return shapes.render(size, seed)
    builder = datasets.get_builder(name, data_dir)  # TensorFlow: only here, once per split
    images, labels = [], []
    for batch in builder.as_dataset(
        split=split, shuffle_files=False, batch_size=1000
    ).as_numpy_iterator():
        images.append(batch["image"])
        labels.append(batch["label"])
    return np.concatenate(images), np.concatenate(labels)


def build(name, data_dir, split, image_size=None):
    """Writes the arrays of canonical split `split` (atomically); returns what it wrote as a dict."""
    images, labels = _read_source(name, data_dir, split, image_size)
    arrays = {"images": np.ascontiguousarray(images, np.uint8), "labels": labels.astype(np.int32)}
    if split == datasets.facts(name)["train_split"]:
        arrays.update(
            stats_lib.from_batches(images[i : i + 5000] for i in range(0, len(images), 5000))
        )
    meta = {
        "format": _FORMAT,
        "source": source_fingerprint(name, data_dir, split, image_size),
        "digests": {k: _sha256(v) for k, v in arrays.items()},
    }
    target = path(name, data_dir, split, image_size)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
    os.replace(tmp, target)  # readers see the old file or the new one, never half of one
    return arrays


def _problem(name, data_dir, split, keys, image_size=None):
    """(arrays, None) when the file is sound and current, else (None, what is wrong with it)."""
    target = path(name, data_dir, split, image_size)
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
    current = source_fingerprint(name, data_dir, split, image_size)
    if current is not None and current != meta["source"]:
        return None, f"stale: built from {meta['source']!r}, the source is now {current!r}"
    return arrays, None


def _load(name, data_dir, split, keys, image_size=None):
    target = path(name, data_dir, split, image_size)

    def cannot_build(problem):
        if name == "shapes10" or source_fingerprint(name, data_dir, split, image_size) is not None:
            return
        if datasets.is_folder(name):
            raise folder.FolderError(
                f"{target} is {problem}, and the folder {folder.root_of(name)} it is built from "
                "is not here (or is not a directory)"
            )
        raise ArraysError(
            f"{target} is {problem} and {name} is not prepared in "
            f"{datasets.resolve_data_dir(data_dir)} to rebuild it from. Prepare it with\n  "
            f"{datasets.prepare_command(name, data_dir)}\n(on a machine without TensorFlow, copy "
            f"DATA_DIR/{FOLDER}/{name}/ from one where it is prepared)"
        )

    def build_arrays():
        if datasets.is_folder(name):  # the one slow step of a folder's first run
            print(f"decoding {name} {split}/ once into {target}", flush=True)
        built = build(name, data_dir, split, image_size)
        return {k: built[k] for k in keys}

    return prepared.once(
        target,
        lambda: _problem(name, data_dir, split, keys, image_size),
        build_arrays,
        cannot_build=cannot_build,
    )


_SLICE = re.compile(r"(?P<split>[a-z]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


def _bound(text, n):
    """A tfds slice bound ('45000', '90%', '-10%') as an index into n examples (tfds rounding)."""
    if text.endswith("%"):
        return int(round(int(text[:-1]) * n / 100.0))
    return int(text)


def resolve(name, split):
    """(canonical split, slice) that a split string ('test', 'train[:90%]', 'train45k') names."""
    resolved = datasets.resolve_split(name, split or datasets.facts(name)["train_split"])
    m = _SLICE.fullmatch(str(resolved))
    canonical = {datasets.facts(name)["train_split"], datasets.facts(name)["eval_split"]}
    if m is None or m["split"] not in canonical:
        raise ValueError(
            f"{name} has no split {split!r} on the device input path; use one of "
            f"{', '.join(sorted(canonical))}, a slice of one such as 'train[:90%]' or "
            f"'train[1000:]', or train45k / val5k for CIFAR"
        )
    return m["split"], (m["start"], m["stop"])


def _window(name, split, data_dir, keys, image_size=None):
    """The arrays `keys` of `split`, sliced as the split string asks."""
    check_family(name)
    canonical, (start, stop) = resolve(name, split)
    arrays = _load(name, data_dir, canonical, keys, image_size)
    n = len(arrays[keys[0]])
    window = slice(
        None if start is None else _bound(start, n), None if stop is None else _bound(stop, n)
    )
    return [arrays[k][window] for k in keys]


def load(name, split=None, data_dir=None, image_size=None):
    """`Split` (images uint8 [N, S, S, 3], labels int32 [N]) of `split` (default: train).

    Builds the arrays on first use: shapes10 by rendering (no TensorFlow), CIFAR from its prepared
    tfds data (raises `datasets.DatasetNotPreparedError` naming the command when it is not there),
    a folder by decoding each file once at `image_size` (which only a folder needs).
    """
    return Split(*_window(name, split, data_dir, ("images", "labels"), image_size))


def load_stats(name, data_dir=None, image_size=None):
    """Normalisation statistics of the full train split (see `stats.from_batches`), 0-255 scale."""
    check_family(name)
    train = folder.TRAIN_SPLIT if datasets.is_folder(name) else datasets.facts(name)["train_split"]
    return _load(name, data_dir, train, _STATS_KEYS, image_size)


def num_examples(name, split=None, data_dir=None, image_size=None):
    """Examples in `split`, building the arrays when needed (reads only the labels)."""
    return len(_window(name, split, data_dir, ("labels",), image_size)[0])


def get_info(name, data_dir=None, image_size=None):
    """`datasets.DatasetInfo` read from the arrays (no TensorFlow when they are there)."""
    facts = datasets.facts(name)
    count = lambda split: num_examples(name, split, data_dir, image_size)
    return datasets.DatasetInfo(
        name=name,
        num_classes=facts["num_classes"],
        image_size=_size(name, image_size),
        train_split=facts["train_split"],
        eval_split=facts["eval_split"],
        num_train=count(facts["train_split"]),
        num_eval=count(facts["eval_split"]),
        family=facts["family"],
    )
