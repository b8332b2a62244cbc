"""A folder of images as a dataset: `folder:ROOT` reads ROOT/<split>/<class>/<image>.

The layout is torchvision's and tensorflow-datasets' ImageFolder: training images in ROOT/train,
evaluation images in the first of ROOT/test, ROOT/validation, ROOT/val that exists, one
sub-folder per class. Class names are the training sub-folders' names, sorted (tfds's
convention), so label k is the k-th name in alphabetical order.

A folder with no evaluation split is evaluated on a part of its own training images held out
(`holdout`): each file by a hash of its path within the class folders, so the choice is the same
in every process and on every machine, and adding files never moves old ones across. Such a
folder may also drop the train/ level, ROOT/<class>/<image> (torchvision's ImageFolder and Keras'
image_dataset_from_directory read that layout): it is how images usually arrive, one folder per
class and nothing else.

Images are read with Pillow (JPEG, CMYK JPEG included; PNG in greyscale, palette, RGBA or 16 bits;
BMP; the first frame of a GIF) and become RGB uint8. Files without an image suffix (README.txt,
.DS_Store, Thumbs.db) and hidden files are skipped and counted. A file with an image suffix that
does not decode stops the run, named (`CorruptImageError`): skipping it would change what
is trained and evaluated without anyone deciding so.

This module only reads folders (numpy and Pillow, no TensorFlow); `arrays` decodes each file once
into the prepared arrays the device input path holds, and uses `fingerprint` to notice a folder
that changed since.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os

import numpy as np

from resnet_jax.data.errors import CorruptImageError, DatasetNotPreparedError

PREFIX = "folder:"
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FORMATS = "JPEG, PNG, BMP, GIF"  # what EXTENSIONS name, in words
TRAIN_SPLIT = "train"
EVAL_SPLITS = ("test", "validation", "val")  # the first that exists is evaluated on
HOLDOUT_SPLIT = "holdout"  # the evaluation split held out of a folder that has none
# The part of each class held out where a folder has no evaluation split: a fifth, the
# validation_split of Keras' image_dataset_from_directory examples. 0 turns it off.
HOLDOUT_FRACTION = 0.2
HOLDOUT_KEY = "--config.holdout_fraction"
# BiT-HyperRule's resolution (Kolesnikov et al. 2020): images of at most 96x96 pixels are resized
# to 160 and trained on random 128 crops, larger ones resized to 448 for crops of 384.
SMALL_AREA = 96 * 96
BIT_SIZES = {"small": (160, 128), "large": (448, 384)}
# A folder's training split is held whole in the memory of every accelerator (replicated) when
# its uint8 pixels at the training size take at most this: 4 GiB leaves a 16 GB GPU three
# quarters of its memory for the model (an H200 has 139 GiB).
DEVICE_LIMIT_BYTES = 4 << 30
_SIZE_SAMPLE = 1000  # the training images whose headers the default size is read from


def is_folder(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


class FolderError(DatasetNotPreparedError):
    """A folder that is not a dataset of images as laid out above; the message says why."""


def expand(path: str) -> str:
    """`path` with `~` and environment variables expanded, made absolute."""
    return os.path.abspath(os.path.expandvars(os.path.expanduser(str(path))))


def root_of(name: str) -> str:
    """The absolute root folder of a `folder:PATH` dataset name."""
    if not name[len(PREFIX) :].strip():
        raise FolderError("dataset 'folder:' names no folder: give --config.dataset=folder:PATH")
    return expand(name[len(PREFIX) :])


@dataclasses.dataclass(frozen=True)
class Layout:
    """What a folder holds: its classes and, per split, its image files (root-relative) and labels.

    holdout: the fraction of each class held out as `eval_split` ('holdout'), 0 where the folder
    has its own evaluation folder."""

    root: str
    eval_split: str
    class_names: tuple[str, ...]
    files: dict  # split -> tuple of (relative path, label), in class then file-name order
    skipped: dict  # split -> files that are not images
    holdout: float = 0.0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def count(self, split: str) -> int:
        return len(self.files[split])


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in EXTENSIONS


def _subfolders(path: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(path)
        if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
    )


def _read_split(root: str, split: str) -> tuple[dict, int]:
    """({class: [relative paths of its images]}, files skipped) of one split folder ('' for
    ROOT/<class>/<image>)."""
    folder = os.path.join(root, split)
    classes = _subfolders(folder)
    skipped = sum(
        1 for f in os.listdir(folder) if not os.path.isdir(os.path.join(folder, f))
    )  # stray files beside the class folders
    images = {}
    for cls in classes:
        names = sorted(os.listdir(os.path.join(folder, cls)))
        images[cls] = [os.path.join(split, cls, n) for n in names if _is_image(n)]
        skipped += len(names) - len(images[cls])
        if not images[cls]:
            raise FolderError(
                f"folder dataset {root}: class folder {os.path.join(folder, cls)} holds no "
                f"images ({', '.join(EXTENSIONS)}); add images or remove it"
            )
    return images, skipped


def _differ(a, b) -> str:
    return ", ".join(sorted(set(a) - set(b)))


def held_out(path: str, fraction: float) -> bool:
    """Whether the image at `path` (root-relative) is in the held-out part: a sha256 of its path
    within the class folders, as a number in [0, 1), below `fraction`. Stable across processes
    and machines (unlike Python's hash()), and the same with or without the train/ level."""
    within = "/".join(path.split(os.sep)[-2:])  # <class>/<image>
    digest = hashlib.sha256(within.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < fraction


def _hold_out(root: str, train: dict, fraction: float) -> tuple[dict, dict]:
    """(training images, held-out images) per class; FolderError when a class, or the whole
    split, would be left without images on either side."""
    kept, held = {}, {}
    for cls, paths in train.items():
        out = [held_out(p, fraction) for p in paths]
        kept[cls] = [p for p, o in zip(paths, out, strict=True) if not o]
        held[cls] = [p for p, o in zip(paths, out, strict=True) if o]
    total = sum(len(paths) for paths in train.values())
    fix = f"add a test/ folder, or set {HOLDOUT_KEY}"
    if not any(held.values()):
        raise FolderError(
            f"folder dataset {root}: holdout_fraction {fraction:g} held out none of its {total} "
            f"training images, so there is nothing to evaluate on; {fix} higher"
        )
    for cls, paths in train.items():
        if not held[cls] or not kept[cls]:
            side = "held out" if not held[cls] else "left to train on"
            raise FolderError(
                f"folder dataset {root}: class {cls} has {len(paths)} image(s), too few to hold "
                f"out a {fraction:g} part of (none would be {side}); add images to it, "
                f"{fix} {'higher' if not held[cls] else 'lower'}"
            )
    return kept, held


def _train_folder(root: str) -> str:
    """'train', or '' where the folder is ROOT/<class>/<image> (no split folders at all)."""
    if os.path.isdir(os.path.join(root, TRAIN_SPLIT)):
        return TRAIN_SPLIT
    evals = [s + "/" for s in EVAL_SPLITS if os.path.isdir(os.path.join(root, s))]
    if evals:
        raise FolderError(
            f"folder dataset {root} has {', '.join(evals)} but no {TRAIN_SPLIT}/ folder: the "
            f"layout is ROOT/{TRAIN_SPLIT}/<class>/<image>, with ROOT/test/<class>/<image> to "
            "evaluate on (or ROOT/<class>/<image> alone, part of it held out)"
        )
    return ""


def scan(root: str, holdout: float = HOLDOUT_FRACTION) -> Layout:
    """The `Layout` of a folder; raises FolderError naming what does not fit the layout.

    holdout: the fraction of each class evaluated on where the folder has no evaluation folder
    (0: such a folder is refused)."""
    if not os.path.isdir(root):
        raise FolderError(f"folder dataset {root} does not exist (or is not a directory)")
    train_folder = _train_folder(root)
    eval_split = None
    if train_folder:
        eval_split = next((s for s in EVAL_SPLITS if os.path.isdir(os.path.join(root, s))), None)
    if eval_split is None and not holdout:
        raise FolderError(
            f"folder dataset {root} has no evaluation folder: add one of "
            f"{', '.join(s + '/' for s in EVAL_SPLITS)} with the same class folders as "
            f"{TRAIN_SPLIT}/, or set {HOLDOUT_KEY} (e.g. {HOLDOUT_FRACTION}) to hold out a part "
            "of each class"
        )
    train, train_skipped = _read_split(root, train_folder)
    where = f"{train_folder}/" if train_folder else "the folder"
    if len(train) < 2:
        raise FolderError(
            f"folder dataset {root}: {where} holds {len(train)} class folder(s)"
            f"{' (' + ', '.join(train) + ')' if train else ''}; a classifier needs at least two"
        )
    if eval_split is None:
        train, evaluation = _hold_out(root, train, holdout)
        eval_split, eval_skipped = HOLDOUT_SPLIT, 0
    else:
        holdout = 0.0
        evaluation, eval_skipped = _read_split(root, eval_split)
    if set(evaluation) != set(train):
        only_eval, only_train = _differ(evaluation, train), _differ(train, evaluation)
        raise FolderError(
            f"folder dataset {root}: {eval_split}/ and {TRAIN_SPLIT}/ have different classes"
            + (f"; only in {eval_split}/: {only_eval}" if only_eval else "")
            + (f"; only in {TRAIN_SPLIT}/: {only_train}" if only_train else "")
        )
    names = tuple(train)  # sorted: label k is the k-th name
    files = {
        split: tuple((path, k) for k, cls in enumerate(names) for path in images[cls])
        for split, images in ((TRAIN_SPLIT, train), (eval_split, evaluation))
    }
    skipped = {TRAIN_SPLIT: train_skipped, eval_split: eval_skipped}
    return Layout(root, eval_split, names, files, skipped, holdout)


def fingerprint(layout: Layout, split: str) -> str:
    """A digest of the split's file list with each file's size and modification time: adding,
    removing, renaming or editing an image changes it."""
    h = hashlib.sha256()
    for path, label in layout.files[split]:
        st = os.stat(os.path.join(layout.root, path))
        h.update(f"{path}\0{label}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"folder {layout.root} {split}: {layout.count(split)} images, sha256 {h.hexdigest()}"


def decode(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of one image file; raises CorruptImageError naming it when it cannot."""
    try:
        return pixels(path)
    except ValueError as e:
        raise CorruptImageError(
            f"{path} is not a readable image ({e}); fix or remove it", keys=(path,)
        ) from None


def pixels(path: str) -> np.ndarray:
    """uint8 [H, W, 3] of one image file; ValueError with Pillow's reason when it cannot be read,
    OSError when the file cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    with open(path, "rb") as f:  # a missing file or a directory: the OSError as it is
        data = f.read()
    if not data:
        raise ValueError("an empty file")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.seek(0)  # a GIF's first frame
            if image.mode.startswith("I"):  # 16- or 32-bit greyscale: scale to 8 bits
                wide = np.asarray(image, np.float64)
                top = 65535.0 if image.mode.startswith("I;16") or wide.max() > 255 else 255.0
                grey = np.round(wide * (255.0 / top)).clip(0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(image.convert("RGB"), np.uint8)
    except UnidentifiedImageError:
        raise ValueError("not in an image format Pillow reads") from None
    except Exception as e:  # Pillow reports bad files as several types (OSError, SyntaxError, ...)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(reason) from None


def resized(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [size, size, 3]: `image` stretched to a square with Pillow's bilinear filter
    (BiT-HyperRule resizes to a square too); an image already that size is returned as it is."""
    if image.shape[:2] == (size, size):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR), np.uint8)


def read_images(layout: Layout, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, size, size, 3], int32 [N]) of a split, each file decoded once."""
    entries = layout.files[split]
    images = np.empty((len(entries), size, size, 3), np.uint8)
    for i, (path, _) in enumerate(entries):
        images[i] = resized(decode(os.path.join(layout.root, path)), size)
    return images, np.array([label for _, label in entries], np.int32)


def median_side(layout: Layout) -> int:
    """The side of a square of the training images' median area, in pixels (read from the
    headers of up to 1,000 of them, evenly spread)."""
    from PIL import Image

    entries = layout.files[TRAIN_SPLIT]
    step = max(len(entries) // _SIZE_SAMPLE, 1)
    areas = []
    for path, _ in entries[::step]:
        full = os.path.join(layout.root, path)
        try:
            with Image.open(full) as image:
                areas.append(image.size[0] * image.size[1])
        except Exception:  # reported with its name when it is decoded
            decode(full)
    return int(round(float(np.median(areas)) ** 0.5))


def bit_image_size(side: int) -> tuple[int, str]:
    """(training size, why) by BiT-HyperRule, a fine-tuning rule, for images of median side
    `side`."""
    kind = "small" if side * side <= SMALL_AREA else "large"
    resize, crop = BIT_SIZES[kind]
    return crop, (
        f"image_size {crop}: BiT-HyperRule's size for fine-tuning on {kind} images (median "
        f"{side}x{side} px {'<=' if kind == 'small' else '>'} 96x96; BiT resizes to {resize} and "
        f"crops {crop}); set --config.image_size to choose"
    )


def layout_of(name: str, holdout: float = HOLDOUT_FRACTION) -> Layout:
    """`scan` of a folder named `folder:PATH` or by its root."""
    return scan(root_of(name) if is_folder(name) else name, float(holdout or 0.0))


def input_pipeline(layout: Layout, size: int) -> tuple[str, str]:
    """('device' or 'host', why): the device path when the training split at `size` fits in
    DEVICE_LIMIT_BYTES, else the host tf.data pipeline."""
    needed = layout.count(TRAIN_SPLIT) * size * size * 3  # uint8 bytes held in device memory
    held, limit = needed / 2**30, DEVICE_LIMIT_BYTES / 2**30
    if needed <= DEVICE_LIMIT_BYTES:
        return "device", (
            f"input_pipeline device: the training split at {size}x{size} takes {held:.2g} GiB as "
            f"uint8, within the {limit:.2g} GiB a folder may take in device memory"
        )
    return "host", (
        f"input_pipeline host: the training split at {size}x{size} would take {held:.2g} GiB as "
        f"uint8, over the {limit:.2g} GiB a folder may take in device memory; it is read from "
        "JPEG records by the host tf.data pipeline"
    )


def description(layout: Layout) -> str:
    """The run's line about the folder: classes, images per split, files skipped."""
    skipped = sum(layout.skipped.values())
    evaluated = (
        f"evaluating on {layout.count(layout.eval_split)} images held out of the class folders "
        f"(each file whose path hashes below holdout_fraction {layout.holdout:g})"
        if layout.holdout
        else f"evaluating on {layout.eval_split}/ ({layout.count(layout.eval_split)} images)"
    )
    return (
        f"folder {layout.root}: {layout.num_classes} classes "
        f"({', '.join(layout.class_names[:10])}{', ...' if layout.num_classes > 10 else ''}); "
        f"train {layout.count(TRAIN_SPLIT)} images, {evaluated}; {skipped} file(s) that are not "
        "images skipped"
    )
