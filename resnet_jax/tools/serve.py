"""Classify images with a model exported by `python -m resnet_jax.export`; needs only jax.

`python -m resnet_jax.export` copies this file next to each artefact as `serve.py`, so the folder
it writes is all a server needs: `model.jax_export` (the serialised StableHLO program, weights,
normalisation and softmax included), `model.json` (class names, input size, crop) and this file.

    import serve
    classify, meta = serve.load("exported/")        # or load() for this file's own folder
    probs = classify(images)                        # uint8 [B, S, S, 3] -> float32 [B, K]

    python serve.py IMAGES.npy [IMAGE.jpg ...]      # top-5 of each image, or with --json the
                                                    # probabilities too

`.npy` files hold uint8 [S, S, 3] or [B, S, S, 3] arrays, already cropped as `meta['crop']` says
(exactly what the run's own evaluation fed its model). Image files need Pillow: the shorter side is
resized to `meta['resize_shorter_side']` (bilinear) and the centre S x S kept, which is close to,
but not bit for bit, the run's TensorFlow resize.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_K = 5


def load(directory: str = HERE):
    """(classify, meta): classify(uint8 [B, S, S, 3]) -> float32 [B, K] class probabilities, any
    B; meta: model.json."""
    with open(os.path.join(directory, "model.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(directory, meta["artefact"]), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return (lambda images: np.asarray(exported.call(np.asarray(images, np.uint8)))), meta


def read_image(path: str, meta: dict) -> np.ndarray:
    """uint8 [S, S, 3]: an image file resized and centre-cropped as `meta` says (needs Pillow)."""
    try:
        from PIL import Image
    except ImportError:
        raise SystemExit(
            f"reading {path} needs Pillow (pip install pillow); or pass a .npy array of the "
            "cropped images"
        ) from None
    size, side = meta["image_size"], meta["resize_shorter_side"]
    image = Image.open(path).convert("RGB")
    if side is None:
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    w, h = image.size
    scale = side / min(w, h)
    w, h = max(side, round(w * scale)), max(side, round(h * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def main(argv: list[str]) -> None:
    as_json = "--json" in argv
    paths = [a for a in argv if a != "--json"]
    if not paths:
        raise SystemExit("usage: python serve.py [--json] IMAGES.npy|IMAGE ...")
    classify, meta = load()
    images, names = [], []
    for path in paths:
        if path.endswith(".npy"):
            array = np.load(path)
            batch = array[None] if array.ndim == 3 else array
            images.extend(batch)
            names.extend([path] if array.ndim == 3 else [f"{path}[{i}]" for i in range(len(batch))])
        else:
            images.append(read_image(path, meta))
            names.append(path)
    probs = classify(np.stack(images))
    classes = meta["classes"]
    results = []
    for name, p in zip(names, probs, strict=True):
        top = np.argsort(-p, kind="stable")[:TOP_K]
        results.append(
            {"image": name, "top5": [[classes[k], float(p[k])] for k in top], "probs": p.tolist()}
        )
    if as_json:
        json.dump(results, sys.stdout)
        return
    for r in results:
        print(r["image"])
        for rank, (label, p) in enumerate(r["top5"], 1):
            print(f"  {rank}. {label:<24} {100 * p:6.2f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
