"""dataset=synthetic: random batches made on the devices, and the trainer running on them without
TensorFlow (what a GPU machine without TensorFlow or a prepared dataset runs)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.data import synthetic
from resnet_jax.engine import evaluate, faults, parallel, stacked, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pool_is_sharded_like_a_batch_seeded_and_cycled_by_step():
    mesh = parallel.make_mesh()
    pool = synthetic.make_batches(parallel.batch_sharded(mesh), 3, 8, 16, 10, seed=1)
    again = synthetic.make_batches(parallel.batch_sharded(mesh), 3, 8, 16, 10, seed=1)
    other = synthetic.make_batches(parallel.batch_sharded(mesh), 3, 8, 16, 10, seed=2)
    masked = synthetic.make_batches(
        parallel.batch_sharded(mesh), 3, 8, 16, 10, seed=1, with_mask=True
    )
    for batch, same, eval_batch in zip(pool, again, masked, strict=True):
        # The input contract of ImageNet 'paper' batches, with draws that change nothing.
        assert set(batch) == {"image", "label", "flip", "light"}
        assert set(eval_batch) == {"image", "label", "mask"}
        assert batch["image"].shape == (8, 16, 16, 3) and batch["image"].dtype == np.uint8
        assert not np.asarray(batch["flip"]).any() and not np.asarray(batch["light"]).any()
        assert batch["label"].shape == (8,) and batch["label"].dtype == np.int32
        assert batch["image"].sharding == parallel.batch_sharded(mesh)
        np.testing.assert_array_equal(batch["image"], same["image"])
        np.testing.assert_array_equal(batch["label"], same["label"])
        # The eval pool scores exactly the training examples.
        np.testing.assert_array_equal(batch["image"], eval_batch["image"])
        np.testing.assert_array_equal(batch["label"], eval_batch["label"])
        assert np.asarray(eval_batch["mask"]).all()
    images = np.stack([np.asarray(b["image"]) for b in pool])
    # Uniform over 0-255 (mean 127.5, sd 73.9), so the finished inputs are O(1) like real ones.
    assert abs(images.mean() - 127.5) < 2 and abs(images.std() - 73.9) < 2
    inputs = np.asarray(synthetic.FINISH(pool[0]))
    assert abs(inputs.mean()) < 0.5 and 0.8 < inputs.std() < 1.5
    assert not np.array_equal(images[0], images[1])
    assert not np.array_equal(images[0], np.asarray(other[0]["image"]))
    labels = np.concatenate([np.asarray(b["label"]) for b in pool])
    assert labels.min() >= 0 and labels.max() < 10 and len(set(labels.tolist())) > 5

    it = synthetic.train_batches(pool, start_step=4)
    assert [next(it) for _ in range(3)] == [pool[1], pool[2], pool[0]]
    # Already on the mesh: the trainer's prefetch passes them through without a copy.
    assert parallel.host_to_global(pool[0], mesh)["image"] is pool[0]["image"]


def test_a_pool_of_several_seeds_stacks_each_seeds_own_pool():
    mesh = parallel.make_mesh()
    stacked_pool = synthetic.make_batches(
        stacked.batch_sharding("batch", mesh), 2, 4, 8, 10, seed=(3, 5)
    )
    for k, seed in enumerate((3, 5)):
        alone = synthetic.make_batches(parallel.batch_sharded(mesh), 2, 4, 8, 10, seed=seed)
        for batch, own in zip(stacked_pool, alone, strict=True):
            for key in own:
                np.testing.assert_array_equal(np.asarray(batch[key])[k], np.asarray(own[key]))


def test_config_resolves_to_the_models_own_data_shape_unless_told_and_rejects_multi_crop_eval():
    c = config_lib.default_config()
    c.dataset, c.model, c.batch_size = "synthetic", "resnet18", 8
    rc = config_lib.resolve_config(c)
    assert (rc.num_classes, rc.image_size, rc.num_train_examples) == (1000, 224, 1_281_167)
    assert rc.steps_per_epoch == 1_281_167 // 8
    c.model = "resnet20"  # a CIFAR net keeps CIFAR's sizes: a small config stays small
    small = config_lib.resolve_config(c)
    assert (small.num_classes, small.image_size, small.num_train_examples) == (10, 32, 50_000)
    c.num_classes, c.image_size = 10, 64
    assert (config_lib.resolve_config(c).num_classes, config_lib.resolve_config(c).image_size) == (
        10,
        64,
    )
    run = config_lib.resolve_run(rc)
    with pytest.raises(faults.ConfigError, match="synthetic .* has only eval_views 'center'"):
        evaluate.make_evaluator(
            config_lib.build_model(rc),
            parallel.make_mesh(),
            run.data,
            run.plan,
            finish=synthetic.FINISH,
            views="10crop",
        )
    c.dataset = "synthtic"
    with pytest.raises(faults.ConfigError, match="synthetic"):  # the valid names are listed
        trainer.train_and_evaluate(c, "/nonexistent/never-created")


_SCRIPT = r"""
import json, sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
sys.modules["tensorflow_datasets"] = None
import jax, numpy as np
from resnet_jax import config as config_lib
from resnet_jax.engine import checkpoint, parallel, trainer

root = sys.argv[1]

def config(steps):
    c = config_lib.default_config()
    c.update(dict(dataset="synthetic", model="resnet20", num_classes=10, image_size=32,
                  batch_size=16, synthetic_batches=3, num_train_steps=steps, learning_rate=0.05,
                  lr_schedule="constant", log_every_steps=5, checkpoint_every_steps=5))
    return c

def final_params(workdir):
    rc = config_lib.resolve_config(config(30))
    _, tx = config_lib.build_optimizer(rc)
    abstract = parallel.abstract_train_state(config_lib.build_model(rc), tx, (32, 32, 3),
                                             parallel.make_mesh())
    state, _ = checkpoint.Checkpointer(workdir).restore(abstract)
    return jax.tree.leaves(jax.device_get(state))

one_go = trainer.train_and_evaluate(config(30), root + "/one_go")
trainer.train_and_evaluate(config(15), root + "/resumed")
resumed = trainer.train_and_evaluate(config(30), root + "/resumed")
records = [json.loads(l) for l in open(root + "/one_go/metrics.jsonl")]
losses = [r["loss"] for r in records if r["split"] == "train"]
print(json.dumps({
    "devices": jax.device_count(), "losses": losses, "eval": one_go["eval"],
    "resumed_eval": resumed["eval"], "dataset": one_go["dataset"],
    "bitwise_equal": all(np.array_equal(a, b) for a, b in
                         zip(final_params(root + "/one_go"), final_params(root + "/resumed"))),
    "tensorflow": sorted(m for m, v in sys.modules.items()
                         if m.split(".")[0] in ("tensorflow", "tensorflow_datasets") and v)}))
"""


# Slow (45 s): the fast suite covers its parts elsewhere: the trainer resuming bitwise with
# TensorFlow unimportable on two devices (test_train_device), and the synthetic pool here above.
@pytest.mark.slow
def test_trainer_learns_synthetic_data_on_two_devices_resumes_exactly_without_tensorflow(tmp_path):
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "resumed from checkpoint step 15" in out
    assert "measures memorisation of random labels" in out
    r = json.loads(out.strip().splitlines()[-1])
    assert r["tensorflow"] == [] and r["devices"] == 2 and r["dataset"] == "synthetic"
    assert len(r["losses"]) == 6
    assert r["losses"][0] > 1.5 and r["losses"][-1] < 0.25 * r["losses"][0]  # ln 10 = 2.3 at start
    assert r["eval"]["count"] == 48 and r["eval"]["top1"] > 0.8  # memorised; chance is 0.1
    assert r["bitwise_equal"] and r["resumed_eval"] == r["eval"]
