"""The XLA options the project sets: what reaches XLA, what the user can override, and that the CPU
options leave training as it was (the default job's loss curve inside its seed spread under XLA's
own defaults)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from resnet_jax import xla_options

ROOT = pathlib.Path(__file__).resolve().parents[1]
BAND = pathlib.Path(__file__).with_name("data") / "default_job_600_steps_xla_defaults.json"
YNN = "--xla_cpu_experimental_ynn_fusion_type"


def _flags_after_import(env_flags: str | None, **env) -> str:
    """XLA_FLAGS as a fresh process sees them once resnet_jax is imported and JAX has started."""
    e = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_options.OPT_OUT)}
    if env_flags is not None:
        e["XLA_FLAGS"] = env_flags
    e.update(env)
    code = "import os, resnet_jax, jax; jax.devices(); print(os.environ.get('XLA_FLAGS', ''))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=e, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


def test_import_sets_the_cpu_options_and_keeps_the_users_own():
    assert _flags_after_import(None) == f"{YNN}=dot,eltwise,reduce"
    mine = f"--xla_backend_optimization_level=0 {YNN}=individual_dot"
    assert _flags_after_import(mine) == mine  # the user's value wins
    assert _flags_after_import("--xla_backend_optimization_level=0") == (
        f"--xla_backend_optimization_level=0 {YNN}=dot,eltwise,reduce"
    )
    assert _flags_after_import(None, **{xla_options.OPT_OUT: "0"}) == ""
    # XLA reads no flag after an entry that is not a --flag: ours go in ahead of it, and a flag
    # of the user's behind it does not count as set.
    stray = f"--xla_backend_optimization_level=0 threads=1 {YNN}=individual_dot"
    assert _flags_after_import(stray) == (
        f"--xla_backend_optimization_level=0 {YNN}=dot,eltwise,reduce threads=1 "
        f"{YNN}=individual_dot"
    )


def test_entries_xla_does_not_read_are_named(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
    assert xla_options.unread() == [] and xla_options.unread_warning() is None
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false threads=1 --xla_dump_to=d")
    assert xla_options.unread() == ["threads=1", "--xla_dump_to=d"]
    assert "'threads=1' on (2 entries)" in xla_options.unread_warning()
    assert not xla_options.user_sets("--xla_dump_to")


def test_deterministic_flag_is_accepted_by_xla_before_start_and_refused_after():
    # XLA aborts on a flag it does not know when the backend starts, so a clean start with the flag
    # set proves it reached XLA's parser.
    code = (
        "from resnet_jax import xla_options as x; "
        "x.require(x.DETERMINISTIC, 'test'); import jax, jax.numpy as jnp; "
        "print(float(jnp.ones(3).sum())); "
        "import os; print(os.environ['XLA_FLAGS'])\n"
        "try:\n"
        "    x.require({'--xla_gpu_autotune_level': '0'}, 'late')\n"
        "except x.BackendStartedError as e:\n"
        "    print('refused:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "3.0"
    assert "--xla_gpu_deterministic_ops=true" in out[1].split()
    assert out[2].startswith("refused: late needs XLA_FLAGS=--xla_gpu_autotune_level=0 before JAX")


_STACKED_STEP = """
import jax, jax.numpy as jnp, numpy as np
from resnet_jax import config as config_lib
from resnet_jax.engine import parallel, stacked
c = config_lib.default_config()
c.batch_size = 16
c.model_overrides.stage_sizes = (1, 1, 1)
rc = config_lib.resolve_config(c)
model, (schedule, tx) = config_lib.build_model(rc), config_lib.build_optimizer(rc)
mesh = parallel.make_mesh()
how = stacked.layout(2, mesh)  # 2 runs on 4 devices: each run's batch split, 4 images a device
states = [parallel.create_sharded_train_state(model, tx, jax.random.PRNGKey(s), (32, 32, 3), mesh)
          for s in range(2)]
state = stacked.stack(states, stacked.state_sharding(how, mesh))
rng = np.random.default_rng(0)
batch = jax.device_put({"image": rng.random((2, 16, 32, 32, 3), np.float32),
                        "label": rng.integers(0, 10, (2, 16))}, stacked.batch_sharding(how, mesh))
state, m = stacked.jit_train_step(model, tx, schedule, mesh, how)(state, batch)
print(how, np.asarray(m["loss"]).round(3).tolist())
"""


@pytest.mark.slow  # 17 s: two runs on four simulated devices, compiled twice
def test_two_runs_as_one_program_on_four_cpu_devices_train_under_the_projects_option():
    # The vmapped step compiles without YNNPACK's elementwise fusions, which XLA 0.10 fails to run
    # on the layouts vmapped convolutions get; with them this step ends in "Instruction with
    # unsupported layout in YNN fusion".
    e = {k: v for k, v in os.environ.items() if k != xla_options.OPT_OUT}
    e.update(XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", _STACKED_STEP], cwd=ROOT, env=e, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    how, losses = out.stdout.strip().splitlines()[-1].split(" ", 1)
    assert how == "batch" and all(2.0 < x < 2.7 for x in json.loads(losses))  # ~ln 10


def test_vmapped_step_options_apply_only_to_the_projects_own_cpu_option(monkeypatch):
    monkeypatch.setattr(xla_options, "SET_BY_PROJECT", dict(xla_options.CPU_DEFAULTS))
    assert xla_options.vmapped_step_options("cpu") == xla_options.VMAPPED_CPU
    assert xla_options.vmapped_step_options("gpu") is None
    monkeypatch.setattr(xla_options, "SET_BY_PROJECT", {})  # the user chose the value, or opted out
    assert xla_options.vmapped_step_options("cpu") is None


def _losses(metrics: pathlib.Path) -> dict[int, float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["split"] == "train"}


@pytest.mark.slow
def test_default_job_loss_curve_stays_inside_the_seed_spread_of_xla_defaults(tmp_path):
    """The `make train` job's recipe for 600 steps (the cosine over 600), seed 0, under the
    project's CPU options, against seeds 0-4 under XLA's defaults (RESNET_JAX_XLA_DEFAULTS=0).

    Training is chaotic: any change of float order (two devices instead of one, or the band's
    Intel CPU against the one under test) moves a curve as far as another seed does, so the test
    asks what a seed would meet: at most 10% of the logged losses (means over 25 steps) outside the
    seeds' range widened by half its width (each of 5 runs under the project's options met it, with
    0-2 of 24 outside), and the last 100 steps' mean loss no worse than the worst seed's.
    """
    band = json.loads(BAND.read_text())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the project's options only
    cmd = [sys.executable, "-m", "resnet_jax.main", "--config=configs/default.py"]
    cmd += [f"--workdir={tmp_path}", "--config.num_train_steps=600", "--config.log_every_steps=25"]
    cmd += ["--config.checkpoint_every_steps=0", "--config.seed=0"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert "XLA CPU options set by resnet_jax" in out.stdout
    ours = _losses(tmp_path / "metrics.jsonl")
    steps = sorted(int(s) for s in band["losses"])
    assert sorted(ours) == steps
    outside = []
    for s in steps:
        seeds = np.asarray(band["losses"][str(s)])
        lo, hi = seeds.min(), seeds.max()
        margin = (hi - lo) / 2
        if not lo - margin <= ours[s] <= hi + margin:
            outside.append(f"step {s}: {ours[s]:.4f} outside [{lo:.4f}, {hi:.4f}] +- {margin:.4f}")
    assert len(outside) <= len(steps) // 10, outside
    last = steps[-4:]
    worst = max(
        np.mean([band["losses"][str(s)][k] for s in last]) for k in range(len(band["seeds"]))
    )
    assert np.mean([ours[s] for s in last]) <= worst
