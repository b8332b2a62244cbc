"""A run on `folder:PATH`, end to end: it trains and resumes bitwise, refuses to resume on changed
files, predicts with the folder's class names, and exports a head of the folder's class count."""

import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util
from PIL import Image

from resnet_jax import config as config_lib
from resnet_jax import pretrained
from resnet_jax.data import device_input, finish, shapes
from resnet_jax.engine import evaluate, faults, trainer, warm_start
from resnet_jax.pretrained import cli
from resnet_jax.tools import predict
from tests.fake_folders import write_shapes_folder
from tests.test_pretrained_finetune import TINY, tiny_state_dict
from tests.test_trainer import final_state


def folder_config(root, steps, **kw):
    c = config_lib.default_config()
    c.update(
        dict(
            dataset=f"folder:{root}/images",
            data_dir=f"{root}/data",
            model="resnet18",
            image_size=32,
            batch_size=16,
            eval_batch_size=16,
            num_train_steps=steps,
            learning_rate=0.05,
            lr_schedule="constant",
            log_every_steps=2,
            checkpoint_every_steps=4,
            augment="cifar",
        )
    )
    c.model_overrides = dict(TINY)
    c.update(kw)
    return c


def final_leaves(c, workdir):
    return [np.asarray(x) for x in jax.tree.leaves(final_state(workdir, c)[0])]


def one_go_and_resumed(root, make_config, steps):
    """(summary of `steps` steps in one go, of steps/2 then resumed to `steps`) on the 48 + 20
    shapes10 images written to root/images."""
    write_shapes_folder(f"{root}/images", 48, 20)
    one_go = trainer.train_and_evaluate(make_config(root, steps), f"{root}/one_go")
    trainer.train_and_evaluate(make_config(root, steps // 2), f"{root}/resumed")
    return one_go, trainer.train_and_evaluate(make_config(root, steps), f"{root}/resumed")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 8-step run in one go and one stopped at step 4 and resumed, on 48 shapes10 images."""
    root = str(tmp_path_factory.mktemp("folder_run"))
    return root, *one_go_and_resumed(root, folder_config, 8)


def test_a_folder_run_resumes_bitwise_and_stores_its_class_names(runs):
    root, one_go, resumed = runs
    assert one_go["eval"] == resumed["eval"] and one_go["eval"]["count"] == 20
    c = folder_config(root, 8)
    for a, b in zip(
        final_leaves(c, f"{root}/one_go"), final_leaves(c, f"{root}/resumed"), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    with open(f"{root}/one_go/config.json") as f:
        saved = json.load(f)
    assert saved["class_names"] == sorted(shapes.CLASS_NAMES)
    assert saved["dataset_fingerprint"].startswith(f"folder {root}/images train: 48 images")


def test_predict_names_the_folders_classes(runs):
    root, _, _ = runs
    image = next(iter(sorted(os.listdir(f"{root}/images/test/star"))))
    top = predict.predict(f"{root}/one_go", [f"{root}/images/test/star/{image}"])[0]
    assert len(top) == 5 and {name for name, _ in top} <= set(shapes.CLASS_NAMES)
    assert sum(p for _, p in top) <= 1.0 + 1e-6 and top[0][1] >= top[-1][1]


def test_predict_needs_only_the_run_and_the_prepared_arrays_not_the_folder(runs, tmp_path):
    root, _, _ = runs
    image = tmp_path / "star.png"
    star = sorted(os.listdir(f"{root}/images/test/star"))[0]
    image.write_bytes(open(f"{root}/images/test/star/{star}", "rb").read())
    here = predict.predict(f"{root}/one_go", [str(image)])[0]
    os.rename(f"{root}/images", f"{root}/moved")
    try:
        assert predict.predict(f"{root}/one_go", [str(image)])[0] == here
    finally:
        os.rename(f"{root}/moved", f"{root}/images")


def test_plot_draws_a_folder_runs_curves(runs):
    from resnet_jax.tools import plot

    root, _, _ = runs
    out = plot.plot_runs([f"{root}/one_go"], f"{root}/curves.png")
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 600


def test_export_writes_a_head_of_the_folders_class_count_and_imports_back_exactly(runs):
    root, _, _ = runs
    out = f"{root}/exported.safetensors"
    assert cli.export_weights(f"{root}/one_go", out) == ("resnet18", 8)
    state_dict = pretrained.load_state_dict(out)
    assert state_dict["fc.weight"].shape == (10, 32) and state_dict["fc.bias"].shape == (10,)
    back = pretrained.from_torch_state_dict(
        "resnet18", state_dict, source="torchvision", overrides=TINY
    )
    variables, step, _ = warm_start.restore_variables(f"{root}/one_go")
    assert step == 8 and back["params"]["head"]["kernel"].shape == (32, 10)
    flat_back, flat_run = (traverse_util.flatten_dict(v) for v in (back, variables))
    assert flat_back.keys() == flat_run.keys()
    for key, value in flat_run.items():
        np.testing.assert_array_equal(flat_back[key], value, err_msg=str(key))


@pytest.mark.parametrize("views, count", [("10crop", 20), ("multiscale", 20)])
def test_a_folder_run_is_evaluated_with_every_view_protocol(runs, views, count):
    root, one_go, _ = runs
    c = folder_config(root, 8, eval_views=views, eval_scales=(224, 448))
    result = evaluate.evaluate_checkpoint(c, f"{root}/one_go")
    assert result["count"] == count and result["views"] == views and 0 <= result["top1"] <= 1
    with open(f"{root}/one_go/eval_{views}.json") as f:
        assert json.load(f)["step"] == 8


def test_views_of_held_images_are_he2015s_crops_and_mirrors():
    images = np.random.default_rng(0).integers(0, 256, (2, 28, 28, 3), np.uint8)
    ten = np.asarray(device_input._views(images, "10crop", None))
    big = np.asarray(device_input._resized_uint8(images, 32))  # 28 * 256 / 224
    assert ten.shape == (2, 10, 28, 28, 3)
    np.testing.assert_array_equal(ten[:, 0], big[:, :28, :28])
    np.testing.assert_array_equal(ten[:, 3], big[:, 4:, 4:])
    np.testing.assert_array_equal(ten[:, 4], big[:, 2:30, 2:30])
    np.testing.assert_array_equal(ten[:, 5:], ten[:, :5, :, ::-1])
    two = np.asarray(device_input._views(images, "multiscale", 56))
    assert two.shape == (2, 2, 56, 56, 3)
    np.testing.assert_array_equal(two[:, 1], two[:, 0, :, ::-1])


def test_resuming_on_a_changed_folder_is_refused_even_with_allow_config_change(runs):
    root, _, _ = runs
    extra = f"{root}/images/train/disc/extra.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(extra)
    try:
        c = folder_config(root, 12, allow_config_change=True)
        with pytest.raises(faults.ConfigError, match="holds a run trained on other images"):
            trainer.train_and_evaluate(c, f"{root}/one_go")
    finally:
        os.remove(extra)


def test_init_from_weights_normalises_with_imagenets_mean_and_std(
    runs, tmp_path, capsys, monkeypatch
):
    root, _, _ = runs
    weights = str(tmp_path / "w.safetensors")
    pretrained.save_state_dict(tiny_state_dict(1000), weights)
    scratch = config_lib.resolve_config(folder_config(root, 2))
    tuned = config_lib.resolve_config(folder_config(root, 2, init_from=weights))
    assert config_lib.build_finish(tuned).mean.tolist() == finish.IMAGENET.mean.tolist()
    assert config_lib.build_finish(tuned).std.tolist() == finish.IMAGENET.std.tolist()
    assert config_lib.build_finish(scratch).mean.shape == (3,)  # the folder's own channels
    assert config_lib.resolve_run(folder_config(root, 2, init_from=weights)).notes[-1] == (
        "normalization mean_std (ImageNet's channel mean and std)"
    )
    monkeypatch.setenv("RESNET_JAX_TEST_WEIGHTS", str(tmp_path))  # init_from expands variables
    summary = trainer.train_and_evaluate(
        folder_config(root, 2, init_from="$RESNET_JAX_TEST_WEIGHTS/w.safetensors"),
        str(tmp_path / "ft"),
    )
    out = capsys.readouterr().out
    assert "params/head/bias (1000,) -> (10,)" in out and summary["step"] == 2


@pytest.mark.slow
def test_a_folder_of_shapes10_images_learns_as_shapes10_does(tmp_path, monkeypatch):
    """The same 600 images as shapes10 and as a folder of PNGs (so in another order): the same
    net and recipe must learn both, to within a few points."""
    monkeypatch.setattr(shapes, "NUM_TRAIN", 600)
    monkeypatch.setattr(shapes, "NUM_TEST", 300)
    root = str(tmp_path)
    write_shapes_folder(f"{root}/images", 600, 300)
    results = {}
    for name, dataset in (("shapes10", "shapes10"), ("folder", f"folder:{root}/images")):
        c = folder_config(root, 300, dataset=dataset, model="resnet20", batch_size=32)
        c.update(dict(lr_schedule="cosine", warmup_steps=20, augment="none", eval_batch_size=100))
        c.update(dict(normalization="per_pixel_mean", log_every_steps=50))
        c.model_overrides = {"stage_sizes": (1, 1, 1)}
        results[name] = trainer.train_and_evaluate(c, f"{root}/{name}")
    # Measured: train top-1 46.6% (shapes10) and 43.9% (folder), test 22.7% and 22.3%; chance 10%.
    for r in results.values():
        assert r["train"]["top1"] > 0.35 and r["eval"]["top1"] > 0.17, results
    for split, margin in (("train", 0.08), ("eval", 0.05)):
        gap = results["folder"][split]["top1"] - results["shapes10"][split]["top1"]
        assert abs(gap) < margin, (split, results)
