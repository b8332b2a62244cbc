"""Normalisation of 32x32 images on the device: one function, whichever path brought the pixels.

The statistics come from the training split (`stats.from_batches`, `stats.mean_and_std`); this is
the arithmetic, in JAX, so it runs inside jitted code next to the model.
"""

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """(images - mean) / std as float32.

    images: uint8 or float [..., 32, 32, 3] on the 0-255 scale; mean and std broadcast against it
    (the per-pixel mean image [32, 32, 3] and a scalar std, or channel values [3]).
    """
    return (images.astype(jnp.float32) - mean) / std
