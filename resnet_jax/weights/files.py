"""State-dict files: `.safetensors` and `.npz` read and written with numpy alone; `.pth`/`.pt`
read only where torch is installed (they are pickles of torch tensors).

A state dict here is `{PyTorch key: numpy array}`. Downloading is left to the user; the docs
(docs/pretrained.md) give the URLs, and a `.safetensors` copy for each set of weights.
"""

from __future__ import annotations

import os

import numpy as np

from resnet_jax.weights.mapping import WeightsError

READABLE = (".safetensors", ".npz", ".pth", ".pt", ".bin")
WRITABLE = (".safetensors", ".npz")


def convert_command(path: str) -> str:
    """A one-line command, for a machine with torch, that turns a torch pickle into `.npz`."""
    out = os.path.splitext(path)[0] + ".npz"
    return (
        f"python -c \"import numpy as np, torch; sd = torch.load('{path}', map_location='cpu', "
        f"weights_only=True); sd = sd.get('state_dict', sd); "
        f"np.savez('{out}', **{{k: v.numpy() for k, v in sd.items()}})\""
    )


def _suffix(path: str, valid: tuple[str, ...], what: str) -> str:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in valid:
        raise WeightsError(f"cannot {what} {path!r}: the file name must end in one of {valid}")
    return suffix


def _unwrap(state: dict) -> dict:
    """The state dict inside a training checkpoint ({'state_dict': ...} or {'model': ...}),
    without DistributedDataParallel's 'module.' prefix."""
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _load_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"{path} is a torch pickle and torch is not installed here; convert it on a machine "
            f"with torch: {convert_command(path)}  (or use the .safetensors copy, "
            f"docs/pretrained.md)"
        ) from None
    state = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    return {k: v.detach().cpu().numpy() for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """`{PyTorch key: numpy array}` from `.safetensors`, `.npz` or (with torch) `.pth`/`.pt`/`.bin`."""
    suffix = _suffix(path, READABLE, "read")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} does not exist")
    if suffix == ".safetensors":
        from safetensors.numpy import load_file

        return _unwrap(load_file(path))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return _unwrap({k: f[k] for k in f.files})
    return _load_torch(path)


def save_state_dict(state_dict: dict[str, np.ndarray], path: str) -> None:
    """Writes `.safetensors` (readable by `safetensors.torch.load_file`, then
    `module.load_state_dict`) or `.npz`."""
    suffix = _suffix(path, WRITABLE, "write")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = {k: np.asarray(v, order="C") for k, v in state_dict.items()}  # keeps 0-d scalars
    if suffix == ".safetensors":
        from safetensors.numpy import save_file

        # 'format: pt' is what Hugging Face's loaders expect of a PyTorch state dict.
        save_file(arrays, path, metadata={"format": "pt"})
    else:
        np.savez(path, **arrays)
