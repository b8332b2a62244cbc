"""A folder's prepared copy for the host tf.data pipeline: each image decoded once, stored as JPEG.

A folder too large for accelerator memory trains through the host pipeline with ImageNet's
augmentations, whose crops are cut out of JPEGs by TensorFlow's JPEG-only ops
(`augment.decode_jpeg_crop`). So each file is decoded once with the project's Pillow reader
(`folder.decode`: any format, any mode, becomes RGB uint8), resized so that its shorter side is
BiT-HyperRule's resize side for the training size (`resize_side`), re-encoded as a JPEG, and
written by a tfds builder (`FolderRecords`) to the record's `prepared` folder
(`prepared.folder_dir(...)/records/`). The pipeline
then reads it as it reads ImageNet: records, shards, resumable order.

Beside the tfds files, `resnet_jax_folder.json` records the folder's fingerprint (its files'
names, sizes, modification times: `folder.fingerprint`), the resize side and the training
split's per-channel statistics. A copy whose record is missing or differs from the folder now is
stale: it is reported on stderr and rebuilt (`prepared.once`), never used.

TensorFlow and tfds are imported only when a copy is built or read.
"""

import functools
import io
import json
import os
import shutil

import numpy as np

from resnet_jax.data import folder, prepared

# tf.io.encode_jpeg's default, and about what ImageNet's own JPEGs use: at 95 the re-encoding
# error is about one grey level on average, far below the augmentation's resampling, while the
# file is a third of one at 100; the pipeline decodes each crop anew every epoch, so size counts.
JPEG_QUALITY = 95
_RECORD = "resnet_jax_folder.json"
_FORMAT = 1


def resize_side(image_size):
    """The shorter side each image is stored at for training crops of `image_size`.

    BiT-HyperRule resizes to 160 for crops of 128 and to 448 for crops of 384; other sizes keep
    the ratio of the nearer rule: x160/128 up to 128, x448/384 above."""
    for resize, crop in folder.BIT_SIZES.values():
        if image_size == crop:
            return resize
    small_resize, small_crop = folder.BIT_SIZES["small"]
    large_resize, large_crop = folder.BIT_SIZES["large"]
    ratio = small_resize / small_crop if image_size <= small_crop else large_resize / large_crop
    return int(round(image_size * ratio))


def shorter_side(image, side):
    """uint8 [H', W', 3] with min(H', W') == side, aspect kept (Pillow bilinear, as BiT)."""
    h, w = image.shape[:2]
    if min(h, w) == side:
        return image
    from PIL import Image

    scale = side / min(h, w)
    size = (max(side, int(round(w * scale))), max(side, int(round(h * scale))))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), np.uint8)


def jpeg(image):
    """JPEG bytes of uint8 [H, W, 3] at JPEG_QUALITY (Pillow, 4:2:0 as most cameras)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


class _ChannelSums:
    """Per-channel mean and std over every pixel of images of any size, in float64."""

    def __init__(self):
        self.count, self.total, self.total_sq = 0, np.zeros(3), np.zeros(3)

    def add(self, image):
        pixels = image.reshape(-1, 3).astype(np.float64)
        self.count += len(pixels)
        self.total += pixels.sum(0)
        self.total_sq += (pixels * pixels).sum(0)

    def stats(self):
        mean = self.total / self.count
        return {
            "channel_mean": mean.tolist(),
            "channel_std": np.sqrt(self.total_sq / self.count - mean**2).tolist(),
        }


@functools.cache
def _builder_class():
    """Defines (and thereby registers with tfds) the folder builder; tfds is imported here."""
    from resnet_jax.data._tf import import_tfds

    tfds = import_tfds()

    class FolderRecords(tfds.core.GeneratorBasedBuilder):
        """A folder of images, each decoded once, resized and stored as a JPEG."""

        VERSION = tfds.core.Version("1.0.0")

        def __init__(self, *, layout, side, **kwargs):
            self.layout, self.side, self.sums = layout, side, _ChannelSums()
            super().__init__(**kwargs)

        def _info(self):
            return self.dataset_info_from_configs(
                description=f"folder {self.layout.root} at shorter side {self.side}",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                        "label": tfds.features.ClassLabel(names=list(self.layout.class_names)),
                        "file": tfds.features.Text(),  # names the file in any error
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            splits = (folder.TRAIN_SPLIT, self.layout.eval_split)
            return {split: self._generate_examples(split) for split in splits}

        def _generate_examples(self, split):
            for path, label in self.layout.files[split]:
                image = shorter_side(folder.decode(os.path.join(self.layout.root, path)), self.side)
                if split == folder.TRAIN_SPLIT:
                    self.sums.add(image)
                yield path, {"image": jpeg(image), "label": label, "file": path}

    return FolderRecords


def _version_dir(d):
    version = "1.0.0"  # FolderRecords.VERSION, without importing tfds
    return os.path.join(d.prepared, "folder_records", version)


def _current(d):
    return {
        "format": _FORMAT,
        "side": resize_side(d.image_size),
        "source": [d.fingerprint(s) for s in (d.train_split, d.eval_split)],
    }


def _check(d):
    """(the copy's record, None) when it is complete and current, else (None, the problem)."""
    path = os.path.join(_version_dir(d), _RECORD)
    if not os.path.exists(path):
        return None, "missing"
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError) as e:
        return None, f"unreadable ({type(e).__name__}: {e})"
    current = _current(d)
    if any(record.get(k) != v for k, v in current.items()):
        return (
            None,
            f"stale: built from {record.get('source')!r}, the folder is now {current['source']!r}",
        )
    return record, None


def _build(d):
    version_dir = _version_dir(d)
    print(f"decoding {d.name} once into JPEG records in {version_dir}", flush=True)
    shutil.rmtree(version_dir, ignore_errors=True)  # a stale copy: tfds would keep it
    current = _current(d)
    builder = _builder_class()(layout=d.source.layout, side=current["side"], data_dir=d.prepared)
    from resnet_jax.data._tf import import_tfds

    import_tfds().disable_progress_bar()  # a run's stderr keeps to its own lines
    builder.download_and_prepare()
    record = dict(current, **builder.sums.stats())
    tmp = os.path.join(version_dir, f"{_RECORD}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
    os.replace(tmp, os.path.join(version_dir, _RECORD))  # the copy counts as built from here on
    return record


def record(d):
    """{'side', 'source', 'channel_mean' [3], 'channel_std' [3] (0-255 scale)} of the host copy of
    the folder record `d` (at `d.image_size`), building it first when it is missing or stale."""
    return prepared.once(_version_dir(d), lambda: _check(d), lambda: _build(d))


def builder(d):
    """The prepared tfds builder of the folder's host copy (built first when needed)."""
    from resnet_jax.data._tf import import_tfds

    record(d)
    return import_tfds().builder_from_directory(_version_dir(d))
