"""The data package's import-time promises and its small public helpers."""

import os
import subprocess
import sys

import pytest

from resnet_jax.data import catalog, datasets


def test_importing_the_package_and_opening_a_record_does_not_import_tensorflow():
    code = (
        "import sys, resnet_jax.data, resnet_jax.data.catalog as c; "
        "assert c.open('shapes10', input_pipeline='device').num_classes == 10; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'tensorflow_datasets')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH="."),
        check=True,
    ).stdout
    assert out.strip() == "[]"


def test_tensorflow_never_sees_a_gpu():
    from resnet_jax.data._tf import import_tf  # pylint: disable=g-import-not-at-top

    assert import_tf().config.get_visible_devices("GPU") == []


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="imagenet2012, cifar10, cifar100, shapes10"):
        catalog.open("mnist")


def test_prepare_command_and_manual_files():
    assert datasets.prepare_command("cifar10", "/d") == (
        "python -m resnet_jax.data.prepare cifar10 --data_dir /d"
    )
    assert datasets.prepare_command("imagenet2012", "/d", "/m") == (
        "python -m resnet_jax.data.prepare imagenet2012 --data_dir /d --manual_dir /m"
    )
    assert datasets.prepare_command("shapes10", "/d") == (
        "python -m resnet_jax.data.prepare shapes10 --data_dir /d"
    )
    assert datasets.manual_files("imagenet2012") == (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
    )


def test_split_aliases_are_the_cifar_45k_5k_protocol():
    assert datasets.resolve_split("cifar100", "train45k") == "train[:90%]"
    assert datasets.resolve_split("cifar10", "val5k") == "train[90%:]"
    assert datasets.resolve_split("imagenet2012", "validation[:10]") == "validation[:10]"
    with pytest.raises(ValueError, match="45k/5k protocol"):
        datasets.resolve_split("shapes10", "val5k")


def test_an_unprepared_dataset_names_the_command_and_tfds_logs_no_warning(tmp_path, caplog):
    import logging

    from resnet_jax.data import datasets

    with caplog.at_level(logging.WARNING), pytest.raises(datasets.DatasetNotPreparedError) as e:
        catalog.open("cifar100", data_dir=str(tmp_path), input_pipeline="host").count("train")
    assert f"looked for {tmp_path / 'cifar100'}" in str(e.value)
    assert f"python -m resnet_jax.data.prepare cifar100 --data_dir {tmp_path}" in str(e.value)
    assert not [r for r in caplog.records if "dataset_info.json" in r.getMessage()]
    assert not (tmp_path / "cifar100").exists()  # asking created nothing
