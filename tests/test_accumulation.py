"""Gradient accumulation (`grad_accum_steps`): the paper's 8-GPU step taken on fewer devices.

Run as a script, this file is the worker the multi-device tests start:
  python tests/test_accumulation.py --out F.npz
It takes the same steps on 4 simulated CPU devices as (devices, micro-batches) = (4, 1), (2, 2),
(1, 4) and (1, 1), with BN per group of 4 images, and saves each layout's final variables; then
4 steps in 2 micro-batches on 4 devices, in one go and resumed from a checkpoint on 2 devices.
"""

import argparse
import functools
import os
import re
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.engine import checkpoint, faults, parallel, steps, validation
from resnet_jax.models import norm
from tests.test_steps import TinyNet, _batch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUTS = ((4, 1), (2, 2), (1, 4), (1, 1))  # (devices, grad_accum_steps)
GROUP = 4  # BN group: the micro-batch on one device, 16 / 4


class GroupNet(nn.Module):
    """TinyNet with BN statistics per group of `group` images (the paper's per-GPU BN)."""

    group: int = GROUP

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), use_bias=False)(x)
        x = norm.GroupedBatchNorm(self.group, use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(10)(nn.relu(x).mean(axis=(1, 2)))


def _batch_moves(hlo: str) -> list[str]:
    """The collectives of a compiled step that move batch rows between devices: every
    all-to-all, and every all-gather but the logits' [rows, 10] that XLA's CPU top-k gathers in
    any layout. A naive [k, B / k] split of a sharded batch all-gathers its images and labels."""
    ops = re.findall(r"= (\S+) (all-gather|all-to-all)\(", hlo)
    return [shape for shape, op in ops if op == "all-to-all" or not shape.endswith(",10]{1,0}")]


def _worker(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    model = GroupNet()
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=1e-3)
    out = {}
    for devices, k in LAYOUTS:
        mesh = parallel.make_mesh(jax.devices()[:devices])
        state = parallel.create_sharded_train_state(
            model, tx, jax.random.PRNGKey(0), (8, 8, 3), mesh
        )
        step = parallel.jit_train_step(
            model, tx, schedule, mesh, grad_accum_steps=k, bn_group_size=GROUP
        )
        name = f"{devices}x{k}"
        for i in range(3):
            batch = parallel.host_to_global(_batch(16, seed=i), mesh)
            if i == 0:
                hlo = step.lower(state, batch).compile().as_text()
                out[f"{name}/moves_rows"] = bool(_batch_moves(hlo))
            state, m = step(state, batch)
            out[f"{name}/loss{i}"] = np.asarray(m["loss"])
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
            out[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    out.update(_resume_on_fewer_devices(os.path.join(os.path.dirname(a.out), "run")))
    np.savez(a.out, **out)


def _resume_on_fewer_devices(workdir, steps_before=2, steps_after=2):
    """TinyNet (BN over each whole micro-batch) 4 steps of 16 images in 2 micro-batches: in one go
    on 4 devices, and resumed on 2 devices from a checkpoint written on 4 at `steps_before`; also
    the resumed leg with the micro-batches the devices used to set (chunks of the per-device
    micro-batch, 4 rows on 2 devices), to show that the composition matters."""
    model = TinyNet()
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=1e-3)
    four, two = parallel.make_mesh(jax.devices()[:4]), parallel.make_mesh(jax.devices()[:2])
    batches = [_batch(16, seed=10 + i) for i in range(steps_before + steps_after)]

    def train(state, mesh, batches, **chunk):
        fn = parallel.train_step_fn(model, tx, schedule, grad_accum_steps=2, **chunk)
        step = jax.jit(
            fn,
            in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
            out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
        )
        placed = [parallel.host_to_global(b, mesh) for b in batches]
        moves = bool(_batch_moves(step.lower(state, placed[0]).compile().as_text()))
        for b in placed:
            state, m = step(state, b)
        return state, np.asarray(m["loss"]), moves

    init = lambda mesh: parallel.create_sharded_train_state(
        model, tx, jax.random.PRNGKey(0), (8, 8, 3), mesh
    )
    options = lambda mesh: parallel.micro_batch_options(mesh)
    one_go, loss, moves_on_four = train(init(four), four, batches, **options(four))
    half, *_ = train(init(four), four, batches[:steps_before], **options(four))
    ckpt = checkpoint.Checkpointer(workdir, every_steps=0, async_save=False)
    ckpt.save(steps_before, half, checkpoint.data_position(steps_before, 0, 16, 1), force=True)
    ckpt.close()
    abstract = parallel.abstract_train_state(model, tx, (8, 8, 3), two)
    restored, _ = checkpoint.Checkpointer(workdir, every_steps=0).restore(abstract)
    assert restored.params["Conv_0"]["kernel"].sharding.mesh.devices.size == 2
    resumed, resumed_loss, moves_on_two = train(
        restored, two, batches[steps_before:], **options(two)
    )
    _, per_device_loss, _ = train(
        restored, two, batches[steps_before:], **dict(options(two), accum_chunk=16 // (2 * 2))
    )
    out = {"resume/one_go_loss": loss, "resume/resumed_loss": resumed_loss}
    out["resume/moves_rows"] = moves_on_four or moves_on_two
    out["resume/per_device_chunks_loss"] = per_device_loss
    for name, state in (("one_go", one_go), ("resumed", resumed)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(state.variables):
            out[f"resume/{name}/{jax.tree_util.keystr(path)}"] = np.asarray(leaf)
    return out


def test_micro_batches_take_chunks_of_the_global_batch_in_turn_whatever_the_devices():
    rows = {"label": jnp.arange(16)}
    # Chunks of one row: micro-batch j holds rows j, j + k, ... On 2 devices (rows 0-7 and 8-15)
    # or 4 (4 rows each), each micro-batch has an equal share of every device's rows.
    np.testing.assert_array_equal(
        steps.micro_batches(rows, 2)["label"],
        [[0, 2, 4, 6, 8, 10, 12, 14], [1, 3, 5, 7, 9, 11, 13, 15]],
    )
    # Chunks of a BN group (4 rows): each group stays whole, the global batch's rows 4i..4i+3.
    np.testing.assert_array_equal(
        steps.micro_batches(rows, 2, chunk=4)["label"],
        [[0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15]],
    )
    np.testing.assert_array_equal(
        steps.micro_batches(rows, 4, chunk=4)["label"], np.arange(16).reshape(4, 4)
    )
    with pytest.raises(ValueError, match="use a multiple of 12"):
        steps.micro_batches(rows, 3, chunk=4)


@pytest.fixture(scope="module")
def on_4_devices(tmp_path_factory):
    """What the worker (`_worker`) saved, run once on 4 simulated CPU devices."""
    out = tmp_path_factory.mktemp("devices") / "layouts.npz"
    env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--out", str(out)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return dict(np.load(out))


def test_k_micro_batches_take_the_step_of_k_devices_with_bn_per_device(on_4_devices):
    """4 devices x 4 images = 2 devices x 2 micro-batches = 1 device x 4 micro-batches: the same
    BN groups and the same gradient, so the same parameters and BN statistics after 3 steps."""
    got = on_4_devices
    names = [n.split("/", 1)[1] for n in got if n.startswith("4x1/")]
    assert sum("batch_stats" in n for n in names) == 2 and sum("params" in n for n in names) == 5
    for devices, k in LAYOUTS[1:]:
        for n in names:
            if n == "moves_rows":
                assert not got[f"{devices}x{k}/{n}"]  # micro-batches keep their rows in place
                continue
            np.testing.assert_allclose(
                got[f"{devices}x{k}/{n}"], got[f"4x1/{n}"], rtol=2e-5, atol=1e-6, err_msg=n
            )
    # The losses moved: three real updates, not a state that never changed.
    assert got["4x1/loss2"] < got["4x1/loss0"]


def test_a_run_resumed_on_fewer_devices_keeps_its_micro_batches(on_4_devices):
    """Resumed on 2 devices from a 4-device checkpoint, 2 micro-batches a step, a run ends where
    the 4-device run ends, to float rounding (the devices add in another order)."""
    got = on_4_devices
    resumed = [n for n in got if n.startswith("resume/resumed/")]
    assert len(resumed) == 7
    for n in resumed:
        want = got[n.replace("/resumed/", "/one_go/")]
        np.testing.assert_allclose(got[n], want, rtol=2e-5, atol=1e-6, err_msg=n)
    np.testing.assert_allclose(got["resume/resumed_loss"], got["resume/one_go_loss"], rtol=1e-5)
    # Micro-batches that followed the device count would not: the loss moves well past rounding.
    assert abs(got["resume/per_device_chunks_loss"] - got["resume/one_go_loss"]) > 1e-3
    assert not got["resume/moves_rows"]  # and on either mesh no row changes device


def _one_step(k, momentum_rule_batch):
    model = TinyNet()  # nn.BatchNorm, momentum 0.9: with k > 1 each micro-batch is its own group
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9)
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    step = jax.jit(
        functools.partial(
            steps.train_step, model=model, tx=tx, learning_rate_fn=schedule, grad_accum_steps=k
        )
    )
    new, _ = step(state, momentum_rule_batch)
    return state, new


def test_bn_running_statistics_move_by_the_mean_of_the_micro_batch_statistics():
    batch = _batch(16, seed=3)
    k, m = 4, 0.9
    state, new = _one_step(k, batch)
    # The BN input is the first conv's output under the step's starting weights; micro-batch j
    # holds rows j, j + k, ... (`steps.micro_batches`, chunks of one row).
    conv = nn.Conv(8, (3, 3), use_bias=False)
    h = conv.apply({"params": state.params["Conv_0"]}, batch["image"])
    h = h.reshape(4, k, 8, 8, 8).swapaxes(0, 1)
    means = h.mean(axis=(1, 2, 3))  # [k, C]: each micro-batch's own statistics
    variances = h.var(axis=(1, 2, 3))
    old = state.batch_stats["BatchNorm_0"]
    got = new.batch_stats["BatchNorm_0"]
    np.testing.assert_allclose(got["mean"], m * old["mean"] + (1 - m) * means.mean(0), atol=1e-5)
    np.testing.assert_allclose(got["var"], m * old["var"] + (1 - m) * variances.mean(0), rtol=1e-5)
    # Not k updates in a row (momentum applied k times), nor the whole batch's variance.
    in_a_row = old["var"]
    for v in variances:
        in_a_row = m * in_a_row + (1 - m) * v
    assert np.abs(np.asarray(got["var"]) - in_a_row).max() > 1e-2
    whole = m * old["var"] + (1 - m) * h.reshape(16, 8, 8, 8).var(axis=(0, 1, 2))
    assert np.abs(np.asarray(got["var"]) - whole).max() > 1e-3


def test_compiled_step_memory_falls_with_the_number_of_micro_batches():
    model = TinyNet()
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9)
    mesh = parallel.make_mesh()
    state = parallel.abstract_train_state(model, tx, (32, 32, 3), mesh)
    batch = parallel.host_to_global(_batch(64, size=32), mesh)

    def temp_bytes(k):
        step = parallel.jit_train_step(model, tx, schedule, mesh, grad_accum_steps=k)
        return step.lower(state, batch).compile().memory_analysis().temp_size_in_bytes

    one, four = temp_bytes(1), temp_bytes(4)
    # Measured 11.3 MB and 3.3 MB: the activations of 16 images instead of 64.
    assert four < 0.35 * one, (one, four)


def _resolved(**kw):
    from resnet_jax import config as config_lib

    c = config_lib.default_config()
    c.dataset, c.num_train_steps = "synthetic", 1
    c.update(kw)
    return config_lib.resolve_run(c)


@pytest.mark.parametrize(
    "kw, devices, message",
    [
        (
            dict(batch_size=16, grad_accum_steps=3),
            1,
            "batch_size 16 does not split into grad_accum_steps=3 micro-batches that each divide "
            "over the device count 1; use a batch_size that is a multiple of 3",
        ),
        (
            dict(batch_size=16, grad_accum_steps=4),
            8,
            "use a batch_size that is a multiple of 32",
        ),
        (
            dict(batch_size=32, grad_accum_steps=4, bn_group_size=16),
            1,
            "bn_group_size 16 does not divide the per-device micro-batch 8",
        ),
    ],
)
def test_a_batch_that_does_not_split_into_micro_batches_is_refused(kw, devices, message):
    with pytest.raises(faults.ConfigError, match=message) as e:
        validation.check_resolved(_resolved(**kw), device_count=devices, process_count=1)
    assert e.value.exit_code == faults.EXIT_CONFIG
    validation.check_resolved(
        _resolved(batch_size=32, grad_accum_steps=4), device_count=8, process_count=1
    )


if __name__ == "__main__":
    _worker()


def test_one_gpu_imagenet_recipe_is_the_papers_step_as_8_micro_batches_of_32(monkeypatch):
    from resnet_jax import config as config_lib
    from resnet_jax.data import catalog
    from tests.test_trainer import load_config

    paper, one_gpu = (
        load_config("imagenet", "resnet50"),
        load_config("imagenet", "resnet50,one_gpu"),
    )
    validation.check_config(one_gpu)
    changed = {k for k, v in one_gpu.items() if paper[k] != v}
    assert changed == {"grad_accum_steps"} and one_gpu.grad_accum_steps == 8
    assert (one_gpu.batch_size, one_gpu.bn_group_size) == (256, 32)
    # ImageNet is not prepared here: its published sizes stand in for the builder's.
    opened = catalog.open
    run_of = {"num_train_examples": 1_281_167, "dataset": "imagenet2012"}
    monkeypatch.setattr(catalog, "open", lambda name, **kw: opened(name, **dict(kw, saved=run_of)))
    monkeypatch.setattr(validation, "_plan_problems", lambda d, plan, process_count: [])
    run = config_lib.resolve_run(one_gpu)
    c = run.c
    assert (c.steps_per_epoch, c.num_train_steps, c.lr_decay_steps) == (
        5004,
        450_360,
        (150_120, 300_240, 400_320),
    )
    validation.check_resolved(run, device_count=1, process_count=1)
    # On 8 devices each would hold 4 images of a micro-batch: the plain paper recipe is for them.
    with pytest.raises(faults.ConfigError, match="bn_group_size 32 does not divide the per-device micro-batch 4"):  # fmt: skip
        validation.check_resolved(run, device_count=8, process_count=1)


def test_seeds_as_one_program_accumulate_and_average_as_their_single_runs():
    from resnet_jax.engine import stacked

    model, mesh = TinyNet(), parallel.make_mesh()
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9)
    options = dict(grad_accum_steps=2, ema_decay=0.9)
    init = lambda seed: parallel.create_sharded_train_state(
        model, tx, jax.random.PRNGKey(seed), (8, 8, 3), mesh, ema=True
    )
    single = parallel.jit_train_step(model, tx, schedule, mesh, donate=False, **options)
    how = stacked.layout(2, mesh)
    program = stacked.jit_train_step(model, tx, schedule, mesh, how, **options)
    batches = [_batch(16, seed=s) for s in (0, 1)]
    both = stacked.stack([init(0), init(1)], stacked.state_sharding(how, mesh))
    both, m = program(both, jax.tree.map(lambda *x: np.stack(x), *batches))
    for run, state in enumerate(stacked.unstack(both, 2, mesh)):
        alone, m_alone = single(init(run), parallel.host_to_global(batches[run], mesh))
        np.testing.assert_allclose(m["loss"][run], m_alone["loss"], rtol=1e-5)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        assert state.ema is not None
