"""Mesh and sharding helpers; 4 simulated CPU devices train exactly like 1.

Run as a script, this file is the worker that the multi-device and multi-process tests start:
  python tests/test_parallel.py --out F.npz [--steps N] [--coordinator H:P --num_processes P --process_id I]
It trains a tiny conv+BN net on a fixed sequence of global batches and saves the per-step losses and
the final params.
"""

import argparse
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBAL_BATCH = 16


def run_worker(out, *, devices=1, steps=6, extra=(), env_extra=None, wait=True):
    """Starts this file as a worker subprocess with `devices` simulated CPU devices."""
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    )
    env.update(env_extra or {})
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--out",
        str(out),
        "--steps",
        str(steps),
        *extra,
    ]
    proc = subprocess.Popen(
        cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if wait:
        output, _ = proc.communicate(timeout=240)
        assert proc.returncode == 0, output
    return proc


def _worker(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    a = p.parse_args(argv)

    from resnet_jax.engine import parallel

    parallel.initialize_distributed(a.coordinator, a.num_processes, a.process_id)

    import jax

    from resnet_jax import optim
    from tests.test_steps import TinyNet, _batch

    mesh = parallel.make_mesh()
    model = TinyNet()
    schedule = optim.make_schedule(0.1, a.steps, schedule="cosine", warmup_steps=2)
    tx = optim.make_optimizer(schedule, momentum=0.9, nesterov=True, weight_decay=1e-3)
    state = parallel.create_sharded_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3), mesh)
    step_fn = parallel.jit_train_step(model, tx, schedule, mesh, label_smoothing=0.1)
    local = parallel.local_batch_size(GLOBAL_BATCH, mesh)
    lo = jax.process_index() * local

    def host_batches():
        for i in range(a.steps):
            full = _batch(GLOBAL_BATCH, seed=i)  # each process keeps its own slice of the batch
            yield {k: v[lo : lo + local] for k, v in full.items()}

    losses = []
    for batch in parallel.prefetch_to_mesh(host_batches(), mesh):
        state, m = step_fn(state, batch)
        losses.append(m["loss"])
    local_copy = lambda x: np.asarray(x.addressable_data(0))
    params = {
        jax.tree_util.keystr(k): local_copy(v)
        for k, v in jax.tree_util.tree_leaves_with_path(state.params)
    }
    np.savez(
        a.out,
        losses=np.array([float(local_copy(x)) for x in losses]),
        devices=jax.device_count(),
        processes=jax.process_count(),
        **params,
    )


# ----------------------------------------------------------------------------------------- tests


def test_mesh_spans_all_devices_on_one_data_axis():
    import jax

    from resnet_jax.engine import parallel

    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",)
    assert mesh.devices.size == jax.device_count()


def test_host_batch_becomes_a_global_array_with_the_same_values():
    from resnet_jax.engine import parallel

    mesh = parallel.make_mesh()
    batch = {
        "image": np.arange(4 * 2 * 2 * 3, dtype=np.float32).reshape(4, 2, 2, 3),
        "label": np.arange(4, dtype=np.int32),
    }
    out = parallel.host_to_global(batch, mesh)
    assert out["image"].sharding.spec == parallel.P("data")
    np.testing.assert_array_equal(np.asarray(out["image"]), batch["image"])
    np.testing.assert_array_equal(np.asarray(out["label"]), batch["label"])


def test_prefetch_yields_every_batch_once_in_order():
    from resnet_jax.engine import parallel

    mesh = parallel.make_mesh()
    batches = [{"x": np.full((2,), i, np.float32)} for i in range(5)]
    got = [float(b["x"][0]) for b in parallel.prefetch_to_mesh(iter(batches), mesh, size=2)]
    assert got == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_initialize_distributed_is_a_noop_alone_and_wants_all_three_arguments(monkeypatch):
    from resnet_jax.engine import parallel

    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(var, raising=False)
    parallel.initialize_distributed()  # single process: nothing to join
    with pytest.raises(ValueError, match="together"):
        parallel.initialize_distributed("127.0.0.1:1234")


def test_cluster_detection_reads_slurm_and_tpu_pod_environments(monkeypatch):
    from resnet_jax.engine import parallel

    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert parallel._cluster_detected()
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1")
    assert parallel._cluster_detected()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0")
    assert not parallel._cluster_detected()


def test_four_devices_train_like_one_and_reject_an_indivisible_batch(tmp_path):
    procs = [
        run_worker(tmp_path / f"{name}.npz", devices=n, wait=False)
        for name, n in (("one", 1), ("four", 4))
    ]
    for p in procs:
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out
    one, four = np.load(tmp_path / "one.npz"), np.load(tmp_path / "four.npz")
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    assert one["losses"][-1] < one["losses"][0]
    np.testing.assert_allclose(four["losses"], one["losses"], rtol=1e-5)
    for k in set(one.files) - {"devices", "processes"}:
        np.testing.assert_allclose(four[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)

    code = (
        "from resnet_jax.engine import parallel\n"
        "try:\n  parallel.local_batch_size(6, parallel.make_mesh())\n"
        "except ValueError as e:\n  print(e)\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    msg = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    ).stdout
    assert "global batch size 6" in msg and "device count 4" in msg


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    _worker()
