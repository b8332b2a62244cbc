"""A folder of one's own images as a new user meets it: class folders and nothing else train,
evaluate on a held-out part and predict; BiT's fine-tuning recipe fits a 180-image folder."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from configs import finetune
from resnet_jax import config as config_lib
from resnet_jax import pretrained
from resnet_jax.data import folder
from resnet_jax.engine import faults, trainer
from resnet_jax.tools import predict
from tests.fake_folders import write_class_folders
from tests.test_pretrained_finetune import TINY, tiny_state_dict

ROOT = pathlib.Path(__file__).resolve().parents[1]

CLASSES = ("cat", "dog", "owl")


def _scratch_config(root, steps):
    c = config_lib.default_config()
    c.update(
        dict(
            dataset=f"folder:{root}/images",
            data_dir=f"{root}/data",
            batch_size=16,
            num_train_steps=steps,
            learning_rate=0.05,
            lr_schedule="constant",
            log_every_steps=1,
            checkpoint_every_steps=0,
            augment="none",
        )
    )
    c.model_overrides = {"stage_sizes": (1, 1, 1), "widths": (8, 16, 32), "stem_width": 8}
    return c


def test_class_folders_alone_train_evaluate_on_a_held_out_part_and_predict(tmp_path, capsys):
    root = str(tmp_path)
    write_class_folders(f"{root}/images", dict.fromkeys(CLASSES, 20), side=24)
    summary = trainer.train_and_evaluate(_scratch_config(root, 12), f"{root}/run")
    out = capsys.readouterr().out
    layout = folder.layout_of(f"folder:{root}/images")
    held = layout.count("holdout")
    assert layout.eval_split == "holdout" and layout.count("train") + held == 60
    assert (
        f"train {60 - held} images, evaluating on {held} images held out of the class folders"
        in out
    )
    assert "image_size 24: the images' own size (median 24x24 px), a run from scratch" in out
    assert summary["eval"]["count"] == held and summary["eval"]["top1"] == 1.0
    with open(f"{root}/run/metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
    assert losses[-1] < 0.5 * losses[0]
    final = next(line for line in out.splitlines() if line.startswith("final test accuracy"))
    assert "top-1 100.00% on" in final and "top-5" not in final  # 3 classes: top-5 is 100%
    held_path = os.path.join(layout.root, layout.files["holdout"][0][0])
    top = predict.predict(f"{root}/run", [held_path, f"{root}/photo.webp"])
    assert [name for name, _ in top[0]][0] == CLASSES[layout.files["holdout"][0][1]]
    assert len(top[0]) == 3 and sum(p for _, p in top[0]) == pytest.approx(1.0, abs=1e-5)
    assert top[1] == (
        "not an image file predict reads; it reads JPEG, PNG, BMP, GIF (.jpg, .jpeg, .png, "
        ".bmp, .gif)"
    )


def _finetune_config(root, init_from, steps=2):
    """The README's command (configs/finetune.py:folder,resnet50) on a tiny resnet18 at 32 px."""
    c = finetune.get_config("folder,resnet18")
    c.dataset, c.data_dir, c.init_from = f"folder:{root}/images", f"{root}/data", init_from
    c.model_overrides = dict(TINY)
    c.image_size, c.num_train_steps, c.log_every_steps = 32, steps, 1
    return c


def test_the_readme_fine_tuning_command_fits_its_batch_to_a_180_image_folder(tmp_path, capsys):
    root = str(tmp_path)
    write_class_folders(f"{root}/images/train", dict.fromkeys(CLASSES, 60), side=48)
    write_class_folders(f"{root}/images/test", dict.fromkeys(CLASSES, 4), side=48, seed=1)
    weights = f"{root}/w.safetensors"
    pretrained.save_state_dict(tiny_state_dict(1000), weights)
    c = _finetune_config(root, weights)
    assert c.batch_size == 512
    r = config_lib.resolve_config(c)
    # 180 images: the largest power of two (times 1 device) they fill; BiT's 0.003 at 512 scaled.
    assert (r.batch_size, r.learning_rate, r.peak_learning_rate) == (128, 0.00075, 0.00075)
    assert r.eval_batch_size == 12  # BiT's 500 padded one batch of 12 test images 40-fold
    assert r.batch_size_rule.startswith(
        "batch_size 128: the recipe's 512 is more than the 180 training images; the largest "
        "power of two (times the 1 device(s)) they fill, learning_rate 0.003 scaled linearly to "
        "0.00075; set --config.batch_size (at most 180) to choose"
    )
    summary = trainer.train_and_evaluate(c, f"{root}/run")
    out = capsys.readouterr().out
    assert r.batch_size_rule in out and "2 steps of 128 images" in out
    assert summary["step"] == 2 and summary["eval"]["count"] == 12
    assert "init_from: params and BN statistics from" in out


def test_missing_weights_are_reported_before_the_folder_is_read(tmp_path):
    root = str(tmp_path)
    write_class_folders(f"{root}/images/train", dict.fromkeys(CLASSES, 2), side=8)
    c = _finetune_config(root, f"{root}/nowhere.safetensors")
    c.holdout_fraction = 0.0  # the folder itself would be refused too, but later
    with pytest.raises(faults.ConfigError) as e:
        trainer.train_and_evaluate(c, f"{root}/run")
    assert f"init_from='{root}/nowhere.safetensors' does not exist" in str(e.value)
    assert "batch" not in str(e.value) and not os.path.exists(f"{root}/data")
    assert faults.classify(e.value)[0] == faults.EXIT_CONFIG


def test_a_batch_the_data_cannot_fill_names_the_key_to_set(tmp_path):
    from resnet_jax.engine import validation

    root = str(tmp_path)
    write_class_folders(f"{root}/images/train", dict.fromkeys(CLASSES, 10), side=8)
    write_class_folders(f"{root}/images/test", dict.fromkeys(CLASSES, 1), side=8)
    c = _scratch_config(root, 1)
    c.batch_size = 64  # from scratch: no recipe to fit, the config's batch as given
    run = config_lib.resolve_run(c)
    r = run.c
    with pytest.raises(faults.ConfigError, match="set --config.batch_size to at most 30"):
        validation.check_resolved(run, device_count=1, process_count=1)
    assert np.isclose(r.peak_learning_rate, 0.05) and r.get("batch_size_rule") is None


@pytest.mark.slow
def test_the_readme_fine_tuning_command_as_it_stands_runs_on_a_180_image_folder(tmp_path):
    """README's `configs/finetune.py:folder,resnet50` command, ResNet-50 at BiT's 128 px, on 180
    class-folder images with no test split, from a torchvision-named weights file; 10 steps (BiT's
    schedule decays at 30/60/90% of the run, and needs a step before the first)."""
    from tests.test_pretrained import random_state_dict

    root = str(tmp_path)
    write_class_folders(f"{root}/flowers", dict.fromkeys(CLASSES, 60), side=48)
    pretrained.save_state_dict(random_state_dict("resnet50"), f"{root}/resnet50.safetensors")
    cmd = [sys.executable, "-m", "resnet_jax.main", "--config=configs/finetune.py:folder,resnet50"]
    cmd += [f"--config.dataset=folder:{root}/flowers", f"--workdir={root}/run"]
    cmd += [f"--config.init_from={root}/resnet50.safetensors", f"--config.data_dir={root}/data"]
    cmd += ["--config.num_train_steps=10"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "10 steps of 128 images (128x128" in out.stdout, out.stdout[:2000]
    held = re.search(r"train (\d+) images, evaluating on (\d+) images held out", out.stdout)
    assert held and int(held[1]) + int(held[2]) == 180 and 20 <= int(held[2]) <= 60, out.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval"]["count"] == int(held[2])
