"""A folder too large for device memory (the limit lowered to 1 byte) trains through the host
tf.data pipeline from a prepared JPEG copy: it learns, evaluates, resumes bitwise, rebuilds a stale
copy and names a corrupt file."""

import json
import os

import jax
import numpy as np
import pytest
from fake_archives import build_once
from PIL import Image

from resnet_jax import config as config_lib
from resnet_jax.data import catalog, datasets, folder, folder_records, prepare
from resnet_jax.engine import validation
from tests.test_train_folder import folder_config, one_go_and_resumed
from tests.test_trainer import final_state


def host_config(root, steps, **kw):
    return folder_config(root, steps, augment="none", learning_rate=0.1, **kw)


def _losses(workdir):
    with open(f"{workdir}/metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [r["loss"] for r in rows if r.get("split") == "train" and "loss" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """12 steps in one go and 6 + 6 resumed, on 48 shapes10 PNGs, with a 1-byte device limit;
    trained once per session and shared by both test workers (the tests only read it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(folder, "DEVICE_LIMIT_BYTES", 1)
        yield build_once(
            tmp_path_factory,
            "folder_host_runs",
            lambda root: (root, *one_go_and_resumed(root, host_config, 12)),
        )


def test_a_folder_over_the_device_limit_trains_on_the_host_path_and_learns(runs):
    root, one_go, _ = runs
    run = config_lib.resolve_run(host_config(root, 12))
    c = run.c
    assert run.data.input_pipeline == c.input_pipeline == "host"
    assert "input_pipeline host: the training split at 32x32" in run.notes[2]
    losses = _losses(f"{root}/one_go")
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])
    assert one_go["eval"]["count"] == 20
    # The copy it read: one JPEG record per image, stored at BiT's ratio (32 * 160 / 128 = 40).
    builder = folder_records.builder(run.data)
    assert builder.info.splits["train"].num_examples == 48
    assert builder.info.splits["test"].num_examples == 20
    assert builder.info.features["label"].names == list(folder.layout_of(c.dataset).class_names)
    example = next(iter(builder.as_dataset(split="train").take(1)))
    assert example["image"].shape == (40, 40, 3)
    assert example["file"].numpy().decode().startswith("train/")


def test_a_host_folder_run_resumes_bitwise(runs):
    root, one_go, resumed = runs
    assert one_go["eval"] == resumed["eval"]
    c = host_config(root, 12)
    a, b = (jax.tree.leaves(final_state(f"{root}/{w}", c)[0]) for w in ("one_go", "resumed"))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert _losses(f"{root}/one_go")[-3:] == _losses(f"{root}/resumed")[-3:]


def test_forcing_the_device_path_over_the_limit_is_refused_and_host_is_always_allowed(
    runs, monkeypatch
):
    root, _, _ = runs
    monkeypatch.setattr(folder, "DEVICE_LIMIT_BYTES", 1)
    forced = config_lib.resolve_run(host_config(root, 2, input_pipeline="device"))
    with pytest.raises(validation.ConfigError, match="cannot take input_pipeline='device'"):
        validation.check_resolved(forced, device_count=1, process_count=1)
    monkeypatch.setattr(folder, "DEVICE_LIMIT_BYTES", 4 << 30)
    fits = config_lib.resolve_run(host_config(root, 2))
    assert fits.data.input_pipeline == "device"
    run = config_lib.resolve_run(host_config(root, 2, input_pipeline="host"))
    assert run.data.input_pipeline == "host"
    validation.check_resolved(run, device_count=1, process_count=1)
    # From scratch: the folder's own channel statistics; from weights: ImageNet's.
    host, record = run.c, folder_records.record(run.data)
    np.testing.assert_allclose(config_lib.build_finish(host).mean, record["channel_mean"])
    host.init_from = "some/weights.safetensors"
    np.testing.assert_allclose(config_lib.build_finish(host).std, [58.395, 57.12, 57.375])


def _two_classes(root, n=2):
    for cls in ("a", "b"):
        for split in ("train", "test"):
            os.makedirs(root / split / cls, exist_ok=True)
            for i in range(n):
                pixels = np.full((12, 20, 3), 40 * i + (cls == "b") * 100, np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def _host(name, data_dir):
    """The folder's record as the host path reads it at 16 px (its files fingerprinted now)."""
    return catalog.open(name, data_dir=data_dir, image_size=16, input_pipeline="host")


def test_a_changed_folder_rebuilds_its_jpeg_copy_and_a_corrupt_file_is_named(tmp_path, capfd):
    _two_classes(tmp_path / "f")
    name, data_dir = f"folder:{tmp_path / 'f'}", str(tmp_path / "data")
    first = folder_records.record(_host(name, data_dir))
    assert (
        first["side"] == 20
        and folder_records.builder(_host(name, data_dir)).info.splits["train"].num_examples == 4
    )
    np.testing.assert_allclose(first["channel_mean"], [70.0] * 3, atol=1e-6)  # 0, 40, 100, 140
    capfd.readouterr()
    Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / "f" / "train" / "a" / "2.png")
    assert folder_records.builder(_host(name, data_dir)).info.splits["train"].num_examples == 5
    err = capfd.readouterr().err
    assert "is stale: built from" in err and "train: 4 images" in err and "rebuilding it" in err
    folder_records.record(_host(name, data_dir))
    assert capfd.readouterr().err == ""  # unchanged: used as it is
    bad = tmp_path / "f" / "test" / "b" / "9.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(datasets.CorruptImageError, match=f"{bad} is not a readable image"):
        folder_records.record(_host(name, data_dir))
    code = prepare.main(
        [name, "--data_dir", data_dir, "--image_size", "16", "--input_pipeline", "host"]
    )
    assert code == 66
    assert (
        capfd.readouterr()
        .err.strip()
        .endswith(
            f"{bad} is not a readable image (not in an image format Pillow reads); fix or remove it"
        )
    )
    bad.unlink()
    assert (
        prepare.main(
            [name, "--data_dir", data_dir, "--image_size", "16", "--input_pipeline", "host"]
        )
        == 0
    )
    assert "records" in capfd.readouterr().out


def test_predict_reads_an_image_as_the_host_paths_evaluation_does(runs):
    from resnet_jax.tools import predict

    root, _, _ = runs
    star = sorted(os.listdir(f"{root}/images/test/star"))[0]
    top = predict.predict(f"{root}/one_go", [f"{root}/images/test/star/{star}"])[0]
    assert len(top) == 5 and {name for name, _ in top} <= set(
        folder.layout_of(f"folder:{root}/images").class_names
    )


@pytest.mark.parametrize("views", ["10crop", "multiscale"])
def test_a_host_folder_run_is_evaluated_with_imagenets_view_protocols(runs, views, monkeypatch):
    from resnet_jax.engine import evaluate

    root, _, _ = runs
    monkeypatch.setattr(folder, "DEVICE_LIMIT_BYTES", 1)
    c = host_config(root, 12, eval_views=views, eval_scales=(224, 448))  # 32 and 64 at 32 px
    result = evaluate.evaluate_checkpoint(c, f"{root}/one_go")
    assert result["count"] == 20 and result["views"] == views and 0 <= result["top1"] <= 1
