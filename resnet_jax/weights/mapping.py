"""PyTorch state dicts (torchvision and timm naming) <-> our variables, exactly, for the ResNets
both libraries publish.

A state dict maps PyTorch key names (`layer1.0.conv1.weight`) to numpy arrays in PyTorch layouts:
convolutions `[O, I/groups, kH, kW]`, linear layers `[out, in]`. Our variables hold the same numbers
as flax expects them: conv kernels `[kH, kW, I/groups, O]`, dense kernels `[in, out]`. BN maps
weight/bias -> scale/bias and running_mean/running_var -> mean/var; both libraries use eps 1e-5, as
our specs do. `num_batches_tracked` only matters to PyTorch's cumulative-average BN (momentum=None,
used by neither library's ResNets): it is accepted and dropped on import, and written on export.

Names are derived from our variable paths, so one rule covers every depth and width:
  stem/conv1, stem/bn1                  -> conv1, bn1                (7x7 stem)
  stem/conv{1,2,3}, stem/bn{1,2}, bn3   -> conv1.{0,3,6}, conv1.{1,4}, bn1   (timm's deep stem)
  stage{i}_unit{j}/conv{k}, bn{k}       -> layer{i}.{j-1}.conv{k}, bn{k}
  .../shortcut/proj_conv, proj_bn       -> downsample.0, .1   (timm's ResNet-D: .1, .2 after a pool)
  head                                  -> fc
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from resnet_jax.models import create_model, get_spec

SOURCES = ("torchvision", "timm")
_TORCHVISION = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
)
# timm names torchvision's architectures exactly as torchvision does, and adds the ResNet-D nets.
MAPPED = {"torchvision": _TORCHVISION, "timm": (*_TORCHVISION, "resnet50d", "resnet101d")}

# Spec fields (create_model's overrides) that keep the PyTorch module's structure and key names
# (layer counts, widths, groups; init and BN momentum): variants, tiny test nets included, map too.
OVERRIDABLE = (
    "stage_sizes",
    "widths",
    "groups",
    "width_per_group",
    "width_multiplier",
    "zero_init_residual",
    "bn_momentum",
)
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_NUM_BATCHES = "num_batches_tracked"
_LEAVES = ("weight", "bias", "running_mean", "running_var")


class WeightsError(ValueError):
    """A state dict or a set of variables that does not fit the model it is converted for."""


def check_mapped(model_name: str, source: str) -> None:
    """Raises WeightsError unless `model_name` has a mapping in `source`'s naming."""
    if source not in SOURCES:
        raise WeightsError(f"source must be one of {SOURCES}, got {source!r}")
    if model_name not in MAPPED[source]:
        raise WeightsError(
            f"model {model_name!r} has no {source} mapping; mapped models: "
            f"{', '.join(MAPPED[source])}"
        )


def default_source(model_name: str) -> str:
    """The naming a model's published weights use: torchvision's where it has the model."""
    return "torchvision" if model_name in MAPPED["torchvision"] else "timm"


def _torch_module(spec, path: tuple[str, ...]) -> str:
    """PyTorch module name of the layer at our variable path (without the leaf name)."""
    top, rest = path[0], path[1:]
    if top == "head":
        return "fc"
    if top == "stem":
        (layer,) = rest
        n = int(layer[-1])
        if spec.stem == "imagenet":
            return layer  # conv1, bn1
        # timm's deep stem: Sequential(conv, bn, act, conv, bn, act, conv); the last BN is bn1.
        if layer == "bn3":
            return "bn1"
        return f"conv1.{3 * (n - 1) + (layer.startswith('bn'))}"
    stage, unit = top.removeprefix("stage").split("_unit")
    prefix = f"layer{stage}.{int(unit) - 1}"
    if rest[0] != "shortcut":
        return f"{prefix}.{rest[0]}"
    # ResNet-D's downsample starts with an average pool (index 0, no weights).
    first = 1 if spec.shortcut == "D" else 0
    index = first if rest[1] == "proj_conv" else first + 1
    return f"{prefix}.downsample.{index}"


def _frozen(overrides: Mapping | None) -> tuple:
    """Overrides as a hashable, validated tuple (JSON configs give lists where specs hold tuples)."""
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(OVERRIDABLE))
    if bad:
        raise WeightsError(
            f"overrides {bad} change the PyTorch module's structure or naming; "
            f"mappable overrides: {', '.join(OVERRIDABLE)}"
        )
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))


def _layout(model_name: str, num_classes: int, overrides: Mapping | None = None) -> dict:
    return _cached_layout(model_name, num_classes, _frozen(overrides))


@functools.lru_cache(maxsize=32)
def _cached_layout(
    model_name: str, num_classes: int, overrides: tuple
) -> dict[str, tuple[tuple[str, ...], tuple, str]]:
    """PyTorch key -> (our variable path, our shape, kind) in PyTorch's module order.

    kind: 'conv' (OIHW <-> HWIO), 'dense' (transpose) or 'same'.
    """
    model = create_model(model_name, num_classes=num_classes, **dict(overrides))
    spec = model.spec
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    flat = traverse_util.flatten_dict(abstract)
    layout = {}
    for path, leaf in flat.items():
        collection, module, name = path[0], path[1:-1], path[-1]
        torch_module = _torch_module(spec, module)
        if name == "kernel":
            kind = "dense" if module[0] == "head" else "conv"
            key = f"{torch_module}.weight"
        elif module[0] == "head":
            kind, key = "same", f"{torch_module}.{name}"
        else:
            kind, key = "same", f"{torch_module}.{_BN[name]}"
        layout[key] = ((collection, *module, name), tuple(leaf.shape), kind)
    return dict(sorted(layout.items(), key=lambda kv: _torch_order(kv[0])))


def _torch_order(key: str):
    """Orders keys as PyTorch's state_dict does: modules in the order they are created (stem
    conv before its BN, conv{k} before bn{k}, downsample last, fc at the end), then weight, bias,
    running_mean, running_var."""
    *modules, leaf = key.split(".")
    top = {"conv1": (0,), "bn1": (1,), "fc": (9,)}

    def rank(part: str) -> tuple:
        if part.isdigit():
            return (int(part),)
        if part.startswith("layer"):
            return (1 + int(part[5:]),)
        if part == "downsample":
            return (99,)
        kind, k = re.fullmatch(r"(conv|bn)(\d+)", part).groups()
        return (int(k), kind == "bn")

    first = top[modules[0]] if modules[0] in top else rank(modules[0])
    return (first, [rank(p) for p in modules[1:]], _LEAVES.index(leaf))


# Axis orders between the layouts, per kind: PyTorch -> ours and ours -> PyTorch.
_TO_OURS = {
    "conv": (2, 3, 1, 0),
    "dense": (1, 0),
    "same": None,
}  # OIHW -> HWIO, [out, in] -> [in, out]
_TO_TORCH = {"conv": (3, 2, 0, 1), "dense": (1, 0), "same": None}


def torch_shape(shape: tuple, kind: str) -> tuple:
    """PyTorch's shape of an array whose shape in our variables is `shape`."""
    axes = _TO_TORCH[kind]
    return tuple(shape) if axes is None else tuple(shape[a] for a in axes)


def _convert(x: np.ndarray, axes: tuple[int, ...] | None) -> np.ndarray:
    return np.ascontiguousarray(x if axes is None else x.transpose(axes), dtype=np.float32)


def _problem(model_name: str, source: str, problems: list[str]) -> WeightsError:
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return WeightsError(f"{model_name} ({source} naming): {problems[0]}{more}")


def _missing_or_misshapen(want: dict, got: Mapping, noun: str, show) -> list[str]:
    """Problems of `got` against the expected shapes `want` (name -> shape), in `want`'s order."""
    problems = []
    for name, shape in want.items():
        if name not in got:
            problems.append(f"missing {noun} {show(name)}, expected shape {shape}")
        elif tuple(np.shape(got[name])) != shape:
            problems.append(
                f"{noun} {show(name)} has shape {tuple(np.shape(got[name]))}, expected {shape}"
            )
    return problems


def _head_classes(model_name: str, source: str, state_dict: Mapping) -> int:
    if "fc.weight" not in state_dict:
        raise WeightsError(
            f"{model_name} ({source} naming): missing key 'fc.weight', expected shape "
            f"(num_classes, {get_spec(model_name).unit_widths(3)[1]})"
        )
    return int(np.shape(state_dict["fc.weight"])[0])


def from_torch_state_dict(
    model_name: str,
    state_dict: Mapping[str, np.ndarray],
    *,
    source: str = "torchvision",
    overrides: Mapping | None = None,
) -> dict:
    """`{'params': ..., 'batch_stats': ...}` for `create_model(model_name, num_classes=C)`, C
    being the head's output count (`fc.weight` is `[C, features]`).

    Arrays come back float32 (numpy). Raises WeightsError naming the key, the shape expected and
    the model for an unknown or missing key or a shape that does not fit. `overrides`: spec fields
    of `OVERRIDABLE`, as `create_model` takes them, for variants with other layer counts or widths.
    """
    check_mapped(model_name, source)
    layout = _layout(model_name, _head_classes(model_name, source, state_dict), overrides)
    problems = []
    for key in state_dict:
        if key.endswith(_NUM_BATCHES):
            if key.removesuffix(_NUM_BATCHES) + "running_mean" not in layout:
                problems.append(f"unexpected key {key!r}: no BN layer of that name")
            elif np.size(state_dict[key]) != 1:
                problems.append(f"key {key!r} has shape {np.shape(state_dict[key])}, expected ()")
        elif key not in layout:
            close = difflib.get_close_matches(key, layout, n=1, cutoff=0.6)
            hint = (
                f"; the closest expected key is {close[0]!r}, shape "
                f"{torch_shape(*layout[close[0]][1:])}"
                if close
                else ""
            )
            problems.append(f"unexpected key {key!r} with shape {np.shape(state_dict[key])}{hint}")
    want = {key: torch_shape(shape, kind) for key, (_, shape, kind) in layout.items()}
    problems += _missing_or_misshapen(want, state_dict, "key", repr)
    if problems:
        raise _problem(model_name, source, problems)
    flat = {
        path: _convert(np.asarray(state_dict[key]), _TO_OURS[kind])
        for key, (path, _, kind) in layout.items()
    }
    return traverse_util.unflatten_dict(flat)


def to_torch_state_dict(
    model_name: str,
    variables: Mapping,
    *,
    source: str = "torchvision",
    num_batches_tracked: int = 0,
    overrides: Mapping | None = None,
) -> dict[str, np.ndarray]:
    """The inverse of `from_torch_state_dict`: PyTorch key -> float32 numpy array, in PyTorch's
    order, with an int64 `num_batches_tracked` scalar per BN layer (PyTorch's own dicts have it).

    `variables`: `{'params', 'batch_stats'}` of `create_model(model_name, num_classes=C,
    **overrides)`.
    """
    check_mapped(model_name, source)
    flat = traverse_util.flatten_dict(
        {k: variables[k] for k in ("params", "batch_stats") if k in variables}
    )
    head = ("params", "head", "kernel")
    if head not in flat:
        raise WeightsError(f"{model_name}: variables have no {'/'.join(head)}")
    layout = _layout(model_name, int(np.shape(flat[head])[1]), overrides)
    by_path = {path: (key, shape, kind) for key, (path, shape, kind) in layout.items()}
    problems = [
        f"unexpected variable {'/'.join(p)} with shape {np.shape(flat[p])}"
        for p in flat
        if p not in by_path
    ]
    want = {path: shape for path, (_, shape, _) in by_path.items()}
    problems += _missing_or_misshapen(want, flat, "variable", "/".join)
    if problems:
        raise _problem(model_name, source, problems)
    out = {}
    for key, (path, _, kind) in layout.items():
        out[key] = _convert(np.asarray(flat[path]), _TO_TORCH[kind])
        if key.endswith(".running_var"):
            out[key.removesuffix("running_var") + _NUM_BATCHES] = np.array(
                num_batches_tracked, np.int64
            )
    return out
