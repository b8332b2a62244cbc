"""Model zoo: parameter counts, multiply-adds, shapes, shortcut options and registry errors.

Counts and shapes come from `jax.eval_shape` (nothing compiled); a few tiny models really run.
"""

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import available_models, create_model, get_published, get_spec
from resnet_jax.tools import summary

SLOW = {"resnet1202", "resnet1001", "preact_resnet1001"}
FAST = [n for n in available_models() if n not in SLOW]


@functools.cache
def stats(name, **overrides):
    """Shapes, params and per-image MACs of a registered model, at batch 2 (traced once)."""
    return summary.analyze(create_model(name, **overrides), batch_size=2)


def numpy_variables(model, x, seed=0):
    """Variables with He-normal kernels drawn by numpy: apply-tests skip init's RNG compile."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":
            return rng.normal(
                0, math.sqrt(2 / (math.prod(s.shape[:-2]) * s.shape[-1])), s.shape
            ).astype(s.dtype)
        return (np.ones if leaf in ("scale", "var") else np.zeros)(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def fast_jit(fn):
    """jit with XLA's backend optimisations off: tiny test nets compile in half the time."""

    def call(*args):
        return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)

    return call


def units(params):
    return {k: v for k, v in params.items() if k.startswith("stage")}


TORCHVISION = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
]


@pytest.mark.parametrize("name", TORCHVISION)
def test_param_count_equals_torchvision_exactly(name):
    assert stats(name).params == get_published(name).params


@pytest.mark.parametrize(
    "name, count",
    [
        ("resnet50d", 25_576_264),  # timm: deep stem adds 19,232 to resnet50, the D shortcut none
        ("resnet34_c", 21_797_672 + 919_168),  # + 13 extra 1x1 conv/BN projections (hand-summed)
    ],
)
def test_param_count_of_variants_equals_reference(name, count):
    assert stats(name).params == count


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"])
def test_cifar_param_count_matches_table6_at_its_rounding(name):
    printed = get_published(name).params_m
    decimals = len(printed.split(".")[1])
    assert f"{stats(name).params / 1e6:.{decimals}f}" == printed


@pytest.mark.slow
def test_resnet1202_param_count_matches_table6():
    assert f"{summary.model_stats('resnet1202').params / 1e6:.1f}" == "19.4"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_thousand_layer_nets_give_logits(name):
    st = summary.model_stats(name)
    assert st.logits.shape == (1, 10) and get_spec(name).depth == int(re.sub(r"\D", "", name))


def test_wide_resnets_match_zagoruyko_counts():
    # WRN paper: WRN-16-8 11.0M, WRN-28-10 36.5M parameters.
    assert round(stats("wrn16_8").params / 1e6, 1) == 11.0
    assert round(stats("wrn28_10").params / 1e6, 1) == 36.5


def test_option_a_shortcut_adds_no_parameters():
    assert stats("plain34").params == stats("resnet34_a").params == 21_623_848
    assert stats("plain18").params == stats("resnet18_a").params
    assert stats("plain20").params == stats("resnet20").params
    for name in ("resnet34_a", "resnet20"):
        assert not any("shortcut" in u for u in units(stats(name).variables["params"]).values())


def test_option_b_projects_only_where_the_shape_changes():
    with_proj = [
        k for k, u in units(stats("resnet34").variables["params"]).items() if "shortcut" in u
    ]
    assert with_proj == ["stage2_unit1", "stage3_unit1", "stage4_unit1"]
    # Bottlenecks widen 64 -> 256 in the first unit, so stage 1 projects too.
    with_proj = [
        k for k, u in units(stats("resnet50").variables["params"]).items() if "shortcut" in u
    ]
    assert with_proj == ["stage1_unit1", "stage2_unit1", "stage3_unit1", "stage4_unit1"]


def test_option_c_adds_a_projection_to_every_unit():
    us = units(stats("resnet34_c").variables["params"])
    assert len(us) == 16
    for u in us.values():
        assert set(u["shortcut"]) == {"proj_conv", "proj_bn"}
        assert u["shortcut"]["proj_conv"]["kernel"].shape[:2] == (1, 1)


@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"])
def test_macs_within_1_percent_of_torchvision(name):
    assert stats(name).macs == pytest.approx(get_published(name).macs, rel=0.01)


@pytest.mark.parametrize(
    "name",
    [
        "resnet50_v1",
        "resnet101_v1",
        "resnet152_v1",
        "resnet18_a",
        "resnet34_a",
        "plain18",
        "plain34",
    ],
)
def test_paper_nets_macs_within_3_percent_of_table1(name):
    pub = get_published(name)
    assert pub.macs_source == "He2015 Table 1"
    assert stats(name).macs == pytest.approx(pub.macs, rel=0.03)


def test_v1_puts_the_stride_on_the_first_1x1_and_v15_on_the_3x3():
    assert stats("resnet50_v1").params == stats("resnet50").params
    # v1.5 runs each downsampling unit's first 1x1 (C_in -> inner) on the full-size map, v1 on
    # the subsampled one; the 3x3 outputs the small map in both: 3 * (H/2)^2 * C_in * inner more.
    extra = sum(
        3 * hw * hw * cin * inner
        for hw, cin, inner in ((28, 256, 128), (14, 512, 256), (7, 1024, 512))
    )
    assert stats("resnet50").macs - stats("resnet50_v1").macs == extra == 231_211_008


@pytest.mark.parametrize("name", FAST)
def test_every_model_gives_batch_by_classes_float32_logits(name):
    st = stats(name)
    assert st.logits.shape == (2, get_spec(name).num_classes)
    assert st.logits.dtype == jnp.float32
    assert {p.dtype for p in jax.tree.leaves(st.variables["params"])} == {jnp.dtype("float32")}
    assert set(st.variables) == {"params", "batch_stats"}


@pytest.mark.parametrize(
    "name", [n for n in FAST if re.fullmatch(r"(preact_)?(resnet|plain)\d+", n)]
)
def test_name_states_the_depth(name):
    assert get_spec(name).depth == int(re.sub(r"\D", "", name))


def test_plain_nets_contain_no_addition():
    # BN contributes the same adds to both nets; a residual unit adds exactly one more.
    def adds(name):
        m = create_model(name)
        x = jnp.zeros((1, 32, 32, 3))
        v = jax.eval_shape(lambda: m.init(jax.random.key(0), x))
        jaxpr = jax.make_jaxpr(lambda v, x: m.apply(v, x))(v, x)
        return sum(e.primitive.name == "add" for e in jaxpr.jaxpr.eqns)

    assert adds("resnet20") - adds("plain20") == 9
    assert adds("resnet34_a") - adds("plain34") == 16


def test_plain_unit_output_ignores_its_input_when_its_last_bn_is_zero():
    # With every unit's last BN scale and bias at 0, a plain net forgets its input; a ResNet
    # still carries it along the shortcuts.
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    models, variables = {}, {}
    for name in ("plain20", "resnet20"):
        models[name] = create_model(name, stage_sizes=(1, 1, 1))
        v = variables[name] = numpy_variables(models[name], x)
        for u in units(v["params"]).values():
            u["bn2"] = {
                "scale": jnp.zeros_like(u["bn2"]["scale"]),
                "bias": jnp.zeros_like(u["bn2"]["bias"]),
            }
    outs = fast_jit(lambda vs, x: {k: models[k].apply(vs[k], x) for k in models})(variables, x)
    np.testing.assert_allclose(outs["plain20"][0], outs["plain20"][1], atol=1e-6)
    assert np.abs(outs["resnet20"][0] - outs["resnet20"][1]).max() > 1e-3


def test_unknown_name_error_lists_closest_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet_50'.*resnet50"):
        create_model("resnet_50")
    with pytest.raises(ValueError, match="wrn28_10"):
        get_spec("wrn_28_10")


def test_unknown_override_error_lists_valid_keys():
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['shortcutt'\].*shortcut, "):
        create_model("resnet18", shortcutt="C")


def test_overrides_replace_spec_fields():
    assert stats("resnet34", shortcut="C").params == stats("resnet34_c").params
    assert create_model("resnet18", num_classes=7).spec.num_classes == 7
    assert create_model("resnet18", num_classes=7).spec.name == "resnet18"


def test_invalid_specs_are_rejected():
    with pytest.raises(ValueError, match="residual path"):
        create_model("plain20", zero_init_residual=True)
    with pytest.raises(ValueError, match="takes no groups / width_per_group"):
        create_model("resnet18", groups=32)
    with pytest.raises(ValueError, match="shortcut must be one of"):
        create_model("resnet18", shortcut="E")
    with pytest.raises(ValueError, match="bn_group_size"):
        create_model("resnet18", bn_group_size=0)


def test_spec_contract_fields():
    s = get_spec("resnet50")
    assert (s.family, s.input_size, s.num_classes) == ("imagenet", 224, 1000)
    s = get_spec("resnet56")
    assert (s.family, s.input_size, s.num_classes, s.shortcut) == ("cifar", 32, 10, "A")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.num_classes = 100


@pytest.mark.parametrize("name, smallest", [("resnet20", 4), ("resnet50", 32), ("resnet50d", 32)])
def test_min_input_size_is_the_nets_downsampling_and_gives_logits(name, smallest):
    model = create_model(name)
    assert model.spec.min_input_size() == smallest
    x = jax.ShapeDtypeStruct((1, smallest, smallest, 3), jnp.float32)
    variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
    logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, x)
    assert logits.shape == (1, model.spec.num_classes)


def test_add_relu_equals_relu_of_the_sum_bit_for_bit():
    from resnet_jax.models.blocks import add_relu

    special = jnp.array([0.0, -0.0, 1.0, -1.0, jnp.nan, jnp.inf, -jnp.inf, 1e-38, -1e-38, 2.5])
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    a = jnp.concatenate([jax.random.normal(k1, (990,)), special, -special, special])
    b = jnp.concatenate([jax.random.normal(k2, (990,)), -special, special, jnp.zeros(10)])
    # ties (a == -b), zeros of either sign, NaN and infinities included
    g = jax.random.normal(k3, a.shape)
    ours, vjp_ours = jax.vjp(add_relu, a, b)
    ref, vjp_ref = jax.vjp(lambda x, y: jax.nn.relu(x + y), a, b)
    np.testing.assert_array_equal(ours, ref)  # NaN stays NaN
    # Where the sum is NaN the loss is NaN, and every gradient with it; elsewhere bit for bit.
    real = ~jnp.isnan(a + b)
    for d_ours, d_ref in zip(vjp_ours(g), vjp_ref(g), strict=True):
        np.testing.assert_array_equal(d_ours[real], d_ref[real])


def test_a_residual_units_output_is_computed_once_not_in_every_later_unit():
    # Under XLA's own CPU fusions relu(branch + shortcut) was copied into each consumer, so each
    # unit's output was recomputed from every convolution output of the units before it in its
    # stage: the train step's fusions read up to one convolution output per unit of the stage.
    model = create_model("resnet32", num_classes=10)  # 5 units per stage
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def loss(params):
        out, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return out.sum()

    compiled = (
        jax.jit(jax.grad(loss))
        .lower(variables["params"])
        .compile({"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_REDUCE"})
    )
    text = compiled.as_text()
    fusions = re.findall(r"= \S+ fusion\((.*?)\), kind=kLoop", text)
    assert fusions, text[:2000]
    # The current unit's convolutions (and, in the backward pass, their gradients'): 3 at most;
    # the chain of recomputed units read 7 here.
    assert max(f.count("%conv") for f in fusions) <= 3
