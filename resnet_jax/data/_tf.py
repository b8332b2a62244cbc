"""The one place that imports TensorFlow, so that it never takes an accelerator.

TensorFlow is only the host input pipeline here: JAX owns every GPU/TPU. Hiding the GPUs from TF
must happen before TF initialises its devices, so every module of `resnet_jax.data` that needs TF
gets it through `import_tf()` instead of `import tensorflow`.

TensorFlow stays silent unless asked: its native libraries print start-up notes (oneDNN, absl's
"before InitializeLog") straight to file descriptor 2 whatever TF_CPP_MIN_LOG_LEVEL says, so the
import runs with that descriptor on /dev/null; TF_CPP_MIN_LOG_LEVEL=0 or 1 lets them through.
"""

import contextlib
import functools
import logging
import os
import sys


@contextlib.contextmanager
def _native_stderr_silenced():
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@functools.cache
def import_tf():
    """Returns the `tensorflow` module with all GPUs hidden from it (idempotent)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet = os.environ["TF_CPP_MIN_LOG_LEVEL"] >= "2"
    with _native_stderr_silenced() if quiet else contextlib.nullcontext():
        import tensorflow as tf  # pylint: disable=g-import-not-at-top

        tf.constant(0)  # initialises the runtime, which prints its own notes
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        # Devices were already initialised by someone who imported TF first; say so loudly rather than
        # silently sharing the accelerator memory with JAX.
        if tf.config.get_visible_devices("GPU"):
            logging.warning(
                "TensorFlow was initialised before resnet_jax.data could hide the GPUs from it; "
                "it may reserve accelerator memory. Import resnet_jax.data first."
            )
    return tf


@functools.cache
def import_tfds():
    """Returns `tensorflow_datasets`, after TF has been imported with GPUs hidden."""
    import_tf()
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    return tfds


def split_size(builder, name, split):
    """Examples of `split` (a tfds split string) in a prepared builder of dataset `name`."""
    try:
        return builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"{name} has no split {split!r} (prepared splits: "
            f"{', '.join(builder.info.splits)}): {e}"
        ) from None
