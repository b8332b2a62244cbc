"""CIFAR pipelines on fake binary archives seeded into the tfds download cache."""

import hashlib

import fake_archives
import numpy as np
import pytest

from resnet_jax.data import augment, catalog, datasets, finish, pipeline, stats

N_TRAIN, N_TEST = 50, 20


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return fake_archives.build_once(
        tmp_path_factory,
        "cifar10",
        lambda root: fake_archives.make_fake_cifar10(root, num_train=N_TRAIN, num_test=N_TEST),
    )


def _train(fake, image_size=None, **kw):
    d = catalog.open(
        "cifar10", data_dir=fake.data_dir, image_size=image_size, input_pipeline="host"
    )
    return pipeline.train_iterator(d, **dict(dict(local_batch_size=10, seed=0), **kw))


def _stats(fake):
    return stats.normalization_stats(datasets.get_builder("cifar10", fake.data_dir))


def _finished(fake, batch, normalization=None):
    """The model inputs of a host batch, as the train step makes them."""
    fin = pipeline.finish_for(
        catalog.open("cifar10", data_dir=fake.data_dir, input_pipeline="host"),
        normalization=normalization,
    )
    return np.asarray(fin(batch))


def _key(image_uint8):
    return hashlib.sha1(np.ascontiguousarray(image_uint8).tobytes()).hexdigest()


def test_real_builder_reads_the_binary_format(cifar10):
    info = catalog.open("cifar10", data_dir=cifar10.data_dir, input_pipeline="host")
    assert (info.num_train, info.num_eval, info.num_classes) == (N_TRAIN, N_TEST, 10)
    assert (info.image_size, info.jpeg_crops, info.eval_split) == (32, False, "test")
    # One epoch without augmentation: exactly the archive's images (uint8) and labels.
    batch = next(_train(cifar10, augment="none", local_batch_size=N_TRAIN))
    assert batch["image"].dtype == np.uint8 and set(batch) == {"image", "label"}
    got = sorted(zip(map(_key, batch["image"]), batch["label"].tolist(), strict=True))
    want = sorted(zip(map(_key, cifar10.train_images), cifar10.train_labels.tolist(), strict=True))
    assert got == want


def test_per_pixel_mean_and_per_channel_normalisation(cifar10):
    st = _stats(cifar10)
    images = cifar10.train_images.astype(np.float64)
    np.testing.assert_allclose(st["mean_image"], images.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["channel_std"], images.std((0, 1, 2)), rtol=1e-4)
    batch = next(_train(cifar10, augment="none", local_batch_size=N_TRAIN))
    x = _finished(cifar10, batch)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)  # every pixel centred
    np.testing.assert_allclose(x.std(), 1.0, rtol=1e-3)
    y = _finished(cifar10, batch, normalization="per_channel")
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std((0, 1, 2)), 1.0, rtol=1e-3)


def test_pad_crop_flip_is_a_shifted_or_mirrored_view_of_the_image(cifar10):
    plain = next(_train(cifar10, augment="none"))
    augmented = next(_train(cifar10, augment="cifar"))
    np.testing.assert_array_equal(plain["label"], augmented["label"])  # same order
    np.testing.assert_array_equal(plain["image"], augmented["image"])  # crops are made on device
    shifts = []
    pairs = zip(_finished(cifar10, plain), _finished(cifar10, augmented), strict=True)
    for x, a in pairs:
        padded = np.pad(x, [(4, 4), (4, 4), (0, 0)])
        found = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if np.allclose(
                padded[dy : dy + 32, dx : dx + 32][:, ::-1]
                if f
                else padded[dy : dy + 32, dx : dx + 32],
                a,
                rtol=0,
                atol=1e-5,
            )
        ]
        assert found, "augmented image is no pad-4 crop (or mirror) of the original"
        shifts.append(found[0])
    assert len(set(shifts)) > 3  # the crops really vary


def test_device_finished_crops_equal_the_tf_pad_crop_flip_of_the_same_seeds(cifar10):
    """The draws sent with a host batch reproduce TF's stateless crop and flip bit for bit."""
    tf = augment.tf
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 32, 32, 3), np.uint8)
    mean, std = stats.mean_and_std(_stats(cifar10), "per_pixel_mean")
    seeds = [tf.constant([7, k], tf.int64) for k in range(len(images))]
    crops, flips = zip(*[augment.cifar_draws(s) for s in seeds], strict=True)
    batch = {"image": images, "crop": np.stack(crops), "flip": np.stack(flips)}
    got = np.asarray(finish.Finish(mean, std)(batch))
    for image, seed, out in zip(images, seeds, got, strict=True):
        # He2015's augmentation as TF ops on the normalised image (what the host used to run).
        s_crop, s_flip = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        x = tf.pad((image.astype(np.float32) - mean) / std, [[4, 4], [4, 4], [0, 0]])
        x = tf.image.stateless_random_crop(x, [32, 32, 3], s_crop)
        want = tf.image.stateless_random_flip_left_right(x, s_flip).numpy()
        np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
    assert 3 < np.stack(flips).sum() < 21 and len({tuple(c) for c in np.stack(crops)}) > 10


def test_resume_across_epoch_boundaries(cifar10):
    # 50 examples in batches of 15: batches 3 and 6 straddle epochs.
    reference = [next(it) for it in [_train(cifar10, local_batch_size=15)] for _ in range(7)]
    for start in (3, 6):
        batch = next(_train(cifar10, local_batch_size=15, start_step=start))
        np.testing.assert_array_equal(batch["image"], reference[start]["image"])
        np.testing.assert_array_equal(batch["label"], reference[start]["label"])


def test_paper_45k_5k_protocol_splits_the_training_set(cifar10):
    def keys(split):
        out = []
        for b in pipeline.eval_iterator(
            catalog.open("cifar10", data_dir=cifar10.data_dir, input_pipeline="host"),
            local_batch_size=7,
            split=split,
        ):
            out += [_key(r) for r, m in zip(b["image"], b["mask"], strict=True) if m]
        return out

    train, val = keys("train45k"), keys("val5k")
    assert (len(train), len(val)) == (45, 5)  # 90% / 10%, as 45,000 / 5,000 of the real 50,000
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(map(_key, cifar10.train_images))
    batch = next(_train(cifar10, split="train45k"))
    assert batch["image"].shape == (10, 32, 32, 3)


def test_eval_pads_to_equal_batch_counts_on_three_processes(cifar10):
    counts, lengths = [], []
    for p in range(3):
        it = pipeline.eval_iterator(
            catalog.open("cifar10", data_dir=cifar10.data_dir, input_pipeline="host"),
            local_batch_size=4,
            process_index=p,
            process_count=3,
        )
        batches = list(it)
        lengths.append((len(it), len(batches)))
        counts.append(int(sum(b["mask"].sum() for b in batches)))
        padded = np.concatenate([b["image"][~b["mask"]] for b in batches])
        assert not padded.any()
    assert lengths == [(2, 2)] * 3  # ceil(7 / 4)
    assert counts == [7, 7, 6] and sum(counts) == N_TEST


def test_cifar_refuses_imagenet_views_and_sizes(cifar10):
    with pytest.raises(ValueError, match="views='10crop' is not available for cifar10"):
        pipeline.eval_iterator(
            catalog.open("cifar10", data_dir=cifar10.data_dir, input_pipeline="host"),
            local_batch_size=4,
            views="10crop",
        )
    with pytest.raises(ValueError, match="image_size=224 is not supported"):
        _train(cifar10, image_size=224)
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        _train(cifar10, local_batch_size=64)


def test_cifar100_fine_labels(tmp_path):
    fake = fake_archives.make_fake_cifar100(str(tmp_path), num_train=10, num_test=5)
    info = catalog.open("cifar100", data_dir=fake.data_dir, input_pipeline="host")
    assert (info.num_classes, info.num_train, info.num_eval) == (100, 10, 5)
    batch = next(
        pipeline.train_iterator(
            catalog.open("cifar100", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=10,
            seed=0,
            augment="none",
        )
    )
    assert sorted(batch["label"].tolist()) == sorted(fake.train_labels.tolist())


def test_offline_prepare_without_the_archive_says_how_to_prepare_offline(tmp_path, monkeypatch):
    from resnet_jax.data import prepare  # pylint: disable=g-import-not-at-top

    monkeypatch.setattr(prepare, "_reachable", lambda host, timeout=5.0: False)
    with pytest.raises(prepare.PrepareError) as e:
        prepare.prepare("cifar10", str(tmp_path))
    message = str(e.value)
    assert "cannot reach www.cs.toronto.edu" in message
    assert "copy the official cifar-10-binary.tar.gz" in message
    assert f"prepare cifar10 --data_dir {tmp_path} --manual_dir FOLDER" in message
