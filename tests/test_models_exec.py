"""Tiny models that really run: BN modes, mixed precision, sown responses, init, unit kinds."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import BasicUnit, PreActBottleneckUnit, create_model
from resnet_jax.models.blocks import Shortcut, he_fan_out
from tests.test_models import fast_jit, numpy_variables

TINY_CIFAR = dict(stage_sizes=(1, 1, 1))
TINY_IMAGENET = dict(stage_sizes=(1, 1, 1, 1), widths=(8, 16, 16, 32))


def _x(shape, seed=1):
    return jax.random.normal(jax.random.key(seed), shape)


def run(module, variables, x, **kwargs):
    """`module.apply` compiled once: cheaper on CPU than op-by-op dispatch."""
    return fast_jit(functools.partial(module.apply, **kwargs))(variables, x)


def init(module, x):
    # unsafe_rbg: threefry's bit generator takes seconds to compile on CPU; values don't matter.
    return fast_jit(module.init)(jax.random.key(0, impl="unsafe_rbg"), x)


@functools.cache
def tiny_resnet20():
    """Variables and the train / eval / plain-call outputs of a 3-unit resnet20, in one compile."""
    m = create_model("resnet20", **TINY_CIFAR)
    x = _x((4, 8, 8, 3))
    v = numpy_variables(m, x)

    @fast_jit
    def calls(v, x):
        return (
            m.apply(v, x, train=True, mutable=["batch_stats", "intermediates"]),
            m.apply(v, x, train=False, mutable=["batch_stats"]),
            m.apply(v, x),
        )

    return v, x, calls(v, x)


def test_train_mode_updates_batch_stats_and_eval_mode_leaves_them():
    v, x, ((logits, upd), (eval_logits, eval_upd), plain_call) = tiny_resnet20()
    old, new = jax.tree.leaves(v["batch_stats"]), jax.tree.leaves(upd["batch_stats"])
    assert len(old) == len(new) == 2 * 7  # mean and var of 7 BNs: stem + 3 units x 2
    assert all(not np.allclose(a, b) for a, b in zip(old, new, strict=True))
    # The stem BN's running mean moves 10% of the way to the batch mean (momentum 0.9).
    conv_out = np.stack(
        [
            np.einsum(
                "bhwc,cf->bhwf",
                np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, i : i + 8, j : j + 8],
                v["params"]["stem"]["conv1"]["kernel"][i, j],
            )
            for i in range(3)
            for j in range(3)
        ]
    ).sum(0)
    np.testing.assert_allclose(
        upd["batch_stats"]["stem"]["bn1"]["mean"],
        0.1 * conv_out.mean(axis=(0, 1, 2)),
        rtol=1e-4,
        atol=1e-6,
    )
    for a, b in zip(old, jax.tree.leaves(eval_upd["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert logits.shape == eval_logits.shape == (4, 10)
    assert not np.allclose(logits, eval_logits)  # batch vs running statistics
    assert isinstance(plain_call, jax.Array)  # no `mutable`: logits only
    np.testing.assert_array_equal(plain_call, eval_logits)


def test_each_3x3_response_is_sown_after_bn():
    _, _, ((_, state), (_, eval_state), _) = tiny_resnet20()
    inter = state["intermediates"]
    assert sorted(inter) == ["stage1_unit1", "stage2_unit1", "stage3_unit1"]
    r = inter["stage2_unit1"]["response"]
    assert len(r) == 2 and r[0].shape == r[1].shape == (4, 4, 4, 32)
    # Post-BN (scale 1, bias 0) in train mode: every channel has mean 0 and variance 1.
    for y in r:
        np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)
        np.testing.assert_allclose(y.var(axis=(0, 1, 2)), 1, atol=1e-2)
    # Without a mutable 'intermediates' nothing is sown.
    assert set(eval_state) == {"batch_stats"}


def test_bfloat16_compute_keeps_float32_params_and_float32_logits():
    x = _x((2, 8, 8, 3))
    m16 = create_model("resnet20", dtype=jnp.bfloat16, **TINY_CIFAR)
    m32 = create_model("resnet20", **TINY_CIFAR)
    shapes = jax.eval_shape(lambda: m16.init(jax.random.key(0), x))
    assert {a.dtype for a in jax.tree.leaves(shapes)} == {jnp.dtype("float32")}
    v = numpy_variables(m32, x)

    @fast_jit
    def both(v, x):
        return (
            m16.apply(v, x, train=True, mutable=["batch_stats", "intermediates"]),
            m32.apply(v, x, train=True, mutable=["batch_stats"]),
        )

    (logits16, state16), (logits32, _) = both(v, x)
    assert logits16.dtype == jnp.float32
    assert state16["intermediates"]["stage1_unit1"]["response"][0].dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree.leaves(state16["batch_stats"])} == {jnp.dtype("float32")}
    np.testing.assert_allclose(logits16, logits32, rtol=0.1, atol=0.1)


@pytest.mark.parametrize(
    "name, n_responses",
    [
        ("resnet50", 1),
        ("resnet50_v1", 1),
        ("preact_resnet50", 1),
        ("resnet50d", 1),
        ("preact_resnet18", 2),
    ],
)
def test_tiny_imagenet_variants_run_and_sow(name, n_responses):
    overrides = dict(TINY_IMAGENET)
    m = create_model(name, num_classes=5, **overrides)
    x = _x((2, 32, 32, 3))
    v = numpy_variables(m, x)
    logits, state = run(m, v, x, train=True, mutable=["batch_stats", "intermediates"])
    assert logits.shape == (2, 5) and bool(jnp.isfinite(logits).all())
    assert len(state["intermediates"]["stage2_unit1"]["response"]) == n_responses
    # 32x32 input: stem /4 -> 8x8, stage2 /2 -> 4x4.
    assert state["intermediates"]["stage2_unit1"]["response"][0].shape[1:3] == (4, 4)


def test_grouped_conv_runs_with_the_group_count():
    m = create_model(
        "resnext50_32x4d",
        num_classes=3,
        stage_sizes=(1, 1, 1, 1),
        widths=(16, 32, 32, 64),
        groups=4,
        width_per_group=16,
    )
    x = _x((2, 32, 32, 3))
    v = numpy_variables(m, x)
    # Inner width int(16 * 16 / 64) * 4 = 16, each group sees 16 / 4 = 4 input channels.
    assert v["params"]["stage1_unit1"]["conv2"]["kernel"].shape == (3, 3, 4, 16)
    assert run(m, v, x).shape == (2, 3)


def test_he_fan_out_init_is_an_untruncated_normal():
    w = he_fan_out(jax.random.key(0), (3, 3, 64, 128))
    std = math.sqrt(2 / (3 * 3 * 128))
    assert float(w.std()) == pytest.approx(std, rel=0.02)
    assert float(jnp.abs(w).max()) > 3.5 * std  # a 2-sigma truncated normal never gets here


def test_zero_init_residual_zeroes_the_last_bn_scale_or_last_preact_conv():
    x = _x((2, 8, 8, 16))
    bn = lambda **kw: nn.BatchNorm(use_running_average=True, **kw)
    conv = lambda *a, **kw: nn.Conv(
        *a, use_bias=False, kernel_init=kw.pop("kernel_init", he_fan_out), **kw
    )
    unit = BasicUnit(features=16, inner=16, strides=1, conv=conv, norm=bn, zero_init_last=True)
    v = init(unit, x)
    p = v["params"]
    assert float(jnp.abs(p["bn2"]["scale"]).max()) == 0 and float(p["bn1"]["scale"].min()) == 1
    # At init the unit is then relu(identity).
    np.testing.assert_allclose(run(unit, v, x), jax.nn.relu(x))
    unit = PreActBottleneckUnit(
        features=16, inner=4, strides=1, conv=conv, norm=bn, zero_init_last=True
    )
    p = init(unit, x)["params"]
    assert float(jnp.abs(p["conv3"]["kernel"]).max()) == 0
    assert float(jnp.abs(p["conv1"]["kernel"]).max()) > 0


def test_option_a_shortcut_subsamples_and_zero_pads_channels():
    x = _x((1, 5, 5, 3))
    y = Shortcut("A", 8, 2, nn.Conv, None).apply({}, x)
    assert y.shape == (1, 3, 3, 8)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0)


def test_resnet_d_shortcut_average_pools_then_projects():
    x = _x((1, 5, 5, 2))
    sc = Shortcut("D", 3, 2, lambda *a, **k: nn.Conv(*a, use_bias=False, **k), None)
    v = init(sc, x)
    k = v["params"]["proj_conv"]["kernel"]
    assert k.shape == (1, 1, 2, 3)
    y = run(sc, v, x)
    # Ceil mode with padding excluded: 5x5 -> 3x3; the last row/column averages what exists.
    xp = np.asarray(x[0])
    pooled = np.stack(
        [
            [xp[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(0, 1)) for j in range(3)]
            for i in range(3)
        ]
    )
    np.testing.assert_allclose(y[0], pooled @ np.asarray(k[0, 0]), rtol=1e-5, atol=1e-6)
