"""What a dataset is: one frozen `Dataset` record, made by `open` once where a run starts.

`open` is the one place that branches on the kind of dataset (a tfds dataset, shapes10, a folder
of images, synthetic batches): it decides the training size and the input path, each with the rule
that chose it, counts the splits, fingerprints a folder's files once, and says where the prepared
copies live. Everything below (`pipeline`, `device_input`, `arrays`, `folder_records`, `inputs`)
receives the record and asks its `source` (`sources`), never the dataset's name. No TensorFlow is
imported here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any

from resnet_jax.data import arrays, datasets, folder, prepared, sources

FOLDER_KIND, SYNTHETIC = "folder", datasets.SYNTHETIC
# Per family of recipes, the options of an input path (the first is the default).
_OPTIONS = {
    "imagenet": dict(
        augments=("paper", "inception", "none"),
        normalizations=("mean_std",),  # ImageNet's channel mean and std (torchvision's)
        eval_views=("center", "10crop", "multiscale"),
    ),
    "cifar": dict(
        augments=("cifar", "none"),
        normalizations=("per_pixel_mean", "per_channel", "mean_std"),
        eval_views=("center",),
    ),
}
EVAL_VIEWS = _OPTIONS["imagenet"]["eval_views"]  # every evaluation protocol there is
# Where the input is made: 'device' holds the whole split in accelerator memory and augments it
# there (the 32x32 sets' default), 'host' is the tf.data pipeline (ImageNet's only choice);
# synthetic batches are made on the devices from a seed.
_PATHS = {"imagenet": ("host",), "cifar": ("device", "host")}
# A folder's own channel statistics hold at every scale it is trained and tested at, so they are
# its default; a per-pixel mean image exists only for the squared arrays of the device path.
_FOLDER_NORMALIZATIONS = {
    "device": ("per_channel", "per_pixel_mean", "mean_std"),
    "host": ("per_channel", "mean_std"),
}
# synthetic: shaped like the data the model was made for (`synthetic`), by the model's family.
_SYNTHETIC_EPOCH = {"imagenet": 1_281_167, "cifar": 50_000}
_LARGEST_NET_INPUT = 224  # ImageNet's: the largest side any registered net is made for


def _center_crop(size: int) -> tuple[int, int]:
    """ImageNet's test crop of `size` (`augment.center_eval`'s default) as a (S, R) test_crop."""
    return size, datasets.center_resize_side(size)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset is, as one run reads it.

    kind: 'tfds', 'shapes10', 'folder' or 'synthetic'. native_size: the images' own side (224,
    32; a folder's median side when it chose the size; None where unknown). image_size: the
    training size, image_size_rule why. train_split / eval_split and num_train / num_eval: the
    canonical splits and their examples (counted once, on first use). input_pipeline ('device', 'host' or 'synthetic') of
    input_pipelines, input_pipeline_rule why. augments, normalizations, eval_views: what that path
    accepts, the default first. array_size: the side of the device path's arrays. jpeg_crops: the
    host path cuts its crops out of JPEGs (ImageNet's recipe) rather than decoding whole images.
    test_crop: (S, R): one image file becomes the run's test input by resizing its shorter side to
    R and taking the centre S x S (R None: stretched to S x S, as a folder's arrays).
    prepared: where this path's prepared copy lives. fingerprints: split -> what its prepared
    copies are built from (a folder's files, computed once). holdout: a folder's held-out part.
    scored: what an evaluation of it measures. problems: why the choices it was opened with
    cannot work (the checks report them before anything is compiled).
    """

    name: str
    kind: str
    num_classes: int
    class_names: tuple[str, ...] | None
    native_size: int | None
    image_size: int
    image_size_rule: str
    train_split: str
    eval_split: str
    input_pipeline: str
    input_pipelines: tuple[str, ...]
    input_pipeline_rule: str
    augments: tuple[str, ...]
    normalizations: tuple[str, ...]
    eval_views: tuple[str, ...]
    array_size: int | None
    jpeg_crops: bool
    test_crop: tuple[int, int | None]
    prepared: str | None
    fingerprints: tuple[tuple[str, str], ...] = ()
    holdout: float = 0.0
    data_dir: str | None = None
    scored: str = "test accuracy"
    problems: tuple[str, ...] = ()
    source: Any = dataclasses.field(default=None, compare=False, repr=False)
    # (num_train, num_eval), or the function of the record that counts them on first use
    counted: Any = dataclasses.field(default=None, compare=False, repr=False)

    @functools.cached_property
    def _counts(self) -> tuple[int, int]:
        return tuple(self.counted(self)) if callable(self.counted) else tuple(self.counted)

    @property
    def num_train(self) -> int:
        return self._counts[0]

    @property
    def num_eval(self) -> int:
        return self._counts[1]

    def fingerprint(self, split: str) -> str | None:
        return dict(self.fingerprints).get(split)

    def resolve_split(self, split: str | None, default: str | None = None) -> str:
        """A split string (None: `default`, else train) with the paper's aliases (`train45k`,
        `val5k`) mapped to tfds slices."""
        return datasets.resolve_split(self.name, split or default or self.train_split)

    def window(self, split: str | None) -> tuple[str, tuple[str | None, str | None]]:
        """(canonical split, (start, stop)) that a split string ('test', 'train[:90%]') names."""
        m = _SLICE.fullmatch(str(self.resolve_split(split)))
        if m is None or m["split"] not in (self.train_split, self.eval_split):
            raise ValueError(
                f"{self.name} has no split {split!r}; use one of {self.train_split}, "
                f"{self.eval_split}, a slice of one such as 'train[:90%]' or 'train[1000:]', or "
                "train45k / val5k for CIFAR"
            )
        return m["split"], (m["start"], m["stop"])

    def count(self, split: str | None) -> int:
        """Examples in a split string, from the canonical counts (tfds's rounding of slices)."""
        canonical, bounds = self.window(split)
        n = self.num_train if canonical == self.train_split else self.num_eval
        return len(range(n)[self.bounded(bounds, n)])

    def test_scale(self, scale: int) -> int:
        """He2015's test scale `scale` (a shorter side for 224 crops) for this record's images:
        a folder has no native size, so its scales keep their ratio to its training size."""
        if self.kind != FOLDER_KIND:
            return int(scale)
        return int(round(scale * self.image_size / 224))

    def prepare_command(self) -> str:
        return datasets.prepare_command(self.name, self.data_dir)

    @staticmethod
    def bounded(bounds: tuple[str | None, str | None], n: int) -> slice:
        """The slice of n examples that tfds slice bounds ('45000', '90%', '-10%') name."""

        def index(text):
            if text is None:
                return None
            return int(round(int(text[:-1]) * n / 100.0)) if text.endswith("%") else int(text)

        return slice(index(bounds[0]), index(bounds[1]))


_SLICE = re.compile(r"(?P<split>[a-z]+)(\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?")


NAMES = datasets.TRAINABLE  # and folder:PATH


def name_problem(name: str, input_pipeline: str | None) -> str | None:
    """Why the config's dataset name or input path cannot be read (None: they can), without
    reading the data. Synthetic data ignores the input path."""
    if folder.is_folder(name):
        paths = ("device", "host")
    elif name == SYNTHETIC:
        return None
    elif name in datasets.FACTS:
        paths = _PATHS[datasets.FACTS[name]["family"]]
    else:
        return "unknown"
    if input_pipeline is not None and input_pipeline not in paths:
        return (
            f"input_pipeline={input_pipeline!r} is not available for {name}; choose from "
            f"{', '.join(paths)}"
        )
    return None


def open(
    name: str,
    *,
    data_dir: str | None = None,
    image_size: int | None = None,
    input_pipeline: str | None = None,
    holdout: float = folder.HOLDOUT_FRACTION,
    fine_tuning: bool = False,
    num_classes: int | None = None,
    model: str | None = None,
    pool_examples: int = 0,
    saved: dict | None = None,
) -> Dataset:
    """The `Dataset` record of `name` ('cifar10', 'folder:PATH', 'synthetic', ...).

    image_size / input_pipeline: the config's (None: the dataset's rule). A folder's size rule:
    fine-tuning (`fine_tuning`) takes BiT-HyperRule's, a run from scratch its images' own size, up
    to 224. holdout: the part of each class a folder without an evaluation folder is evaluated on.
    synthetic: shaped like `model`'s data unless num_classes / image_size say; pool_examples is
    its evaluation pool. saved: a run's resolved config (config.json) to rebuild the record from
    without reading the data (a folder is not scanned; num_eval is then 0 for a tfds dataset).
    Raises ValueError for an unknown name, DatasetNotPreparedError
    (FolderError) for data that is not there.
    """
    if name == SYNTHETIC:
        return _synthetic(image_size, num_classes, model, pool_examples)
    if folder.is_folder(name):
        if saved and saved.get("dataset_fingerprint"):
            return _saved_folder(name, data_dir, holdout, saved)
        return _folder(name, data_dir, image_size, input_pipeline, holdout, fine_tuning)
    datasets.check_name(name)
    facts = datasets.FACTS[name]
    source = (sources.Shapes if name == "shapes10" else sources.Tfds)(name, data_dir)
    paths = _PATHS[facts["family"]]
    chosen = input_pipeline or paths[0]
    size, native = image_size or facts["image_size"], facts["image_size"]
    problems = ()
    if facts["family"] == "cifar" and (size < native or (size > native and chosen != "device")):
        problems = (
            f"{name} images are {native}x{native}; image_size={size} is not supported (the device "
            "input path upsamples them to a larger image_size)",
        )
    options = dict(_OPTIONS[facts["family"]])
    if chosen == "device":  # the held images give every view (`device_input`)
        options["eval_views"] = EVAL_VIEWS
    base = datasets.resolve_data_dir(data_dir)
    d = Dataset(
        name=name,
        kind="shapes10" if name == "shapes10" else "tfds",
        num_classes=facts["num_classes"],
        class_names=source.class_names(),  # where known without TensorFlow
        native_size=native,
        image_size=size,
        image_size_rule=f"image_size {size}: "
        + ("set by the config" if image_size else f"{name}'s own"),
        train_split=facts["train_split"],
        eval_split=facts["eval_split"],
        input_pipeline=chosen,
        input_pipelines=paths,
        input_pipeline_rule=f"input_pipeline {chosen}: "
        + ("set by the config" if input_pipeline else "the default"),
        **options,
        array_size=native,
        jpeg_crops=facts["family"] == "imagenet",
        # the 32x32 sets: the whole image (the finish upsamples it as in training)
        test_crop=_center_crop(size) if facts["family"] == "imagenet" else (native, native),
        problems=problems,
        prepared=os.path.join(base, prepared.FOLDER, name)
        if chosen == "device"
        else os.path.join(base, name),
        data_dir=data_dir,
        source=source,
    )
    if saved and saved.get("num_train_examples"):  # a run's: nothing read (eval not counted)
        return dataclasses.replace(d, counted=(saved["num_train_examples"], 0))
    # Counted on first use: the device path from the arrays it holds (no TensorFlow once they
    # exist), the host path from the prepared tfds data (DatasetNotPreparedError names the command)
    count = functools.partial(arrays.count, d) if chosen == "device" else source.count
    return dataclasses.replace(d, counted=lambda d: (count(d.train_split), count(d.eval_split)))


def _folder_size(layout, fine_tuning: bool) -> tuple[int, int, str]:
    """(median side, training size, why) of a folder: fine-tuning takes BiT-HyperRule's; a run
    from scratch the images' own size, up to ImageNet's 224, the largest any registered net is
    made for. A CIFAR net pools globally, so it trains on 48 px images as they are; at 224 px it
    costs ~49x its 32 px time, which the banner's rule line makes visible."""
    side = folder.median_side(layout)
    if fine_tuning:
        return (side, *folder.bit_image_size(side))
    size = min(side, _LARGEST_NET_INPUT)
    why = (
        f"the images' own size (median {side}x{side} px)"
        if size == side
        else f"ImageNet's training size, the images (median {side}x{side} px) being larger"
    )
    return (
        side,
        size,
        f"image_size {size}: {why}, a run from scratch; set --config.image_size to choose",
    )


def _folder(name, data_dir, image_size, input_pipeline, holdout, fine_tuning) -> Dataset:
    source = sources.Folder(folder.root_of(name), holdout, data_dir)
    layout = source.layout
    native = None
    if image_size:
        rule = f"image_size {image_size}: set by the config"
    else:
        native, image_size, rule = _folder_size(layout, fine_tuning)
    fits, why = folder.input_pipeline(layout, image_size)
    chosen, problems = fits, ()
    if input_pipeline:
        chosen = input_pipeline
        if chosen == "device" != fits:
            problems = (
                f"{name} cannot take input_pipeline='device': {why.split(': ', 1)[1]}; choose "
                "input_pipeline=host or a smaller --config.image_size",
            )
        why = f"input_pipeline {input_pipeline}: set by the config"
    splits = (folder.TRAIN_SPLIT, layout.eval_split)
    return _folder_record(
        name,
        data_dir,
        source,
        image_size=image_size,
        image_size_rule=rule,
        native_size=native,
        input_pipeline=chosen,
        input_pipeline_rule=why,
        class_names=layout.class_names,
        counts=[layout.count(s) for s in splits],
        fingerprints=[(s, source.files_fingerprint(s)) for s in splits],
        holdout=layout.holdout,
        problems=problems,
    )


# folder.fingerprint's text: "folder ROOT SPLIT: N images, sha256 HEX"
_FINGERPRINT = re.compile(r"folder (?P<root>.*) (?P<split>\w+): (?P<n>\d+) images, sha256 \w+")


def _saved_folder(name, data_dir, holdout, saved) -> Dataset:
    """A folder's record from its run's resolved config: its splits, counts and fingerprints are
    read from `dataset_fingerprint`, so the folder is neither scanned nor needed."""
    parts = [p.strip() for p in saved["dataset_fingerprint"].split("; ")]
    found = [_FINGERPRINT.fullmatch(p) for p in parts]
    fingerprints = [(m["split"], p) for m, p in zip(found, parts, strict=True)]
    return _folder_record(
        name,
        data_dir,
        sources.Folder(folder.root_of(name), holdout, data_dir, fingerprints),
        image_size=saved["image_size"],
        image_size_rule=saved.get("image_size_rule", ""),
        native_size=None,
        input_pipeline=saved.get("input_pipeline") or "device",
        input_pipeline_rule=saved.get("input_pipeline_rule", ""),
        class_names=tuple(saved.get("class_names") or ()),
        counts=[int(m["n"]) for m in found],
        fingerprints=fingerprints,
        holdout=holdout if found[1]["split"] == folder.HOLDOUT_SPLIT else 0.0,
    )


def _folder_record(name, data_dir, source, *, image_size, input_pipeline, counts, **fields):
    """A folder read by `input_pipeline`: on the device path it takes the 32x32 sets' options, on
    the host path ImageNet's (crops cut out of its JPEG copy)."""
    family = {"device": "cifar", "host": "imagenet"}[input_pipeline]
    where = prepared.folder_dir(source.root, datasets.resolve_data_dir(data_dir), image_size)
    fingerprints = fields.pop("fingerprints")
    return Dataset(
        name=name,
        kind=FOLDER_KIND,
        num_classes=len(fields["class_names"]),
        image_size=int(image_size),
        train_split=fingerprints[0][0],
        eval_split=fingerprints[1][0],
        counted=tuple(counts),
        input_pipeline=input_pipeline,
        input_pipelines=("device", "host"),
        **dict(
            _OPTIONS[family],
            normalizations=_FOLDER_NORMALIZATIONS[input_pipeline],
            eval_views=EVAL_VIEWS,  # held or cut out of JPEGs, its images give every view
        ),
        array_size=int(image_size),
        jpeg_crops=input_pipeline == "host",
        test_crop=_center_crop(int(image_size)) if input_pipeline == "host" else (image_size, None),
        prepared=where if input_pipeline == "device" else os.path.join(where, "records"),
        fingerprints=tuple(fingerprints),
        data_dir=data_dir,
        source=source,
        **fields,
    )


def _synthetic(image_size, num_classes, model, pool_examples) -> Dataset:
    """Random batches made on the devices (`synthetic`): sized like `model`'s own data."""
    from resnet_jax import models

    spec = models.get_spec(model) if model in models.available_models() else None
    family = spec.family if spec else "imagenet"
    size = image_size or (spec.input_size if spec else 224)
    return Dataset(
        name=SYNTHETIC,
        kind=SYNTHETIC,
        num_classes=num_classes or (spec.num_classes if spec else 1000),
        class_names=None,
        native_size=size,
        image_size=size,
        image_size_rule=f"image_size {size}: the config's, else {model}'s own",
        train_split="train",
        eval_split="train",  # evaluation scores the training pool
        counted=(_SYNTHETIC_EPOCH[family], pool_examples),
        input_pipeline=SYNTHETIC,
        input_pipelines=(SYNTHETIC,),
        input_pipeline_rule="synthetic batches made on the devices",
        augments=(),  # no data options: they are ignored
        normalizations=(),
        eval_views=("center",),
        array_size=None,
        jpeg_crops=False,
        test_crop=_center_crop(size),
        prepared=None,
        scored="accuracy on the synthetic pool (memorisation)",
    )


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one run reads its dataset: the splits (None: the record's), the augmentation and
    normalisation (None: the path's default), global batch sizes, evaluation views and scales,
    and the synthetic pool's batches."""

    train_split: str | None = None
    eval_split: str | None = None
    augment: str | None = None
    normalization: str | None = None
    batch_size: int = 128
    eval_batch_size: int = 128
    eval_views: str = "center"
    eval_scales: tuple[int, ...] = ()
    synthetic_batches: int = 8


def default_normalization(d: Dataset, fine_tuning: bool) -> str:
    """The record's default normalisation; fine-tuning from ImageNet weights takes ImageNet's
    ('mean_std', what the weights expect) where the data would bring its own statistics (the
    device path's arrays, a folder)."""
    own = d.input_pipeline == "device" or d.kind == FOLDER_KIND
    return "mean_std" if fine_tuning and own else (d.normalizations or (None,))[0]


def run_keys(d: Dataset) -> dict:
    """What a run's resolved config records of its dataset beyond the config's own keys: a
    folder's training size and input path with their rules, class names and files' fingerprint
    (predict names classes from config.json; a resume on a changed folder is refused)."""
    if d.kind != FOLDER_KIND:
        return {}
    return dict(
        image_size_rule=d.image_size_rule,
        class_names=list(d.class_names),
        input_pipeline=d.input_pipeline,
        input_pipeline_rule=d.input_pipeline_rule,
        dataset_fingerprint="; ".join(f for _, f in d.fingerprints),
    )


def notes(d: Dataset, plan: Plan, model: str) -> list[str]:
    """The lines a run prints about its data: a folder's classes, counts, skipped files, size,
    input path and normalisation; what synthetic data is."""
    if d.kind == SYNTHETIC:
        s, b = d.image_size, plan.synthetic_batches
        return [
            f"synthetic data: {b} random batches of {s}x{s} images in {d.num_classes} classes "
            f"(the config's image_size and num_classes, else the size of the data {model} was "
            f"made for) made on the devices (no input pipeline; data options ignored); "
            f"evaluation scores those {b * plan.batch_size} examples, so it measures "
            "memorisation of random labels, not accuracy"
        ]
    if d.kind != FOLDER_KIND:
        return []
    imagenet = plan.normalization == "mean_std"
    whose = "ImageNet's channel mean and std" if imagenet else "the folder's own"
    return [
        folder.description(d.source.layout),
        d.image_size_rule,
        d.input_pipeline_rule,
        f"normalization {plan.normalization} ({whose})",
    ]
