"""The real ImageNet path end to end: fake ILSVRC2012 tars -> tfds prepare -> train a small ResNet-18
with the paper recipe through `python -m resnet_jax.main` -> eval -> checkpoint -> resume ->
10-crop and multi-scale evaluation of the newest checkpoint."""

import json
import os
import subprocess
import sys

import fake_archives
import pytest

from resnet_jax import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, PER_CLASS, NUM_VAL = 4, 4, 6


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    return fake_archives.fake_imagenet_once(
        tmp_path_factory,
        "imagenet_train_e2e",
        num_classes=NUM_CLASSES,
        train_per_class=PER_CLASS,
        num_val=NUM_VAL,
    )


def _overrides(fake, steps):
    # ResNet-18 at quarter width on 64x64 crops; the paper's scale augmentation and BN groups
    # (of 4 here, since the batch is 8).
    return [
        f"--config.data_dir={fake.data_dir}",
        "--config.image_size=64",
        "--config.batch_size=8",
        "--config.eval_batch_size=8",
        "--config.bn_group_size=4",
        f"--config.num_train_steps={steps}",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=2",
        "--config.eval_every_steps=2",
        '--config.model_overrides={"widths":(16,32,64,128),"stem_width":16}',
    ]


def _main(workdir, *args):
    # The four runs compile the same programs: JAX's persistent cache compiles them once.
    cache = os.path.join(os.path.dirname(workdir), "jax_cache")
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=cache)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_jax.main",
            "--config=configs/imagenet.py:resnet18",
            f"--workdir={workdir}",
            *args,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow  # ~100 s: four runs of `python -m resnet_jax.main`
def test_fake_imagenet_trains_evaluates_checkpoints_and_resumes(fake, tmp_path):
    workdir = str(tmp_path / "run")
    _main(workdir, *_overrides(fake, 3))
    log = _main(workdir, *_overrides(fake, 5))
    assert "resumed from checkpoint step 3" in log and "final test accuracy" in log

    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["dataset"], config["augment"], config["num_classes"]) == (
        "imagenet2012",
        "paper",
        1000,
    )
    assert config["steps_per_epoch"] == 2  # 16 fake training images / batch 8
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [2, 3, 4, 5] and {r["count"] for r in evals} == {NUM_VAL}
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4", "5"]
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["step"] == 5 and summary["model"] == "resnet18" and summary["eval"]["count"] == 6

    # --mode=eval on the newest checkpoint with the paper's test protocols.
    _main(workdir, *_overrides(fake, 5), "--mode=eval", "--config.eval_views=10crop")
    _main(
        workdir,
        *_overrides(fake, 5),
        "--mode=eval",
        "--config.eval_views=multiscale",
        "--config.eval_scales=(64,96)",
    )
    for views in ("10crop", "multiscale"):
        result = json.load(open(os.path.join(workdir, f"eval_{views}.json")))
        assert result["step"] == 5 and result["count"] == NUM_VAL and result["views"] == views
        assert 0 <= result["top1"] <= result["top5"] <= 1
    assert json.load(open(os.path.join(workdir, "eval_multiscale.json")))["scales"] == [64, 96]
    assert config_lib.EVAL_VIEWS == ("center", "10crop", "multiscale")
