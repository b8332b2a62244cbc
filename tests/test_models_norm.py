"""bn_group_size: BatchNorm statistics per group of N consecutive examples."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import GroupedBatchNorm, create_model
from tests.test_models import fast_jit, numpy_variables

EPS = 1e-5


def _x(shape=(8, 4, 4, 3), seed=0):
    return 2.0 * jax.random.normal(jax.random.key(seed), shape) + 1.0


def _bn(module, x, train):
    """(shapes of module.init, output, updated batch_stats) with scale 1..C, bias in [-1, 1]."""
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), x, use_running_average=True))
    c = x.shape[-1]
    # Non-trivial scale and bias so the affine part is compared too.
    v = {
        "params": {"scale": jnp.arange(1.0, c + 1), "bias": jnp.linspace(-1, 1, c)},
        "batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)},
    }
    y, upd = fast_jit(
        lambda v, x: module.apply(v, x, use_running_average=not train, mutable=["batch_stats"])
    )(v, x)
    return shapes, y, upd["batch_stats"]


def test_group_size_equal_to_batch_matches_flax_batchnorm():
    x = _x()
    ref = nn.BatchNorm(momentum=0.9, epsilon=EPS)
    grp = GroupedBatchNorm(group_size=8, momentum=0.9, epsilon=EPS)
    for train in (True, False):
        v_ref, y_ref, s_ref = _bn(ref, x, train)
        v_grp, y_grp, s_grp = _bn(grp, x, train)
        assert jax.tree.map(lambda a: (a.shape, a.dtype), v_ref) == jax.tree.map(
            lambda a: (a.shape, a.dtype), v_grp
        )
        np.testing.assert_allclose(y_grp, y_ref, rtol=1e-5, atol=1e-5)
        for k in ("mean", "var"):
            np.testing.assert_allclose(s_grp[k], s_ref[k], rtol=1e-5, atol=1e-6)


def test_smaller_groups_normalise_each_group_with_its_own_statistics():
    x = _x()
    _, y, stats = _bn(GroupedBatchNorm(group_size=2, momentum=0.9, epsilon=EPS), x, True)
    xn = np.asarray(x).reshape(4, 2, 4, 4, 3)
    mean = xn.mean(axis=(1, 2, 3), keepdims=True)
    var = xn.var(axis=(1, 2, 3), keepdims=True)
    scale, bias = np.arange(1.0, 4), np.linspace(-1, 1, 3)
    expected = ((xn - mean) / np.sqrt(var + EPS) * scale + bias).reshape(x.shape)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4)
    _, y_full, _ = _bn(nn.BatchNorm(momentum=0.9, epsilon=EPS), x, True)
    assert np.abs(np.asarray(y) - np.asarray(y_full)).max() > 0.05
    # Running statistics move towards the mean over groups of the group statistics.
    np.testing.assert_allclose(
        stats["mean"], 0.1 * mean.mean(axis=(0, 1, 2, 3)), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(stats["var"], 0.9 + 0.1 * var.mean(axis=(0, 1, 2, 3)), rtol=1e-4)


def test_batch_not_divisible_by_group_size_raises():
    with pytest.raises(
        ValueError, match=r"bn_group_size=4 must divide the batch size, got a batch of 6"
    ):
        _bn(GroupedBatchNorm(group_size=4), _x((6, 2, 2, 3)), True)


def test_bfloat16_input_gives_bfloat16_output_and_float32_statistics():
    x = _x().astype(jnp.bfloat16)
    v, y, stats = _bn(GroupedBatchNorm(group_size=4, dtype=jnp.bfloat16), x, True)
    assert y.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree.leaves((v, stats))} == {jnp.dtype("float32")}


def test_model_bn_group_size_changes_training_outputs_only_when_groups_split_the_batch():
    x = _x((4, 8, 8, 3))
    models = {
        str(g): create_model("resnet20", bn_group_size=g, stage_sizes=(1, 1, 1))
        for g in (None, 4, 2)
    }
    v = numpy_variables(models["None"], x)
    assert jax.tree.structure(
        jax.eval_shape(lambda: models["2"].init(jax.random.key(0), x))
    ) == jax.tree.structure(v)

    @fast_jit
    def train_logits(v, x):
        return {g: m.apply(v, x, train=True, mutable=["batch_stats"])[0] for g, m in models.items()}

    out = train_logits(v, x)
    np.testing.assert_allclose(out["4"], out["None"], rtol=1e-4, atol=1e-4)
    assert np.abs(np.asarray(out["2"]) - np.asarray(out["None"])).max() > 1e-3
