"""train_step / eval_step on a tiny conv + BN + dense module (no ResNet, no data pipeline needed)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.data import finish
from resnet_jax.engine import steps


class TinyNet(nn.Module):
    """conv -> BN -> relu -> mean pool -> dense; [B, H, W, 3] -> [B, K] float32."""

    num_classes: int = 10
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), use_bias=False, dtype=self.dtype)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype)(x)
        x = nn.relu(x).mean(axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)


def _batch(n=16, size=8, k=10, seed=0):
    """Noise plus a per-class colour, so a few steps can learn it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, size=n).astype(np.int32)
    colours = np.random.default_rng(123).normal(size=(k, 1, 1, 3))
    images = rng.normal(size=(n, size, size, 3)) + 2 * colours[labels]
    return {"image": images.astype(np.float32), "label": labels}


def _setup(dtype=jnp.float32, lr=0.1, label_smoothing=0.0):
    model = TinyNet(dtype=dtype)
    schedule = optax.constant_schedule(lr)
    tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=1e-4)
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    step = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            learning_rate_fn=schedule,
            label_smoothing=label_smoothing,
        )
    )
    return model, tx, state, step


def test_create_train_state_holds_float32_params_batch_stats_and_step_zero():
    _, _, state, _ = _setup()
    assert int(state.step) == 0
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert set(state.batch_stats["BatchNorm_0"]) == {"mean", "var"}
    assert state.rng.shape == (2,)


def test_train_step_fits_a_fixed_batch_and_reports_metrics():
    _, _, state, step = _setup()
    batch = _batch()
    losses = []
    for _ in range(30):
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    assert set(m) == {"loss", "top1", "top5", "learning_rate", "grad_norm"}
    assert int(state.step) == 30
    assert losses[-1] < 0.5 * losses[0]
    assert float(m["top1"]) >= 0.75 and float(m["top5"]) == 1.0
    assert float(m["learning_rate"]) == pytest.approx(0.1)
    # BN running statistics moved away from their (0, 1) initial values.
    assert float(jnp.abs(state.batch_stats["BatchNorm_0"]["mean"]).max()) > 1e-3


def test_grad_norm_and_loss_match_a_direct_computation():
    model, _, state, step = _setup()
    batch = _batch()

    def loss_fn(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(state.params)
    _, m = step(state, batch)
    np.testing.assert_allclose(m["loss"], loss, rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], optax.tree.norm(grads), rtol=1e-5)


def test_learning_rate_metric_is_the_schedule_at_the_pre_update_step():
    model = TinyNet()
    schedule = optim.make_schedule(0.1, 10, schedule="step", boundaries=[2])
    tx = optim.make_optimizer(schedule)
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    step = jax.jit(
        functools.partial(steps.train_step, model=model, tx=tx, learning_rate_fn=schedule)
    )
    lrs = []
    for _ in range(3):
        state, m = step(state, _batch())
        lrs.append(float(m["learning_rate"]))
    assert lrs == pytest.approx([0.1, 0.1, 0.01])


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state():
    _, _, state, step = _setup(dtype=jnp.bfloat16)
    state, m = step(state, _batch())
    leaves = jax.tree.leaves((state.params, state.opt_state))
    assert {x.dtype for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype("float32")
    }
    assert np.isfinite(float(m["loss"]))


def test_label_smoothing_raises_the_loss_of_a_confident_model():
    _, _, state, plain = _setup()
    _, _, _, smooth = _setup(label_smoothing=0.1)
    batch = _batch()
    for _ in range(30):
        state, _ = plain(state, batch)
    # Same state, same batch: smoothing penalises the now-confident predictions.
    _, m_plain = plain(state, batch)
    _, _, state2, _ = _setup()
    for _ in range(30):
        state2, _ = plain(state2, batch)
    _, m_smooth = smooth(state2, batch)
    assert float(m_smooth["loss"]) > float(m_plain["loss"]) + 0.05


def test_eval_metrics_count_only_masked_in_examples():
    probs = jnp.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.9, 0.05, 0.05]])
    labels = jnp.array([0, 1, 1, 2])
    mask = jnp.array([True, True, True, False])  # the last row is padding and is wrong on purpose
    s = steps.metrics_from_probs(probs, labels, mask)
    assert float(s["count"]) == 3
    assert float(s["top1"]) == 2  # rows 0 and 2
    assert float(s["top5"]) == 3  # only 3 classes: always right
    np.testing.assert_allclose(s["loss"], -(np.log(0.7) + np.log(0.3) + np.log(0.5)), rtol=1e-6)


def test_eval_step_averages_softmax_over_views():
    model, _, state, _ = _setup()
    images = jnp.asarray(_batch(4)["image"])
    two_views = jnp.stack([images, images[:, ::-1]], axis=1)  # [B, V=2, H, W, 3]
    predict = jax.jit(functools.partial(steps.predict_step, model=model))
    p0, p1 = predict(state, {"image": images}), predict(state, {"image": images[:, ::-1]})
    np.testing.assert_allclose(
        predict(state, {"image": two_views}), (p0 + p1) / 2, rtol=1e-5, atol=1e-7
    )
    batch = {"image": two_views, "label": jnp.zeros(4, jnp.int32), "mask": jnp.ones(4, bool)}
    s = jax.jit(functools.partial(steps.eval_step, model=model))(state, batch)
    np.testing.assert_allclose(s["loss"], -jnp.log((p0 + p1)[:, 0] / 2).sum(), rtol=1e-5)


def test_uint8_batches_are_finished_inside_the_step_and_refused_without_a_finish():
    model, tx, state, step = _setup()
    rng = np.random.default_rng(4)
    raw = {
        "image": rng.integers(0, 256, (6, 8, 8, 3), np.uint8),
        "label": rng.integers(0, 10, 6).astype(np.int32),
        "flip": np.array([True, False] * 3),
        "light": rng.normal(0, 5, (6, 3)).astype(np.float32),
    }
    with pytest.raises(ValueError, match="uint8 pixels but the step has no `finish`"):
        step(state, raw)
    # With the finish, the step trains on exactly the inputs the finish makes on the host.
    mean, std = np.array([100.0, 110.0, 120.0]), np.array([50.0, 60.0, 70.0])
    fin = finish.Finish(mean, std)
    want = (raw["image"] + raw["light"][:, None, None] - mean) / std
    want = np.where(raw["flip"][:, None, None, None], want[:, :, ::-1], want)
    np.testing.assert_allclose(fin(raw), want, rtol=1e-6, atol=1e-5)
    finished = jax.jit(
        functools.partial(
            steps.train_step,
            model=model,
            tx=tx,
            learning_rate_fn=optax.constant_schedule(0.1),
            finish=fin,
        )
    )
    s_raw, m_raw = finished(state, raw)
    s_float, m_float = step(state, {"image": want.astype(np.float32), "label": raw["label"]})
    np.testing.assert_allclose(m_raw["loss"], m_float["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s_raw.params), jax.tree.leaves(s_float.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        fin({"image": raw["image"][0]})
