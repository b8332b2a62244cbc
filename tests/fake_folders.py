"""Folders of images in the ImageFolder layout (ROOT/<split>/<class>/<image>), built by the tests."""

import os

import numpy as np
from PIL import Image

from resnet_jax.data import shapes


def write_shapes_folder(root, num_train=60, num_test=30, fmt="png"):
    """shapes10's renderer written out as image files: train from its train seed, test from its
    test seed, file `NNNN.png` = example NNNN of the render. Returns (images, labels) per split."""
    rendered = {
        "train": shapes.render(num_train, shapes.SEED),
        "test": shapes.render(num_test, shapes.SEED + 1),
    }
    for split, (images, labels) in rendered.items():
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            folder = os.path.join(root, split, shapes.CLASS_NAMES[label])
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(image).save(os.path.join(folder, f"{i:04d}.{fmt}"))
    return rendered


def folder_order(labels):
    """The order a folder lists a render's examples: by class name, then by file name (index)."""
    names = np.array(shapes.CLASS_NAMES)[labels]
    return np.lexsort((np.arange(len(labels)), names))


def write_images(folder, images):
    """{file name: PIL image} saved into `folder` (format from the suffix)."""
    os.makedirs(folder, exist_ok=True)
    for name, image in images.items():
        image.save(os.path.join(folder, name))


COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230), (200, 200, 40))


def write_class_folders(root, counts, side=32, seed=0):
    """Folders of `counts[k]` PNGs of class k, each `side` px: a plain colour of its class
    (COLOURS[k]) under noise, so that a few steps tell them apart. Returns the written paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for k, (cls, n) in enumerate(counts.items()):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            noise = rng.normal(0, 30, (side, side, 3))
            image = np.clip(np.array(COLOURS[k]) + noise, 0, 255).astype(np.uint8)
            paths.append(os.path.join(root, cls, f"{cls}_{i:03d}.png"))
            Image.fromarray(image).save(paths[-1])
    return paths
