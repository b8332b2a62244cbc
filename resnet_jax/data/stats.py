"""Normalisation statistics of the 32x32 datasets, computed once from the training split.

He2015 Sec. 4.2 subtracts the per-pixel mean of the CIFAR training images; the per-channel
alternative divides by channel standard deviations. Both come from the full canonical training split
(the 5k held out by the 45k/5k protocol included: a mean image leaks nothing useful), and are
cached next to the prepared data so that every process and every run use identical numbers.
"""

import os

import numpy as np

from resnet_jax.data._tf import import_tf

_FILE = "resnet_jax_norm_stats.npz"


def from_batches(batches):
    """Statistics of uint8 (or 0-255 float) images given as an iterable of [b, 32, 32, 3] arrays.

    Sums run in float64, so the result does not depend on how the images are batched beyond the
    last bits of float64, far below float32's resolution.
    """
    count, total, total_sq = 0, 0.0, 0.0
    for batch in batches:
        batch = np.asarray(batch, np.float64)
        count += batch.shape[0]
        total = total + batch.sum(0)
        total_sq = total_sq + (batch * batch).sum(0)
    mean_image = total / count  # [32, 32, 3]
    channel_mean = mean_image.mean((0, 1))  # [3]
    channel_var = (total_sq / count).mean((0, 1)) - channel_mean**2
    centred_var = (total_sq / count - mean_image**2).mean()  # variance left after the mean image
    return dict(
        mean_image=mean_image.astype(np.float32),
        channel_mean=channel_mean.astype(np.float32),
        channel_std=np.sqrt(channel_var).astype(np.float32),
        pixel_std=np.float32(np.sqrt(centred_var)),
        count=np.int64(count),
    )


def mean_and_std(stats, normalization):
    """(mean, std) that `normalization` subtracts and divides by, broadcastable to [..., 32, 32, 3].

    'per_pixel_mean' (He2015): the mean image [32, 32, 3] and one scalar std of what it leaves;
    'per_channel': channel means and standard deviations [3].
    """
    if normalization == "per_pixel_mean":
        return stats["mean_image"], stats["pixel_std"]
    if normalization == "per_channel":
        return stats["channel_mean"], stats["channel_std"]
    raise ValueError(
        f"normalization={normalization!r} is not one of 'per_pixel_mean', 'per_channel'"
    )


def _compute(builder, split):
    """Statistics of all images of `split`, read in order with tf.data."""
    tf = import_tf()
    to_float = tf.autograph.experimental.do_not_convert(lambda ex: tf.cast(ex["image"], tf.float64))
    ds = (
        builder.as_dataset(split=split, shuffle_files=False)
        .map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(1000)
    )
    return from_batches(ds.as_numpy_iterator())


def normalization_stats(builder, split="train"):
    """{'mean_image' [32, 32, 3], 'channel_mean' [3], 'channel_std' [3], 'pixel_std' [], 'count'}.

    Values are on the 0-255 scale. Cached in the prepared dataset's folder; when that folder is
    read-only the statistics are recomputed (a few seconds for 50k images).
    """
    path = os.path.join(str(builder.data_dir), _FILE)
    if os.path.exists(path):
        with np.load(path) as cached:
            return dict(cached)
    stats = _compute(builder, split)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **stats)
        os.replace(tmp, path)  # atomic: concurrent processes write identical content
    except OSError:
        pass  # read-only dataset folder: recompute next time
    return stats
