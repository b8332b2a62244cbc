"""Per-process tf.data pipelines yielding numpy batches (the trainer makes them global jax.Arrays).

Order. Process p of P reads its own contiguous shard of the split (`tfds.even_splits`). Epoch e
of that shard is a permutation that is a pure function of (seed, p, e): the shard's files are
permuted and interleaved deterministically, then shuffled through a buffer, all seeded statelessly
from (seed, p, e). Batches run straight across epoch boundaries, so batch k always holds stream
positions [k*b, (k+1)*b). Resuming at `start_step=k` starts at epoch k*b // n and skips the
k*b % n records before it *before* decoding, then continues exactly as an uninterrupted run.
Augmentation seeds are (seed, p, stream position), so resumed augmentations match too.

Batches hold uint8 pixels and the per-example draws that the device applies (mirror, PCA
lighting, the 32x32 pad-and-crop): `resnet_jax.data.finish` turns them into model inputs inside
the jitted step, so the host decodes, crops and resizes, and nothing else.

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
from resnet_jax.data import finish as finish_lib
from resnet_jax.data import stats as stats_lib
from resnet_jax.data._tf import import_tf, import_tfds, split_size
from resnet_jax.data.errors import CorruptImageError

tf = import_tf()
# The mapped functions have no Python control flow on tensors; skipping autograph's source
# conversion halves the time to build a pipeline.
_plain = tf.autograph.experimental.do_not_convert

# Encoded ImageNet records are ~110 KB (a folder's JPEGs at BiT's 448 side too): 10k of them
# (1.1 GB) plus file-order shuffling mixes well. The 32x32 datasets fit whole (<= 65k records of
# ~3 KB), which makes each epoch a full permutation.
_JPEG_SHUFFLE_BUFFER = 10_000
_PAPER_SCALES = (256, 480)  # He2015's shorter sides for 224 crops
_DEFAULT_SHUFFLE_BUFFER = 65_536
_NO_END = 2**40  # epochs: "forever"


def _mix(*ints):
    """A 63-bit seed from several ints (SeedSequence hashing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence(list(ints)).generate_state(1, np.uint64)[0] >> np.uint64(1))


class _Shard:
    """One process's slice of a prepared split: its record files and how to parse a record."""

    def __init__(self, d, split, process_index, process_count, drop_remainder):
        if not 0 <= process_index < process_count:
            raise ValueError(
                f"process_index {process_index} is not in [0, process_count={process_count})"
            )
        self.d, self.process_index = d, process_index
        self.builder = d.source.builder(d)
        self.split = split
        tfds = import_tfds()
        parts = tfds.even_splits(self.split, n=process_count, drop_remainder=drop_remainder)
        self.sizes = [split_size(self.builder, d.name, part) for part in parts]
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
        self._key = d.source.key

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
            why = self._undecodable(image_bytes)
            if why:
                bad.append(key.numpy().decode())
                reason = why
        where = f"{self.d.name} split {self.split!r} (process {self.process_index})"
        if not bad:  # not a bad image after all (a damaged record file): say where, no traceback
            return CorruptImageError(
                f"reading {where} failed: {reason}. If the prepared files are damaged, delete "
                f"{self.builder.data_dir} and prepare again with\n  {self.d.prepare_command()}"
            )
        return CorruptImageError(
            f"{where}: cannot decode the image of example(s) {', '.join(map(repr, bad))} ({reason}). "
            "The run stops rather than silently change the data: replace or delete that file in the "
            f"source archive and prepare the dataset again with\n  {self.d.prepare_command()}",
            keys=bad,
        )

    def _undecodable(self, image_bytes):
        """Why the pipeline cannot decode this image (eager), or None."""
        if self.d.jpeg_crops and not tf.io.is_jpeg(image_bytes):
            return "not a JPEG: ImageNet crops are cut out of JPEGs only"
        try:
            aug.decode(image_bytes)
        except tf.errors.InvalidArgumentError as e:
            return _first_line(e)
        return None


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


def prefetched(ds, num_threads):
    """`ds` prefetched, with the pipeline's options (`num_threads`: None for every core)."""
    options = tf.data.Options()
    options.deterministic = True
    # A private pool keeps the pipeline's threads from competing with other TF work in the process.
    options.threading.private_threadpool_size = num_threads or len(os.sched_getaffinity(0))
    options.threading.max_intra_op_parallelism = 1  # parallelism comes from mapping many examples
    return ds.prefetch(tf.data.AUTOTUNE).with_options(options)


def finish_for(d, *, normalization=None):
    """The `finish.Finish` that turns this pipeline's batches of the record `d` into model inputs:
    `normalization` (None: the record's default) with statistics of the full training split (the
    source's `host_stats`), or 'mean_std', ImageNet's (what ImageNet weights expect, and
    ImageNet's own)."""
    normalization = normalization or d.normalizations[0]
    _check_choice("normalization", normalization, d.normalizations, d.name)
    if normalization == "mean_std":
        return finish_lib.IMAGENET
    return finish_lib.Finish(*stats_lib.mean_and_std(d.source.host_stats(d), normalization))


def _check_choice(what, value, allowed, dataset):
    if value not in allowed:
        raise ValueError(f"{what}={value!r} is not available for {dataset}; choose from {allowed}")


def _check_image_size(d, augment, scale_range):
    image_size = d.image_size
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if not d.jpeg_crops and image_size != d.array_size:
        raise ValueError(
            f"{d.name} images are {d.array_size}x{d.array_size} and its pipeline crops at that "
            f"size; image_size={image_size} is not supported (use a {d.array_size}x"
            f"{d.array_size} model)."
        )
    if augment == "paper" and image_size > scale_range[0]:
        raise ValueError(
            f"image_size {image_size} exceeds the smallest scale {scale_range[0]} of the "
            f"paper's scale augmentation {tuple(scale_range)}: the crop would not fit."
        )
    return int(image_size)


def _window_fn(augment, image_size, scale_range):
    """(JPEG bytes, seed) -> (crop window [y, x, h, w], flip) of an ImageNet training augment."""
    draw = {
        "paper": lambda hw, s: aug.paper_window(hw, s, image_size, scale_range),
        "inception": aug.inception_window,
        "none": lambda hw, s: (aug.center_window(hw, image_size), tf.constant(False)),
    }[augment]
    return lambda image_bytes, seed: draw(aug.jpeg_shape(image_bytes), seed)


class _TrainStream:
    """The checked options of a training iterator and its record stream (nothing decoded)."""

    def __init__(
        self,
        d,
        local_batch_size,
        seed,
        *,
        augment,
        scale_range,
        process_index=0,
        process_count=1,
        split=None,
        shuffle_buffer=None,
    ):
        augment = augment or d.augments[0]
        _check_choice("augment", augment, d.augments, d.name)
        scale_range = scale_range or tuple(d.test_scale(s) for s in _PAPER_SCALES)
        self.image_size = _check_image_size(d, augment, scale_range)
        if local_batch_size < 1:
            raise ValueError(f"need local_batch_size >= 1, got {local_batch_size}")
        # Equal shards (drop the few-example remainder) so every process has the same epoch length.
        shard = _Shard(d, d.resolve_split(split), process_index, process_count, True)
        if shard.num_examples < local_batch_size:
            raise ValueError(
                f"{d.name} split {shard.split!r} gives process {process_index} of "
                f"{process_count} only {shard.num_examples} examples, fewer than one batch of "
                f"{local_batch_size}; use a smaller batch or a larger split."
            )
        self.shard, self.jpeg_crops, self.augment = shard, d.jpeg_crops, augment
        if d.jpeg_crops:
            self._draw_window = _window_fn(augment, self.image_size, scale_range)
        self.buffer = shuffle_buffer or (
            _JPEG_SHUFFLE_BUFFER if d.jpeg_crops else _DEFAULT_SHUFFLE_BUFFER
        )
        self.order_base = tf.constant(_mix(seed, process_index, 1), tf.int64)
        self.aug_base = tf.constant(_mix(seed, process_index, 2), tf.int64)

    def records(self, start):
        """(position, serialized record) from stream position `start` on, nothing decoded."""
        n = self.shard.num_examples
        epoch0, offset = divmod(start, n)

        def epoch_records(epoch):
            epoch_seed = tf.stack([self.order_base, epoch])
            shuffle_seed = tf.random.stateless_uniform([], epoch_seed, 0, 2**62, tf.int64)
            return self.shard.records(order_seed=epoch_seed).shuffle(self.buffer, seed=shuffle_seed)

        records = tf.data.Dataset.range(epoch0, _NO_END).flat_map(_plain(epoch_records))
        return tf.data.Dataset.zip(tf.data.Dataset.counter(epoch0 * n), records).skip(offset)

    def example_seed(self, position):
        return tf.stack([self.aug_base, position])

    def crop_window(self, image_bytes, seed):
        """(window [y, x, h, w], flip) of an ImageNet example: its crop drawn from its seed."""
        return self._draw_window(image_bytes, aug.split_seed(seed, 2)[0])

    def preprocess(self, image_bytes, seed):
        """One example's dict: uint8 'image' and the draws `finish` applies on the device."""
        if not self.jpeg_crops:
            out = {"image": aug.decode(image_bytes)}
            if self.augment == "cifar":
                out["crop"], out["flip"] = aug.cifar_draws(seed, finish_lib.PAD)
        else:
            s_crop, s_light = aug.split_seed(seed, 2)  # the crop's and the lighting's
            window, flip = self._draw_window(image_bytes, s_crop)
            out = {"image": aug.jpeg_crop_resize(image_bytes, window, self.image_size)}
            if self.augment != "none":
                out["flip"] = flip
            if self.augment == "paper":
                out["light"] = aug.pca_lighting_offset(s_light)
        out["image"] = tf.ensure_shape(out["image"], [self.image_size, self.image_size, 3])
        return out

    def batches(self, start_step, local_batch_size, example, num_threads):
        """BatchIterator of `example(image_bytes, seed) -> dict` mapped over the stream from batch
        `start_step` on (labels added), batched."""
        if start_step < 0:
            raise ValueError(f"need start_step >= 0, got {start_step}")

        def mapped(position, serialized):
            image_bytes, label, _ = self.shard.parse(serialized)
            return dict(example(image_bytes, self.example_seed(position)), label=label)

        ds = (
            self.records(start_step * local_batch_size)
            .map(_plain(mapped), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(local_batch_size, drop_remainder=True)
        )

        def locate(step, error):
            records = self.records(step * local_batch_size).take(local_batch_size)
            return self.shard.first_corrupt(records.map(_plain(lambda p, r: r)), error)

        return BatchIterator(prefetched(ds, num_threads), start_step, locate)


def train_iterator(
    d,
    *,
    local_batch_size,
    seed,
    start_step=0,
    process_index=0,
    process_count=1,
    augment=None,
    split=None,
    scale_range=None,
    shuffle_buffer=None,
    num_threads=None,
):
    """Endless iterator over the record `d` (`catalog.open(..., input_pipeline='host')`) of
    {'image': uint8 [b, H, W, 3], 'label': int32 [b], ...draws}.

    b = local_batch_size. The draws that `finish.Finish` applies on the device: ImageNet 'paper'
    adds 'flip' bool [b] and 'light' float32 [b, 3], 'inception' adds 'flip'; 32x32 'cifar' adds
    'crop' int32 [b, 2] and 'flip'. augment: ImageNet 'paper' (default; He2015 scale augmentation
    + PCA lighting), 'inception' or 'none'; 32x32 datasets 'cifar' (default; pad-4 crop + flip)
    or 'none'. split: any tfds split string, or 'train45k' for CIFAR's 45k/5k protocol; default
    the train split. scale_range: the 'paper' shorter sides, (256, 480) (for a folder scaled by
    image_size / 224).
    """
    ts = _TrainStream(
        d,
        local_batch_size,
        seed,
        augment=augment,
        scale_range=scale_range,
        process_index=process_index,
        process_count=process_count,
        split=split,
        shuffle_buffer=shuffle_buffer,
    )
    return ts.batches(start_step, local_batch_size, ts.preprocess, num_threads)


def eval_iterator(
    d,
    *,
    local_batch_size,
    process_index=0,
    process_count=1,
    split=None,
    views="center",
    scale=None,
    num_threads=None,
):
    """Finite iterator over every example of the record `d`'s split exactly once (per process:
    its shard).

    Yields {'image': uint8 [b, H, W, 3], or [b, V, H, W, 3] for views '10crop' (V=10, shorter
    side `scale`, default 256) and 'multiscale' (V=2: centred square at shorter side `scale`, and
    its mirror), 'label': int32 [b], 'mask': bool [b]}. Rows past the end of the shard are zeros with
    mask=False; every process yields the same number of batches, `len(iterator)`.
    """
    _check_choice("views", views, d.eval_views, d.name)
    image_size = _check_image_size(d, None, None)
    if scale is not None or views == "10crop":
        scale = d.test_scale(scale or 256)
    if local_batch_size < 1:
        raise ValueError(f"local_batch_size must be >= 1, got {local_batch_size}")
    if views == "multiscale" and not (isinstance(scale, (int, np.integer)) and scale >= 1):
        raise ValueError(
            "views='multiscale' needs the shorter side as an int `scale`, e.g. one of "
            "224, 256, 384, 480, 640 (one iterator per scale)"
        )
    if views == "10crop" and (scale or 256) < image_size:
        raise ValueError(f"10crop scale {scale} is smaller than the {image_size} crop")
    shard = _Shard(d, d.resolve_split(split, d.eval_split), process_index, process_count, False)

    if d.jpeg_crops:
        preprocess, shape = {
            "center": (
                lambda b: aug.center_eval(b, image_size, jpeg_only=True),
                [image_size, image_size, 3],
            ),
            "10crop": (
                lambda b: aug.ten_crop_eval(b, image_size, scale or 256),
                [10, image_size, image_size, 3],
            ),
            "multiscale": (lambda b: aug.multiscale_eval(b, scale), [2, scale, scale, 3]),
        }[views]
    else:
        preprocess, shape = aug.decode, [image_size, image_size, 3]

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
            "image": tf.zeros(shape, tf.uint8),
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

    def locate(step, error):
        records = shard.records().skip(step * local_batch_size).take(local_batch_size)
        return shard.first_corrupt(records, error)

    return BatchIterator(prefetched(ds, num_threads), 0, locate, num_batches=num_batches)
