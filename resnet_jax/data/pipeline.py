"""Per-process tf.data pipelines yielding numpy batches (the trainer makes them global jax.Arrays).

Order. Process p of P reads its own contiguous shard of the split (`tfds.even_splits`). Epoch e
of that shard is a permutation that is a pure function of (seed, p, e): the shard's files are
permuted and interleaved deterministically, then shuffled through a buffer, all seeded statelessly
from (seed, p, e). Batches run straight across epoch boundaries, so batch k always holds stream
positions [k*b, (k+1)*b). Resuming at `start_step=k` starts at epoch k*b // n and skips the
k*b % n records before it *before* decoding, then continues exactly as an uninterrupted run.
Augmentation seeds are (seed, p, stream position), so resumed augmentations match too.

Evaluation reads each process's shard once in file order, pads it to a number of batches that is
the same on every process, and marks real rows with mask=True.

Bad data. A record whose image cannot be decoded stops the iterator with `CorruptImageError`
naming the example's key (see docs/data.md for why stopping, not skipping).
"""

import math
import os
import re

import numpy as np

from resnet_jax.data import augment as aug
from resnet_jax.data import datasets
from resnet_jax.data import stats as stats_lib
from resnet_jax.data._tf import import_tf, import_tfds

tf = import_tf()
# The mapped functions have no Python control flow on tensors; skipping autograph's source
# conversion halves the time to build a pipeline.
_plain = tf.autograph.experimental.do_not_convert

TRAIN_AUGMENTS, NORMALIZATIONS = datasets.TRAIN_AUGMENTS, datasets.NORMALIZATIONS
EVAL_VIEWS = {"imagenet": ("center", "10crop", "multiscale"), "cifar": ("center",)}
# Encoded ImageNet records are ~110 KB: 10k of them (1.1 GB) plus file-order shuffling mixes well.
# The 32x32 datasets fit whole (<= 65k records of ~3 KB), which makes each epoch a full permutation.
_SHUFFLE_BUFFER = {"imagenet2012": 10_000}
_DEFAULT_SHUFFLE_BUFFER = 65_536
_NO_END = 2**40  # epochs: "forever"


def _mix(*ints):
    """A 63-bit seed from several ints (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class _Shard:
    """One process's slice of a prepared split: its record files and how to parse a record."""

    def __init__(self, dataset, data_dir, split, process_index, process_count, drop_remainder):
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index {process_index} is not in [0, process_count={process_count})"
            )
        self.dataset, self.process_index = dataset, process_index
        self.data_dir = datasets.resolve_data_dir(data_dir)
        self.builder = datasets.get_builder(dataset, data_dir)
        self.family = datasets.facts(dataset)["family"]
        self.split = datasets.resolve_split(dataset, split)
        tfds = import_tfds()
        parts = tfds.even_splits(self.split, n=process_count, drop_remainder=drop_remainder)
        self.sizes = [datasets.num_examples(self.builder, dataset, part) for part in parts]
        self.num_examples = self.sizes[process_index]
        instructions = [
            i
            for i in self.builder.info.splits[parts[process_index]].file_instructions
            if i.take > 0
        ]
        self._files = tf.constant([i.filename for i in instructions], tf.string)
        self._skips = tf.constant([i.skip for i in instructions], tf.int64)
        self._takes = tf.constant([i.take for i in instructions], tf.int64)
        self._decoders = {"image": tfds.decode.SkipDecoding()}
        self._key = datasets.facts(dataset)["key"]

    def records(self, order_seed=None):
        """Serialized records of the shard; files in stored order, or permuted by order_seed [2]."""
        files, skips, takes = self._files, self._skips, self._takes
        num_files = int(self._files.shape[0])
        if order_seed is not None and num_files > 1:
            perm = tf.random.experimental.stateless_shuffle(tf.range(num_files), order_seed)
            files, skips, takes = (tf.gather(t, perm) for t in (files, skips, takes))
        return tf.data.Dataset.from_tensor_slices((files, skips, takes)).interleave(
            _plain(
                lambda f, skip, take: (
                    tf.data.TFRecordDataset(f, buffer_size=4 << 20).skip(skip).take(take)
                )
            ),
            cycle_length=max(1, min(num_files, 16)),
            block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )

    def parse(self, serialized):
        """(encoded image bytes, int32 label, string key) of one record; the image is not decoded."""
        ex = self.builder.info.features.deserialize_example(serialized, decoders=self._decoders)
        return ex["image"], tf.cast(ex["label"], tf.int32), ex[self._key]

    def first_corrupt(self, records, error):
        """CorruptImageError naming the undecodable examples among `records` (serialized, eager)."""
        bad, reason = [], _first_line(error)
        for serialized in records:
            image_bytes, _, key = self.parse(serialized)
            try:
                aug.decode(image_bytes)
            except tf.errors.InvalidArgumentError as e:
                bad.append(key.numpy().decode())
                reason = _first_line(e)
        where = f"{self.dataset} split {self.split!r} (process {self.process_index})"
        if (
            not bad
        ):  # not a bad image after all (e.g. a damaged record file): say where, no traceback
            return datasets.CorruptImageError(
                f"reading {where} failed: {reason}. If the prepared files are damaged, delete "
                f"{self.builder.data_dir} and prepare again with\n  "
                f"{datasets.prepare_command(self.dataset, self.data_dir)}"
            )
        return datasets.CorruptImageError(
            f"{where}: cannot decode the image of example(s) {', '.join(map(repr, bad))} ({reason}). "
            "The run stops rather than silently change the data: replace or delete that file in the "
            f"source archive and prepare the dataset again with\n  "
            f"{datasets.prepare_command(self.dataset, self.data_dir)}",
            keys=bad,
        )


def _first_line(error):
    """TensorFlow's error text without its '{{function_node ...}}' and '[[node ...]]' decorations."""
    text = re.sub(r"\{\{[^}]*\}\}\s*", "", str(getattr(error, "message", error)))
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


class BatchIterator:
    """Iterator of numpy batch dicts; `step` is the index of the next batch it yields.

    A decode failure becomes `CorruptImageError` with the example key; `len()` is defined for
    evaluation iterators (batches per process).
    """

    def __init__(self, ds, step, locate, num_batches=None):
        self._it = iter(ds.as_numpy_iterator())
        self._locate = locate
        self._num_batches = num_batches
        self.step = step

    def __iter__(self):
        return self

    def __len__(self):
        if self._num_batches is None:
            raise TypeError("a training iterator is endless")
        return self._num_batches

    def __next__(self):
        try:
            batch = next(self._it)
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
            raise self._locate(self.step, e) from None
        self.step += 1
        return batch


def _options(num_threads):
    options = tf.data.Options()
    options.deterministic = True
    # A private pool keeps the pipeline's threads from competing with other TF work in the process.
    options.threading.private_threadpool_size = num_threads or len(os.sched_getaffinity(0))
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from mapping many examples
    return options


def _finish(ds, batch_fn, num_threads):
    """Optional per-batch map, prefetch, options."""
    if batch_fn is not None:
        ds = ds.map(_plain(batch_fn), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options(num_threads))


def _normalizer(shard, normalization):
    """Function float32 [32, 32, 3] (0-255) -> normalised, for the 32x32 datasets."""
    st = stats_lib.normalization_stats(shard.builder, datasets.facts(shard.dataset)["train_split"])
    mean, std = stats_lib.mean_and_std(st, normalization)
    return lambda x: (x - mean) / std


def _check_choice(what, value, allowed, dataset):
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not available for {dataset}; choose from {allowed}")


def _check_image_size(dataset, family, image_size, augment, scale_range):
    native = datasets.facts(dataset)["image_size"]
    image_size = native if image_size is None else image_size
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if family == "cifar" and image_size != native:
        raise ValueError(
            f"{dataset} images are {native}x{native} and its pipeline crops at that size; "
            f"image_size={image_size} is not supported (use a {native}x{native} model)."
        )
    if augment == "paper" and image_size > scale_range[0]:
        raise ValueError(
            f"image_size {image_size} exceeds the smallest scale {scale_range[0]} of the "
            f"paper's scale augmentation {tuple(scale_range)}: the crop would not fit."
        )
    return int(image_size)


def train_iterator(
    dataset,
    *,
    data_dir,
    local_batch_size,
    seed,
    start_step=0,
    process_index=0,
    process_count=1,
    augment=None,
    image_size=None,
    split=None,
    normalization=None,
    scale_range=(256, 480),
    shuffle_buffer=None,
    num_threads=None,
):
    """Endless iterator of {'image': float32 [b, H, W, 3] (normalised), 'label': int32 [b]}.

    b = local_batch_size. augment: ImageNet 'paper' (default; He2015 scale augmentation + PCA
    lighting), 'inception' or 'none'; 32x32 datasets 'cifar' (default; pad-4 crop + flip) or 'none'.
    normalization (32x32 datasets): 'per_pixel_mean' (default, He2015) or 'per_channel'.
    split: any tfds split string, or 'train45k' for CIFAR's 45k/5k protocol; default the train split.
    """
    family = datasets.facts(dataset)["family"]
    augment = augment or TRAIN_AUGMENTS[family][0]
    _check_choice("augment", augment, TRAIN_AUGMENTS[family], dataset)
    normalization = datasets.normalization_of(dataset, normalization)
    _check_choice("normalization", normalization, NORMALIZATIONS[family], dataset)
    image_size = _check_image_size(dataset, family, image_size, augment, scale_range)
    if local_batch_size < 1 or start_step < 0:
        raise ValueError(
            f"need local_batch_size >= 1 and start_step >= 0, got {local_batch_size}, {start_step}"
        )
    split = split or datasets.facts(dataset)["train_split"]
    # Equal shards (drop the few-example remainder) so every process has the same epoch length.
    shard = _Shard(dataset, data_dir, split, process_index, process_count, drop_remainder=True)
    n = shard.num_examples
    if n < local_batch_size:
        raise ValueError(
            f"{dataset} split {shard.split!r} gives process {process_index} of "
            f"{process_count} only {n} examples, fewer than one batch of "
            f"{local_batch_size}; use a smaller batch or a larger split."
        )
    buffer = shuffle_buffer or _SHUFFLE_BUFFER.get(dataset, _DEFAULT_SHUFFLE_BUFFER)
    order_base = tf.constant(_mix(seed, process_index, 1), tf.int64)
    aug_base = tf.constant(_mix(seed, process_index, 2), tf.int64)

    if family == "imagenet":
        crop = {
            "paper": lambda b, s: aug.paper_train(b, s, image_size, scale_range),
            "inception": lambda b, s: aug.inception_train(b, s, image_size),
            "none": lambda b, s: aug.center_eval(b, image_size),
        }[augment]

        def preprocess(image_bytes, seed):
            s_crop, s_light = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            light = aug.pca_lighting_offset(s_light) if augment == "paper" else tf.zeros([3])
            return {"image": crop(image_bytes, s_crop), "light": light}

        def finish(batch):  # normalising whole batches is far cheaper than per example
            light = batch.pop("light")[:, None, None, :]
            return dict(batch, image=aug.normalize_imagenet(batch["image"], light))
    else:
        norm = _normalizer(shard, normalization)
        crop = aug.cifar_train if augment == "cifar" else (lambda x, s: x)
        preprocess = lambda b, s: {"image": crop(norm(tf.cast(aug.decode(b), tf.float32)), s)}
        finish = None

    def stream(start):
        """(position, serialized record) from stream position `start` on, nothing decoded."""
        epoch0, offset = divmod(start, n)

        def epoch_records(epoch):
            epoch_seed = tf.stack([order_base, epoch])
            shuffle_seed = tf.random.stateless_uniform([], epoch_seed, 0, 2**62, tf.int64)
            return shard.records(order_seed=epoch_seed).shuffle(buffer, seed=shuffle_seed)

        records = tf.data.Dataset.range(epoch0, _NO_END).flat_map(_plain(epoch_records))
        return tf.data.Dataset.zip(tf.data.Dataset.counter(epoch0 * n), records).skip(offset)

    def example(position, serialized):
        image_bytes, label, _ = shard.parse(serialized)
        out = preprocess(image_bytes, tf.stack([aug_base, position]))
        out["image"] = tf.ensure_shape(out["image"], [image_size, image_size, 3])
        return dict(out, label=label)

    ds = (
        stream(start_step * local_batch_size)
        .map(_plain(example), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(local_batch_size, drop_remainder=True)
    )
    ds = _finish(ds, finish, num_threads)

    def locate(step, error):
        records = stream(step * local_batch_size).take(local_batch_size).map(_plain(lambda p, r: r))
        return shard.first_corrupt(records, error)

    return BatchIterator(ds, start_step, locate)


def eval_iterator(
    dataset,
    *,
    data_dir,
    local_batch_size,
    process_index=0,
    process_count=1,
    split=None,
    views="center",
    scale=None,
    image_size=None,
    normalization=None,
    num_threads=None,
):
    """Finite iterator over every example of the split exactly once (per process: its shard).

    Yields {'image': float32 [b, H, W, 3], or [b, V, H, W, 3] for views '10crop' (V=10, shorter
    side `scale`, default 256) and 'multiscale' (V=2: centred square at shorter side `scale`, and
    its mirror), 'label': int32 [b], 'mask': bool [b]}. Rows past the end of the shard are zeros with
    mask=False; every process yields the same number of batches, `len(iterator)`.
    """
    family = datasets.facts(dataset)["family"]
    _check_choice("views", views, EVAL_VIEWS[family], dataset)
    normalization = datasets.normalization_of(dataset, normalization)
    _check_choice("normalization", normalization, NORMALIZATIONS[family], dataset)
    image_size = _check_image_size(dataset, family, image_size, None, None)
    if local_batch_size < 1:
        raise ValueError(f"local_batch_size must be >= 1, got {local_batch_size}")
    if views == "multiscale" and not (isinstance(scale, (int, np.integer)) and scale >= 1):
        raise ValueError(
            "views='multiscale' needs the shorter side as an int `scale`, e.g. one of "
            "224, 256, 384, 480, 640 (one iterator per scale)"
        )
    if views == "10crop" and (scale or 256) < image_size:
        raise ValueError(f"10crop scale {scale} is smaller than the {image_size} crop")
    split = split or datasets.facts(dataset)["eval_split"]
    shard = _Shard(dataset, data_dir, split, process_index, process_count, drop_remainder=False)

    finish, pad_value = None, 0.0
    if family == "imagenet":
        finish = lambda batch: dict(batch, image=aug.normalize_imagenet(batch["image"]))
        pad_value = aug.IMAGENET_MEAN  # normalises to 0
        preprocess, shape = {
            "center": (lambda b: aug.center_eval(b, image_size), [image_size, image_size, 3]),
            "10crop": (
                lambda b: aug.ten_crop_eval(b, image_size, scale or 256),
                [10, image_size, image_size, 3],
            ),
            "multiscale": (lambda b: aug.multiscale_eval(b, scale), [2, scale, scale, 3]),
        }[views]
    else:
        norm = _normalizer(shard, normalization)
        preprocess, shape = (lambda b: norm(tf.cast(aug.decode(b), tf.float32))), [32, 32, 3]

    def example(serialized):
        image_bytes, label, _ = shard.parse(serialized)
        return {
            "image": tf.ensure_shape(preprocess(image_bytes), shape),
            "label": label,
            "mask": tf.constant(True),
        }

    num_batches = math.ceil(max(shard.sizes) / local_batch_size)
    padding = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros(shape, tf.float32) + pad_value,
            "label": tf.constant(0, tf.int32),
            "mask": tf.constant(False),
        }
    ).repeat(num_batches * local_batch_size - shard.num_examples)
    ds = (
        shard.records()
        .map(_plain(example), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .concatenate(padding)
        .batch(local_batch_size, drop_remainder=True)
    )
    ds = _finish(ds, finish, num_threads)

    def locate(step, error):
        records = shard.records().skip(step * local_batch_size).take(local_batch_size)
        return shard.first_corrupt(records, error)

    return BatchIterator(ds, 0, locate, num_batches=num_batches)
