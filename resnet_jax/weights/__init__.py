"""Published PyTorch ResNet weights (torchvision, timm) in and out of resnet_jax, exactly.

    from resnet_jax import weights
    variables = weights.from_torch_state_dict(
        "resnet50", weights.load_state_dict("resnet50.safetensors"))
    model = create_model("resnet50", num_classes=variables["params"]["head"]["bias"].shape[0])
    logits = model.apply(variables, images)  # images [B, 224, 224, 3], normalised as torchvision

A library with no command and no engine in it: `mapping` (state dicts <-> variables), `files`
(`.safetensors`, `.npz`, `.pth`), `compare` (against the real PyTorch modules). The command that
writes and reads run directories, `python -m resnet_jax.pretrained import|export|compare`, sits
above the engine and re-exports these names. See docs/pretrained.md.
"""

from resnet_jax.weights.files import convert_command, load_state_dict, save_state_dict
from resnet_jax.weights.mapping import (
    MAPPED,
    OVERRIDABLE,
    SOURCES,
    WeightsError,
    check_mapped,
    default_source,
    from_torch_state_dict,
    to_torch_state_dict,
)

__all__ = [
    "MAPPED",
    "OVERRIDABLE",
    "SOURCES",
    "WeightsError",
    "check_mapped",
    "convert_command",
    "default_source",
    "from_torch_state_dict",
    "load_state_dict",
    "save_state_dict",
    "to_torch_state_dict",
]
