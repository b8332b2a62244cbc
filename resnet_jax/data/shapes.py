"""shapes10: the built-in procedural dataset (32x32 RGB, 10 shape classes), as a tfds builder.

Each image shows one large shape (the label), brighter or darker than the random two-colour
gradient it lies on, behind which lie clutter strokes and up to two smaller distractor shapes of
any class, plus pixel noise. Colour, brightness, position, scale, aspect, rotation and noise level
are all random, so raw pixel intensities carry almost no linear evidence of the class (a softmax regression on pixels stays far below 45% test
accuracy), while a small convnet learns shapes quickly. Everything is vectorised numpy and a pure
function of the seed, so every machine builds bit-identical data without a download.

Importing this module does not import TensorFlow: `render` is plain numpy (the device input path
builds shapes10 with it on machines without TensorFlow), and the tfds builder class is defined and
registered only when `builder_class()` is first called.
"""

import functools

import numpy as np

from resnet_jax.data._tf import import_tfds

CLASS_NAMES = (
    "disc",
    "ring",
    "square",
    "triangle",
    "plus",
    "star",
    "crescent",
    "ell",
    "tee",
    "heart",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 32
NUM_TRAIN = 40_000
NUM_TEST = 10_000
SEED = 20151210  # the ResNet paper's arXiv date; train and test draw from disjoint seed streams
_CHUNK = 2048  # images rendered at once: ~20 MB of float32 coordinates

_GRID = (
    np.stack(np.meshgrid(np.arange(IMAGE_SIZE), np.arange(IMAGE_SIZE), indexing="xy"), -1)
    .reshape(-1, 2)
    .astype(np.float32)
    + 0.5
)  # [P, 2] pixel centres (x, y)


def _box(x, y, cx, cy, hx, hy):
    """Chebyshev-style distance to an axis-aligned box (negative inside), in shape units."""
    return np.maximum(np.abs(x - cx) - hx, np.abs(y - cy) - hy)


def _halfplanes(x, y, normals, offset):
    """Convex polygon given by unit edge normals [(nx, ny)] at distance `offset` from the centre."""
    return np.max(np.stack([nx * x + ny * y - offset for nx, ny in normals]), axis=0)


_TRI = [(np.cos(a), np.sin(a)) for a in np.pi / 2 + 2 * np.pi * np.arange(3) / 3]


def _signed_distance(cls, x, y):
    """Distance-like field of shape `cls` at unit coordinates x, y (negative inside, ~unit radius)."""
    r = np.sqrt(x * x + y * y)
    if cls == 0:  # disc
        return r - 0.9
    if cls == 1:  # ring (annulus)
        return np.abs(r - 0.68) - 0.25
    if cls == 2:  # square
        return _box(x, y, 0, 0, 0.72, 0.72)
    if cls == 3:  # equilateral triangle of circumradius 1
        return _halfplanes(x, y, _TRI, 0.5)
    if cls == 4:  # plus
        return np.minimum(_box(x, y, 0, 0, 0.95, 0.26), _box(x, y, 0, 0, 0.26, 0.95))
    if cls == 5:  # five-pointed star: radius oscillates between 0.42 and 1.0 with the angle
        t = (np.arctan2(y, x) * 5 / (2 * np.pi)) % 1.0
        return r - (0.42 + 1.16 * np.abs(t - 0.5))
    if cls == 6:  # crescent: disc minus a shifted disc
        return np.maximum(r - 0.9, 0.72 - np.sqrt((x - 0.45) ** 2 + y * y))
    if cls == 7:  # "L"
        return np.minimum(_box(x, y, -0.5, 0, 0.26, 0.9), _box(x, y, 0.05, 0.64, 0.81, 0.26))
    if cls == 8:  # "T"
        return np.minimum(_box(x, y, 0, -0.64, 0.9, 0.26), _box(x, y, 0, 0.1, 0.26, 0.9))
    if cls == 9:  # heart: two lobes over a downward triangle
        lobes = (
            np.minimum(
                np.sqrt((x - 0.42) ** 2 + (y + 0.3) ** 2), np.sqrt((x + 0.42) ** 2 + (y + 0.3) ** 2)
            )
            - 0.46
        )
        tri = _halfplanes(x, y - 0.05, [(0, -1), (0.77, 0.64), (-0.77, 0.64)], 0.5)
        return np.minimum(lobes, tri)
    raise ValueError(f"no shape class {cls}")


def _shape_coverage(rng, classes, radius):
    """Anti-aliased coverage in [0, 1] of one randomly placed shape per image.

    Args:
      classes: int [N] shape class per image.
      radius: float [N] size in pixels (the shape's unit radius).
    Returns:
      float32 [N, P] coverage per pixel (P = 32 * 32).
    """
    n = len(classes)
    radius = radius.astype(np.float32)
    margin = 0.8 * radius  # keeps the shape (nearly) whole inside the frame
    centre = rng.uniform(margin[:, None], IMAGE_SIZE - margin[:, None], size=(n, 2))
    theta = rng.uniform(0, 2 * np.pi, n)
    aspect = np.exp(rng.uniform(-0.2, 0.2, n)).astype(np.float32)  # mild anisotropic stretch
    d = _GRID[None] - centre[:, None].astype(np.float32)  # [N, P, 2]
    c, s = np.cos(theta).astype(np.float32)[:, None], np.sin(theta).astype(np.float32)[:, None]
    x = (c * d[..., 0] + s * d[..., 1]) / (radius * aspect)[:, None]
    y = (-s * d[..., 0] + c * d[..., 1]) / (radius / aspect)[:, None]
    dist = np.empty_like(x)
    for cls in np.unique(classes):
        idx = classes == cls
        dist[idx] = _signed_distance(cls, x[idx], y[idx])
    # Distance in shape units times radius ~ pixels; a one-pixel ramp anti-aliases the edge.
    return np.clip(0.5 - dist * radius[:, None], 0.0, 1.0).astype(np.float32)


def _stroke_coverage(rng, n):
    """Coverage [N, P] of one random straight stroke (1-2.5 px wide) per image: clutter."""
    a = rng.uniform(-4, IMAGE_SIZE + 4, size=(n, 1, 2)).astype(np.float32)  # [N, 1, 2] ends
    b = rng.uniform(-4, IMAGE_SIZE + 4, size=(n, 1, 2)).astype(np.float32)
    width = rng.uniform(1.0, 2.5, size=(n, 1)).astype(np.float32)
    ab = b - a
    t = np.clip(np.sum((_GRID[None] - a) * ab, -1) / np.maximum(np.sum(ab * ab, -1), 1e-6), 0, 1)
    dx = _GRID[None, :, 0] - a[..., 0] - t * ab[..., 0]
    dy = _GRID[None, :, 1] - a[..., 1] - t * ab[..., 1]
    return np.clip(width / 2 + 0.5 - np.sqrt(dx * dx + dy * dy), 0.0, 1.0)


def _colours(rng, n):
    """Random RGB colours, float32 [N, 3] in [0, 255]."""
    return rng.uniform(0, 255, (n, 3)).astype(np.float32)


def _contrasting_colour(rng, against):
    """Colours [N, 3] brighter or darker than `against` [N, 3] by 60-120 grey levels in every channel.

    Brightness contrast, as objects in photographs mostly have, and not colour contrast alone: with
    a colour merely far from the background in RGB (version 1.0.0), the edge's direction in colour
    space was random, and ResNet-20 sat at chance for its first ~10k images. Each image draws
    brighter or darker at random, forced to the one that fits in [0, 255] when only one does (both
    fit or neither: random, clipped), so the sign of the contrast carries no class evidence.
    """
    n = len(against)
    delta = rng.uniform(60, 120, (n, 3)).astype(np.float32)
    up_fits = np.all(against + delta <= 255, axis=1, keepdims=True)
    down_fits = np.all(against - delta >= 0, axis=1, keepdims=True)
    sign = np.where(rng.random((n, 1)) < 0.5, -1.0, 1.0).astype(np.float32)
    sign = np.where(up_fits & ~down_fits, 1.0, np.where(down_fits & ~up_fits, -1.0, sign))
    return np.clip(against + sign * delta, 0, 255).astype(np.float32)


def _render_chunk(rng, labels):
    """Renders uint8 [N, 32, 32, 3] images whose main shape has class `labels` [N]."""
    n = len(labels)
    p = _GRID.shape[0]
    # Background: linear gradient between two random colours in a random direction.
    c0, c1 = _colours(rng, n), _colours(rng, n)
    phi = rng.uniform(0, 2 * np.pi, (n, 1)).astype(np.float32)
    proj = np.cos(phi) * _GRID[None, :, 0] + np.sin(phi) * _GRID[None, :, 1]
    proj = (proj - proj.min(1, keepdims=True)) / np.ptp(proj, axis=1, keepdims=True)
    # Channel-first [3, N, P] float32: compositing one channel plane at a time is ~3x faster than
    # broadcasting over a trailing channel axis.
    img = c0.T[:, :, None] + proj[None] * (c1 - c0).T[:, :, None]

    def paint(idx, coverage, colour):
        """Alpha-composites flat colours [M, 3] with coverage [M, P] over the images idx [M]."""
        for ch in range(3):
            plane = img[ch, idx]
            img[ch, idx] = plane + coverage * (colour[:, ch, None] - plane)

    for _ in range(3):  # clutter strokes, each present with probability 0.6
        idx = np.flatnonzero(rng.random(n) < 0.6)
        paint(idx, _stroke_coverage(rng, len(idx)), _colours(rng, len(idx)))
    radius = rng.uniform(7.0, 12.5, n)
    for _ in range(2):  # distractors: any class, at most 45% of the main shape's size
        idx = np.flatnonzero(rng.random(n) < 0.5)
        scale = radius[idx] * rng.uniform(0.25, 0.45, len(idx))
        paint(
            idx,
            _shape_coverage(rng, rng.integers(0, NUM_CLASSES, len(idx)), scale),
            _colours(rng, len(idx)),
        )
    # The labelled shape goes on top, brighter or darker than the mean background.
    paint(
        np.arange(n), _shape_coverage(rng, labels, radius), _contrasting_colour(rng, img.mean(2).T)
    )
    # Gaussian pixel noise with a per-image level in [0, 20] grey levels. Windows of one shared pool
    # of normals at random offsets cost a gather instead of N*P*3 fresh draws (5x faster).
    pool = rng.standard_normal(1 << 16, dtype=np.float32)
    offset = rng.integers(0, pool.size - p * 3, n)
    noise = pool[offset[:, None] + np.arange(p * 3)].reshape(3, n, p)
    img += noise * rng.uniform(0, 20, (1, n, 1)).astype(np.float32)
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img.transpose(1, 2, 0).reshape(n, IMAGE_SIZE, IMAGE_SIZE, 3)


def render(num_examples, seed):
    """Deterministic shapes10 examples: (images uint8 [N, 32, 32, 3], labels int64 [N]).

    Classes are balanced (each appears N // 10 or N // 10 + 1 times) in a seeded random order. Chunks
    get their own seeds, so the result depends only on (num_examples, seed).
    """
    labels = np.random.default_rng([seed, 0]).permutation(np.arange(num_examples) % NUM_CLASSES)
    images = np.empty((num_examples, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    for k, start in enumerate(range(0, num_examples, _CHUNK)):
        rng = np.random.default_rng([seed, 1, k])
        images[start : start + _CHUNK] = _render_chunk(rng, labels[start : start + _CHUNK])
    return images, labels.astype(np.int64)


@functools.cache
def builder_class():
    """Defines (and thereby registers with tfds) the `shapes10` builder; tfds is imported here."""
    tfds = import_tfds()

    class Shapes10(tfds.core.GeneratorBasedBuilder):
        """shapes10: 32x32 RGB images of 10 procedurally drawn shape classes (no download)."""

        VERSION = tfds.core.Version("2.0.0")
        RELEASE_NOTES = {
            "1.0.0": "First version.",
            "2.0.0": "The labelled shape is brighter or darker than its background in every "
            "channel (by 60-120 grey levels), not only far from it in colour.",
        }

        def _info(self):
            return self.dataset_info_from_configs(
                description=__doc__,
                features=tfds.features.FeaturesDict(
                    {
                        "id": tfds.features.Text(),
                        "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {
                "train": self._generate_examples("train", NUM_TRAIN, SEED),
                "test": self._generate_examples("test", NUM_TEST, SEED + 1),
            }

        def _generate_examples(self, split, num_examples, seed):
            images, labels = render(num_examples, seed)
            for i in range(num_examples):
                key = f"{split}_{i:05d}"
                yield key, {"id": key, "image": images[i], "label": int(labels[i])}

    return Shapes10
