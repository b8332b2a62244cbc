"""The trainer on the device input path: shapes10 with TensorFlow unimportable, bitwise-deterministic
with an exact resume, and two processes ending where one process with two devices ends."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.engine import faults, validation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One worker script for both tests: trains a small shapes10 (rendered, 320 train / 100 test
# examples, 20 steps per epoch) with a 1-block-per-stage ResNet, so epochs are crossed quickly.
_SCRIPT = r"""
import json, sys
sys.modules["tensorflow"] = None  # any import of TensorFlow now fails
sys.modules["tensorflow_datasets"] = None
import jax, numpy as np
root, mode = sys.argv[1], sys.argv[2]
if mode.startswith("process"):
    _, pid, port = mode.split(":")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(pid))
from resnet_jax import config as config_lib
from resnet_jax.data import shapes
from resnet_jax.engine import checkpoint, parallel, trainer

shapes.NUM_TRAIN, shapes.NUM_TEST = 320, 100

def config(steps):
    c = config_lib.default_config()
    c.update(dict(dataset="shapes10", data_dir=root + "/data", model="resnet20", batch_size=16,
                  num_train_steps=steps, learning_rate=0.05, lr_schedule="constant",
                  log_every_steps=4, checkpoint_every_steps=4, eval_batch_size=32))
    c.model_overrides.stage_sizes = (1, 1, 1)
    return c

def final_state(workdir, steps):
    rc = config_lib.resolve_config(config(steps))
    _, tx = config_lib.build_optimizer(rc)
    abstract = parallel.abstract_train_state(config_lib.build_model(rc), tx, (32, 32, 3),
                                             parallel.make_mesh())
    state, _ = checkpoint.Checkpointer(workdir).restore(abstract)
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]

def losses(workdir):
    records = [json.loads(l) for l in open(workdir + "/metrics.jsonl")]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}

out = {"devices": jax.device_count(), "processes": jax.process_count()}
if mode == "resume":
    one_go = trainer.train_and_evaluate(config(28), root + "/one_go")
    trainer.train_and_evaluate(config(10), root + "/resumed")  # mid-epoch
    resumed = trainer.train_and_evaluate(config(28), root + "/resumed")  # crosses an epoch
    out.update(eval=one_go["eval"], resumed_eval=resumed["eval"], losses=losses(root + "/one_go"),
               resumed_losses=losses(root + "/resumed"),
               bitwise_equal=all(np.array_equal(a, b) for a, b in
                                 zip(final_state(root + "/one_go", 28),
                                     final_state(root + "/resumed", 28), strict=True)))
else:
    summary = trainer.train_and_evaluate(config(12), root + "/run")
    np.savez(root + f"/state_{jax.process_index()}.npz", *final_state(root + "/run", 12))
    out.update(eval=summary["eval"], losses=losses(root + "/run"))
out["tensorflow"] = sorted(m for m, v in sys.modules.items()
                           if m.split(".")[0] in ("tensorflow", "tensorflow_datasets") and v)
print(json.dumps(out))
"""


def _start(root, mode, devices):
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        # The restarted run, and the single-process run of the other test, compile what the first
        # run did: every program goes to the suite's shared disk cache (tests/conftest.py).
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    return subprocess.Popen(
        [sys.executable, "-c", _SCRIPT, str(root), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _result(proc, timeout=400):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), out


def test_shapes10_trains_without_tensorflow_and_resumes_bitwise_across_an_epoch(tmp_path):
    r, out = _result(_start(tmp_path, "resume", devices=2))
    assert "resumed from checkpoint step 10" in out
    assert r["tensorflow"] == [] and r["devices"] == 2
    assert r["bitwise_equal"]
    assert r["resumed_eval"] == r["eval"] and r["eval"]["count"] == 100  # each test example once
    assert list(r["losses"]) == [str(s) for s in range(4, 29, 4)]
    assert all(np.isfinite(list(r["losses"].values())))
    # Each logged loss is the mean since the previous log, so 12 (after the restart at 10) covers
    # steps 11-12 only; every other interval holds the same steps as the run in one go.
    same = [s for s in r["losses"] if s != "12"]
    assert [r["resumed_losses"][s] for s in same] == [r["losses"][s] for s in same]
    assert not (tmp_path / "data" / "shapes10").exists()  # no tfds build: rendered straight
    # TensorBoard events without TensorFlow: the scalars are in the event file.
    (events,) = [f for f in os.listdir(tmp_path / "one_go") if f.startswith("events.out.tfevents")]
    data = (tmp_path / "one_go" / events).read_bytes()
    assert b"train/loss" in data and b"eval/top1" in data


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one_process_with_two_devices(tmp_path):
    single_root, pair_root = tmp_path / "single", tmp_path / "pair"
    single_root.mkdir()
    pair_root.mkdir()
    # The pair first builds the shared arrays; the single run renders its own.
    port = _free_port()
    pair = [_start(pair_root, f"process:{i}:{port}", devices=1) for i in range(2)]
    single = _start(single_root, "single", devices=2)
    (p0, _), (p1, _), (one, _) = (_result(p) for p in (*pair, single))
    assert (p0["processes"], p0["devices"], one["processes"], one["devices"]) == (2, 2, 1, 2)
    assert p0["tensorflow"] == []
    # The order and augmentation depend on (seed, step) only, not on the process count.
    assert list(p0["losses"]) == list(one["losses"]) == ["4", "8", "12"]
    np.testing.assert_allclose(list(p0["losses"].values()), list(one["losses"].values()), rtol=1e-5)
    assert p0["eval"]["count"] == one["eval"]["count"] == 100
    np.testing.assert_allclose(p0["eval"]["loss"], one["eval"]["loss"], rtol=1e-4)
    a, b, s = (
        np.load(d / n)
        for d, n in (
            (pair_root, "state_0.npz"),
            (pair_root, "state_1.npz"),
            (single_root, "state_0.npz"),
        )
    )
    assert len(s.files) > 10
    for k in s.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # replicas agree bit for bit
        np.testing.assert_allclose(a[k], s[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_input_pipeline_defaults_by_family_and_rejects_device_for_imagenet():
    from resnet_jax.data import catalog

    c = config_lib.default_config()
    assert catalog.open(c.dataset).input_pipeline == "device"  # shapes10, the default dataset
    c.dataset = "imagenet2012"
    assert catalog.name_problem(c.dataset, "host") is None
    c.input_pipeline = "device"
    with pytest.raises(
        faults.ConfigError,
        match="input_pipeline='device' is not available for imagenet2012; choose from host",
    ):
        validation.check_config(c)
    c.dataset, c.input_pipeline = "cifar10", "gpu"
    with pytest.raises(
        faults.ConfigError,
        match="input_pipeline='gpu' is not available for cifar10; choose from device, host",
    ):
        validation.check_config(c)


def test_tensorboard_events_are_written_without_importing_an_installed_tensorflow(tmp_path):
    script = (
        "import sys; from resnet_jax.engine import metrics; "
        f"w = metrics.MetricsLogger({str(tmp_path)!r}, total_steps=2, global_batch_size=4); "
        "w.log_eval(1, {'loss': 1.0, 'top1': 0.5, 'top5': 1.0, 'count': 4}); w.close(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))"
    )
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"  # TensorFlow is installed, yet not loaded
    (events,) = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents")]
    assert b"eval/top1" in (tmp_path / events).read_bytes()
