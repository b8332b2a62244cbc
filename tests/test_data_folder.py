"""`folder:PATH`: a folder of images is a dataset, read the same way whatever its files' formats,
equal to shapes10 when written from it, and every bad folder or file named in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from resnet_jax import config as config_lib
from resnet_jax.data import arrays, catalog, datasets, folder, shapes
from resnet_jax.engine import faults
from tests.fake_folders import folder_order, write_images, write_shapes_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _held(name, data_dir, image_size=None, **kw):
    """The record of `name` as the device path holds it."""
    return catalog.open(
        name, data_dir=data_dir, image_size=image_size, input_pipeline="device", **kw
    )


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def mixed(tmp_path):
    """One class of every mode and format (with the RGB pixels each must give), one plain class,
    and three stray files that are not images."""
    rgb = _rgb(30, 40, 0)
    grey = _rgb(20, 20, 1)[..., 0]
    palette = Image.fromarray(_rgb(12, 18, 2)).quantize(16)
    rgba = np.concatenate([_rgb(16, 16, 3), _rgb(16, 16, 4)[..., :1]], axis=-1)
    deep = (np.arange(24 * 10, dtype=np.uint16).reshape(24, 10) * 270).astype(np.uint16)
    frames = [Image.fromarray(_rgb(10, 10, s)).quantize(8) for s in (5, 6)]
    smooth = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (48, 64, 3))
    files = {
        "rgb.png": (Image.fromarray(rgb), rgb),
        "grey.png": (Image.fromarray(grey), np.repeat(grey[..., None], 3, -1)),
        "palette.png": (palette, np.asarray(palette.convert("RGB"))),
        "rgba.png": (Image.fromarray(rgba), rgba[..., :3]),
        "deep.png": (Image.fromarray(deep), None),
        "rgb.bmp": (Image.fromarray(rgb), rgb),
        "smooth.jpg": (Image.fromarray(np.ascontiguousarray(smooth)), smooth),
        "cmyk.jpeg": (Image.fromarray(np.ascontiguousarray(smooth)).convert("CMYK"), smooth),
    }
    for split in ("train", "test"):
        write_images(str(tmp_path / split / "mixed"), {k: v[0] for k, v in files.items()})
        frames[0].save(
            str(tmp_path / split / "mixed" / "anim.gif"), save_all=True, append_images=frames[1:]
        )
        write_images(str(tmp_path / split / "plain"), {"a.png": Image.fromarray(_rgb(8, 8, 7))})
    for stray in ("README.txt", ".DS_Store", "Thumbs.db"):
        (tmp_path / "train" / "mixed" / stray).write_bytes(b"not an image")
    expected = {k: v[1] for k, v in files.items()}
    expected["deep.png"] = np.repeat(np.round(deep / 257.0).astype(np.uint8)[..., None], 3, -1)
    expected["anim.gif"] = np.asarray(frames[0].convert("RGB"))
    return tmp_path, expected


def test_every_mode_and_format_becomes_rgb_uint8_and_stray_files_are_skipped_and_counted(mixed):
    root, expected = mixed
    layout = folder.scan(str(root))
    assert layout.class_names == ("mixed", "plain")
    assert layout.skipped == {"train": 3, "test": 0}
    assert layout.count("train") == 10 and layout.eval_split == "test"
    for path, label in layout.files["train"]:
        image = folder.decode(os.path.join(str(root), path))
        want = expected.get(os.path.basename(path))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3, path
        if want is None:
            assert label == 1
        elif path.endswith(("jpg", "jpeg")):  # lossy: close, not equal
            assert image.shape == want.shape and np.abs(image - want.astype(float)).mean() < 6
        else:
            np.testing.assert_array_equal(image, want, err_msg=path)
    images, labels = folder.read_images(layout, "train", 16)
    assert images.shape == (10, 16, 16, 3) and labels.tolist() == [0] * 9 + [1]
    assert "10 images" in folder.fingerprint(layout, "train")
    assert "3 file(s) that are not images skipped" in folder.description(layout)


def test_a_folder_of_shapes10_images_gives_shapes10s_pixels_labels_and_class_names(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(shapes, "NUM_TRAIN", 60)
    monkeypatch.setattr(shapes, "NUM_TEST", 30)
    rendered = write_shapes_folder(str(tmp_path / "shapes"), 60, 30)
    name, data_dir = f"folder:{tmp_path / 'shapes'}", str(tmp_path / "data")
    for split in ("train", "test"):
        got = arrays.load(_held(name, data_dir, 32), split)
        want = arrays.load(_held("shapes10", data_dir), split)
        np.testing.assert_array_equal(want.images, rendered[split][0])
        order = folder_order(want.labels)
        np.testing.assert_array_equal(got.images, want.images[order])  # nothing resized: equal
        names = _held(name, data_dir, 32).class_names
        assert [names[k] for k in got.labels] == [shapes.CLASS_NAMES[k] for k in want.labels[order]]
    assert sorted(_held(name, data_dir, 32).class_names) == sorted(shapes.CLASS_NAMES)
    info = _held(name, data_dir, 32)
    assert (info.num_train, info.num_eval, info.num_classes, info.image_size) == (60, 30, 10, 32)
    path = arrays.path(info, "train")
    assert path.startswith(os.path.join(data_dir, "resnet_jax_arrays", "folders", "shapes-"))


def _square_images(root, side, per_class=2, classes=("a", "b"), splits=("train", "test")):
    for split in splits:
        for cls in classes:
            images = {f"{i}.png": Image.fromarray(_rgb(side, side, i)) for i in range(per_class)}
            write_images(str(root / split / cls), images)


@pytest.mark.parametrize(
    "side, model, init_from, size, rule",
    [
        (48, "resnet18", None, 48, "image_size 48: the images' own size (median 48x48 px), a run "
         "from scratch"),
        (24, "resnet20", None, 24, "image_size 24: the images' own size"),
        (48, "resnet20", None, 48, "image_size 48: the images' own size (median 48x48 px), a run "
         "from scratch"),
        (300, "resnet18", None, 224, "image_size 224: ImageNet's training size, the images "
         "(median 300x300 px) being larger"),
        (300, "resnet20", None, 224, "image_size 224: ImageNet's training size"),
        (48, "resnet18", "w.safetensors", 128, "image_size 128: BiT-HyperRule's size for "
         "fine-tuning on small images (median 48x48 px <= 96x96"),
        (100, "resnet18", "w.safetensors", 384, "image_size 384: BiT-HyperRule's size for "
         "fine-tuning on large images"),
    ],
)  # fmt: skip
def test_a_folders_size_is_its_own_from_scratch_and_bits_when_fine_tuning(
    tmp_path, side, model, init_from, size, rule
):
    _square_images(tmp_path / "f", side)
    c = config_lib.default_config()
    c.dataset, c.data_dir, c.model, c.init_from = f"folder:{tmp_path / 'f'}", "d", model, init_from
    r = config_lib.resolve_config(c)
    assert r.image_size == size and r.image_size_rule.startswith(rule), r.image_size_rule
    assert r.image_size_rule in config_lib.resolve_run(c).notes  # the banner says so


def test_folder_paths_expand_home_and_variables(tmp_path, monkeypatch):
    _square_images(tmp_path / "small", 8)
    _square_images(tmp_path / "large", 8, splits=("train", "val"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("IMAGES", str(tmp_path / "large"))
    for dataset, split in (("folder:~/small", "test"), ("folder:$IMAGES", "val")):
        c = config_lib.default_config()
        c.dataset, c.data_dir = dataset, "~/data"
        r = config_lib.resolve_config(c)
        assert (r.image_size, catalog.open(dataset).eval_split) == (8, split)
    assert datasets.resolve_data_dir("~/data") == str(tmp_path / "data")


def _two_classes(root, splits=("train", "test"), classes=("a", "b")):
    for split in splits:
        for cls in classes:
            write_images(str(root / split / cls), {"0.png": Image.fromarray(_rgb(8, 8, 0))})


def _classes_only(root, counts):
    """ROOT/<class>/<image>: `counts` images in each class, no split folders."""
    for cls, n in counts.items():
        write_images(
            str(root / cls), {f"{i}.png": Image.fromarray(_rgb(8, 8, i)) for i in range(n)}
        )


@pytest.mark.parametrize(
    "make, holdout, message",
    [
        (lambda r: None, 0.2, "does not exist"),
        (lambda r: _two_classes(r, splits=("test",)), 0.2, "has test/ but no train/ folder"),
        (
            lambda r: _two_classes(r, splits=("train",)),
            0,
            "has no evaluation folder: add one of test/, validation/, val/ with the same class "
            "folders as train/, or set --config.holdout_fraction (e.g. 0.2)",
        ),
        (
            lambda r: _classes_only(r, {"a": 3, "b": 3}),
            1e-6,
            "holdout_fraction 1e-06 held out none of its 6 training images, so there is nothing "
            "to evaluate on; add a test/ folder, or set --config.holdout_fraction higher",
        ),
        (
            lambda r: _classes_only(r, {"a": 1, "b": 20}),
            0.5,
            "class a has 1 image(s), too few to hold out a 0.5 part of (none would be",
        ),
        (lambda r: _two_classes(r, classes=("a",)), 0.2, "holds 1 class folder(s) (a); a classi"),
        (lambda r: _classes_only(r, {"a": 4}), 0.2, "the folder holds 1 class folder(s) (a)"),
        (
            lambda r: (_two_classes(r), os.makedirs(r / "train" / "c")),
            0.2,
            f"class folder {{root}}{os.sep}train{os.sep}c holds no images",
        ),
        (
            lambda r: (_two_classes(r), _two_classes(r, ("test",), ("c", "d"))),
            0.2,
            "test/ and train/ have different classes; only in test/: c, d",
        ),
        (
            lambda r: (_two_classes(r), _two_classes(r, ("train",), ("z",))),
            0.2,
            "only in train/: z",
        ),
    ],
    ids=[
        "missing",
        "no-train",
        "no-eval-holdout-off",
        "holdout-empty",
        "holdout-class-too-few",
        "one-class",
        "one-class-no-splits",
        "empty-class",
        "eval-extra",
        "train-extra",
    ],
)
def test_a_folder_that_is_not_the_layout_is_refused_naming_what(tmp_path, make, holdout, message):
    root = tmp_path / "images"
    make(root)
    with pytest.raises(folder.FolderError) as e:
        folder.scan(str(root), holdout)
    assert message.format(root=root) in str(e.value)
    assert faults.classify(e.value)[0] == faults.EXIT_NO_INPUT


def test_corrupt_truncated_and_empty_images_stop_the_read_naming_the_file(tmp_path):
    _two_classes(tmp_path)
    good = (tmp_path / "train" / "a" / "0.png").read_bytes()
    bad = {
        "empty.png": (b"", "an empty file"),
        "cut.png": (good[: len(good) // 2], "truncated"),
        "text.jpg": (b"hello, not a JPEG", "not in an image format Pillow reads"),
    }
    for name, (data, reason) in bad.items():
        path = tmp_path / "train" / "b" / name
        path.write_bytes(data)
        layout = folder.scan(str(tmp_path))
        with pytest.raises(datasets.CorruptImageError) as e:
            folder.read_images(layout, "train", 8)
        assert str(e.value).startswith(f"{path} is not a readable image (")
        assert reason in str(e.value) and e.value.keys == (str(path),)
        path.unlink()


def test_a_changed_folder_is_noticed_and_its_prepared_copy_rebuilt(tmp_path, capfd):
    _two_classes(tmp_path / "f")
    name, data_dir = f"folder:{tmp_path / 'f'}", str(tmp_path / "data")
    assert len(arrays.load(_held(name, data_dir, 8), "train").labels) == 2
    added = tmp_path / "f" / "train" / "a" / "1.png"
    Image.fromarray(_rgb(8, 8, 1)).save(added)
    assert arrays.load(_held(name, data_dir, 8), "train").labels.tolist() == [0, 0, 1]
    err = capfd.readouterr().err
    assert "is stale: built from 'folder " in err and "train: 2 images" in err
    assert "train: 3 images" in err and "rebuilding it" in err
    Image.fromarray(_rgb(8, 8, 2)).save(added)  # edited in place: same name, new pixels
    os.utime(added, ns=(os.stat(added).st_atime_ns, os.stat(added).st_mtime_ns + 10**9))
    np.testing.assert_array_equal(
        arrays.load(_held(name, data_dir, 8), "train").images[1], _rgb(8, 8, 2)
    )
    assert "is stale" in capfd.readouterr().err
    added.unlink()
    assert len(arrays.load(_held(name, data_dir, 8), "train").labels) == 2
    assert "is stale" in capfd.readouterr().err
    arrays.load(_held(name, data_dir, 8), "train")
    assert capfd.readouterr().err == ""  # unchanged: the prepared copy is used as it is


def _main(*flags):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run(
        [sys.executable, "-m", "resnet_jax.main", "--config=configs/default.py", *flags],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_training_on_a_bad_folder_ends_with_one_line_and_exit_66(tmp_path):
    _two_classes(tmp_path / "f")
    (tmp_path / "f" / "test" / "b" / "0.png").write_bytes(b"")
    for dataset, words in (
        (f"folder:{tmp_path / 'nowhere'}", f"folder dataset {tmp_path / 'nowhere'} does not exist"),
        (f"folder:{tmp_path / 'f'}", f"{tmp_path / 'f' / 'test' / 'b' / '0.png'} is not a"),
    ):
        p = _main(
            f"--workdir={tmp_path / 'run'}",
            f"--config.dataset={dataset}",
            f"--config.data_dir={tmp_path / 'data'}",
            "--config.image_size=8",
            "--config.batch_size=2",
        )
        assert p.returncode == faults.EXIT_NO_INPUT, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("resnet_jax: ") and words in lines[0]


def test_a_32px_dataset_at_a_larger_image_size_is_upsampled_inside_the_finish(
    tmp_path, monkeypatch
):
    import jax

    from resnet_jax.data import finish
    from resnet_jax.engine import validation

    monkeypatch.setattr(shapes, "NUM_TRAIN", 40)
    monkeypatch.setattr(shapes, "NUM_TEST", 10)
    c = config_lib.default_config()
    c.dataset, c.data_dir, c.image_size, c.batch_size = "shapes10", str(tmp_path), 64, 8
    run = config_lib.resolve_run(c)
    validation.check_resolved(run, device_count=1, process_count=1)
    upsampling = config_lib.build_finish(run.c)
    batch = {"image": arrays.load(_held("shapes10", str(tmp_path)), "test").images[:2]}
    native = finish.Finish(upsampling.mean, upsampling.std)(batch)
    assert upsampling.size == 64 and native.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(
        upsampling(batch), jax.image.resize(native, (2, 64, 64, 3), "bilinear"), atol=1e-6
    )
    c.image_size = 16  # smaller than the images: refused
    with pytest.raises(faults.ConfigError, match="image_size=16 is not supported"):
        validation.check_resolved(config_lib.resolve_run(c), device_count=1, process_count=1)


def test_the_prepare_command_decodes_a_folder_once_and_names_a_bad_one(tmp_path, capsys):
    from resnet_jax.data import prepare

    _two_classes(tmp_path / "f")
    name, data_dir = f"folder:{tmp_path / 'f'}", str(tmp_path / "data")
    assert prepare.main([name, "--data_dir", data_dir, "--image_size", "16"]) == 0
    out = capsys.readouterr().out
    assert f"{name} prepared at 16x16 in " in out and "2 classes (a, b)" in out
    assert arrays.load(_held(name, data_dir, 16), "test").images.shape == (2, 16, 16, 3)
    assert prepare.main([f"folder:{tmp_path / 'g'}", "--data_dir", data_dir]) == 66
    assert capsys.readouterr().err == (
        f"resnet_jax: folder dataset {tmp_path / 'g'} does not exist (or is not a directory)\n"
    )


def test_a_folder_without_a_test_split_holds_out_each_class_by_a_stable_hash(tmp_path):
    _classes_only(tmp_path / "flat", {"cat": 100, "dog": 100, "owl": 100})
    layout = folder.scan(str(tmp_path / "flat"), 0.2)
    assert layout.eval_split == "holdout" and layout.holdout == 0.2
    train = {p for p, _ in layout.files["train"]}
    held = {p for p, _ in layout.files["holdout"]}
    assert not train & held and len(train | held) == 300
    for k, cls in enumerate(("cat", "dog", "owl")):  # a fraction of each class
        n = sum(1 for p, label in layout.files["holdout"] if label == k and p.startswith(cls))
        assert 10 <= n <= 30, (cls, n)
    assert "evaluating on" in folder.description(layout)
    assert f"{len(held)} images held out" in folder.description(layout)
    # Python's own hash() is salted per process; the choice must not be.
    code = (
        "import sys; from resnet_jax.data import folder; "
        f"print(sorted(p for p, _ in folder.scan({str(tmp_path / 'flat')!r}, 0.2).files['holdout']))"
    )
    env = dict(os.environ, PYTHONPATH=REPO, PYTHONHASHSEED="123")
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert other.stdout.strip() == str(sorted(held)), other.stderr
    # Adding files moves no old one across.
    _classes_only(tmp_path / "flat", {"cat": 160, "dog": 130, "owl": 100})
    grown = folder.scan(str(tmp_path / "flat"), 0.2)
    assert held <= {p for p, _ in grown.files["holdout"]}
    assert train <= {p for p, _ in grown.files["train"]}
    # The same folders under train/ hold out the same files; a test/ folder is kept as it is.
    os.makedirs(tmp_path / "split")
    os.rename(tmp_path / "flat", tmp_path / "split" / "train")
    nested = folder.scan(str(tmp_path / "split"), 0.2)
    within_train = {os.path.relpath(p, "train") for p, _ in nested.files["holdout"]}
    assert within_train == {p for p, _ in grown.files["holdout"]}
    _two_classes(tmp_path / "split", splits=("test",), classes=("cat", "dog", "owl"))
    explicit = folder.scan(str(tmp_path / "split"), 0.2)
    assert (explicit.eval_split, explicit.holdout, explicit.count("train")) == ("test", 0.0, 390)


def test_holdout_fraction_reaches_every_reader_and_its_checks_name_the_key(tmp_path):
    from resnet_jax.engine import validation

    _classes_only(tmp_path / "f", {"a": 30, "b": 30})
    c = config_lib.default_config()
    c.dataset, c.data_dir, c.batch_size = f"folder:{tmp_path / 'f'}", str(tmp_path / "d"), 8
    run = config_lib.resolve_run(c)
    r = run.c
    held = folder.layout_of(c.dataset, 0.2).count("holdout")
    assert (r.num_train_examples, run.data.num_eval) == (60 - held, held)
    validation.check_resolved(run, device_count=1, process_count=1)
    assert arrays.load(run.data, "holdout").images.shape[0] == held
    c.holdout_fraction = 0.5  # another fraction: another split, read by every reader alike
    run = config_lib.resolve_run(c)
    r = run.c
    assert folder.layout_of(c.dataset, 0.5).count("holdout") == run.data.num_eval
    assert arrays.count(run.data, "train") == r.num_train_examples
    assert r.num_train_examples < 60 - held
    c.holdout_fraction = 0.0
    with pytest.raises(folder.FolderError, match="or set --config.holdout_fraction"):
        config_lib.resolve_config(c)
    c.holdout_fraction = 1.0
    with pytest.raises(faults.ConfigError, match=r"holdout_fraction must be in \[0, 1\)"):
        validation.check_config(c)


def test_a_failed_decode_leaves_no_prepared_folder_or_lock_behind(tmp_path):
    _two_classes(tmp_path / "f")
    (tmp_path / "f" / "train" / "b" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    name, data_dir = f"folder:{tmp_path / 'f'}", tmp_path / "data"
    os.makedirs(data_dir / "kept")  # what was there before the build is left alone
    with pytest.raises(datasets.CorruptImageError, match="1.png is not a readable image"):
        arrays.load(_held(name, str(data_dir), 8), "train")
    assert sorted(os.listdir(data_dir)) == ["kept"]
    (tmp_path / "f" / "train" / "b" / "1.png").unlink()  # fixed: the next build goes through
    assert arrays.load(_held(name, str(data_dir), 8), "train").images.shape == (2, 8, 8, 3)


def test_predict_names_the_formats_a_folder_takes_not_tensorflows(tmp_path):
    from resnet_jax.tools import predict

    text = tmp_path / "notes.jpg"
    text.write_bytes(b"hello, not a JPEG")
    c = config_lib.default_config()  # shapes10: decoded by TensorFlow, as its test images
    images, problems = predict.load_images([str(text), str(tmp_path / "x.webp")], c)
    assert images is None
    assert problems == {
        str(text): "not a readable image (its bytes are none of JPEG, PNG, BMP, GIF (.jpg, "
        ".jpeg, .png, .bmp, .gif))",
        str(tmp_path / "x.webp"): "not an image file predict reads; it reads JPEG, PNG, BMP, "
        "GIF (.jpg, .jpeg, .png, .bmp, .gif)",
    }
