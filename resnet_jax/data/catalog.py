"""One answer to "what is this dataset": `describe(name) -> Dataset`, for built-in datasets and
folders alike, so callers ask the record instead of branching on the kind of dataset.

A folder has no native size and two input paths whose options differ: on the device path it takes
the 32x32 sets' options, on the host path ImageNet's (crops cut out of its JPEG copy). The record
is therefore described for one input path, the one asked for or, unasked, the default
(`folder.input_pipeline`'s size rule for a folder). No TensorFlow is imported here.
"""

from __future__ import annotations

import dataclasses
import os

from resnet_jax.data import arrays, datasets, folder, folder_records

# Per family of recipes, the input paths' options (the first is the default).
TRAIN_AUGMENTS = {"imagenet": ("paper", "inception", "none"), "cifar": ("cifar", "none")}
# mean_std: ImageNet's channel mean and std (torchvision's), which ImageNet weights expect.
NORMALIZATIONS = {
    "imagenet": ("mean_std",),
    "cifar": ("per_pixel_mean", "per_channel", "mean_std"),
}
EVAL_VIEWS = {"imagenet": ("center", "10crop", "multiscale"), "cifar": ("center",)}
# Where the input is made: 'device' holds the whole split in accelerator memory and augments it
# there (the 32x32 sets' default), 'host' is the tf.data pipeline (ImageNet's only choice).
INPUT_PIPELINES = {"imagenet": ("host",), "cifar": ("device", "host")}
# A folder's own channel statistics hold at every scale it is trained and tested at, so they are
# its default; a per-pixel mean image exists only for the squared arrays of the device path.
_FOLDER_NORMALIZATIONS = {
    "device": ("per_channel", "per_pixel_mean", "mean_std"),
    "host": ("per_channel", "mean_std"),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a dataset is, as read by one input path (`input_pipeline`).

    image_size: the native side (224, 32), None for a folder (the config's, BiT-HyperRule's when
    unset). family: whose recipe options apply on this path ('imagenet' or 'cifar'). augments,
    normalizations, eval_views: what this path accepts, the default first. input_pipelines: the
    paths that can read it; input_pipeline_rule: why this one. prepared: where this path's
    prepared data lives (None where it needs an image_size that was not given).
    """

    name: str
    num_classes: int
    image_size: int | None
    family: str
    train_split: str
    eval_split: str
    num_train: int
    num_eval: int
    key: str  # the feature that names an example in errors
    input_pipelines: tuple[str, ...]
    input_pipeline: str
    input_pipeline_rule: str
    augments: tuple[str, ...]
    normalizations: tuple[str, ...]
    eval_views: tuple[str, ...]
    prepared: str | None
    data_dir: str | None = dataclasses.field(default=None, repr=False)

    def class_names(self) -> list[str] | None:
        """Label names (index -> name), or None where a built-in dataset is not prepared here;
        read on demand (a tfds builder for CIFAR and ImageNet)."""
        return datasets.class_names(self.name, self.data_dir)


def input_pipelines(name) -> tuple[str, ...]:
    """The input paths that can read `name` (without scanning a folder): both for a folder."""
    if datasets.is_folder(name):
        return ("device", "host")
    return INPUT_PIPELINES[datasets.facts(name)["family"]]


def normalizations(name, input_pipeline) -> tuple[str, ...]:
    """The normalisations `input_pipeline` accepts for `name`, the default first (without
    scanning a folder: a run can finish its batches where the folder is not)."""
    if datasets.is_folder(name):
        return _FOLDER_NORMALIZATIONS[input_pipeline]
    return NORMALIZATIONS[datasets.facts(name)["family"]]


def describe(name, data_dir=None, image_size=None, input_pipeline=None) -> Dataset:
    """The `Dataset` record of `name` ('cifar10', 'folder:PATH', ...) read by `input_pipeline`
    (default: the dataset's default path; for a folder, by the size rule at `image_size`, whose
    default is BiT-HyperRule's). Raises ValueError for an unknown name, FolderError for a folder
    that is not one."""
    facts = datasets.facts(name)
    if datasets.is_folder(name):
        layout = folder.layout_of(name)
        size = image_size
        if size is None and input_pipeline is None:  # the size rule needs a size: BiT's
            size = folder.bit_image_size(folder.median_side(layout))[0]
        if input_pipeline:
            chosen, why = input_pipeline, f"input_pipeline {input_pipeline}: set by the config"
        else:
            chosen, why = folder.input_pipeline(layout, size)
        family = {"device": "cifar", "host": "imagenet"}[chosen]
        where = None  # a folder's copies are per training size
        if size is not None:
            where = (
                os.path.dirname(arrays.path(name, data_dir, "train", size))
                if chosen == "device"
                else folder_records.records_dir(name, data_dir, size)
            )
    else:
        family = facts["family"]
        chosen = input_pipeline or INPUT_PIPELINES[family][0]
        why = f"input_pipeline {chosen}: {'set by the config' if input_pipeline else 'the default'}"
        base = datasets.resolve_data_dir(data_dir)
        where = (
            os.path.dirname(arrays.path(name, data_dir, "train"))
            if chosen == "device"
            else os.path.join(base, name)
        )
    return Dataset(
        name=name,
        num_classes=facts["num_classes"],
        image_size=facts["image_size"],
        family=family,
        train_split=facts["train_split"],
        eval_split=facts["eval_split"],
        num_train=facts["num_train"],
        num_eval=facts["num_eval"],
        key=facts["key"],
        input_pipelines=input_pipelines(name),
        input_pipeline=chosen,
        input_pipeline_rule=why,
        augments=TRAIN_AUGMENTS[family],
        normalizations=normalizations(name, chosen),
        eval_views=EVAL_VIEWS[family],
        prepared=where,
        data_dir=data_dir,
    )
