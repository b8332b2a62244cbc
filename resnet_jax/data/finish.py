"""Batches -> model inputs, on the device: the one place where pixels become normalised floats.

Every input path (the host tf.data pipeline, the device-resident 32x32 splits, synthetic data)
yields batches of uint8 pixels plus the few per-example augmentation draws that are cheaper to
apply on the accelerator than on the host:

  'image'  uint8 [B, H, W, 3], or [B, V, H, W, 3] for multi-view evaluation, 0-255 scale
  'label'  int32 [B]
  'light'  float32 [B, 3], optional: an RGB offset on the 0-255 scale (AlexNet PCA lighting)
  'flip'   bool [B], optional: mirror the image left-right
  'crop'   int32 [B, 2], optional: (dy, dx) of a crop of the image zero-padded by pad_for(S) per
           side *after* normalisation (He2015's CIFAR augmentation); implies the crop's size is
           the image's and 'flip' is given too
  'mask'   bool [B], evaluation only

`Finish(mean, std)` turns such a batch into float32 model inputs, [B, H, W, 3] (or
[B, V, H, W, 3]). The train, eval and predict steps call it inside their jitted function, so the
host never touches floats and a batch crosses to the device in a quarter of the bytes of float32.
It also accepts float images on the 0-255 scale.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

# Channel statistics of ImageNet on the 0-255 scale (the values torchvision and flax use).
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
PAD = 4  # pixels of zero padding per side before the 32x32 datasets' random crop


def pad_for(size: int) -> int:
    """Padding per side of the pad-and-crop augmentation at `size`: He2015's 4 at 32, the same
    eighth of the side at other sizes (16 at 128: shifts of up to 16 pixels, as BiT's random 128
    crops of a 160 image)."""
    return max(1, size * PAD // 32)


AUGMENT_KEYS = ("light", "flip", "crop")


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """(images - mean) / std as float32.

    images: uint8 or float [..., H, W, 3] on the 0-255 scale; mean and std broadcast against it
    (a per-pixel mean image [H, W, 3] and a scalar std, or channel values [3]).
    """
    return (images.astype(jnp.float32) - mean) / std


def pad_crop_flip(images, offsets, flips, mean, std) -> jax.Array:
    """float32 [B, S, S, 3]: images normalised, padded by p = pad_for(S) zeros, cropped, mirrored.

    images: uint8 [B, S, S, 3]; offsets: int [B, 2], the crop's top-left corner in the padded
    image; flips: bool [B]; mean / std: see `normalize`. Output pixel (y, x) is source pixel
    (y + dy - p, x' + dx - p) with x' = S - 1 - x when flipped, or 0 (the mean, after
    normalisation) when that lies outside the image. One gather with a mask: no padded copy.
    """
    size = images.shape[1]
    pad = pad_for(size)
    r = jnp.arange(size)
    ys = r[None, :] + offsets[:, :1] - pad  # [B, S] source rows
    xs = jnp.where(flips[:, None], size - 1 - r, r) + offsets[:, 1:] - pad  # [B, S] source columns
    inside = ((ys >= 0) & (ys < size))[:, :, None] & ((xs >= 0) & (xs < size))[:, None, :]
    ys, xs = jnp.clip(ys, 0, size - 1)[:, :, None], jnp.clip(xs, 0, size - 1)[:, None, :]
    # A per-pixel mean moves with its pixel: gather it with the same indices.
    mean = jnp.broadcast_to(jnp.asarray(mean, jnp.float32), images.shape[1:])[ys, xs]
    rows = jnp.arange(images.shape[0])[:, None, None]
    pixels = normalize(images[rows, ys, xs], mean, std)
    return jnp.where(inside[..., None], pixels, 0.0)


def model_inputs(batch: Mapping[str, jax.Array], mean, std) -> jax.Array:
    """float32 model inputs of a batch (see the module docstring for its keys)."""
    images = batch["image"]
    if "crop" in batch:
        if "light" in batch:
            raise ValueError("a batch with 'crop' (32x32 augmentation) cannot carry 'light'")
        return pad_crop_flip(images, batch["crop"], batch["flip"], mean, std)
    x = images.astype(jnp.float32)
    if "light" in batch:  # before normalising: the offset is on the 0-255 scale
        x = x + batch["light"].reshape((-1,) + (1,) * (x.ndim - 2) + (3,))
    x = normalize(x, mean, std)
    if "flip" in batch:
        flip = batch["flip"].reshape((-1,) + (1,) * (x.ndim - 1))
        x = jnp.where(flip, jnp.flip(x, axis=-2), x)
    return x


@dataclasses.dataclass(frozen=True, eq=False)
class Finish:
    """`finish(batch) -> float32 model inputs`: cast, lighting, normalisation, crop and flip.

    mean / std: float32 arrays on the 0-255 scale that broadcast against [H, W, 3] (channel values
    [3], or a mean image [H, W, 3] with a scalar std). They become constants of the jitted step.
    size: when set, the finished images are resized (bilinear) to [size, size]: a 32x32 dataset
    held in device memory at its own size is fine-tuned upsampled (BiT-HyperRule) without holding
    16 times the pixels.
    """

    mean: np.ndarray
    std: np.ndarray
    size: int | None = None

    def __post_init__(self):
        for name in ("mean", "std"):
            value = np.asarray(getattr(self, name), np.float32)
            if value.ndim not in (0, 1, 3) or (value.ndim and value.shape[-1] != 3):
                raise ValueError(
                    f"Finish {name} must be a scalar, [3] or [H, W, 3], got shape {value.shape}"
                )
            object.__setattr__(self, name, value)
        if (self.std <= 0).any():
            raise ValueError(f"Finish std must be positive, got {self.std}")

    def __call__(self, batch: Mapping[str, jax.Array]) -> jax.Array:
        image = batch["image"]
        if image.ndim not in (4, 5) or image.shape[-1] != 3:
            raise ValueError(
                f"batch['image'] must be [B, H, W, 3] or [B, V, H, W, 3], got {image.shape}"
            )
        x = model_inputs(batch, self.mean, self.std)
        if self.size is None or x.shape[-3:-1] == (self.size, self.size):
            return x
        shape = x.shape[:-3] + (self.size, self.size, x.shape[-1])
        return jax.image.resize(x, shape, method="bilinear", antialias=False)


IMAGENET = Finish(np.array(IMAGENET_MEAN), np.array(IMAGENET_STD))


def images_for_model(batch: Mapping[str, jax.Array], finish) -> jax.Array:
    """`finish(batch)`; without a finish, batch['image'] as it is (already model inputs).

    uint8 images without a finish are refused: they would reach the model on the 0-255 scale.
    """
    if finish is not None:
        return finish(batch)
    images = batch["image"]
    if images.dtype == jnp.uint8:
        raise ValueError(
            "the batch holds uint8 pixels but the step has no `finish` to normalise them; pass "
            "the input path's Finish (e.g. resnet_jax.data.finish.IMAGENET) to the step"
        )
    return images
