"""Classify images with a model that `python -m resnet_jax.export` wrote; needs jax, flatbuffers.

`python -m resnet_jax.export` copies this file next to each artefact as `serve.py`, so the folder
it writes is all a server needs: `model.jax_export` (the serialised StableHLO program, weights,
normalisation and softmax included), `model.json` (class names, input size, crop) and this file.
Its environment needs `pip install jax flatbuffers` (jax at the version in model.json or newer;
jax brings jaxlib, numpy, ml_dtypes, scipy and opt_einsum; jax reads the artefact with flatbuffers
but does not install it), and Pillow (`pip install pillow`) for image files rather than arrays.

    import serve
    classify, meta = serve.load("exported/")        # or load() for this file's own folder
    probs = classify(images)                        # uint8 [B, S, S, 3] -> float32 [B, K]

    python serve.py IMAGES.npy [IMAGE.jpg ...]      # top-5 of each image, or with --json the
                                                    # probabilities too

`.npy` files hold uint8 [S, S, 3] or [B, S, S, 3] arrays, already cropped as `meta['crop']` says
(exactly what the run's own evaluation fed its model). Image files need Pillow: the shorter side is
resized to `meta['resize_shorter_side']` (bilinear) and the centre S x S kept, which is close to,
but not bit for bit, the run's TensorFlow resize. A file that cannot be read gets one line on
stderr with the reason, the others are still classified, and the exit code is 66 when any failed,
as with `python -m resnet_jax.predict`.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
TOP_K = 5
EXIT_NO_INPUT = 66  # a file could not be read: sysexits' EX_NOINPUT, as predict exits


class UnreadableError(ValueError):
    """A file that serve.py cannot classify; the message says why."""


def load(directory: str = HERE):
    """(classify, meta): classify(uint8 [B, S, S, 3]) -> float32 [B, K] class probabilities, any
    B; meta: model.json."""
    with open(os.path.join(directory, "model.json"), encoding="utf-8") as f:
        meta = json.load(f)
    with open(os.path.join(directory, meta["artefact"]), "rb") as f:
        serialized = bytearray(f.read())
    try:
        exported = jax.export.deserialize(serialized)
    except ImportError as e:  # jax needs flatbuffers to read an artefact but does not install it
        if "flatbuffers" not in str(e):
            raise
        raise SystemExit(
            f"serve.py: reading {meta['artefact']} needs flatbuffers besides jax "
            "(pip install flatbuffers)"
        ) from None
    return (lambda images: np.asarray(exported.call(np.asarray(images, np.uint8)))), meta


def read_array(path: str, meta: dict) -> np.ndarray:
    """uint8 [S, S, 3] or [B, S, S, 3], as stored: a .npy file of cropped images."""
    size = meta["image_size"]
    try:
        array = np.load(path)
    except (OSError, ValueError) as e:
        raise UnreadableError(_reason(e, "not a readable .npy array")) from None
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or array.shape[-3:] != (size, size, 3):
        raise UnreadableError(
            f"holds {array.dtype} {list(array.shape)}; the model takes uint8 [{size}, {size}, 3] "
            f"or [B, {size}, {size}, 3], cropped as model.json says"
        )
    return array


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
    try:
        # convert decodes the whole file: a truncated one fails here, not later
        image = Image.open(path).convert("RGB")
    except OSError as e:  # a missing file, a folder, bytes Pillow cannot decode
        raise UnreadableError(_reason(e, "not a readable image")) from None
    if side is None:
        return np.asarray(image.resize((size, size), Image.BILINEAR))
    w, h = image.size
    scale = side / min(w, h)
    w, h = max(side, round(w * scale)), max(side, round(h * scale))
    image = image.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(image.crop((left, top, left + size, top + size)))


def _reason(e: Exception, what: str) -> str:
    if isinstance(e, OSError) and e.strerror:  # no such file, a folder, no permission
        return e.strerror
    if type(e).__name__ == "UnidentifiedImageError":  # Pillow's words repeat the path
        return f"{what} (its bytes are no image format Pillow reads)"
    return f"{what} ({e})"


def main(argv: list[str]) -> None:
    as_json = "--json" in argv
    paths = [a for a in argv if a != "--json"]
    if not paths:
        raise SystemExit("usage: python serve.py [--json] IMAGES.npy|IMAGE ...")
    classify, meta = load()
    images, names, failed = [], [], False
    for path in paths:
        try:
            array = read_array(path, meta) if path.endswith(".npy") else read_image(path, meta)
        except UnreadableError as e:  # that file only: the others are still classified
            print(f"serve.py: {path}: {e}", file=sys.stderr, flush=True)
            failed = True
            continue
        batch = array[None] if array.ndim == 3 else array
        images.extend(batch)
        names.extend([path] if array.ndim == 3 else [f"{path}[{i}]" for i in range(len(batch))])
    if not images:
        raise SystemExit(EXIT_NO_INPUT)
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
    else:
        for r in results:
            print(r["image"])
            for rank, (label, p) in enumerate(r["top5"], 1):
                print(f"  {rank}. {label:<24} {100 * p:6.2f}%")
    if failed:
        raise SystemExit(EXIT_NO_INPUT)


if __name__ == "__main__":
    main(sys.argv[1:])
