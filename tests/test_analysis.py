"""resnet_jax.tools.analysis: layer responses (He2015 Fig. 7) and per-layer gradient norms."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import create_model
from resnet_jax.tools import analysis


def _perturbed_tiny_resnet():
    """A 3-unit CIFAR ResNet whose BN has non-trivial running statistics, scales and biases, so
    that the hand computation below exercises every term of the BN formula."""
    model = create_model("resnet20", stage_sizes=(1, 1, 1))
    variables = analysis.init_variables(model, 32, seed=0)
    rng = np.random.default_rng(1)  # numpy: jax.random would compile once per shape

    def perturb(tree, low, high):
        return jax.tree.map(lambda a: rng.uniform(low, high, a.shape).astype(np.float32), tree)

    params = dict(variables["params"])
    stats = dict(variables["batch_stats"])
    for name in ("stem", "stage1_unit1"):
        params[name] = {
            k: (
                {"scale": perturb(v["scale"], 0.5, 2.0), "bias": perturb(v["bias"], -1, 1)}
                if k.startswith("bn")
                else v
            )
            for k, v in params[name].items()
        }
        stats[name] = {
            k: {"mean": perturb(v["mean"], -0.5, 0.5), "var": perturb(v["var"], 0.5, 3.0)}
            for k, v in stats[name].items()
        }
    return model, {"params": params, "batch_stats": stats}


def _conv3x3(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _bn(x, p, s, eps=1e-5):
    return (x - s["mean"]) / np.sqrt(s["var"] + eps) * p["scale"] + p["bias"]


@pytest.mark.slow
def test_response_std_equals_hand_computed_first_layer():
    model, v = _perturbed_tiny_resnet()
    images = jnp.asarray(np.random.default_rng(2).normal(size=(4, 32, 32, 3)), jnp.float32)
    names, stds = analysis.response_std(model, v, images)
    # 3 basic units, two 3x3 convs each, in network order.
    assert names == [f"stage{s}_unit1/3x3_{i}" for s in (1, 2, 3) for i in (1, 2)]
    p, s = v["params"], v["batch_stats"]
    h = jax.nn.relu(
        _bn(_conv3x3(images, p["stem"]["conv1"]["kernel"]), p["stem"]["bn1"], s["stem"]["bn1"])
    )
    r1 = _bn(
        _conv3x3(h, p["stage1_unit1"]["conv1"]["kernel"]),
        p["stage1_unit1"]["bn1"],
        s["stage1_unit1"]["bn1"],
    )
    r2 = _bn(
        _conv3x3(jax.nn.relu(r1), p["stage1_unit1"]["conv2"]["kernel"]),
        p["stage1_unit1"]["bn2"],
        s["stage1_unit1"]["bn2"],
    )
    np.testing.assert_allclose(
        stds[:2], [np.std(np.asarray(r1)), np.std(np.asarray(r2))], rtol=1e-4
    )
    assert stds[0] > 0.1  # not a degenerate all-zero layer


def test_layer_order_is_network_order_with_numeric_units():
    paths = [
        ("head",),
        ("stage1_unit10", "conv1"),
        ("stem", "conv1"),
        ("stage2_unit1", "conv2"),
        ("stage1_unit2", "conv2"),
        ("stage1_unit2", "conv1"),
        ("final_bn",),
    ]
    ordered = sorted(paths, key=analysis.layer_order)
    assert ordered == [
        ("stem", "conv1"),
        ("stage1_unit2", "conv1"),
        ("stage1_unit2", "conv2"),
        ("stage1_unit10", "conv1"),
        ("stage2_unit1", "conv2"),
        ("final_bn",),
        ("head",),
    ]


def _first_last_ratio(name, seed):
    model = create_model(name)
    v = analysis.init_variables(model, 32, seed)
    images, labels = analysis.random_batch(8, 32, 10, seed)
    names, norms = analysis.grad_norms(model, v, images, labels)
    assert names[0] == "stem/conv1" and names[-1] == "head"
    assert not any("shortcut" in n for n in names)
    first_unit, last_unit = norms[1:3].mean(), norms[-3:-1].mean()
    return first_unit, first_unit / last_unit


@pytest.mark.slow
def test_plain20_gradients_grow_toward_the_input_more_than_resnet20_at_init():
    # Measured (batch 8, seeds 0-2): plain-20 first-unit / last-unit gradient norm 7.9-9.0,
    # ResNet-20 2.2-2.5; first-unit norms 2.5-2.7 vs 0.82-0.91.
    plain_first, plain_ratio = _first_last_ratio("plain20", seed=0)
    res_first, res_ratio = _first_last_ratio("resnet20", seed=0)
    assert plain_ratio > 2 * res_ratio
    assert plain_first > 2 * res_first


@pytest.mark.slow
def test_plain56_gradients_explode_toward_the_input_at_init_resnet56_do_not():
    # With BN the plain net's gradients do not vanish: they grow thousands of times from the last
    # unit to the first (measured 2.3e3-6.8e3 over seeds 0-2), against 8-10x in ResNet-56.
    plain_first, plain_ratio = _first_last_ratio("plain56", seed=1)
    res_first, res_ratio = _first_last_ratio("resnet56", seed=1)
    assert plain_ratio > 300 and res_ratio < 30
    assert plain_first > 100 * res_first


def test_cli_writes_json_and_png(tmp_path):
    out_json, out_png = tmp_path / "g.json", tmp_path / "g.png"
    rc = analysis.main(
        [
            "responses",
            "--model",
            "resnet20",
            "--batch_size",
            "4",
            "--json",
            str(out_json),
            "--out",
            str(out_png),
        ]
    )
    assert rc == 0
    (profile,) = json.loads(out_json.read_text())
    assert profile["model"] == "resnet20" and profile["source"] == "initialisation"
    assert len(profile["values"]) == 18  # 9 basic units x two 3x3 convs
    assert out_png.stat().st_size > 10_000
