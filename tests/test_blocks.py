"""Residual units chosen by name: the registry, the built-in four, and a unit added from outside
(squeeze-and-excitation, one class and one registration) in every layout of net."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax import plugins
from resnet_jax.engine import faults, validation
from resnet_jax.models import (
    BasicUnit,
    BottleneckUnit,
    PreActBasicUnit,
    PreActBottleneckUnit,
    Unit,
    available_blocks,
    create_model,
    get_block,
    get_spec,
    register_block,
)
from tests.test_models import fast_jit, numpy_variables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUILT_IN = ["basic", "bottleneck", "preact_basic", "preact_bottleneck"]


# The unit of the extension guide, as the text of a plugin file; the tests load it under names
# of their own, in this module and from files.
PLUGIN = """
import flax.linen as nn

from resnet_jax.models import BasicUnit, register_block


@register_block("plugin_se_basic")
class SEBasic(BasicUnit):
    def branch(self, x):
        y = super().branch(x)
        s = y.mean(axis=(1, 2), keepdims=True)
        s = nn.relu(nn.Dense(max(y.shape[-1] // 4, 1), name="se_reduce")(s))
        return y * nn.sigmoid(nn.Dense(y.shape[-1], name="se_expand")(s))
"""


def _se_unit(name):
    scope = {}
    exec(PLUGIN.replace("plugin_se_basic", name), scope)
    return scope["SEBasic"]


_se_unit("test_se_basic")


def param_count(model, size):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return sum(x.size for x in jax.tree.leaves(shapes["params"]))


def se_params(units_per_width):
    """Two dense layers with biases per unit of output width c: c -> c/4 -> c."""
    return sum(n * (2 * c * (c // 4) + c // 4 + c) for c, n in units_per_width.items())


def test_the_built_in_blocks_are_registered_first_with_what_the_net_reads():
    assert available_blocks()[:4] == BUILT_IN
    read = {
        b: (u.expansion, u.weight_layers, u.preact, u.grouped)
        for b in BUILT_IN
        for u in [get_block(b)]
    }
    assert read == {
        "basic": (1, 2, False, False),
        "bottleneck": (4, 3, False, True),
        "preact_basic": (1, 2, True, False),
        "preact_bottleneck": (4, 3, True, True),
    }


@pytest.mark.parametrize(
    "name, unit, depth, widths",
    [
        ("resnet20", BasicUnit, 20, [(16, 16), (32, 32), (64, 64)]),
        ("resnet50", BottleneckUnit, 50, [(64, 256), (128, 512), (256, 1024), (512, 2048)]),
        ("preact_resnet110", PreActBasicUnit, 110, [(16, 16), (32, 32), (64, 64)]),
        ("preact_resnet164", PreActBottleneckUnit, 164, [(16, 64), (32, 128), (64, 256)]),
        ("wrn16_8", PreActBasicUnit, 14, [(128, 128), (256, 256), (512, 512)]),
        (
            "wide_resnet50_2",
            BottleneckUnit,
            50,
            [(128, 256), (256, 512), (512, 1024), (1024, 2048)],
        ),
        (
            "resnext50_32x4d",
            BottleneckUnit,
            50,
            [(128, 256), (256, 512), (512, 1024), (1024, 2048)],
        ),
    ],
)
def test_depth_and_widths_of_the_built_in_units(name, unit, depth, widths):
    spec = get_spec(name)
    assert spec.unit is unit and spec.depth == depth
    assert [spec.unit_widths(i) for i in range(len(spec.widths))] == widths


def test_preact_chooses_the_pre_activation_form_and_a_pre_activation_block_implies_it():
    by_flag = create_model("resnet20", preact=True)
    by_name = create_model("resnet20", block="preact_basic")
    assert by_flag.spec.unit is by_name.spec.unit is PreActBasicUnit
    assert create_model("resnet20", block="preact_basic", preact=False).spec.unit is PreActBasicUnit
    x = jnp.zeros((1, 32, 32, 3))
    trees = [jax.eval_shape(m.init, jax.random.key(0), x) for m in (by_flag, by_name)]
    assert jax.tree.map(jnp.shape, trees[0]) == jax.tree.map(jnp.shape, trees[1])
    assert "final_bn" in trees[0]["params"] and "bn1" not in trees[0]["params"]["stem"]


def test_an_unknown_block_is_refused_with_the_registered_names():
    with pytest.raises(ValueError) as e:
        create_model("resnet20", block="nope")
    assert str(e.value).startswith(
        "resnet20: unknown block 'nope'; registered blocks: "
        "basic, bottleneck, preact_basic, preact_bottleneck"
    )
    with pytest.raises(ValueError, match=r"unknown block 'botleneck' \(did you mean bottleneck"):
        create_model("resnet50", block="botleneck")
    with pytest.raises(ValueError, match=r"form of block 'test_se_basic': unknown block 'preact_t"):
        create_model("resnet20", block="test_se_basic", preact=True)
    with pytest.raises(ValueError, match=r"block 'basic' takes no groups.*: bottleneck, preact_b"):
        create_model("resnet18", groups=32)


def test_another_class_under_a_taken_name_is_refused_the_same_class_is_not():
    class Other(BasicUnit):
        pass

    with pytest.raises(ValueError, match=r"block name 'basic' is taken by .*units\.BasicUnit"):
        register_block("basic")(Other)
    assert register_block("basic")(BasicUnit) is BasicUnit
    with pytest.raises(TypeError, match="not a subclass of"):
        register_block("not_a_unit")(nn.Dense)
    with pytest.raises(TypeError, match=r"does not set expansion, weight_layers, preact, grouped"):
        register_block("not_a_unit")(Unit)
    assert get_block("basic") is BasicUnit and "not_a_unit" not in available_blocks()


# (net, overrides, its count with basic units, output widths -> units of the net)
LAYOUTS = [
    ("resnet20", {}, 269_722, {16: 3, 32: 3, 64: 3}),  # CIFAR, option A
    ("resnet18", {}, 11_689_512, {64: 2, 128: 2, 256: 2, 512: 2}),  # ImageNet, option B
    # Option C: a 1x1 conv + BN projection in each of the 9 units, 14,240 parameters by hand.
    ("resnet20", {"shortcut": "C"}, 269_722 + 14_240, {16: 3, 32: 3, 64: 3}),
    ("resnet18", {"shortcut": "D"}, 11_689_512, {64: 2, 128: 2, 256: 2, 512: 2}),  # pool + B's
    ("resnet20", {"plain": True}, 269_722, {16: 3, 32: 3, 64: 3}),
]


@pytest.mark.parametrize("name, overrides, base, units", LAYOUTS)
def test_a_unit_registered_from_outside_works_in_every_layout(name, overrides, base, units):
    size = get_spec(name).min_input_size()
    model = create_model(name, block="test_se_basic", **overrides)
    assert param_count(model, size) == base + se_params(units)
    # A shallow copy of the net really runs, sowing its responses as the built-in units do.
    tiny = create_model(name, block="test_se_basic", stage_sizes=(1,) * len(units), **overrides)
    x = jax.random.normal(jax.random.key(1), (2, size, size, 3))
    logits, state = fast_jit(
        lambda v, x: tiny.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])
    )(numpy_variables(tiny, x), x)
    assert logits.shape == (2, tiny.spec.num_classes) and bool(jnp.isfinite(logits).all())
    responses = state["intermediates"]["stage1_unit1"]["response"]
    assert [r.shape[-1] for r in responses] == [min(units)] * 2


def test_a_closed_se_gate_halves_the_branch_exactly_as_a_halved_last_bn():
    """With zero dense weights the gate is sigmoid(0) = 1/2 everywhere: the SE net is then the
    basic net with the last BN scale of each unit halved (its biases are zero), which pins where
    `branch` sits: after that BN, before the addition."""
    se = create_model("resnet20", block="test_se_basic", stage_sizes=(1, 1, 1))
    basic = create_model("resnet20", stage_sizes=(1, 1, 1))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    v = numpy_variables(se, x)

    def without_se(last_bn_scale):
        out = jax.tree.map(lambda a: a, v)  # new containers, the same arrays
        for unit, params in out["params"].items():
            if unit.startswith("stage"):
                del params["se_reduce"], params["se_expand"]
                params["bn2"]["scale"] = params["bn2"]["scale"] * last_bn_scale
        return out

    for layer in ("se_reduce", "se_expand"):
        for unit in ("stage1_unit1", "stage2_unit1", "stage3_unit1"):
            v["params"][unit][layer] = jax.tree.map(jnp.zeros_like, v["params"][unit][layer])
    got = fast_jit(lambda v, x: se.apply(v, x))(v, x)
    run_basic = fast_jit(lambda v, x: basic.apply(v, x))
    np.testing.assert_allclose(got, run_basic(without_se(0.5), x), rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(got - run_basic(without_se(1.0), x)).max()) > 1e-3


def test_a_plugin_file_is_imported_once_and_a_missing_one_named(tmp_path, monkeypatch):
    (tmp_path / "units.py").write_text("import itertools\nCOUNT = next(itertools.count())\n")
    monkeypatch.chdir(tmp_path)
    first, by_name = plugins.load(["units.py", "json"])
    assert by_name is json and plugins.load([str(tmp_path / "units.py")])[0] is first
    assert plugins.absolute(("units.py", "json")) == (str(tmp_path / "units.py"), "json")
    with pytest.raises(plugins.PluginError, match=r"^plugin 'gone.py': no such file \("):
        plugins.load(["gone.py"])
    (tmp_path / "broken.py").write_text("raise RuntimeError('no\\nway')\n")
    said = r"^plugin 'broken.py' failed to import: RuntimeError: no way$"
    with pytest.raises(plugins.PluginError, match=said):
        plugins.load(["broken.py"])
    with pytest.raises(plugins.PluginError, match="no module of that name"):
        plugins.load(["no_such_module_here"])


def test_a_config_imports_its_plugins_before_it_builds_or_checks_the_model(tmp_path, monkeypatch):
    (tmp_path / "cfg_units.py").write_text(PLUGIN.replace("plugin_se_basic", "config_se_basic"))
    monkeypatch.chdir(tmp_path)
    c = config_lib.default_config()
    c.plugins = ("cfg_units.py",)
    c.model_overrides = {"block": "config_se_basic"}
    validation.check_config(c)
    assert config_lib.build_model(c).spec.unit is get_block("config_se_basic")
    c.plugins = ("missing.py",)
    with pytest.raises(plugins.PluginError) as e:
        validation.check_config(c)
    missing = f"plugin 'missing.py': no such file ({tmp_path / 'missing.py'})"
    assert faults.classify(e.value) == (faults.EXIT_CONFIG, missing)


@pytest.mark.slow
def test_a_unit_from_a_plugin_file_trains_and_evaluates_through_the_command_line(tmp_path):
    (tmp_path / "my_units.py").write_text(textwrap.dedent(PLUGIN))
    workdir = tmp_path / "run"
    args = [
        "--config=configs/default.py",
        f"--workdir={workdir}",
        f"--config.plugins=('{tmp_path / 'my_units.py'}',)",
        '--config.model_overrides={"block": "plugin_se_basic", "stage_sizes": [1, 1, 1]}',
        "--config.dataset=synthetic",
        "--config.synthetic_batches=2",
        "--config.image_size=8",
        "--config.num_classes=10",
        "--config.batch_size=8",
        "--config.num_train_steps=3",
        "--config.warmup_steps=0",
        "--config.log_every_steps=1",
    ]
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    for mode in ("train", "eval"):
        p = subprocess.run(
            [sys.executable, "-m", "resnet_jax.main", f"--mode={mode}", *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert p.returncode == 0, p.stderr
    with open(workdir / "config.json") as f:
        assert json.load(f)["plugins"] == [str(tmp_path / "my_units.py")]
    with open(workdir / "metrics.jsonl") as f:
        evals = [r for r in map(json.loads, f) if r["split"] == "eval"]
    # The run's own final evaluation, then --mode=eval's of the same checkpoint: the same loss.
    assert [r["step"] for r in evals][-2:] == [3, 3]
    assert evals[-1]["loss"] == evals[-2]["loss"]
