"""CIFAR pipelines on fake binary archives seeded into the tfds download cache."""

import hashlib

import fake_archives
import numpy as np
import pytest

from resnet_jax.data import datasets, pipeline, stats

N_TRAIN, N_TEST = 50, 20


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory):
    return fake_archives.build_once(
        tmp_path_factory,
        "cifar10",
        lambda root: fake_archives.make_fake_cifar10(root, num_train=N_TRAIN, num_test=N_TEST),
    )


def _train(fake, **kw):
    kw = dict(dict(data_dir=fake.data_dir, local_batch_size=10, seed=0), **kw)
    return pipeline.train_iterator("cifar10", **kw)


def _stats(fake):
    return stats.normalization_stats(datasets.get_builder("cifar10", fake.data_dir))


def _key(image_uint8):
    return hashlib.sha1(np.ascontiguousarray(image_uint8).tobytes()).hexdigest()


def test_real_builder_reads_the_binary_format(cifar10):
    info = datasets.get_info("cifar10", cifar10.data_dir)
    assert (info.num_train, info.num_eval, info.num_classes) == (N_TRAIN, N_TEST, 10)
    assert (info.image_size, info.family, info.eval_split) == (32, "cifar", "test")
    # Un-normalise one epoch without augmentation: exactly the archive's images and labels.
    st = _stats(cifar10)
    batch = next(_train(cifar10, augment="none", local_batch_size=N_TRAIN))
    raw = np.rint(batch["image"] * st["pixel_std"] + st["mean_image"]).astype(np.uint8)
    got = sorted(zip(map(_key, raw), batch["label"].tolist(), strict=True))
    want = sorted(zip(map(_key, cifar10.train_images), cifar10.train_labels.tolist(), strict=True))
    assert got == want


def test_per_pixel_mean_and_per_channel_normalisation(cifar10):
    st = _stats(cifar10)
    images = cifar10.train_images.astype(np.float64)
    np.testing.assert_allclose(st["mean_image"], images.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st["channel_std"], images.std((0, 1, 2)), rtol=1e-4)
    x = next(_train(cifar10, augment="none", local_batch_size=N_TRAIN))["image"]
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-4)  # every pixel centred
    np.testing.assert_allclose(x.std(), 1.0, rtol=1e-3)
    y = next(
        _train(cifar10, augment="none", local_batch_size=N_TRAIN, normalization="per_channel")
    )["image"]
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std((0, 1, 2)), 1.0, rtol=1e-3)


def test_pad_crop_flip_is_a_shifted_or_mirrored_view_of_the_image(cifar10):
    plain = next(_train(cifar10, augment="none"))
    augmented = next(_train(cifar10, augment="cifar"))
    np.testing.assert_array_equal(plain["label"], augmented["label"])  # same order
    shifts = []
    for x, a in zip(plain["image"], augmented["image"], strict=True):
        padded = np.pad(x, [(4, 4), (4, 4), (0, 0)])
        found = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if np.array_equal(
                padded[dy : dy + 32, dx : dx + 32][:, ::-1]
                if f
                else padded[dy : dy + 32, dx : dx + 32],
                a,
            )
        ]
        assert found, "augmented image is no pad-4 crop (or mirror) of the original"
        shifts.append(found[0])
    assert len(set(shifts)) > 3  # the crops really vary


def test_resume_across_epoch_boundaries(cifar10):
    # 50 examples in batches of 15: batches 3 and 6 straddle epochs.
    reference = [next(it) for it in [_train(cifar10, local_batch_size=15)] for _ in range(7)]
    for start in (3, 6):
        batch = next(_train(cifar10, local_batch_size=15, start_step=start))
        np.testing.assert_array_equal(batch["image"], reference[start]["image"])
        np.testing.assert_array_equal(batch["label"], reference[start]["label"])


def test_paper_45k_5k_protocol_splits_the_training_set(cifar10):
    def keys(split):
        st = _stats(cifar10)
        out = []
        for b in pipeline.eval_iterator(
            "cifar10", data_dir=cifar10.data_dir, local_batch_size=7, split=split
        ):
            raw = np.rint(b["image"] * st["pixel_std"] + st["mean_image"]).astype(np.uint8)
            out += [_key(r) for r, m in zip(raw, b["mask"], strict=True) if m]
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
            "cifar10",
            data_dir=cifar10.data_dir,
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
            "cifar10", data_dir=cifar10.data_dir, local_batch_size=4, views="10crop"
        )
    with pytest.raises(ValueError, match="image_size=224 is not supported"):
        _train(cifar10, image_size=224)
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        _train(cifar10, local_batch_size=64)


def test_cifar100_fine_labels(tmp_path):
    fake = fake_archives.make_fake_cifar100(str(tmp_path), num_train=10, num_test=5)
    info = datasets.get_info("cifar100", fake.data_dir)
    assert (info.num_classes, info.num_train, info.num_eval) == (100, 10, 5)
    batch = next(
        pipeline.train_iterator(
            "cifar100", data_dir=fake.data_dir, local_batch_size=10, seed=0, augment="none"
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
