"""The device input path: order as a pure function of (seed, epoch), exact resume, evaluation of
every example once, pad-crop-flip against a numpy reference, the same augmentation statistics as
the host tf.data path, and the prepared-array cache refusing damaged or stale files."""

import json
import os

import fake_archives
import jax
import numpy as np
import pytest

from resnet_jax.data import (
    arrays,
    catalog,
    datasets,
    device_input,
    finish,
    pipeline,
    prepare,
    shapes,
    stats,
)
from resnet_jax.engine import parallel

N_COORD = 200  # examples of the coordinate-coded fake CIFAR-10 (the id is stored in blue)


def _record(name, data_dir):
    """The record of `name` as the device path holds it (its splits counted on first use)."""
    return catalog.open(name, data_dir=data_dir, input_pipeline="device")


def _held(n, seed=0):
    """A DeviceSplit of n random images whose label is the example's index."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    split = arrays.Split(images, np.arange(n, dtype=np.int32))
    return device_input.put(split, parallel.make_mesh()), images


def _batches(held, *, batch_size, seed=0, start_step=0, augment="cifar", steps=1):
    mesh = parallel.make_mesh()
    it = device_input.TrainBatches(
        held,
        batch_sharding=parallel.batch_sharded(mesh),
        batch_size=batch_size,
        seed=seed,
        start_step=start_step,
        augment=augment,
    )
    return [jax.device_get(next(it)) for _ in range(steps)]


_FINISH = finish.Finish(np.float32(100.0), np.float32(50.0))


def test_epoch_order_is_a_permutation_that_depends_on_seed_and_epoch_only():
    a = np.asarray(device_input.epoch_order(3, 5, 1000))
    assert sorted(a.tolist()) == list(range(1000))
    np.testing.assert_array_equal(a, device_input.epoch_order(3, 5, 1000))
    assert not np.array_equal(a, device_input.epoch_order(3, 6, 1000))
    assert not np.array_equal(a, device_input.epoch_order(4, 5, 1000))


def test_each_epoch_visits_distinct_examples_and_a_resumed_iterator_continues_bitwise():
    held, _ = _held(50)
    # 50 examples, batch 16: 3 steps per epoch, 2 examples left over each epoch; 7 steps = 3 epochs.
    run = _batches(held, batch_size=16, steps=7)
    for epoch in range(2):
        labels = np.concatenate([b["label"] for b in run[3 * epoch : 3 * epoch + 3]])
        assert len(set(labels.tolist())) == 48
    assert not np.array_equal(run[0]["label"], run[3]["label"])  # a new order each epoch
    for start in (1, 3, 5):  # mid-epoch, on an epoch boundary, in a later epoch
        resumed = _batches(held, batch_size=16, start_step=start, steps=7 - start)
        for want, got in zip(run[start:], resumed, strict=True):
            assert set(got) == {"image", "label", "crop", "flip"}
            for key in got:
                np.testing.assert_array_equal(want[key], got[key], err_msg=key)
    other_seed = _batches(held, batch_size=16, seed=1)[0]
    assert not np.array_equal(other_seed["label"], run[0]["label"])


def _reference(image, dy, dx, flip, mean, std):
    """numpy He2015 augmentation of one uint8 image: normalise, zero-pad 4, crop at (dy, dx), flip."""
    x = (image.astype(np.float32) - mean) / std
    crop = np.pad(x, ((4, 4), (4, 4), (0, 0)))[dy : dy + 32, dx : dx + 32]
    return crop[:, ::-1] if flip else crop


def test_pad_crop_flip_equals_the_numpy_reference_for_every_offset_and_a_mean_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    mean = rng.uniform(50, 200, (32, 32, 3)).astype(
        np.float32
    )  # per-pixel: must move with the crop
    std = np.float32(37.0)
    offsets = np.array([[dy, dx] for dy in range(9) for dx in range(9)], np.int32)  # all 81
    index = np.arange(81, dtype=np.int32) % 9
    flips = np.arange(81) % 2 == 1
    out = np.asarray(finish.pad_crop_flip(images[index], offsets, flips, mean, std))
    for k in range(81):
        want = _reference(images[index[k]], *offsets[k], flips[k], mean, std)
        np.testing.assert_allclose(out[k], want, rtol=0, atol=1e-5, err_msg=str(offsets[k]))


def test_without_augmentation_batches_are_the_normalised_images():
    held, images = _held(40)
    b = _batches(held, batch_size=8, augment="none")[0]
    assert set(b) == {"image", "label"} and b["image"].dtype == np.uint8
    np.testing.assert_allclose(_FINISH(b), (images[b["label"]] - 100.0) / 50.0, atol=1e-6)


def test_evaluation_visits_every_example_once_and_pads_with_masked_rows():
    held, images = _held(50)
    mesh = parallel.make_mesh()
    batches = device_input.EvalBatches(
        held,
        batch_sharding=parallel.batch_sharded(mesh),
        batch_size=16,
    )
    got = [jax.device_get(b) for b in batches]
    assert len(batches) == len(got) == 4
    mask = np.concatenate([b["mask"] for b in got])
    assert mask.sum() == 50 and mask[:50].all() and not mask[50:].any()
    labels = np.concatenate([b["label"] for b in got])[mask]
    np.testing.assert_array_equal(labels, np.arange(50))
    np.testing.assert_array_equal(np.concatenate([b["image"] for b in got])[mask], images)
    assert len([jax.device_get(b) for b in batches]) == 4  # re-iterable: one pass per evaluation


def _coordinate_images(n):
    """uint8 [n, 32, 32, 3] from which one augmented image tells its example, crop and flip.

    Blue is the example's id; red and green are 128 +- (4 * row - 62) and 128 +- (4 * column - 62),
    the sign alternating with the id. Over an even n the mean image is then flat (128, 128, mean
    id), so the per-pixel-mean normalisation leaves the coordinates readable wherever they moved.
    """
    ids = np.arange(n)[:, None, None]
    sign = 1 - 2 * (ids % 2)
    rows, cols = np.mgrid[0:32, 0:32]
    red = 128 + sign * (4 * rows[None] - 62)
    green = 128 + sign * (4 * cols[None] - 62)
    blue = np.broadcast_to(ids, (n, 32, 32))
    return np.stack([red, green, blue], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def coord_cifar(tmp_path_factory):
    return fake_archives.build_once(
        tmp_path_factory,
        "cifar10_coordinates",
        lambda root: fake_archives.make_fake_cifar(
            root,
            "cifar10",
            num_train=N_COORD,
            num_test=20,
            train_images=_coordinate_images(N_COORD),
        ),
    )


def _decode(out, mean, std, images):
    """(id, dy, dx, flip) of each augmented image [B, 32, 32, 3], checked pixel for pixel."""
    # Pixel (16, 16) and its right neighbour always come from the image, never the padding.
    raw = np.rint(out[:, 16, 16:18] * std + mean[0, 0])  # [B, 2, 3]; the mean image is flat
    ids = raw[:, 0, 2].astype(int)
    sign = 1 - 2 * (ids % 2)
    row = ((raw[:, 0, 0] - 128) * sign + 62).astype(int) // 4
    col = ((raw[:, :, 1] - 128) * sign[:, None] + 62).astype(int) // 4  # [B, 2]
    flips = col[:, 1] < col[:, 0]
    dy = row - 16 + 4
    dx = col[:, 0] - np.where(flips, 15, 16) + 4
    for k in range(len(out)):  # the whole image, padding included, is that augmentation
        want = _reference(images[ids[k]], dy[k], dx[k], flips[k], mean, std)
        np.testing.assert_allclose(out[k], want, rtol=0, atol=1e-4)
    return ids, dy, dx, flips


@pytest.mark.slow
def test_host_and_device_paths_draw_the_same_augmented_distribution(coord_cifar):
    """Fails if either path is off by one pixel, never flips, or normalises differently."""
    draws, batch = 4000, 100
    host_stats = stats.normalization_stats(datasets.get_builder("cifar10", coord_cifar.data_dir))
    device_stats = arrays.load_stats(_record("cifar10", coord_cifar.data_dir))
    for key in ("mean_image", "pixel_std", "channel_mean", "channel_std"):
        np.testing.assert_allclose(host_stats[key], device_stats[key], rtol=1e-6, err_msg=key)
    mean, std = stats.mean_and_std(host_stats, "per_pixel_mean")
    images = _coordinate_images(N_COORD)

    host_it = pipeline.train_iterator(
        catalog.open("cifar10", data_dir=coord_cifar.data_dir, input_pipeline="host"),
        local_batch_size=batch,
        seed=0,
    )
    host_finish = pipeline.finish_for(
        catalog.open("cifar10", data_dir=coord_cifar.data_dir, input_pipeline="host")
    )
    host = np.concatenate([host_finish(next(host_it)) for _ in range(draws // batch)])
    mesh = parallel.make_mesh()
    device_it = device_input.train_batches(
        _record("cifar10", coord_cifar.data_dir),
        batch_sharding=parallel.batch_sharded(mesh),
        global_batch_size=batch,
        seed=0,
    )
    device_finish = device_input.finish_for(_record("cifar10", coord_cifar.data_dir))
    device = np.concatenate([device_finish(next(device_it)) for _ in range(draws // batch)])

    decoded = {
        name: _decode(out, mean, std, images) for name, out in (("host", host), ("device", device))
    }
    for name, (ids, dy, dx, flips) in decoded.items():
        # Uniform over the 9 offsets 0..8 per axis (1/9 = 0.111, sd 0.005 at 4000 draws): an
        # off-by-one crop range leaves a bin empty; flips near 1/2 (sd 0.008).
        for offsets in (dy, dx):
            freq = np.bincount(offsets, minlength=9) / draws
            assert len(freq) == 9 and freq.min() > 0.085 and freq.max() < 0.14, (name, freq)
        assert 0.46 < flips.mean() < 0.54, name
        assert len(np.unique(ids)) == N_COORD, name  # every example drawn
    for host_part, device_part in zip(decoded["host"][1:], decoded["device"][1:], strict=True):
        h = np.bincount(host_part.astype(int), minlength=9) / draws
        d = np.bincount(device_part.astype(int), minlength=9) / draws
        assert np.abs(h - d).max() < 0.035, (h, d)  # 5 sd of a difference of two frequencies
    # The mean augmented image: border pixels are padding (0) in some draws, so a crop range or
    # padding value that differs between the paths moves it; per-pixel standard error ~ sd/sqrt(n).
    se = np.sqrt(host.var(0) / draws + device.var(0) / draws)
    assert (np.abs(host.mean(0) - device.mean(0)) < 5 * se + 1e-3).all()


def test_shapes10_arrays_are_rendered_without_tensorflow_and_bad_files_are_rebuilt(
    tmp_path, monkeypatch, capfd
):
    monkeypatch.setattr(shapes, "NUM_TRAIN", 60)
    monkeypatch.setattr(shapes, "NUM_TEST", 30)
    data_dir = str(tmp_path)
    split = arrays.load(_record("shapes10", data_dir), "train")
    want_images, want_labels = shapes.render(60, shapes.SEED)
    np.testing.assert_array_equal(split.images, want_images)
    np.testing.assert_array_equal(split.labels, want_labels)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    info = _record("shapes10", data_dir)
    assert (info.num_train, info.num_eval, info.num_classes) == (60, 30, 10)
    st = arrays.load_stats(_record("shapes10", data_dir))
    np.testing.assert_allclose(st["mean_image"], want_images.mean(0), rtol=1e-5)
    assert not os.path.exists(os.path.join(data_dir, "shapes10"))  # no tfds build happened
    capfd.readouterr()

    path = arrays.path(_record("shapes10", data_dir), "train")
    with np.load(path) as f:  # a valid file whose pixels no longer match their digest
        tampered = {k: f[k] for k in f.files}
    tampered["images"][0, 0, 0, 0] ^= 1
    np.savez(path, **tampered)
    np.testing.assert_array_equal(
        arrays.load(_record("shapes10", data_dir), "train").images, want_images
    )
    assert "damaged: the sha256 of images does not match" in capfd.readouterr().err

    with open(path, "r+b") as f:  # a truncated file
        f.truncate(os.path.getsize(path) // 2)
    np.testing.assert_array_equal(
        arrays.load(_record("shapes10", data_dir), "train").images, want_images
    )
    assert "is unreadable" in capfd.readouterr().err

    monkeypatch.setattr(shapes, "NUM_TRAIN", 50)  # the source changed: the file is stale
    assert len(arrays.load(_record("shapes10", data_dir), "train").labels) == 50
    assert "is stale: built from 'shapes.render(60," in capfd.readouterr().err
    assert arrays.load(_record("shapes10", data_dir), "train").images.shape == (50, 32, 32, 3)
    assert capfd.readouterr().err == ""  # the rebuilt file is sound: nothing more reported


def test_cifar_arrays_follow_the_tfds_order_and_a_damaged_file_without_source_is_an_error(
    coord_cifar, tmp_path, capsys
):
    assert prepare.main(["cifar10", "--data_dir", coord_cifar.data_dir]) == 0
    folder = os.path.join(coord_cifar.data_dir, arrays.FOLDER, "cifar10")
    assert f"arrays for input_pipeline='device' in {folder}" in capsys.readouterr().out
    assert sorted(os.listdir(folder)) == [
        ".test.npz.lock",  # hidden: a user listing the folder sees the arrays alone
        ".train.npz.lock",
        "test.npz",
        "train.npz",
    ]
    split = arrays.load(_record("cifar10", coord_cifar.data_dir), "train")
    builder = datasets.get_builder("cifar10", coord_cifar.data_dir)
    first = next(builder.as_dataset(split="train", shuffle_files=False).as_numpy_iterator())
    np.testing.assert_array_equal(split.images[0], first["image"])
    assert (
        len(arrays.load(_record("cifar10", coord_cifar.data_dir), "train45k").labels) == 180
    )  # 90%
    val = arrays.load(_record("cifar10", coord_cifar.data_dir), "val5k")
    np.testing.assert_array_equal(val.images, split.images[180:])
    with pytest.raises(ValueError, match="has no split 'validation'"):
        arrays.load(_record("cifar10", coord_cifar.data_dir), "validation")
    with pytest.raises(ValueError, match="takes input_pipeline='host'"):
        arrays.load(_record("imagenet2012", coord_cifar.data_dir), "train")

    # Only the arrays carried to a machine (no tfds data): used when sound, an error when damaged.
    assert len(arrays.load(_record("cifar10", coord_cifar.data_dir), "test").labels) == 20
    carried = str(tmp_path)
    src = arrays.path(_record("cifar10", coord_cifar.data_dir), "test")
    dst = arrays.path(_record("cifar10", carried), "test")
    os.makedirs(os.path.dirname(dst))
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data)
    assert len(arrays.load(_record("cifar10", carried), "test").labels) == 20
    with np.load(dst) as f:
        meta = json.loads(str(f["meta"]))
        assert meta["source"].startswith("tfds cifar10 test")
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 3])
    with pytest.raises(arrays.ArraysError, match="is unreadable .* cifar10 is not prepared in"):
        arrays.load(_record("cifar10", carried), "test")
