"""shapes10, the built-in procedural dataset: deterministic, varied, not linearly separable."""

import hashlib

import fake_archives
import numpy as np
import pytest
import scipy.optimize

from resnet_jax.data import catalog, datasets, pipeline, shapes

SMALL_TRAIN, SMALL_TEST = 240, 60


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    """shapes10 prepared at a reduced size (same generator and builder, fewer examples)."""

    def build(root):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(shapes, "NUM_TRAIN", SMALL_TRAIN)
            mp.setattr(shapes, "NUM_TEST", SMALL_TEST)
            catalog.open("shapes10", data_dir=root, input_pipeline="host").count(
                "train"
            )  # prepares
        return root

    return fake_archives.build_once(tmp_path_factory, "shapes10_small", build)


def _digest(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_render_is_a_pure_function_of_the_seed_with_balanced_classes():
    a, la = shapes.render(300, 7)
    b, lb = shapes.render(300, 7)
    c, _ = shapes.render(300, 8)
    assert a.shape == (300, 32, 32, 3) and a.dtype == np.uint8 and la.dtype == np.int64
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.bincount(la, minlength=10), [30] * 10)
    # Variety: mean colours, brightness and noise differ widely between images of one class.
    disc = a[la == 0].astype(np.float64)
    assert (
        disc.mean((1, 2)).std(0).min() > 20
    )  # per-image mean colour, std over images (grey levels)
    assert len({_digest(x) for x in a}) == 300


def test_the_labelled_shape_is_brighter_or_darker_in_every_channel_either_way_equally_often():
    rng = np.random.default_rng(3)
    background = rng.uniform(0, 255, (20_000, 3)).astype(np.float32)
    colour = shapes._contrasting_colour(rng, background)
    diff = colour - background
    same_sign = np.all(diff > 0, axis=1) | np.all(diff < 0, axis=1)
    assert same_sign.all()  # one direction in all three channels: a brightness edge
    # 60-120 grey levels per channel where that fits in [0, 255]; clipped (smaller) where not,
    # yet still 25+ grey levels on average over the channels even for uniformly random backgrounds.
    unclipped = np.all((colour > 0) & (colour < 255), axis=1)
    assert unclipped.mean() > 0.45
    assert np.abs(diff[unclipped]).min() >= 60 and np.abs(diff).max() <= 120
    assert np.abs(diff).mean(axis=1).min() > 25
    # Brighter about as often as darker, so the direction says nothing about the class.
    assert abs(np.all(diff > 0, axis=1).mean() - 0.5) < 0.02


def test_a_linear_classifier_on_pixels_does_poorly():
    """Softmax regression fitted to convergence memorises the train set yet stays near chance."""
    x_train, y_train = shapes.render(1200, 11)
    x_test, y_test = shapes.render(600, 12)

    def features(x):
        return x.reshape(len(x), -1).astype(np.float32) / 255.0

    f_train, f_test = features(x_train), features(x_test)
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-3
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    onehot = np.eye(10, dtype=np.float32)[y_train]
    dim, l2 = f_train.shape[1], 1e-2

    def loss_and_grad(w):
        weights, bias = w[:-10].reshape(dim, 10).astype(np.float32), w[-10:].astype(np.float32)
        z = f_train @ weights + bias
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        g = (np.exp(logp) - onehot) / len(f_train)
        loss = -(onehot * logp).sum() / len(f_train) + 0.5 * l2 * (weights**2).sum()
        grad = np.concatenate([(f_train.T @ g + l2 * weights).ravel(), g.sum(0)])
        return float(loss), grad.astype(np.float64)

    w = scipy.optimize.minimize(
        loss_and_grad, np.zeros(dim * 10 + 10), jac=True, method="L-BFGS-B", options={"maxiter": 60}
    ).x
    weights, bias = w[:-10].reshape(dim, 10), w[-10:]
    train_acc = ((f_train @ weights + bias).argmax(1) == y_train).mean()
    test_acc = ((f_test @ weights + bias).argmax(1) == y_test).mean()
    assert train_acc > 0.6  # the model did fit (it has 30k weights for 1.2k images)...
    assert test_acc < 0.45  # ...but pixels carry no linear evidence of the shape


def test_first_use_prepares_it_through_tfds_and_the_pipeline_reads_it(small_shapes):
    info = catalog.open("shapes10", data_dir=small_shapes, input_pipeline="host")
    assert (info.num_train, info.num_eval, info.num_classes) == (SMALL_TRAIN, SMALL_TEST, 10)
    assert (info.image_size, info.jpeg_crops, info.eval_split) == (32, False, "test")
    it = pipeline.train_iterator(
        catalog.open("shapes10", data_dir=small_shapes, input_pipeline="host"),
        local_batch_size=32,
        seed=0,
    )
    batch = next(it)
    assert batch["image"].shape == (32, 32, 32, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].min() >= 0 and batch["label"].max() <= 9
    x = np.asarray(
        pipeline.finish_for(catalog.open("shapes10", data_dir=small_shapes, input_pipeline="host"))(
            batch
        )
    )
    assert abs(float(x.mean())) < 0.2 and 0.7 < float(x.std()) < 1.3
    # The stored test split is exactly render(NUM_TEST, SEED + 1) (PNG is lossless).
    images, labels = shapes.render(SMALL_TEST, shapes.SEED + 1)
    builder = datasets.get_builder("shapes10", small_shapes)
    stored = sorted(
        (_digest(ex["image"]), int(ex["label"]))
        for ex in builder.as_dataset(split="test").as_numpy_iterator()
    )
    assert stored == sorted(zip(map(_digest, images), labels.tolist(), strict=True))


def test_eval_covers_the_test_split_once(small_shapes):
    it = pipeline.eval_iterator(
        catalog.open("shapes10", data_dir=small_shapes, input_pipeline="host"), local_batch_size=25
    )
    batches = list(it)
    assert len(batches) == 3
    assert sum(int(b["mask"].sum()) for b in batches) == SMALL_TEST
    labels = np.concatenate([b["label"][b["mask"]] for b in batches])
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), [SMALL_TEST // 10] * 10)


@pytest.mark.slow
def test_full_dataset_prepares_with_40k_train_and_10k_test_examples(tmp_path):
    # How long preparing takes is a benchmark figure (docs/benchmarks.md), not asserted here.
    info = catalog.open("shapes10", data_dir=str(tmp_path), input_pipeline="host")
    assert (
        (info.num_train, info.num_eval) == (shapes.NUM_TRAIN, shapes.NUM_TEST) == (40_000, 10_000)
    )
