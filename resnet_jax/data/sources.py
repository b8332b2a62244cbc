"""Where a dataset's examples come from: one small protocol, three kinds of source.

A source answers five questions, and the input paths ask them through the `catalog.Dataset`
record that holds it, never by the dataset's kind: how many examples a split has (`count`), the
uint8 arrays of a canonical split (`read`, which the device path's prepared copy is built from)
and what they are built from (`fingerprint`, to notice a copy gone stale), and the prepared tfds
data the host path reads (`builder`, with its normalisation statistics, `host_stats`), and how
one image file starts on its way to the run's test input (`test_image`, for predict and export).

`Tfds` reads a prepared tfds dataset (imagenet2012, cifar10, cifar100), `Shapes` renders shapes10
with numpy (its tfds copy is built on first use), `Folder` reads a folder of images, scanned once
and fingerprinted once per split. No TensorFlow is imported until a builder is asked for.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os

import numpy as np

from resnet_jax.data import datasets, folder, shapes


class Tfds:
    """A prepared tfds dataset in `data_dir`."""

    def __init__(self, name: str, data_dir: str | None):
        self.name, self.data_dir = name, data_dir
        self.key = datasets.FACTS[name]["key"]

    @functools.cached_property
    def _builder(self):
        return datasets.get_builder(self.name, self.data_dir)

    def builder(self, d=None):
        """The prepared tfds builder (shapes10 is built here on first use)."""
        return self._builder

    def count(self, split: str) -> int:
        """Examples of a tfds split string (a slice or an alias too) in the prepared data."""
        from resnet_jax.data._tf import split_size

        return split_size(self._builder, self.name, datasets.resolve_split(self.name, split))

    def class_names(self, read: bool = False) -> tuple[str, ...] | None:
        """The label names, from the builder when it is open (or `read` asks for it); None
        where the dataset is not prepared here."""
        if not (read or "_builder" in self.__dict__):
            return None
        try:
            return tuple(self._builder.info.features["label"].names)
        except datasets.DatasetNotPreparedError:
            return None

    def read(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [N, S, S, 3], labels [N]) of a canonical split, in tfds's file order."""
        images, labels = [], []
        for batch in self._builder.as_dataset(
            split=split, shuffle_files=False, batch_size=1000
        ).as_numpy_iterator():
            images.append(batch["image"])
            labels.append(batch["label"])
        return np.concatenate(images), np.concatenate(labels)

    def fingerprint(self, split: str, size: int | None = None) -> str | None:
        """The digests of every prepared version's dataset_info.json (tfds rewrites it whenever it
        prepares the data again); None when none is prepared here (arrays carried alone)."""
        root = datasets.resolve_data_dir(self.data_dir)
        infos = sorted(glob.glob(os.path.join(root, self.name, "*", "dataset_info.json")))
        if not infos:
            return None
        digests = []
        for info in infos:
            with open(info, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            digests.append(f"{os.path.basename(os.path.dirname(info))}:{digest}")
        return f"tfds {self.name} {split} " + " ".join(digests)

    def missing(self, what: str, error: type[Exception]):
        """Raises `error`: `what` needs this source, which is not prepared here."""
        root = datasets.resolve_data_dir(self.data_dir)
        raise error(
            f"{what} and {self.name} is not prepared in {root} to rebuild it from. Prepare it "
            f"with\n  {datasets.prepare_command(self.name, self.data_dir)}\n(on a machine without "
            f"TensorFlow, copy DATA_DIR/resnet_jax_arrays/{self.name}/ from one where it is "
            "prepared)"
        )

    @staticmethod
    def test_image(path: str, size: int, side: int | None) -> bytes:
        """One image file as the run's test input starts: its bytes, decoded and centre-cropped
        by `augment.center_eval` as the evaluation pipeline does."""
        with open(path, "rb") as f:
            return f.read()

    def host_stats(self, d) -> dict:
        """Normalisation statistics of the full training split (`stats`), 0-255 scale."""
        from resnet_jax.data import stats

        return stats.normalization_stats(self._builder, d.train_split)


class Shapes(Tfds):
    """shapes10: rendered by numpy for the device path (no TensorFlow), a tfds copy for the host.

    Each split is `shapes.render(examples, seed)`, as its tfds builder draws it (read at call
    time, so a test may shrink NUM_TRAIN / NUM_TEST)."""

    @staticmethod
    def _render_args(split: str) -> tuple[int, int]:
        return {
            "train": (shapes.NUM_TRAIN, shapes.SEED),
            "test": (shapes.NUM_TEST, shapes.SEED + 1),
        }[split]

    def class_names(self, read: bool = False) -> tuple[str, ...]:
        return shapes.CLASS_NAMES

    def read(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        return shapes.render(*self._render_args(split))

    def fingerprint(self, split: str, size: int | None = None) -> str:
        with open(shapes.__file__, "rb") as f:
            code = hashlib.sha256(f.read()).hexdigest()
        count, seed = self._render_args(split)
        return f"shapes.render({count}, {seed}) of shapes.py sha256 {code}"


class Folder:
    """A folder of images (`folder`), scanned once; each split's files fingerprinted once."""

    key = "file"

    def __init__(self, root: str, holdout: float, data_dir: str | None, fingerprints=None):
        self.root, self.holdout, self.data_dir = root, holdout, data_dir
        self._fingerprints = dict(fingerprints or {})

    @functools.cached_property
    def layout(self) -> folder.Layout:
        return folder.layout_of(self.root, self.holdout)

    def files_fingerprint(self, split: str) -> str:
        """`folder.fingerprint` of a split: one `stat` per file, once per process."""
        if split not in self._fingerprints:
            self._fingerprints[split] = folder.fingerprint(self.layout, split)
        return self._fingerprints[split]

    def fingerprint(self, split: str, size: int | None = None) -> str | None:
        """The split's files at the size they are resized to; None when the folder is not here
        (its prepared copy was carried without it: predict, eval)."""
        if not os.path.isdir(self.root):
            return None
        return f"{self.files_fingerprint(split)} at {size}x{size}"

    def count(self, split: str) -> int:
        return self.layout.count(split)

    def missing(self, what: str, error: type[Exception]):
        raise folder.FolderError(
            f"{what}, and the folder {self.root} it is built from is not here (or is not a "
            "directory)"
        )

    def class_names(self, read: bool = False) -> tuple[str, ...]:
        return self.layout.class_names

    def read(self, split: str, size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        print(f"decoding {folder.PREFIX}{self.root} {split}/ once at {size}x{size}", flush=True)
        return folder.read_images(self.layout, split, size)

    @staticmethod
    def test_image(path: str, size: int, side: int | None) -> bytes | np.ndarray:
        """One image file as the folder's prepared copy holds it: decoded by Pillow, then uint8
        [size, size, 3] squared as the arrays (side None), or a JPEG record at its stored size
        for `augment.center_eval` to centre-crop. CorruptImageError for an unreadable file."""
        from resnet_jax.data import folder_records
        from resnet_jax.data.errors import CorruptImageError

        try:
            image = folder.pixels(path)
        except ValueError as e:
            raise CorruptImageError(f"not a readable image ({e})") from None
        if side is None:
            return folder.resized(image, size)
        return folder_records.jpeg(
            folder_records.shorter_side(image, folder_records.resize_side(size))
        )

    def builder(self, d):
        """The host path's JPEG records of the folder at `d.image_size` (built when needed)."""
        from resnet_jax.data import folder_records

        return folder_records.builder(d)

    def host_stats(self, d) -> dict:
        from resnet_jax.data import folder_records

        return folder_records.record(d)
