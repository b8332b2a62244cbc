"""The exponential moving average of the weights (`ema_decay`): params and BN statistics, in the
train state and its checkpoints, evaluated and predicted beside the trained weights."""

import json
import os
from typing import Any

import flax
import jax
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.engine import checkpoint, evaluate, faults, parallel, steps, trainer, warm_start
from resnet_jax.tools import predict
from tests.test_predict import shapes10_pngs
from tests.test_steps import TinyNet, _batch
from tests.test_trainer import tiny_config


def test_decay_warms_up_then_holds():
    d = lambda step: float(steps.ema_decay_at(0.999, step))
    assert d(0) == pytest.approx(0.1)  # the first update mostly takes the new weights
    assert d(90) == pytest.approx(0.91)
    assert d(100_000) == pytest.approx(0.999)  # (1 + t) / (10 + t) passes 0.999 at t = 8990


def _tiny(ema_decay, donate=False):
    model, mesh = TinyNet(), parallel.make_mesh()
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=1e-4)
    state = parallel.create_sharded_train_state(
        model, tx, jax.random.PRNGKey(1), (8, 8, 3), mesh, ema=ema_decay > 0
    )
    step = parallel.jit_train_step(model, tx, schedule, mesh, ema_decay=ema_decay, donate=donate)
    abstract = parallel.abstract_train_state(model, tx, (8, 8, 3), mesh, ema=ema_decay > 0)
    return state, step, abstract, mesh


def test_average_covers_params_and_bn_statistics_and_leaves_training_alone():
    state, step, _, mesh = _tiny(0.5)
    plain, plain_step, _, _ = _tiny(0.0)
    ema = state.ema
    for i in range(2):
        batch = parallel.host_to_global(_batch(seed=i), mesh)
        state, _ = step(state, batch)
        plain, _ = plain_step(plain, batch)
        d = (1 + i) / (10 + i)  # under 0.5: still warming up
        want = jax.tree.map(
            lambda old, new, d=d: d * old + (1 - d) * new,
            ema,
            {"params": state.params, "batch_stats": state.batch_stats},
        )
        for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        ema = state.ema
    assert set(state.ema) == {"params", "batch_stats"}
    bn = state.ema["batch_stats"]["BatchNorm_0"]["var"]
    assert np.abs(np.asarray(bn) - np.asarray(state.batch_stats["BatchNorm_0"]["var"])).max() > 0
    # Keeping the average changes nothing in the trained weights.
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(plain.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert plain.ema is None
    with pytest.raises(ValueError, match="ema_decay=0.0 but the train state holds"):
        plain_step(state, batch)


def test_resumed_average_is_bitwise_equal_to_an_uninterrupted_one(tmp_path):
    state, step, abstract, mesh = _tiny(0.9)
    batches = [parallel.host_to_global(_batch(seed=i), mesh) for i in range(4)]
    straight = state
    for b in batches:
        straight, _ = step(straight, b)
    for b in batches[:2]:
        state, _ = step(state, b)
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=0)
    ckpt.save(2, state, checkpoint.data_position(2, 0, 16, 1), force=True)
    ckpt.close()
    resumed, position = checkpoint.Checkpointer(str(tmp_path)).restore(abstract)
    assert position["step"] == 2
    for b in batches[2:]:
        resumed, _ = step(resumed, b)
    leaves = jax.tree.leaves(straight.ema)
    assert len(leaves) == 7  # 5 params, BN mean and var
    for a, b in zip(leaves, jax.tree.leaves(resumed.ema), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


class _StateBeforeEma(flax.struct.PyTreeNode):
    """The train state as checkpoints were written before it had an `ema` field."""

    step: Any
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: Any


def test_a_checkpoint_from_before_the_field_restores_and_one_with_an_average_keeps_it(tmp_path):
    state, _, abstract, _ = _tiny(0.0)
    old = _StateBeforeEma(**{k: getattr(state, k) for k in _StateBeforeEma.__dataclass_fields__})
    ckpt = checkpoint.Checkpointer(str(tmp_path / "old"), every_steps=0)
    ckpt.save(1, old, checkpoint.data_position(1, 0, 16, 1), force=True)
    ckpt.close()
    restored, _ = checkpoint.Checkpointer(str(tmp_path / "old")).restore(abstract)
    assert isinstance(restored, steps.TrainState) and restored.ema is None
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    # Asked with an average (the trainer then starts it from these weights): none on disk.
    _, _, with_ema, _ = _tiny(0.9)
    assert checkpoint.Checkpointer(str(tmp_path / "old")).restore(with_ema)[0].ema is None
    # A checkpoint with an average comes back with it, whatever the caller expected.
    averaged, _, _, _ = _tiny(0.9)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ema"), every_steps=0)
    ckpt.save(1, averaged, checkpoint.data_position(1, 0, 16, 1), force=True)
    ckpt.close()
    restored, _ = checkpoint.Checkpointer(str(tmp_path / "ema")).restore(abstract)
    for a, b in zip(jax.tree.leaves(averaged.ema), jax.tree.leaves(restored.ema), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_resume_that_turns_the_average_on_starts_it_from_the_restored_weights(capsys):
    import ml_collections

    state, _, _, _ = _tiny(0.0)
    on = trainer._ema_as_configured(ml_collections.ConfigDict({"ema_decay": 0.9}), state, 7)
    want = {"params": state.params, "batch_stats": state.batch_stats}
    for a, b in zip(jax.tree.leaves(on.ema), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    off = trainer._ema_as_configured(ml_collections.ConfigDict({"ema_decay": 0.0}), on, 7)
    assert off.ema is None
    out = capsys.readouterr().out
    assert "checkpoint 7 holds no average of the weights; it starts from the restored ones" in out
    assert "checkpoint 7 holds an average of the weights, which this run drops" in out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step ResNet-8 run of the default job (shapes10) with an average of the weights and 2
    micro-batches per step, and 2 of its test images as PNGs."""
    c = tiny_config(4)
    c.eval_split, c.checkpoint_every_steps = "test[:16]", 4
    c.ema_decay, c.grad_accum_steps = 0.9, 2
    root = tmp_path_factory.mktemp("ema")
    workdir = str(root / "run")
    summary = trainer.train_and_evaluate(c, workdir)
    return workdir, shapes10_pngs(root, 2), summary


@pytest.mark.slow  # a 4-step training run: about 15 s on 2 cores
def test_a_run_reports_and_serves_both_weights(run, capsys):
    workdir, paths, summary = run
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    final = [r for r in records if r["split"] == "eval"]
    assert len(final) == 1 and final[0]["step"] == 4
    keys = {"loss", "top1", "top5", "ema_loss", "ema_top1", "ema_top5"}
    assert keys <= set(final[0])
    assert summary["eval"] == {k: final[0][k] for k in (*keys, "count")}
    assert final[0]["ema_loss"] != final[0]["loss"]

    c = warm_start.run_config(workdir)
    mesh = parallel.make_mesh(jax.devices()[:1])
    _, raw, step = evaluate.inference_variables(c, workdir, mesh)
    model, ema, _ = evaluate.inference_variables(c, workdir, mesh, weights="ema")
    _, state, _ = evaluate.restore_checkpoint(c, workdir, mesh)
    assert step == 4
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(state.ema), strict=True):
        np.testing.assert_array_equal(a, b)
    trained = {"params": state.params, "batch_stats": state.batch_stats}
    for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)

    # predict --weights ema ranks by the averaged weights' probabilities.
    got = predict.predict(workdir, paths, "ema")
    raw_got = predict.predict(workdir, paths, "raw")
    assert [p for _, p in got[0]] != [p for _, p in raw_got[0]]
    images = predict.load_images(paths, c)[0]
    from resnet_jax import config as config_lib

    probs = jax.nn.softmax(model.apply(ema, config_lib.build_finish(c)({"image": images})))
    np.testing.assert_allclose(
        [p for _, p in got[1]], np.sort(np.asarray(probs[1]))[::-1][:5], rtol=1e-5
    )


def test_weights_ema_of_a_run_without_an_average_is_a_config_error(tmp_path):
    from resnet_jax import config as config_lib

    c = config_lib.resolve_config(config_lib.default_config())  # ema_decay 0
    mesh = parallel.make_mesh()
    _, tx = config_lib.build_optimizer(c)
    state = parallel.create_sharded_train_state(
        config_lib.build_model(c), tx, jax.random.PRNGKey(0), (32, 32, 3), mesh
    )
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=0)
    ckpt.save(1, state, checkpoint.data_position(1, 0, 128, 1), force=True)
    ckpt.close()
    with pytest.raises(faults.ConfigError, match="holds no averaged \\(EMA\\) weights") as e:
        evaluate.inference_variables(c, str(tmp_path), mesh, weights="ema")
    assert e.value.exit_code == faults.EXIT_CONFIG
    with pytest.raises(faults.ConfigError, match="weights must be one of raw, ema, got 'avg'"):
        evaluate.inference_variables(c, str(tmp_path), mesh, weights="avg")
    _, variables, step = evaluate.inference_variables(c, str(tmp_path), mesh)
    assert step == 1 and set(variables) == {"params", "batch_stats"}
