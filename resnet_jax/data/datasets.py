"""The datasets resnet_jax knows, their facts, and access to their prepared tfds builders.

Importing this module does not import TensorFlow: `DatasetInfo`, the errors and `DATASETS` are plain
Python, and tfds is imported only when a builder is needed.
"""

import dataclasses
import os

from resnet_jax.data import folder
from resnet_jax.data.errors import CorruptImageError, DatasetNotPreparedError

__all__ = ["CorruptImageError", "DatasetNotPreparedError"]  # raised by every input path

# Static facts per dataset. Example counts come from the prepared data when it exists (so tests on
# fake archives see their own sizes); these are the counts of the real datasets.
_FACTS = {
    "imagenet2012": dict(
        num_classes=1000,
        image_size=224,
        family="imagenet",
        train_split="train",
        eval_split="validation",
        num_train=1_281_167,
        num_eval=50_000,
        manual=("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"),
        key="file_name",
    ),
    "cifar10": dict(
        num_classes=10,
        image_size=32,
        family="cifar",
        train_split="train",
        eval_split="test",
        num_train=50_000,
        num_eval=10_000,
        manual=("cifar-10-binary.tar.gz",),
        key="id",
    ),
    "cifar100": dict(
        num_classes=100,
        image_size=32,
        family="cifar",
        train_split="train",
        eval_split="test",
        num_train=50_000,
        num_eval=10_000,
        manual=("cifar-100-binary.tar.gz",),
        key="id",
    ),
    "shapes10": dict(
        num_classes=10,
        image_size=32,
        family="cifar",
        train_split="train",
        eval_split="test",
        num_train=40_000,
        num_eval=10_000,
        manual=(),
        key="id",
    ),
}
DATASETS = tuple(_FACTS)  # the tfds ones
# Random data made on the devices (resnet_jax.data.synthetic): the trainer takes it, tfds does not.
SYNTHETIC = "synthetic"
TRAINABLE = DATASETS + (SYNTHETIC,)

# He2015 Sec. 4.2 tunes on a 45k/5k split of the CIFAR training set. As fractions they are exactly
# 45,000/5,000 of the real 50,000 and stay meaningful on small fake data.
SPLIT_ALIASES = {"train45k": "train[:90%]", "val5k": "train[90%:]"}


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset.

    image_size is the native training resolution (224 or 32); family is "imagenet" or "cifar" (the
    CIFAR-style 32x32 recipe, which shapes10 shares); num_train / num_eval count the examples of
    train_split / eval_split as prepared in data_dir.
    """

    name: str
    num_classes: int
    image_size: int
    train_split: str
    eval_split: str
    num_train: int
    num_eval: int
    family: str


is_folder = folder.is_folder  # `folder:PATH`: a folder of images (resnet_jax.data.folder)


def is_trainable(name) -> bool:
    """A built-in dataset, synthetic data, or a `folder:PATH`."""
    return name in TRAINABLE or is_folder(name)


def check_name(name):
    if name not in _FACTS and not is_folder(name):
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)} or folder:PATH"
        )


def facts(name):
    """Static facts of `name`: num_classes, image_size, family, splits, manual files, key feature.

    A folder's come from scanning it (`folder.layout_of`); its image_size is None (chosen by the
    config by the kind of run), and its family is "cifar", the device input path's
    (`catalog.describe` gives the family of each path: the host path's is "imagenet").
    """
    check_name(name)
    if is_folder(name):
        layout = folder.layout_of(name)
        return dict(
            num_classes=layout.num_classes,
            image_size=None,
            family="cifar",
            train_split=folder.TRAIN_SPLIT,
            eval_split=layout.eval_split,
            num_train=layout.count(folder.TRAIN_SPLIT),
            num_eval=layout.count(layout.eval_split),
            manual=(),
            key="file",
        )
    return dict(_FACTS[name])


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
    return _FACTS[name]["manual"]


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
    if is_folder(name):
        raise DatasetNotPreparedError(
            f"{name} is a folder: its tfds copy is made at a training size "
            "(resnet_jax.data.folder_records.builder)"
        )
    # A dataset never prepared has no folder: say so before tfds is asked for a builder, which
    # would log a confusing warning about a version folder without dataset_info.json.
    folder = os.path.join(resolve_data_dir(data_dir), name)
    exists = name == "shapes10" or os.path.isdir(folder)  # shapes10 is built right here
    builder = _tfds_builder(name, data_dir) if exists else None
    if builder is None or not builder.is_prepared():
        if name == "shapes10":
            _prepare_locked(builder)
            builder = _tfds_builder(name, data_dir)  # re-read: another process may have built it
        else:
            offline = (
                ""
                if name == "imagenet2012"
                else f"\n(offline: add --manual_dir M, with M "
                f"holding the official {_FACTS[name]['manual'][0]})"
            )
            looked = builder.data_dir if builder is not None else folder
            raise DatasetNotPreparedError(
                f"dataset {name!r} is not prepared in {resolve_data_dir(data_dir)} (looked for "
                f"{looked}). Build it once with:\n  {prepare_command(name, data_dir)}"
                f"{offline}"
            )
    return builder


def _prepare_locked(builder):
    """Builds a procedural dataset once even when several processes ask at the same moment."""
    import fcntl  # pylint: disable=g-import-not-at-top

    root = str(builder.data_dir_root)
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, f".{builder.name}.prepare.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait here, then find the data prepared
        try:
            if not builder.is_prepared():
                builder.download_and_prepare()  # procedural: no download, about half a minute
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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


def num_examples(builder, name, split):
    """Number of examples of `split` (any tfds split string or alias) in the prepared data."""
    split = resolve_split(name, split)
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{name} has no split {split!r} (prepared splits: "
            f"{', '.join(builder.info.splits)}): {e}"
        ) from None


def get_info(name, data_dir=None):
    """DatasetInfo of a prepared dataset (shapes10 is prepared here on first use).

    Raises:
      ValueError: unknown name.
      DatasetNotPreparedError: the dataset is not in data_dir; the message gives the command.
    """
    builder = get_builder(name, data_dir)
    facts = _FACTS[name]
    return DatasetInfo(
        name=name,
        num_classes=builder.info.features["label"].num_classes,
        image_size=facts["image_size"],
        train_split=facts["train_split"],
        eval_split=facts["eval_split"],
        num_train=num_examples(builder, name, facts["train_split"]),
        num_eval=num_examples(builder, name, facts["eval_split"]),
        family=facts["family"],
    )


def class_names(name, data_dir=None):
    """The label names of `name` (index -> name), or None where it is not prepared here."""
    if name == "shapes10":
        from resnet_jax.data import shapes  # plain numpy: no TensorFlow

        return list(shapes.CLASS_NAMES)
    if is_folder(name):
        return list(folder.layout_of(name).class_names)
    try:
        return list(get_builder(name, data_dir).info.features["label"].names)
    except DatasetNotPreparedError:
        return None
