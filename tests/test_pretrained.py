"""resnet_jax.weights (`resnet_jax.pretrained` re-exports it): PyTorch state dicts (torchvision /
timm naming) <-> our variables.

The reference here is written from torchvision's published architecture (torchvision/models/
resnet.py: BasicBlock, Bottleneck with `width = int(planes * base_width / 64) * groups`, the
stride on the 3x3, a 1x1/s conv + BN downsample) and timm's ResNet-D (deep stem of 32, 32, 64
channels; downsample = 2x2 ceil-mode average pool without padding in the mean, then 1x1 conv +
BN), in PyTorch's NCHW / OIHW layouts with jax.lax, without the project's model code.
"""

import functools
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax import pretrained
from resnet_jax.engine import faults
from resnet_jax.models import create_model
from tests.test_models import fast_jit

# name: (block, layers, groups, width_per_group, deep stem + avg-down (ResNet-D), trainable params)
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), 1, 64, False, 11_689_512),
    "resnet34": ("basic", (3, 4, 6, 3), 1, 64, False, 21_797_672),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 1, 64, False, 25_557_032),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 1, 64, False, 44_549_160),
    "resnet152": ("bottleneck", (3, 8, 36, 3), 1, 64, False, 60_192_808),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 1, 128, False, 68_883_240),
    "wide_resnet101_2": ("bottleneck", (3, 4, 23, 3), 1, 128, False, 126_886_696),
    "resnext50_32x4d": ("bottleneck", (3, 4, 6, 3), 32, 4, False, 25_028_904),
    "resnext101_32x8d": ("bottleneck", (3, 4, 23, 3), 32, 8, False, 88_791_336),
    "resnet50d": ("bottleneck", (3, 4, 6, 3), 1, 64, True, 25_576_264),  # timm
    "resnet101d": ("bottleneck", (3, 4, 23, 3), 1, 64, True, 44_568_392),  # timm
}
EPS = 1e-5


def _bn_keys(prefix, c):
    return {f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")}


def torch_shapes(name, num_classes=1000):
    """{key: shape} of the PyTorch module's state dict (num_batches_tracked left out)."""
    block, layers, groups, base_width, resnet_d, _ = ARCHS[name]
    shapes = {}
    if resnet_d:  # timm: Sequential(conv 3->32 /2, bn, relu, conv 32->32, bn, relu, conv 32->64)
        shapes["conv1.0.weight"] = (32, 3, 3, 3)
        shapes.update(_bn_keys("conv1.1", 32))
        shapes["conv1.3.weight"] = (32, 32, 3, 3)
        shapes.update(_bn_keys("conv1.4", 32))
        shapes["conv1.6.weight"] = (64, 32, 3, 3)
    else:
        shapes["conv1.weight"] = (64, 3, 7, 7)
    shapes.update(_bn_keys("bn1", 64))
    expansion = 4 if block == "bottleneck" else 1
    inplanes = 64
    for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
        stride = 1 if i == 0 else 2
        for j in range(n):
            p = f"layer{i + 1}.{j}"
            if block == "basic":
                shapes[f"{p}.conv1.weight"] = (planes, inplanes, 3, 3)
                shapes.update(_bn_keys(f"{p}.bn1", planes))
                shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
                shapes.update(_bn_keys(f"{p}.bn2", planes))
            else:
                width = int(planes * base_width / 64) * groups
                shapes[f"{p}.conv1.weight"] = (width, inplanes, 1, 1)
                shapes.update(_bn_keys(f"{p}.bn1", width))
                shapes[f"{p}.conv2.weight"] = (width, width // groups, 3, 3)
                shapes.update(_bn_keys(f"{p}.bn2", width))
                shapes[f"{p}.conv3.weight"] = (planes * 4, width, 1, 1)
                shapes.update(_bn_keys(f"{p}.bn3", planes * 4))
            if j == 0 and (stride != 1 or inplanes != planes * expansion):
                d = 1 if resnet_d else 0  # ResNet-D: index 0 is the (weightless) pool
                shapes[f"{p}.downsample.{d}.weight"] = (planes * expansion, inplanes, 1, 1)
                shapes.update(_bn_keys(f"{p}.downsample.{d + 1}", planes * expansion))
            inplanes = planes * expansion
    shapes["fc.weight"] = (num_classes, inplanes)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def random_state_dict(name, num_classes=1000, seed=0):
    """Random weights of the published shapes; BN running variances positive, convs He-scaled."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in torch_shapes(name, num_classes).items():
        if key.endswith("running_var"):
            x = rng.uniform(0.5, 2.0, shape)
        elif key.endswith("running_mean") or key.endswith("bias"):
            x = rng.normal(0, 0.2, shape)
        elif len(shape) == 1:  # BN weight
            x = rng.uniform(0.5, 1.5, shape)
        else:
            x = rng.normal(0, math.sqrt(1 / math.prod(shape[1:])), shape)
        sd[key] = x.astype(np.float32)
        if key.endswith("running_var"):
            sd[key.removesuffix("running_var") + "num_batches_tracked"] = np.array(7, np.int64)
    return sd


def _conv(x, w, stride=1, groups=1):
    k = w.shape[-1]
    return lax.conv_general_dilated(
        x,
        w,
        (stride, stride),
        [(k // 2, k // 2)] * 2,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


def _bn(x, sd, p):
    c = lambda n: sd[f"{p}.{n}"][None, :, None, None]
    return (x - c("running_mean")) / jnp.sqrt(c("running_var") + EPS) * c("weight") + c("bias")


def _max_pool(x):  # nn.MaxPool2d(3, 2, 1)
    return lax.reduce_window(
        x, -jnp.inf, lax.max, (1, 1, 3, 3), (1, 1, 2, 2), ((0, 0), (0, 0), (1, 1), (1, 1))
    )


def _avg_pool_ceil(x):  # nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
    pad = ((0, 0), (0, 0), (0, x.shape[2] % 2), (0, x.shape[3] % 2))
    total = lax.reduce_window(x, 0.0, lax.add, (1, 1, 2, 2), (1, 1, 2, 2), pad)
    count = lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, (1, 1, 2, 2), (1, 1, 2, 2), pad)
    return total / count


def reference_forward(name, sd, x):
    """Eval-mode logits `[B, classes]` of the PyTorch module for NCHW input `x`."""
    block, layers, groups, _, resnet_d, _ = ARCHS[name]
    relu = jax.nn.relu
    if resnet_d:
        x = relu(_bn(_conv(x, sd["conv1.0.weight"], 2), sd, "conv1.1"))
        x = relu(_bn(_conv(x, sd["conv1.3.weight"]), sd, "conv1.4"))
        x = _conv(x, sd["conv1.6.weight"])
    else:
        x = _conv(x, sd["conv1.weight"], 2)
    x = _max_pool(relu(_bn(x, sd, "bn1")))
    for i, n in enumerate(layers):
        for j in range(n):
            p, stride = f"layer{i + 1}.{j}", (2 if i > 0 and j == 0 else 1)
            if block == "basic":
                y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride), sd, f"{p}.bn1"))
                y = _bn(_conv(y, sd[f"{p}.conv2.weight"]), sd, f"{p}.bn2")
            else:
                y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                y = _conv(y, sd[f"{p}.conv2.weight"], stride, groups)
                y = relu(_bn(y, sd, f"{p}.bn2"))
                y = _bn(_conv(y, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
            elif f"{p}.downsample.1.weight" in sd:
                if stride > 1:
                    x = _avg_pool_ceil(x)
                x = _bn(_conv(x, sd[f"{p}.downsample.1.weight"]), sd, f"{p}.downsample.2")
            x = relu(y + x)
    x = jnp.mean(x, axis=(2, 3))
    return x @ sd["fc.weight"].T + sd["fc.bias"]


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_reference_shape_table_has_the_published_parameter_count(name):
    # The test's own architecture tables are right before they judge the mapping.
    shapes = torch_shapes(name)
    count = sum(math.prod(s) for k, s in shapes.items() if "running" not in k)
    assert count == ARCHS[name][-1]


@pytest.mark.parametrize(
    "name, source, size",
    [
        ("resnet18", "torchvision", 64),
        ("resnet50", "torchvision", 64),
        ("resnext50_32x4d", "torchvision", 64),
        # the widest net (68.9M params): the same mapping as resnet50's, so only in test-slow
        pytest.param("wide_resnet50_2", "torchvision", 64, marks=pytest.mark.slow),
        # 72: odd maps (9, 5, 3) exercise the ceil-mode average pool of the ResNet-D shortcut.
        ("resnet50d", "timm", 72),
    ],
)
def test_imported_weights_give_the_reference_logits(name, source, size):
    sd = random_state_dict(name, num_classes=10)
    x = np.random.default_rng(1).normal(size=(2, 3, size, size)).astype(np.float32)
    want = np.asarray(jax.jit(functools.partial(reference_forward, name))(sd, x))

    variables = pretrained.from_torch_state_dict(name, sd, source=source)
    model = create_model(name, num_classes=10)
    got = np.asarray(fast_jit(model.apply)(variables, x.transpose(0, 2, 3, 1)))

    assert got.shape == want.shape == (2, 10)
    assert np.abs(want).max() > 1e-2  # logits that carry signal, not a collapsed net
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


# The 101- and 152-layer nets map block for block like their 50-layer siblings (same code, more
# blocks) and cost 100-127M parameters each to fill and compare: they run with the slow tests.
_DEEP = {"resnet101", "resnet152", "wide_resnet101_2", "resnext101_32x8d", "resnet101d"}


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in _DEEP else n
        for n in pretrained.MAPPED["timm"]
    ],
)
def test_export_then_import_is_bitwise_the_identity(name):
    source = pretrained.default_source(name)
    model = create_model(name, num_classes=7)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(
        lambda s: rng.standard_normal(s.shape, dtype=np.float32),
        {k: abstract[k] for k in ("params", "batch_stats")},
    )

    sd = pretrained.to_torch_state_dict(name, variables, source=source, num_batches_tracked=5)
    assert set(k for k in sd if not k.endswith("num_batches_tracked")) == set(torch_shapes(name, 7))
    assert {tuple(sd[k].shape) for k in torch_shapes(name, 7)} == set(
        torch_shapes(name, 7).values()
    ) and all(sd[k].shape == s for k, s in torch_shapes(name, 7).items())
    assert all(sd[k] == 5 and sd[k].dtype == np.int64 for k in sd if "num_batches" in k)
    back = pretrained.from_torch_state_dict(name, sd, source=source)

    flat_in = jax.tree_util.tree_leaves_with_path(variables)
    flat_back = dict(jax.tree_util.tree_leaves_with_path(back))
    assert len(flat_in) == len(flat_back)
    for path, leaf in flat_in:
        assert flat_back[path].dtype == np.float32
        assert np.array_equal(flat_back[path], leaf), jax.tree_util.keystr(path)


def test_import_then_export_gives_back_the_state_dict_in_pytorch_order():
    sd = random_state_dict("resnet18")
    again = pretrained.to_torch_state_dict(
        "resnet18", pretrained.from_torch_state_dict("resnet18", sd), num_batches_tracked=7
    )
    assert list(again) == list(sd)  # torchvision's own state_dict order
    assert all(np.array_equal(again[k], sd[k]) for k in sd)


def test_timm_naming_of_the_torchvision_nets_is_the_same():
    sd = random_state_dict("resnet34")
    tv = pretrained.from_torch_state_dict("resnet34", sd, source="torchvision")
    timm = pretrained.from_torch_state_dict("resnet34", sd, source="timm")
    assert jax.tree.all(jax.tree.map(np.array_equal, tv, timm))


# ----------------------------------------------------------------------------- errors


def _resnet18_sd():
    return random_state_dict("resnet18", num_classes=10)


def test_unknown_key_is_named_with_the_closest_expected_key_and_its_shape():
    sd = _resnet18_sd()
    sd["layer1.0.conv1.weights"] = np.zeros((64, 64, 3, 3), np.float32)  # a typo
    with pytest.raises(pretrained.WeightsError) as e:
        pretrained.from_torch_state_dict("resnet18", sd)
    msg = str(e.value)
    assert "resnet18 (torchvision naming): unexpected key 'layer1.0.conv1.weights'" in msg
    assert "closest expected key is 'layer1.0.conv1.weight', shape (64, 64, 3, 3)" in msg


def test_missing_key_is_named_with_its_expected_shape():
    sd = _resnet18_sd()
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(
        pretrained.WeightsError,
        match=r"resnet18 \(torchvision naming\): missing "
        r"key 'layer3.1.bn2.running_var', expected shape \(256,\)$",
    ):
        pretrained.from_torch_state_dict("resnet18", sd)


def test_missing_head_is_named():
    sd = _resnet18_sd()
    del sd["fc.weight"]
    with pytest.raises(
        pretrained.WeightsError,
        match=r"missing key 'fc.weight', expected shape "
        r"\(num_classes, 512\)",
    ):
        pretrained.from_torch_state_dict("resnet18", sd)


def test_shape_mismatch_names_key_shape_and_expected_shape():
    sd = _resnet18_sd()
    sd["conv1.weight"] = np.zeros((64, 3, 3, 3), np.float32)
    with pytest.raises(
        pretrained.WeightsError,
        match=r"resnet18 \(torchvision naming\): key "
        r"'conv1.weight' has shape \(64, 3, 3, 3\), expected \(64, 3, 7, 7\)$",
    ):
        pretrained.from_torch_state_dict("resnet18", sd)


def test_weights_of_another_depth_report_every_problem_count():
    with pytest.raises(pretrained.WeightsError, match=r"resnet34 .* \(and \d+ more\)$"):
        pretrained.from_torch_state_dict("resnet34", _resnet18_sd())


@pytest.mark.parametrize(
    "name, source",
    [("resnet20", "torchvision"), ("preact_resnet50", "timm"), ("resnet50d", "torchvision")],
)
def test_model_without_mapping_is_refused_with_the_mapped_list(name, source):
    with pytest.raises(
        pretrained.WeightsError,
        match=rf"model '{name}' has no {source} "
        r"mapping; mapped models: resnet18, ",
    ):
        pretrained.from_torch_state_dict(name, _resnet18_sd(), source=source)
    with pytest.raises(pretrained.WeightsError, match="has no .* mapping"):
        pretrained.to_torch_state_dict(name, {}, source=source)


def test_unknown_source_is_refused():
    with pytest.raises(
        pretrained.WeightsError,
        match=r"source must be one of \('torchvision', "
        r"'timm'\), got 'keras'",
    ):
        pretrained.from_torch_state_dict("resnet18", {}, source="keras")


def test_export_of_variables_of_another_model_names_the_variable():
    model = create_model("resnet18", num_classes=3)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract)
    with pytest.raises(
        pretrained.WeightsError,
        match=r"resnet34 \(torchvision naming\): "
        r"missing variable params/stage1_unit3/conv1/kernel, expected shape \(3, 3, 64, 64\) "
        r"\(and 79 more\)$",
    ):
        pretrained.to_torch_state_dict("resnet34", variables)


# ----------------------------------------------------------------------------- files


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_state_dict_files_round_trip_bitwise(tmp_path, suffix):
    sd = _resnet18_sd()
    path = str(tmp_path / f"w{suffix}")
    pretrained.save_state_dict(sd, path)
    back = pretrained.load_state_dict(path)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        assert np.array_equal(back[k], v), k


def test_safetensors_file_carries_pytorch_format_metadata(tmp_path):
    from safetensors import safe_open

    path = str(tmp_path / "w.safetensors")
    pretrained.save_state_dict(_resnet18_sd(), path)
    with safe_open(path, framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert f.get_tensor("layer4.1.bn2.num_batches_tracked").shape == ()


def test_torch_pickle_without_torch_prints_the_convert_command(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # as on a machine without torch
    path = tmp_path / "resnet50-0676ba61.pth"
    path.write_bytes(b"not read")
    with pytest.raises(pretrained.WeightsError) as e:
        pretrained.load_state_dict(str(path))
    msg = str(e.value)
    assert "torch is not installed here" in msg
    assert pretrained.convert_command(str(path)) in msg
    assert f"np.savez('{tmp_path}/resnet50-0676ba61.npz'" in msg


def test_unreadable_suffix_names_the_valid_ones(tmp_path):
    with pytest.raises(pretrained.WeightsError, match=r"must end in one of \('.safetensors', "):
        pretrained.load_state_dict(str(tmp_path / "w.h5"))


def test_training_checkpoint_wrapping_and_ddp_prefix_are_removed(tmp_path):
    sd = _resnet18_sd()
    path = str(tmp_path / "w.npz")
    pretrained.save_state_dict({f"module.{k}": v for k, v in sd.items()}, path)
    assert set(pretrained.load_state_dict(path)) == set(sd)


# ----------------------------------------------------------------------------- the torch check


def test_compare_statistics_are_max_abs_max_rel_and_top1_agreement():
    from resnet_jax.weights import compare

    want = np.array([[1.0, -4.0, 2.0], [0.0, 3.0, 1.0]])
    got = want + np.array([[0.0, 0.004, 0.0], [0.0, 0.0, 2.5]])  # row 2's top class moves
    d = compare.differences(got, want)
    assert d == pytest.approx({"max_abs": 2.5, "max_rel": 2.5 / 4.0, "top1_agree": 0.5})


def test_compare_covers_every_mapped_model_and_timms_own_resnet50():
    from resnet_jax.weights import compare

    pairs = compare.all_models()
    assert {m for m, _ in pairs} == set(pretrained.MAPPED["timm"])
    assert ("resnet50d", "timm") in pairs and ("resnet50", "timm") in pairs
    assert ("wide_resnet101_2", "torchvision") in pairs


def test_compare_random_variables_have_live_batch_norm():
    from resnet_jax.weights import compare

    v = compare.random_variables(create_model("resnet18", num_classes=4), 32, seed=0)
    bn = v["batch_stats"]["stage2_unit1"]["bn1"]
    assert bn["var"].min() >= 0.5 and np.abs(bn["mean"]).max() > 0
    assert not np.allclose(v["params"]["stage2_unit1"]["bn1"]["scale"], 1.0)
    # export/import of them is the identity, as the GPU check relies on
    sd = pretrained.to_torch_state_dict("resnet18", v)
    back = pretrained.from_torch_state_dict("resnet18", sd)
    assert jax.tree.all(jax.tree.map(np.array_equal, back, v))


def _python(code):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )


def test_compare_command_without_torch_ends_with_one_line():
    p = _python(
        "import sys; sys.modules['torch'] = None; sys.argv = ['x', 'compare'];"
        "from resnet_jax.pretrained import cli; cli.run()"
    )
    assert p.returncode == faults.ConfigError.exit_code, p.stderr
    assert (
        p.stderr.strip()
        .splitlines()[-1]
        .startswith("resnet_jax: compare runs the PyTorch modules and needs torch")
    )


def test_the_command_package_gives_the_library_names_and_loads_no_engine():
    from resnet_jax import weights

    assert pretrained.__all__ == weights.__all__ and "OVERRIDABLE" in weights.__all__
    assert all(getattr(pretrained, n) is getattr(weights, n) for n in weights.__all__)
    p = _python(
        "import sys, resnet_jax.pretrained; print(sorted(m for m in sys.modules if "
        "m.startswith(('resnet_jax.engine', 'resnet_jax.config', 'resnet_jax.pretrained.'))))"
    )
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
