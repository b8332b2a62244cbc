"""The tfds datasets resnet_jax knows: their static facts and their prepared tfds builders.

`catalog.open` makes the record a run reads; this module is the tfds source below it. Importing
it does not import TensorFlow: tfds is imported only when a builder is needed.
"""

import os

from resnet_jax.data.errors import CorruptImageError, DatasetNotPreparedError

__all__ = ["CorruptImageError", "DatasetNotPreparedError"]  # raised by every input path

# Static facts per dataset (the record's example counts come from the prepared data, so tests on
# fake archives see their own sizes). key: the feature that names an example in errors.
_FIELDS = ("num_classes", "image_size", "family", "train_split", "eval_split", "manual", "key")
_CIFAR = ("cifar", "train", "test")
FACTS = {
    name: dict(zip(_FIELDS, row, strict=True))
    for name, row in {
        "imagenet2012": (
            1000,
            224,
            "imagenet",
            "train",
            "validation",
            ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
            "file_name",
        ),
        "cifar10": (10, 32, *_CIFAR, ("cifar-10-binary.tar.gz",), "id"),
        "cifar100": (100, 32, *_CIFAR, ("cifar-100-binary.tar.gz",), "id"),
        "shapes10": (10, 32, *_CIFAR, (), "id"),
    }.items()
}
DATASETS = tuple(FACTS)  # the tfds ones
# Random data made on the devices (`synthetic`): the trainer takes it, tfds does not.
SYNTHETIC = "synthetic"
TRAINABLE = DATASETS + (SYNTHETIC,)

# He2015 Sec. 4.2 tunes on a 45k/5k split of the CIFAR training set. As fractions they are exactly
# 45,000/5,000 of the real 50,000 and stay meaningful on small fake data.
SPLIT_ALIASES = {"train45k": "train[:90%]", "val5k": "train[90%:]"}


def center_resize_side(image_size: int) -> int:
    """The shorter side an image is resized to before ImageNet's centre test crop of
    `image_size`: the crop keeps the central 87.5% (224 of 256)."""
    return int(round(image_size / 0.875))


def check_name(name):
    if name not in FACTS:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(TRAINABLE)} or folder:PATH"
        )


def resolve_data_dir(data_dir):
    """data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (tfds's own default), with `~`
    and environment variables expanded."""
    chosen = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
    return os.path.expandvars(os.path.expanduser(str(chosen)))


def prepare_command(name, data_dir=None, manual_dir=None):
    """The shell command that builds `name` into `data_dir`.

    imagenet2012 always needs --manual_dir; CIFAR needs it only offline (then it holds the archive).
    """
    cmd = f"python -m resnet_jax.data.prepare {name} --data_dir {resolve_data_dir(data_dir)}"
    if name == "imagenet2012" or manual_dir:
        cmd += f" --manual_dir {manual_dir or 'DIR_WITH_ILSVRC2012_TARS'}"
    return cmd


def manual_files(name):
    """Archive file names that `--manual_dir` must hold for an offline build of `name`."""
    check_name(name)
    return FACTS[name]["manual"]


def _tfds_builder(name, data_dir):
    """The tfds builder for `name` rooted at data_dir (registers shapes10 first)."""
    from resnet_jax.data._tf import import_tfds  # pylint: disable=g-import-not-at-top

    tfds = import_tfds()
    if name == "shapes10":
        from resnet_jax.data import shapes  # pylint: disable=g-import-not-at-top

        shapes.builder_class()  # registers it with tfds
    return tfds.builder(name, data_dir=resolve_data_dir(data_dir))


def get_builder(name, data_dir=None):
    """A prepared tfds builder; shapes10 is built on first use, others raise DatasetNotPreparedError."""
    check_name(name)
    if not FACTS[name]["manual"]:  # generated from nothing: built right here
        return _generated(name, data_dir)
    # A dataset never prepared has no folder: say so before tfds is asked for a builder, which
    # would log a confusing warning about a version folder without dataset_info.json.
    folder = os.path.join(resolve_data_dir(data_dir), name)
    builder = _tfds_builder(name, data_dir) if os.path.isdir(folder) else None
    if builder is None or not builder.is_prepared():
        offline = (
            ""
            if name == "imagenet2012"
            else f"\n(offline: add --manual_dir M, with M "
            f"holding the official {FACTS[name]['manual'][0]})"
        )
        looked = builder.data_dir if builder is not None else folder
        raise DatasetNotPreparedError(
            f"dataset {name!r} is not prepared in {resolve_data_dir(data_dir)} (looked for "
            f"{looked}). Build it once with:\n  {prepare_command(name, data_dir)}"
            f"{offline}"
        )
    return builder


def _generated(name, data_dir):
    """A procedural dataset's builder, built once even when several processes ask at the same
    moment (`prepared.once`'s lock: the others wait, then find the data prepared)."""
    from resnet_jax.data import prepared  # pylint: disable=g-import-not-at-top

    def check():  # read anew: another process may have built it meanwhile
        builder = _tfds_builder(name, data_dir)
        return (builder, None) if builder.is_prepared() else (None, "missing")

    def build():
        builder = _tfds_builder(name, data_dir)
        builder.download_and_prepare()  # procedural: no download, about half a minute
        return builder

    return prepared.once(os.path.join(resolve_data_dir(data_dir), f"{name}.prepare"), check, build)


def resolve_split(name, split):
    """Maps the paper's split aliases (`train45k`, `val5k`) onto tfds split strings."""
    if isinstance(split, str) and split in SPLIT_ALIASES:
        if name not in ("cifar10", "cifar100"):
            raise ValueError(
                f"split {split!r} is the CIFAR 45k/5k protocol; {name} has no such split. "
                f"Use a tfds slice such as {SPLIT_ALIASES[split]!r} instead."
            )
        return SPLIT_ALIASES[split]
    return split
