"""`catalog.describe`: one record of what a dataset is, for built-in datasets and folders, per
input path, without TensorFlow."""

import os
import subprocess
import sys

import pytest

from resnet_jax.data import catalog, folder
from tests.fake_folders import write_shapes_folder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_built_in_datasets_keep_their_paths_options_and_defaults(tmp_path):
    cifar = catalog.describe("cifar10", str(tmp_path))
    assert (cifar.num_classes, cifar.image_size, cifar.family) == (10, 32, "cifar")
    assert (cifar.input_pipelines, cifar.input_pipeline) == (("device", "host"), "device")
    assert cifar.augments == ("cifar", "none") and cifar.normalizations[0] == "per_pixel_mean"
    assert cifar.eval_views == ("center",)
    assert cifar.prepared == str(tmp_path / "resnet_jax_arrays" / "cifar10")
    assert catalog.describe("cifar10", str(tmp_path), None, "host").prepared == str(
        tmp_path / "cifar10"
    )
    imagenet = catalog.describe("imagenet2012")
    assert imagenet.input_pipelines == ("host",) and imagenet.augments[0] == "paper"
    assert imagenet.normalizations == ("mean_std",) and len(imagenet.eval_views) == 3
    assert (imagenet.num_train, imagenet.num_eval) == (1_281_167, 50_000)
    assert catalog.describe("shapes10").class_names()[0] == "disc"
    with pytest.raises(ValueError, match="unknown dataset"):
        catalog.describe("mnist")


def test_a_folders_record_follows_the_size_rule_and_takes_imagenets_options_on_the_host(
    tmp_path, monkeypatch
):
    write_shapes_folder(str(tmp_path / "f"), 30, 10)
    name, data_dir = f"folder:{tmp_path / 'f'}", str(tmp_path / "data")
    held = catalog.describe(name, data_dir, 32)
    assert (held.input_pipeline, held.family, held.image_size) == ("device", "cifar", None)
    assert (held.num_classes, held.num_train, held.num_eval) == (10, 30, 10)
    assert held.normalizations[0] == "per_channel" and held.augments == ("cifar", "none")
    assert held.prepared.endswith(os.path.join("32")) and held.class_names()[0] == "crescent"
    monkeypatch.setattr(folder, "DEVICE_LIMIT_BYTES", 30 * 32 * 32 * 3 - 1)  # one byte short
    host = catalog.describe(name, data_dir, 32)
    assert (host.input_pipeline, host.family) == ("host", "imagenet")
    assert "over the" in host.input_pipeline_rule
    assert host.augments == ("paper", "inception", "none")
    assert host.normalizations == ("per_channel", "mean_std") and len(host.eval_views) == 3
    assert host.prepared.endswith(os.path.join("32", "records"))
    forced = catalog.describe(name, data_dir, 32, "device")
    assert forced.input_pipeline == "device" and "set by the config" in forced.input_pipeline_rule


def test_describing_imports_no_tensorflow(tmp_path):
    code = (
        "import sys; from resnet_jax.data import catalog; "
        "[catalog.describe(n) for n in ('cifar10', 'imagenet2012', 'shapes10')]; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
