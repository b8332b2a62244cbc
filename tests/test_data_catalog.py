"""`catalog.open`: one record of what a dataset is, for built-in datasets, folders and synthetic
data, per input path, without TensorFlow; a folder's files fingerprinted once."""

import os
import subprocess
import sys

import pytest

from resnet_jax.data import catalog, folder, shapes
from tests.fake_folders import write_shapes_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_built_in_datasets_keep_their_paths_options_and_defaults(tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "NUM_TRAIN", 40)
    monkeypatch.setattr(shapes, "NUM_TEST", 10)
    cifar = catalog.open("cifar10", data_dir=str(tmp_path))
    assert (cifar.kind, cifar.num_classes, cifar.image_size, cifar.jpeg_crops) == (
        "tfds",
        10,
        32,
        False,
    )
    assert (cifar.input_pipelines, cifar.input_pipeline) == (("device", "host"), "device")
    assert cifar.augments == ("cifar", "none") and cifar.normalizations[0] == "per_pixel_mean"
    assert len(cifar.eval_views) == 3 and "the default" in cifar.input_pipeline_rule
    assert cifar.prepared == str(tmp_path / "resnet_jax_arrays" / "cifar10")
    held = catalog.open("shapes10", data_dir=str(tmp_path))
    assert (held.num_train, held.num_eval, held.class_names[0]) == (40, 10, "disc")
    assert (held.count("train[:50%]"), held.count("test[2:]")) == (20, 8)
    with pytest.raises(ValueError, match="has no split 'validation'"):
        held.count("validation")
    with pytest.raises(ValueError, match="45k/5k protocol"):
        held.count("val5k")
    with pytest.raises(ValueError, match="unknown dataset"):
        catalog.open("mnist")
    assert catalog.name_problem("imagenet2012", "device").startswith("input_pipeline='device'")
    assert catalog.name_problem("mnist", None) == "unknown"
    assert catalog.name_problem("synthetic", "device") is None  # its data options are ignored


def test_synthetic_data_is_shaped_like_the_models_own(tmp_path):
    big = catalog.open("synthetic", model="resnet18", pool_examples=64)
    assert (big.num_classes, big.image_size, big.num_train, big.num_eval) == (
        1000,
        224,
        1_281_167,
        64,
    )
    small = catalog.open("synthetic", model="resnet20", image_size=48)
    assert (small.num_classes, small.image_size, small.num_train) == (10, 48, 50_000)
    assert small.input_pipeline == "synthetic" and small.eval_views == ("center",)


def test_a_folders_record_follows_the_size_rule_and_takes_imagenets_options_on_the_host(
    tmp_path, monkeypatch
):
    write_shapes_folder(str(tmp_path / "f"), 30, 10)
    name, data_dir = f"folder:{tmp_path / 'f'}", str(tmp_path / "data")
    held = catalog.open(name, data_dir=data_dir)
    assert (held.kind, held.input_pipeline, held.jpeg_crops) == ("folder", "device", False)
    assert (held.native_size, held.image_size) == (32, 32)  # its own size, from scratch
    assert held.image_size_rule.startswith("image_size 32: the images' own size")
    assert (held.num_classes, held.num_train, held.num_eval) == (10, 30, 10)
    assert held.normalizations[0] == "per_channel" and held.augments == ("cifar", "none")
    assert held.prepared.endswith(os.path.join("32")) and held.class_names[0] == "crescent"
    assert [s for s, _ in held.fingerprints] == ["train", "test"]
    assert "30 images, sha256" in held.fingerprint("train")
    tuned = catalog.open(name, data_dir=data_dir, fine_tuning=True)
    assert tuned.image_size == 128 and "BiT-HyperRule" in tuned.image_size_rule
    monkeypatch.setattr(folder, "DEVICE_LIMIT_BYTES", 30 * 32 * 32 * 3 - 1)  # one byte short
    host = catalog.open(name, data_dir=data_dir, image_size=32)
    assert (host.input_pipeline, host.jpeg_crops) == ("host", True)
    assert "over the" in host.input_pipeline_rule
    assert host.augments == ("paper", "inception", "none")
    assert host.normalizations == ("per_channel", "mean_std") and len(host.eval_views) == 3
    assert host.prepared.endswith(os.path.join("32", "records"))
    assert (host.test_scale(224), host.test_scale(448)) == (32, 64)
    forced = catalog.open(name, data_dir=data_dir, image_size=32, input_pipeline="device")
    assert forced.input_pipeline == "device" and "set by the config" in forced.input_pipeline_rule
    assert "cannot take input_pipeline='device'" in forced.problems[0]


def test_a_folders_record_is_rebuilt_from_its_runs_config_without_the_folder(tmp_path, monkeypatch):
    write_shapes_folder(str(tmp_path / "f"), 30, 10)
    name = f"folder:{tmp_path / 'f'}"
    d = catalog.open(name, data_dir=str(tmp_path / "data"), image_size=16)
    saved = dict(image_size=16, **catalog.run_keys(d))
    os.rename(tmp_path / "f", tmp_path / "gone")
    monkeypatch.setattr(folder, "scan", lambda *a: pytest.fail("the folder was scanned"))
    again = catalog.open(name, data_dir=str(tmp_path / "data"), saved=saved)
    for field in ("num_train", "num_eval", "class_names", "fingerprints", "prepared"):
        assert getattr(again, field) == getattr(d, field), field
    assert (again.eval_split, again.input_pipeline) == ("test", "device")


def test_opening_imports_no_tensorflow(tmp_path):
    code = (
        "import sys; from resnet_jax.data import catalog; "
        "[catalog.open(n, input_pipeline='device') for n in ('cifar10', 'shapes10')]; "
        "catalog.open('synthetic'); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
