"""Logits of the real PyTorch modules (torchvision / timm) against ours, both ways.

Needs torch and torchvision (and timm for its nets), so it runs where those are installed (our
GPU machines); `python -m resnet_jax.pretrained compare --help` shows the command. For each model:
  import: a PyTorch module (random weights, BN weights and running statistics random too, eval
    mode) -> its state_dict -> `from_torch_state_dict` -> our logits vs the module's;
  export: our random variables -> `to_torch_state_dict` -> `load_state_dict(strict=True)` -> the
    module's logits vs ours.
Both sides compute in float32 with TF32 off (torch) and `highest` matmul precision (JAX), so the
differences are float32 round-off of two different convolution implementations.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.models import create_model
from resnet_jax.weights.mapping import (
    MAPPED,
    default_source,
    from_torch_state_dict,
    to_torch_state_dict,
)


def differences(got: np.ndarray, want: np.ndarray) -> dict:
    """max |got - want|, that over max |want| (relative), and the share of equal top-1 classes."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    diff = float(np.max(np.abs(got - want)))
    return {
        "max_abs": diff,
        "max_rel": diff / float(np.max(np.abs(want))),
        "top1_agree": float(np.mean(np.argmax(got, -1) == np.argmax(want, -1))),
    }


def random_variables(model, image_size: int, seed: int) -> dict:
    """Random `{'params', 'batch_stats'}` (numpy) with non-trivial BN: scale, shift, statistics."""
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    )
    rng = np.random.default_rng(seed)

    def fill(path, s):
        leaf = path[-1].key
        if leaf == "kernel":  # He-style scale keeps activations O(1) through the depth
            return rng.normal(0, math.sqrt(1 / math.prod(s.shape[:-1])), s.shape)
        if leaf == "var":
            return rng.uniform(0.5, 2.0, s.shape)
        if leaf == "scale":
            return rng.uniform(0.5, 1.5, s.shape)
        return rng.normal(0, 0.2, s.shape)  # bias, mean

    filled = jax.tree_util.tree_map_with_path(
        lambda p, s: fill(p, s).astype(np.float32),
        {k: abstract[k] for k in ("params", "batch_stats")},
    )
    return filled


def _torch_module(name: str, source: str, num_classes: int):
    if source == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=num_classes)
    import torchvision

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes)


def _randomise(module, seed: int) -> None:
    """Redraws BN weights and running statistics (PyTorch's init leaves BN an identity) and conv
    weights at 1/fan_in variance: with PyTorch's fan_out init and random statistics, logits of the
    deep nets grow to ~1e8, where a float32 comparison says little."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            elif isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(fan_in))


def compare_model(
    name: str,
    source: str | None = None,
    *,
    batch: int = 8,
    image_size: int = 224,
    num_classes: int = 1000,
    seed: int = 0,
    device: str = "cuda",
) -> dict:
    """{'model', 'source', 'import': differences, 'export': differences} for one model."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    source = source or default_source(name)
    torch.manual_seed(seed)
    module = _torch_module(name, source, num_classes).eval()
    _randomise(module, seed)
    module = module.to(device)
    x = np.random.default_rng(seed).standard_normal((batch, 3, image_size, image_size), np.float32)
    x_torch = torch.from_numpy(x).to(device)
    model = create_model(name, num_classes=num_classes)
    apply = jax.jit(model.apply)

    def torch_logits():
        with torch.no_grad():
            return module(x_torch).float().cpu().numpy()

    with jax.default_matmul_precision("highest"):
        state_dict = {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}
        imported = from_torch_state_dict(name, state_dict, source=source)
        result = {"model": name, "source": source, "batch": batch, "image_size": image_size}
        result["import"] = differences(apply(imported, x.transpose(0, 2, 3, 1)), torch_logits())

        ours = random_variables(model, image_size, seed + 1)
        exported = to_torch_state_dict(name, ours, source=source)
        module.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()}, strict=True)
        result["export"] = differences(apply(ours, x.transpose(0, 2, 3, 1)), torch_logits())
    return result


def all_models() -> list[tuple[str, str]]:
    """(model, source) for every mapped model, in its default naming, plus timm's naming of
    resnet50 (timm's ResNet class is not torchvision's, so it is checked on its own)."""
    return [(m, default_source(m)) for m in MAPPED["timm"]] + [("resnet50", "timm")]
