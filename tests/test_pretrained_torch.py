"""The real PyTorch modules against ours, where torch, torchvision and timm are installed (the GPU
machines; skipped elsewhere). `python -m resnet_jax.pretrained compare` runs every model at 224."""

import pytest

pytest.importorskip("torchvision")
pytest.importorskip("timm")

from resnet_jax.weights import compare


@pytest.mark.parametrize(
    "name, source",
    [("resnet18", "torchvision"), ("resnext50_32x4d", "torchvision"), ("resnet50d", "timm")],
)
def test_real_module_logits_equal_ours_after_import_and_after_export(name, source):
    r = compare.compare_model(name, source, batch=2, image_size=64, num_classes=10, device="cpu")
    for direction in ("import", "export"):
        assert r[direction]["max_rel"] < 1e-5, (direction, r)
        assert r[direction]["top1_agree"] == 1.0, (direction, r)
