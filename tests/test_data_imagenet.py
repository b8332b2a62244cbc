"""ImageNet input pipeline on fake ILSVRC2012 archives prepared by the real tfds builder."""

import hashlib
import os
import subprocess
import sys

import fake_archives
import numpy as np
import pytest

from resnet_jax.bench import input_throughput
from resnet_jax.data import augment, catalog, datasets, finish, pipeline, prepare

NUM_CLASSES, PER_CLASS, NUM_VAL = 3, 3, 5


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return fake_archives.fake_imagenet_once(
        tmp_path_factory,
        "imagenet",
        num_classes=NUM_CLASSES,
        train_per_class=PER_CLASS,
        num_val=NUM_VAL,
    )


def _train(fake, image_size=None, **kw):
    d = catalog.open(
        "imagenet2012", data_dir=fake.data_dir, image_size=image_size, input_pipeline="host"
    )
    return pipeline.train_iterator(d, **dict(dict(local_batch_size=4, seed=0), **kw))


def _digest(image):
    return hashlib.sha1(np.round(image, 3).tobytes()).hexdigest()


def test_real_builder_prepares_fake_archives_with_their_sizes_and_labels(fake):
    info = catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host")
    assert (info.num_train, info.num_eval) == (NUM_CLASSES * PER_CLASS, NUM_VAL)
    assert (info.num_classes, info.image_size, info.jpeg_crops) == (1000, 224, True)
    assert (info.train_split, info.eval_split) == ("train", "validation")
    # Train labels are the synset positions in tfds's label list: the first NUM_CLASSES classes.
    labels = np.concatenate([next(_train(fake, augment="none", local_batch_size=9))["label"]])
    assert sorted(labels.tolist()) == sorted(list(range(NUM_CLASSES)) * PER_CLASS)


_DRAWS = {"paper": {"flip", "light"}, "inception": {"flip"}, "none": set()}


@pytest.mark.parametrize("augment_name", ["paper", "inception", "none"])
def test_train_batches_are_uint8_with_their_draws_deterministic_and_finish_normalised(
    fake, augment_name
):
    a = next(_train(fake, augment=augment_name))
    b = next(_train(fake, augment=augment_name))
    assert set(a) == {"image", "label"} | _DRAWS[augment_name]
    assert a["image"].shape == (4, 224, 224, 3) and a["image"].dtype == np.uint8
    assert a["label"].shape == (4,) and a["label"].dtype == np.int32
    if "light" in a:
        assert a["light"].shape == (4, 3) and a["light"].dtype == np.float32
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    # Normalised with ImageNet mean/std: raw 0..255 maps into [-2.12, 2.64]. PCA lighting shifts
    # an image by ~0.1 std per channel (under 0.5 with overwhelming probability).
    x = np.asarray(finish.IMAGENET(a))
    margin = 0.5 if augment_name == "paper" else 1e-4
    lo = (0 - np.array(finish.IMAGENET_MEAN)) / finish.IMAGENET_STD
    hi = (255 - np.array(finish.IMAGENET_MEAN)) / finish.IMAGENET_STD
    assert x.dtype == np.float32 and x.shape == a["image"].shape
    assert np.all(x.min((0, 1, 2)) >= lo - margin)
    assert np.all(x.max((0, 1, 2)) <= hi + margin)
    assert 0.5 < x.std() < 1.5


def _float_reference(image_bytes, seed, augment_name, image_size):
    """Model inputs as the host made them when batches crossed as normalised float32: the uint8
    crop mirrored, resized bilinearly to float, PCA lighting added, normalised per channel."""
    tf = augment.tf
    s_crop, s_light = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if augment_name == "paper":
        window, flip = augment.paper_window(augment.jpeg_shape(image_bytes), s_crop, image_size)
        light = augment.pca_lighting_offset(s_light).numpy()
    else:
        window, flip = augment.inception_window(augment.jpeg_shape(image_bytes), s_crop)
        light = np.zeros(3, np.float32)
    crop = augment.decode_crop(image_bytes, window)
    crop = tf.reverse(crop, axis=[1]) if flip else crop
    x = tf.image.resize(crop, [image_size, image_size], method="bilinear", antialias=False)
    mean, std = np.array(finish.IMAGENET_MEAN), np.array(finish.IMAGENET_STD)
    return (x.numpy() + light - mean) / std


@pytest.mark.parametrize("augment_name", ["paper", "inception"])
def test_uint8_crops_finished_on_device_match_the_float_pipeline_and_its_statistics(
    augment_name,
):
    """Same crops, flips and lighting as the float host pipeline; pixels within rounding."""
    tf = augment.tf
    rng = np.random.default_rng(5)
    jpegs = [fake_archives.natural_jpeg(rng, *hw) for hw in ((375, 500), (500, 375), (333, 500))]
    size, draws = 96, 24
    new, old, flips = [], [], []
    for k in range(draws):
        image_bytes, seed = tf.constant(jpegs[k % 3]), tf.constant([11, k], tf.int64)
        s_crop, s_light = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        if augment_name == "paper":
            window, flip = augment.paper_window(augment.jpeg_shape(image_bytes), s_crop, size)
        else:
            window, flip = augment.inception_window(augment.jpeg_shape(image_bytes), s_crop)
        crop = augment.decode_jpeg_crop(image_bytes, window)
        batch = {"image": augment.resize_to_uint8(crop, size)[None], "flip": flip[None]}
        if augment_name == "paper":
            batch["light"] = augment.pca_lighting_offset(s_light)[None]
        new.append(np.asarray(finish.IMAGENET({k: np.asarray(v) for k, v in batch.items()}))[0])
        old.append(_float_reference(image_bytes, seed, augment_name, size))
        flips.append(bool(flip))
    new, old = np.stack(new), np.stack(old)
    # Rounding the resized pixels to uint8 moves each by at most half a grey level.
    tolerance = 0.5 / np.array(finish.IMAGENET_STD) + 1e-4
    assert (np.abs(new - old) <= tolerance).all(), np.abs(new - old).max((0, 1, 2))
    assert 0 < sum(flips) < draws  # both mirrored and plain crops were compared
    # Output statistics before and after: per-channel means and spreads agree to rounding.
    np.testing.assert_allclose(new.mean((0, 1, 2)), old.mean((0, 1, 2)), atol=2e-3)
    np.testing.assert_allclose(new.std((0, 1, 2)), old.std((0, 1, 2)), rtol=2e-3)
    np.testing.assert_allclose(new.mean(0), old.mean(0), atol=tolerance.max())


def test_other_seed_gives_other_augmentation(fake):
    a = next(_train(fake, augment="inception", seed=0))["image"]
    b = next(_train(fake, augment="inception", seed=1))["image"]
    assert not np.allclose(a, b)


def test_resumed_iterator_yields_the_same_next_batches(fake):
    # 9 examples, batches of 4: batches 2, 4 and 6 straddle epoch boundaries.
    full = _train(fake, augment="paper")
    reference = [next(full) for _ in range(7)]
    for start in (2, 5):
        resumed = _train(fake, augment="paper", start_step=start)
        assert resumed.step == start
        for k in range(start, 7):
            batch = next(resumed)
            np.testing.assert_array_equal(batch["image"], reference[k]["image"])
            np.testing.assert_array_equal(batch["label"], reference[k]["label"])


def test_each_epoch_is_a_permutation_of_the_shard(fake):
    it = _train(fake, augment="none", local_batch_size=3)
    epochs = [[_digest(x) for _ in range(3) for x in next(it)["image"]] for _ in range(2)]
    assert len(set(epochs[0])) == 9 and set(epochs[0]) == set(epochs[1])
    assert epochs[0] != epochs[1]  # reshuffled


def test_two_processes_read_disjoint_shards_covering_the_split(fake):
    everything = {
        _digest(x)
        for b in pipeline.eval_iterator(
            catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=9,
            split="train",
        )
        for x, m in zip(b["image"], b["mask"], strict=True)
        if m
    }
    assert len(everything) == 9
    shards = []
    for p in range(2):
        it = pipeline.eval_iterator(
            catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=2,
            split="train",
            process_index=p,
            process_count=2,
        )
        assert len(it) == 3  # ceil(5 / 2) on both processes
        batches = list(it)
        assert len(batches) == 3
        shards.append(
            [_digest(x) for b in batches for x, m in zip(b["image"], b["mask"], strict=True) if m]
        )
    assert sorted(map(len, shards)) == [4, 5]
    assert not set(shards[0]) & set(shards[1])
    assert set(shards[0]) | set(shards[1]) == everything
    # Training shards are equal-sized (4 + 4: the remainder is dropped) and disjoint too.
    train = []
    for p in range(2):
        it = _train(fake, augment="none", local_batch_size=2, process_index=p, process_count=2)
        train.append({_digest(x) for _ in range(2) for x in next(it)["image"]})  # one epoch
    assert [len(t) for t in train] == [4, 4]
    assert not train[0] & train[1] and train[0] | train[1] <= everything


def test_eval_visits_every_example_once_with_mask(fake):
    it = pipeline.eval_iterator(
        catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
        local_batch_size=2,
    )
    batches = list(it)
    assert len(batches) == len(it) == 3
    mask = np.concatenate([b["mask"] for b in batches])
    np.testing.assert_array_equal(mask, [True] * NUM_VAL + [False])
    images = np.concatenate([b["image"] for b in batches])
    assert len({_digest(x) for x in images[:NUM_VAL]}) == NUM_VAL
    assert images.dtype == np.uint8 and not images[NUM_VAL:].any()  # padding rows are zeros
    assert np.concatenate([b["label"] for b in batches])[-1] == 0


def test_ten_crop_yields_ten_views_whose_last_five_mirror_the_first(fake):
    batch = next(
        pipeline.eval_iterator(
            catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=2,
            views="10crop",
        )
    )
    assert batch["image"].shape == (2, 10, 224, 224, 3)
    assert batch["image"].dtype == np.uint8
    views = batch["image"][0].astype(np.float32)
    np.testing.assert_array_equal(views[5:], views[:5, :, ::-1])
    assert len({_digest(v) for v in views[:5]}) == 5
    center = next(
        pipeline.eval_iterator(
            catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=2,
        )
    )["image"][0].astype(np.float32)
    # The centre view is the centre crop up to resampling (resize-then-crop vs crop-then-resize,
    # which differ by sub-pixel shifts): far closer to it than the corner views are.
    assert np.abs(views[4] - center).mean() < 0.5 * min(
        np.abs(v - center).mean() for v in views[:4]
    )


@pytest.mark.parametrize("scale", [256, 384])
def test_multiscale_views_are_the_scale_square_and_its_mirror(fake, scale):
    batch = next(
        pipeline.eval_iterator(
            catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=3,
            views="multiscale",
            scale=scale,
        )
    )
    assert batch["image"].shape == (3, 2, scale, scale, 3)
    np.testing.assert_allclose(batch["image"][:, 1], batch["image"][:, 0, :, ::-1], atol=1e-5)


def test_impossible_sizes_and_options_are_refused_clearly(fake):
    with pytest.raises(ValueError, match="exceeds the smallest scale 256"):
        _train(fake, augment="paper", image_size=300)
    with pytest.raises(ValueError, match="fewer than one batch of 16"):
        _train(fake, local_batch_size=16)
    with pytest.raises(ValueError, match="augment='cifar' is not available"):
        _train(fake, augment="cifar")
    with pytest.raises(ValueError, match="multiscale' needs the shorter side"):
        pipeline.eval_iterator(
            catalog.open("imagenet2012", data_dir=fake.data_dir, input_pipeline="host"),
            local_batch_size=2,
            views="multiscale",
        )
    with pytest.raises(ValueError, match="train45k"):
        _train(fake, split="train45k")


def test_inception_crop_at_other_resolution(fake):
    batch = next(_train(fake, augment="inception", image_size=128))
    assert batch["image"].shape == (4, 128, 128, 3)


def test_not_prepared_error_names_the_prepare_command(tmp_path):
    with pytest.raises(datasets.DatasetNotPreparedError) as e:
        catalog.open("imagenet2012", data_dir=str(tmp_path)).count("train")
    assert (
        f"python -m resnet_jax.data.prepare imagenet2012 --data_dir {tmp_path} --manual_dir"
        in str(e.value)
    )
    with pytest.raises(datasets.DatasetNotPreparedError, match="prepare cifar10 --data_dir"):
        pipeline.train_iterator(
            catalog.open("cifar10", data_dir=str(tmp_path), input_pipeline="host"),
            local_batch_size=2,
            seed=0,
        )


def test_prepare_names_the_missing_archives(tmp_path):
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(b"")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_jax.data.prepare",
            "imagenet2012",
            "--data_dir",
            str(tmp_path / "data"),
            "--manual_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH="."),
    )
    assert proc.returncode == 1
    assert "ILSVRC2012_img_train.tar" in proc.stderr and "ILSVRC2012_img_val.tar" in proc.stderr
    assert (
        f"Missing in --manual_dir {tmp_path}: {tmp_path / 'ILSVRC2012_img_train.tar'}"
        in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_prepare_detects_a_truncated_download(fake, tmp_path):
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        data = open(os.path.join(fake.manual_dir, name), "rb").read()
        if name.startswith("ILSVRC2012_img_val"):
            data = data[: len(data) * 2 // 3]
        (tmp_path / name).write_bytes(data)
    with pytest.raises(
        prepare.PrepareError,
        match="ILSVRC2012_img_val.tar .* the download is incomplete or damaged",
    ):
        prepare.check_imagenet_manual_dir(str(tmp_path))


@pytest.fixture(scope="module")
def corrupt_fake(tmp_path_factory):
    return fake_archives.fake_imagenet_once(
        tmp_path_factory,
        "imagenet_corrupt",
        num_classes=1,
        train_per_class=4,
        num_val=1,
        corrupt=1,
        not_jpeg=1,
        seed=3,
    )


@pytest.mark.parametrize("augment_name", ["paper", "inception"])
def test_corrupt_or_non_jpeg_image_stops_training_naming_its_key(corrupt_fake, augment_name):
    """A truncated JPEG and a PNG (the crops decode JPEGs only) among two good images."""
    (bad,), (png,) = corrupt_fake.corrupt_keys, corrupt_fake.not_jpeg_keys
    it = _train(corrupt_fake, augment=augment_name, local_batch_size=4)  # one batch, one epoch
    with pytest.raises(datasets.CorruptImageError) as e:
        next(it)
    assert sorted(e.value.keys) == sorted([bad, png])
    message = str(e.value)
    assert repr(bad) in message and repr(png) in message
    assert "imagenet2012 split 'train' (process 0)" in message
    assert f"prepare imagenet2012 --data_dir {corrupt_fake.data_dir}" in message
    assert "function_node" not in message and "Traceback" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_corrupt_or_non_jpeg_image_stops_evaluation_naming_its_key(corrupt_fake):
    it = pipeline.eval_iterator(
        catalog.open("imagenet2012", data_dir=corrupt_fake.data_dir, input_pipeline="host"),
        local_batch_size=2,
        split="train",
    )
    with pytest.raises(datasets.CorruptImageError) as e:
        list(it)
    # Evaluation reads the records in file order, two per batch, and stops at the first bad batch.
    d = catalog.open("imagenet2012", data_dir=corrupt_fake.data_dir)
    shard = pipeline._Shard(d, "train", 0, 1, False)
    order = [shard.parse(r)[2].numpy().decode() for r in shard.records()]
    bad = {*corrupt_fake.corrupt_keys, *corrupt_fake.not_jpeg_keys}
    first_bad_batch = next(b for b in (order[:2], order[2:]) if bad & set(b))
    assert list(e.value.keys) == [k for k in first_bad_batch if k in bad]


def test_predict_reads_any_format_the_crops_of_a_jpeg_and_a_png_are_equal():
    """center_eval outside the pipeline (predict) takes any format; JPEG-only gives the same."""
    tf = augment.tf
    rng = np.random.default_rng(2)
    jpeg = tf.constant(fake_archives.natural_jpeg(rng, 375, 500))
    png = tf.io.encode_png(tf.io.decode_jpeg(jpeg, channels=3))  # the same pixels, losslessly
    a = augment.center_eval(jpeg, 224, jpeg_only=True).numpy()
    np.testing.assert_array_equal(a, augment.center_eval(jpeg, 224))
    # The same crop, except its last column: decoding only the window, libjpeg upsamples the
    # chroma of the window's right edge without the column beyond it.
    c = augment.center_eval(png, 224).numpy()
    np.testing.assert_array_equal(a[:, :-1], c[:, :-1])
    assert np.abs(a[:, -1].astype(int) - c[:, -1]).mean() < 8  # a few grey levels
    with pytest.raises(tf.errors.InvalidArgumentError):
        augment.center_eval(png, 224, jpeg_only=True)


def test_throughput_reports_images_per_second(fake):
    result = input_throughput.measure_input_pipeline(
        "imagenet2012",
        fake.data_dir,
        batch_size=4,
        augment="inception",
        num_batches=3,
        warmup_batches=1,
    )
    assert result["image_shape"] == [224, 224, 3] and result["num_batches"] == 3
    assert result["images_per_sec"] == pytest.approx(12 / result["seconds"], rel=1e-9)
    assert result["images_per_sec_per_core"] == pytest.approx(
        result["images_per_sec"] / result["cores"], rel=1e-9
    )
    assert result["images_per_cpu_sec"] > 0


@pytest.mark.slow
def test_decoder_comparison_times_pipeline_and_both_yardsticks_on_the_same_rounds(fake):
    decoder = next(
        input_throughput.decoder_iterator(
            input_throughput.host_record("imagenet2012", fake.data_dir),
            local_batch_size=4,
            seed=0,
            augment="inception",
        )
    )
    train = next(_train(fake, augment="inception"))
    assert set(decoder) == {"pixel", "label"} and decoder["pixel"].shape == (4, 3)
    np.testing.assert_array_equal(decoder["label"], train["label"])  # the same examples
    r = input_throughput.compare_with_decoder(
        "imagenet2012", fake.data_dir, 4, "inception", rounds=2, num_batches=1, warmup_batches=0
    )
    names = {"pipeline", "decode_only", "decode_resize", "read_decode"}
    assert len(r["rounds"]) == 2 and set(r["rounds"][0]) == names
    for num, den, key in (
        ("pipeline", "decode_only", "ratio"),
        ("pipeline", "decode_resize", "decode_resize_ratio"),
        ("pipeline", "read_decode", "read_decode_ratio"),
        ("decode_resize", "decode_only", "resize_ceiling"),
    ):
        ratios = [x[num]["images_per_sec"] / x[den]["images_per_sec"] for x in r["rounds"]]
        assert r[key] == pytest.approx(np.median(ratios), rel=1e-9)
    assert r["pipeline_images_per_sec_per_core"] == pytest.approx(
        np.median([x["pipeline"]["images_per_sec"] for x in r["rounds"]]) / r["cores"], rel=1e-9
    )
    text = input_throughput.format_comparison(r)
    assert f"pipeline / decode only     {r['ratio']:.3f} wall-clock" in text
    assert f"pipeline / read + decode   {r['read_decode_ratio']:.3f} wall-clock" in text
    assert f"(the most a pipeline that resizes can reach) {r['resize_ceiling']:.3f}" in text
    with pytest.raises(ValueError, match="not cropped out of JPEGs"):
        input_throughput.decoder_iterator(
            input_throughput.host_record("cifar10", fake.data_dir), local_batch_size=4, seed=0
        )


def test_decode_only_decodes_the_pipelines_crop_windows_from_memory_and_nothing_else(fake):
    tf = augment.tf
    kw = dict(local_batch_size=4, seed=0, augment="paper", start_step=1)
    d = input_throughput.host_record("imagenet2012", fake.data_dir)
    it = input_throughput.decode_only_iterator(d, num_batches=2, **kw)
    pixels = [b["pixel"] for b in it]  # ends after num_batches
    assert len(pixels) == 2 and pixels[0].shape == (4, 3) and pixels[0].dtype == np.uint8
    # The same examples and windows as the pipeline's batches 1 and 2: each decoded crop, resized
    # as the pipeline resizes it, is the pipeline's image.
    stream = pipeline._TrainStream(d, 4, 0, augment="paper", scale_range=(256, 480))
    train = _train(fake, augment="paper", start_step=1)
    for step in (1, 2):
        images = next(train)["image"]
        for k, (position, serialized) in enumerate(stream.records(step * 4).take(4)):
            image_bytes, _, _ = stream.shard.parse(serialized)
            seed = stream.example_seed(position)
            s_crop, _ = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            window, _ = augment.paper_window(augment.jpeg_shape(image_bytes), s_crop)
            crop = tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)
            np.testing.assert_array_equal(crop[0, 0], pixels[step - 1][k])
            np.testing.assert_array_equal(augment.resize_to_uint8(crop, 224), images[k])
    # With resize: the pipeline's images exactly, nothing else in the batch.
    resized = list(input_throughput.decode_only_iterator(d, num_batches=2, resize=True, **kw))
    train = _train(fake, augment="paper", start_step=1)
    for batch in resized:
        assert set(batch) == {"image"}
        np.testing.assert_array_equal(batch["image"], next(train)["image"])
    with pytest.raises(ValueError, match="not cropped out of JPEGs"):
        input_throughput.decode_only_iterator(
            input_throughput.host_record("cifar10", fake.data_dir),
            local_batch_size=4,
            seed=0,
            num_batches=1,
        )
