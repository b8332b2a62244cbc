"""Published PyTorch ResNet weights (torchvision, timm) in and out of resnet_jax, exactly.

    from resnet_jax import pretrained
    variables = pretrained.from_torch_state_dict(
        "resnet50", pretrained.load_state_dict("resnet50.safetensors"))
    model = create_model("resnet50", num_classes=variables["params"]["head"]["bias"].shape[0])
    logits = model.apply(variables, images)  # images [B, 224, 224, 3], normalised as torchvision

Command line (writes a checkpoint that `--mode=eval` and `--config.init_from` read, or exports
one): `python -m resnet_jax.pretrained import|export --help`. See docs/pretrained.md.
"""

from resnet_jax.pretrained.files import convert_command, load_state_dict, save_state_dict
from resnet_jax.pretrained.mapping import (
    MAPPED,
    SOURCES,
    WeightsError,
    check_mapped,
    default_source,
    from_torch_state_dict,
    to_torch_state_dict,
)

__all__ = [
    "MAPPED",
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
