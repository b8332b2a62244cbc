"""Schedules against the papers' recipes, the weight-decay mask, the optimiser chain and the loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import optim


def _lr(schedule, step):
    return float(schedule(step))


def test_cifar_recipe_divides_by_10_at_32k_and_48k():
    # He2015 Sec. 4.2: lr 0.1, /10 at 32k and 48k iterations, stop at 64k.
    s = optim.make_schedule(0.1, 64_000, schedule="step", boundaries=[32_000, 48_000])
    assert _lr(s, 0) == pytest.approx(0.1)
    assert _lr(s, 31_999) == pytest.approx(0.1)
    assert _lr(s, 32_000) == pytest.approx(0.01)
    assert _lr(s, 47_999) == pytest.approx(0.01)
    assert _lr(s, 48_000) == pytest.approx(0.001)
    assert _lr(s, 63_999) == pytest.approx(0.001)


def test_resnet110_constant_warmup_then_paper_boundaries_stay_absolute():
    # He2015: ResNet-110 uses 0.01 for ~400 iterations, then 0.1; the decays stay at 32k/48k.
    s = optim.make_schedule(
        0.1,
        64_000,
        schedule="step",
        boundaries=[32_000, 48_000],
        warmup_steps=400,
        warmup="constant",
        warmup_lr=0.01,
    )
    assert _lr(s, 0) == pytest.approx(0.01)
    assert _lr(s, 399) == pytest.approx(0.01)
    assert _lr(s, 400) == pytest.approx(0.1)
    assert _lr(s, 31_999) == pytest.approx(0.1)
    assert _lr(s, 32_000) == pytest.approx(0.01)
    assert _lr(s, 48_000) == pytest.approx(0.001)


def test_imagenet_step_decays_at_epochs_30_60_80():
    steps_per_epoch = 1_281_167 // 256  # 5004
    s = optim.make_schedule(
        0.1,
        90 * steps_per_epoch,
        schedule="step",
        boundaries=[e * steps_per_epoch for e in (30, 60, 80)],
    )
    assert _lr(s, 30 * steps_per_epoch - 1) == pytest.approx(0.1)
    assert _lr(s, 30 * steps_per_epoch) == pytest.approx(0.01)
    assert _lr(s, 60 * steps_per_epoch) == pytest.approx(0.001)
    assert _lr(s, 80 * steps_per_epoch) == pytest.approx(0.0001)


def test_linear_scaling_and_linear_warmup_into_cosine():
    # Goyal et al.: lr = 0.1 * batch / 256, reached linearly over 5 epochs, then cosine to 0.
    peak = optim.scaled_learning_rate(0.1, 1024)
    assert peak == pytest.approx(0.4)
    s = optim.make_schedule(peak, 1000, schedule="cosine", warmup_steps=100, warmup="linear")
    assert _lr(s, 0) == pytest.approx(0.0)
    assert _lr(s, 50) == pytest.approx(0.2)
    assert _lr(s, 100) == pytest.approx(0.4)
    assert _lr(s, 550) == pytest.approx(0.2, rel=1e-5)  # half-way through the cosine
    assert _lr(s, 1000) == pytest.approx(0.0, abs=1e-7)


def test_linear_warmup_then_step_decays_at_absolute_steps():
    s = optim.make_schedule(0.4, 900, schedule="step", boundaries=[300, 600], warmup_steps=50)
    assert _lr(s, 25) == pytest.approx(0.2)
    assert _lr(s, 299) == pytest.approx(0.4)
    assert _lr(s, 300) == pytest.approx(0.04)
    assert _lr(s, 600) == pytest.approx(0.004)


def test_boundary_inside_warmup_is_rejected():
    with pytest.raises(ValueError, match="warm-up"):
        optim.make_schedule(0.1, 100, boundaries=[10], warmup_steps=20)


PARAMS = {
    "conv_init": {"kernel": jnp.ones((3, 3, 3, 4))},
    "bn_init": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
    "head": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones((10,))},
}


def test_kernel_mask_selects_exactly_conv_and_dense_kernels():
    mask = optim.weight_decay_mask(PARAMS, "kernels")
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat == {
        "['bn_init']['bias']": False,
        "['bn_init']['scale']": False,
        "['conv_init']['kernel']": True,
        "['head']['bias']": False,
        "['head']['kernel']": True,
    }
    assert all(jax.tree.leaves(optim.weight_decay_mask(PARAMS, "all")))


@pytest.mark.parametrize("which", ["all", "kernels"])
def test_weight_decay_reaches_exactly_the_masked_leaves(which):
    # With zero gradients, the only update is -lr * wd * w on the decayed leaves.
    tx = optim.make_optimizer(1.0, momentum=0.9, weight_decay=1e-2, weight_decay_on=which)
    grads = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    mask = optim.weight_decay_mask(PARAMS, which)
    for u, m in zip(jax.tree.leaves(updates), jax.tree.leaves(mask), strict=True):
        np.testing.assert_allclose(u, -1e-2 if m else 0.0, rtol=1e-6)
    assert sum(jax.tree.leaves(mask)) == (5 if which == "all" else 2)


def _two_updates(nesterov):
    tx = optim.make_optimizer(0.1, momentum=0.9, nesterov=nesterov)
    p, g = {"w": jnp.array([1.0])}, {"w": jnp.array([0.5])}
    state = tx.init(p)
    u1, state = tx.update(g, state, p)
    u2, _ = tx.update(g, state, p)
    return float(u1["w"][0]), float(u2["w"][0])


def test_sgd_momentum_and_nesterov_match_the_update_rule():
    # heavy ball: v_t = g + 0.9 v_{t-1}, step -lr v_t
    assert _two_updates(False) == pytest.approx((-0.05, -0.1 * (0.5 + 0.9 * 0.5)))
    # Nesterov: step -lr (g + 0.9 v_t)
    assert _two_updates(True) == pytest.approx(
        (-0.1 * (0.5 + 0.9 * 0.5), -0.1 * (0.5 + 0.9 * (0.5 + 0.9 * 0.5)))
    )


def test_lars_scales_kernel_updates_by_trust_ratio():
    tx = optim.make_optimizer(
        1.0, optimizer="lars", momentum=0.0, weight_decay=0.0, lars_trust_coefficient=0.001
    )
    params = {"kernel": jnp.full((4,), 2.0), "bias": jnp.full((4,), 2.0)}
    grads = {"kernel": jnp.full((4,), 0.5), "bias": jnp.full((4,), 0.5)}
    updates, _ = tx.update(grads, tx.init(params), params)
    # trust ratio = 0.001 * |w| / |g| = 0.001 * 4 / 1 on the kernel; none on the bias.
    np.testing.assert_allclose(updates["kernel"], -0.5 * 0.004, rtol=1e-5)
    np.testing.assert_allclose(updates["bias"], -0.5, rtol=1e-5)


def test_cross_entropy_with_and_without_label_smoothing():
    logits = jnp.array([[2.0, 0.0, 0.0]])
    labels = jnp.array([0])
    logp = jax.nn.log_softmax(logits)[0]
    np.testing.assert_allclose(optim.cross_entropy(logits, labels), -logp[0], rtol=1e-6)
    # smoothing 0.3 over 3 classes: targets (0.8, 0.1, 0.1)
    expected = -(0.8 * logp[0] + 0.1 * logp[1] + 0.1 * logp[2])
    np.testing.assert_allclose(optim.cross_entropy(logits, labels, 0.3), expected, rtol=1e-6)
    assert optax.softmax_cross_entropy_with_integer_labels(logits, labels).shape == (1,)
