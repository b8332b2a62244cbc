"""Fake dataset archives in the real formats, for tests that must not download anything.

- `make_fake_imagenet(root, ...)`: `ILSVRC2012_img_train.tar` (one tar of JPEGs per synset) and
  `ILSVRC2012_img_val.tar` (flat JPEGs named ILSVRC2012_val_%08d.JPEG), as image-net.org ships them,
  then (by default) prepared by the real tfds `imagenet2012` builder.
- `make_fake_cifar10(root, ...)` / `make_fake_cifar100(root, ...)`: the binary-version tar.gz
  (`cifar-10-batches-bin/data_batch_1..5.bin`, `test_batch.bin`, `batches.meta.txt`), seeded into
  the tfds download cache under the registered checksum, then prepared by the real tfds builder.

Each returns a `FakeDataset` whose `data_dir` goes straight to `resnet_jax.data.pipeline`.
"""

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import tarfile

import numpy as np
from PIL import Image, ImageDraw


@dataclasses.dataclass
class FakeDataset:
    name: str
    data_dir: str  # tfds data_dir to pass to the pipeline
    manual_dir: str  # where the archives were written
    train_keys: list  # example keys (file names / ids) in the train split
    eval_keys: list  # example keys in the eval split
    corrupt_keys: list = dataclasses.field(default_factory=list)
    not_jpeg_keys: list = dataclasses.field(default_factory=list)  # PNGs under .JPEG names
    train_images: np.ndarray = None  # CIFAR fakes: uint8 [N, 32, 32, 3] in archive order
    train_labels: np.ndarray = None  # CIFAR fakes: int64 [N]


def natural_jpeg(rng, height=375, width=500, quality=90):
    """JPEG bytes of a photo-like image: smooth colour regions, edges, texture and sensor noise.

    At 500x375 and quality 90 this is ~80-130 KB, like an ImageNet photo (flat colour would be a few
    KB and decode unrealistically fast; pure noise would be ~400 KB).
    """

    def field(cells_h, cells_w, amplitude):
        small = rng.uniform(-amplitude, amplitude, (cells_h, cells_w, 3)).astype(np.float32)
        channels = [
            np.asarray(
                Image.fromarray(small[..., c], mode="F").resize((width, height), Image.BICUBIC)
            )
            for c in range(3)
        ]
        return np.stack(channels, -1)

    image = rng.uniform(60, 190, 3) + field(4, 5, 70) + field(24, 32, 20)
    # Objects with sharp edges over the smooth background, then fine texture and sensor noise.
    objects = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(objects)
    for _ in range(12):
        x0, y0 = rng.uniform(-0.2, 1.0) * width, rng.uniform(-0.2, 1.0) * height
        x1, y1 = x0 + rng.uniform(0.05, 0.5) * width, y0 + rng.uniform(0.05, 0.5) * height
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x0, y0, x1, y1], fill=int(rng.integers(1, 255)))
    image += (np.asarray(objects, np.float32)[..., None] - 128) * rng.uniform(-0.6, 0.6, 3)
    image += field(height // 2, width // 2, 40) + rng.normal(0, 9.0, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def truncated_jpeg(jpeg_bytes, keep=300):
    """The JPEG cut `keep` bytes into its compressed scan data: a download that died early.

    The header still parses (so the shape is known), but no crop of the image can be decoded.
    """
    start_of_scan = jpeg_bytes.index(b"\xff\xda")
    return jpeg_bytes[: start_of_scan + keep]


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def imagenet_synsets(num_classes):
    """The first `num_classes` ImageNet synset ids, in tfds label order."""
    from resnet_jax.data._tf import import_tfds  # pylint: disable=g-import-not-at-top

    path = import_tfds().core.tfds_path("datasets/imagenet2012/labels.txt")
    return path.read_text().split()[:num_classes]


def make_fake_imagenet(
    root,
    *,
    num_classes=3,
    train_per_class=3,
    num_val=4,
    sizes=None,
    seed=0,
    corrupt=0,
    not_jpeg=0,
    prepare=True,
):
    """Writes fake ILSVRC2012 train/val tars into `root`/manual and prepares root/data.

    Args:
      num_classes: synsets in the train tar (the first ones of the real label list).
      train_per_class: JPEGs per synset tar.
      num_val: validation JPEGs; tfds labels them from its validation_labels.txt in name order.
      sizes: list of (height, width) cycled over the images; default realistic ImageNet shapes.
      corrupt: the last `corrupt` train JPEGs of the first synset are truncated and garbled.
      not_jpeg: the `not_jpeg` train images before those are PNGs under .JPEG names (tfds
        re-encodes only the real archive's one known PNG, by its name).
      prepare: run the real tfds builder (via `resnet_jax.data.prepare`).
    Returns:
      FakeDataset; `corrupt_keys` holds the corrupted file names.
    """
    rng = np.random.default_rng(seed)
    sizes = sizes or [(375, 500), (500, 375), (333, 500), (480, 640), (400, 400)]
    manual = os.path.join(root, "manual")
    os.makedirs(manual, exist_ok=True)
    train_keys, corrupt_keys, not_jpeg_keys, k = [], [], [], 0
    with tarfile.open(os.path.join(manual, "ILSVRC2012_img_train.tar"), "w") as outer:
        for ci, synset in enumerate(imagenet_synsets(num_classes)):
            inner_buf = io.BytesIO()
            with tarfile.open(fileobj=inner_buf, mode="w") as inner:
                for i in range(train_per_class):
                    name = f"{synset}_{i}.JPEG"
                    data = natural_jpeg(rng, *sizes[k % len(sizes)])
                    k += 1
                    if ci == 0 and i >= train_per_class - corrupt:
                        data = truncated_jpeg(data)
                        corrupt_keys.append(name)
                    elif ci == 0 and i >= train_per_class - corrupt - not_jpeg:
                        png = io.BytesIO()
                        Image.open(io.BytesIO(data)).save(png, format="PNG")
                        data = png.getvalue()
                        not_jpeg_keys.append(name)
                    _add(inner, name, data)
                    train_keys.append(name)
            _add(outer, f"{synset}.tar", inner_buf.getvalue())
    val_keys = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, num_val + 1)]
    with tarfile.open(os.path.join(manual, "ILSVRC2012_img_val.tar"), "w") as tar:
        for i, name in enumerate(val_keys):
            _add(tar, name, natural_jpeg(rng, *sizes[(k + i) % len(sizes)]))
    fake = FakeDataset(
        "imagenet2012",
        os.path.join(root, "data"),
        manual,
        train_keys,
        val_keys,
        corrupt_keys,
        not_jpeg_keys,
    )
    if prepare:
        from resnet_jax.data import prepare as prep  # pylint: disable=g-import-not-at-top

        prep.prepare("imagenet2012", fake.data_dir, manual)
    return fake


_CIFAR = {
    "cifar10": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
        prefix="cifar-10-batches-bin",
        num_labels=1,
        classes=(10,),
        train=[f"data_batch_{i}.bin" for i in range(1, 6)],
        test=["test_batch.bin"],
        meta={"batches.meta.txt": 10},
    ),
    "cifar100": dict(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
        prefix="cifar-100-binary",
        num_labels=2,
        classes=(20, 100),
        train=["train.bin"],
        test=["test.bin"],
        meta={"coarse_label_names.txt": 20, "fine_label_names.txt": 100},
    ),
}


def _cifar_records(rng, num, spec, images=None):
    """CIFAR binary records: label byte(s) then 3072 bytes of R, G, B planes (row-major 32x32).

    images: uint8 [num, 32, 32, 3] to store; None draws random pixels.
    """
    labels = np.stack([rng.integers(0, c, num) for c in spec["classes"]], 1).astype(np.uint8)
    if images is None:
        planes = rng.integers(0, 256, (num, 3 * 32 * 32), dtype=np.uint8)
    else:
        planes = np.asarray(images, np.uint8).transpose(0, 3, 1, 2).reshape(num, 3 * 32 * 32)
    return np.concatenate([labels, planes], 1), labels[:, -1], planes.reshape(num, 3, 32, 32)


def seed_tfds_download_cache(data_dir, dataset, url, archive_bytes):
    """Places a file where tfds's download manager finds a finished download of `url`.

    tfds names a cached download '{sanitised url}{base64 sha256}{ext}' under
    data_dir/downloads/<dataset>/ and trusts it, without re-hashing, when it sits under the
    *registered* checksum and has an .INFO file. A fake archive filed under the real checksum is
    therefore used as if downloaded (which is exactly why users should pass real archives through
    --manual_dir instead: there tfds does verify the checksum).
    """
    from resnet_jax.data._tf import import_tfds  # pylint: disable=g-import-not-at-top

    import_tfds()  # TensorFlow first, with the GPUs hidden
    from tensorflow_datasets.core.download import checksums, resource  # pylint: disable=g-import-not-at-top

    registered = checksums.get_all_url_infos()[url]
    folder = os.path.join(data_dir, "downloads", dataset)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, resource.get_dl_fname(url, registered.checksum))
    with open(path, "wb") as f:
        f.write(archive_bytes)
    with open(path + ".INFO", "w") as f:
        json.dump(
            {
                "urls": [url],
                "dataset_names": [dataset],
                "original_fname": os.path.basename(url),
                "url_info": registered.asdict(),
            },
            f,
        )
    return path


def make_fake_cifar(
    root, name="cifar10", *, num_train=50, num_test=20, seed=0, prepare=True, train_images=None
):
    """Fake cifar10/cifar100 binary archive seeded into root/data's tfds download cache.

    num_train is spread over the train files (cifar10 has five). Random pixels and labels, or the
    uint8 [num_train, 32, 32, 3] `train_images` given.
    Returns FakeDataset with `train_images` uint8 [N, 32, 32, 3] and `train_labels` [N] in archive
    order (tfds re-orders records when it prepares).
    """
    spec = _CIFAR[name]
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    train_records, train_labels, train_planes = _cifar_records(rng, num_train, spec, train_images)
    test_records, _, _ = _cifar_records(rng, num_test, spec)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i, fname in enumerate(spec["train"]):
            part = np.array_split(train_records, len(spec["train"]))[i]
            _add(tar, f"{spec['prefix']}/{fname}", part.tobytes())
        _add(tar, f"{spec['prefix']}/{spec['test'][0]}", test_records.tobytes())
        for fname, count in spec["meta"].items():
            _add(
                tar,
                f"{spec['prefix']}/{fname}",
                "".join(f"class_{i}\n" for i in range(count)).encode(),
            )
    data_dir = os.path.join(root, "data")
    seed_tfds_download_cache(data_dir, name, spec["url"], buf.getvalue())
    fake = FakeDataset(
        name,
        data_dir,
        os.path.join(root, "manual"),
        [f"train_{i:05d}" for i in range(num_train)],
        [f"test_{i:05d}" for i in range(num_test)],
        train_images=train_planes.transpose(0, 2, 3, 1),
        train_labels=train_labels.astype(np.int64),
    )
    if prepare:
        from resnet_jax.data import prepare as prep  # pylint: disable=g-import-not-at-top

        prep.prepare(name, data_dir)
    return fake


def make_fake_cifar10(root, *, num_train=50, num_test=20, seed=0, prepare=True):
    """Fake `cifar-10-binary.tar.gz` in tfds's download cache of root/data, prepared by tfds."""
    return make_fake_cifar(
        root, "cifar10", num_train=num_train, num_test=num_test, seed=seed, prepare=prepare
    )


def make_fake_cifar100(root, *, num_train=50, num_test=20, seed=0, prepare=True):
    """Fake `cifar-100-binary.tar.gz` in tfds's download cache of root/data, prepared by tfds."""
    return make_fake_cifar(
        root, "cifar100", num_train=num_train, num_test=num_test, seed=seed, prepare=prepare
    )


def session_dir(tmp_path_factory, name):
    """A directory shared by every pytest-xdist worker of this session (`make test` runs two), so
    fake data, a reference run or the compilation cache is made once, not once per worker.

    Workers share the parent of their base temp folder.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def exclusive(lock_path):
    """Holds an exclusive lock on `lock_path` (other workers wait here)."""
    with open(lock_path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(tmp_path_factory, name, build):
    """Runs build(root) once per test session, even across pytest-xdist workers; returns its result.

    The first worker builds under a lock; the others reuse the folder and the pickled result.
    """
    import pickle  # pylint: disable=g-import-not-at-top

    root = str(session_dir(tmp_path_factory, os.path.join("resnet_jax_fake_data", name)))
    with exclusive(os.path.join(root, ".lock")):
        done = os.path.join(root, "result.pkl")
        if os.path.exists(done):
            with open(done, "rb") as f:
                return pickle.load(f)
        result = build(root)
        with open(done, "wb") as f:
            pickle.dump(result, f)
        return result


def fake_imagenet_once(tmp_path_factory, name, **kwargs):
    """`make_fake_imagenet(root, **kwargs)` built once per session under `name` (see build_once)."""
    return build_once(tmp_path_factory, name, lambda root: make_fake_imagenet(root, **kwargs))
