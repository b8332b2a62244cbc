"""Usage: python -m resnet_jax.pretrained import|export|compare --flags

  import --source=torchvision --model=resnet50 --weights=FILE --workdir=DIR --config=CONFIG
      Writes DIR/checkpoints/0 (FILE's params and BN statistics) and DIR/config.json. CONFIG is
      the config you evaluate with (e.g. configs/imagenet.py:resnet50): the checkpoint holds its
      optimizer's state. No dataset is read, so it need not be prepared yet. Evaluate it with
        python -m resnet_jax.main --config=CONFIG --workdir=DIR --mode=eval --config.eval_views=10crop
      or fine-tune from it with --config.init_from=DIR.
  export --workdir=DIR --out=FILE.safetensors [--source=timm] [--step=N]
      Writes checkpoint N (default: the newest) of DIR in PyTorch naming (.safetensors or .npz).
      Only nets PyTorch has map: torchvision's ImageNet ResNets and timm's (--out below lists
      them); the CIFAR nets (resnet20, ...) have no PyTorch counterpart and are refused up front.

  compare [--models=resnet50,resnet50d] [--device=cuda] [--out=FILE.json]
      Where torch, torchvision and timm are installed: the logits of the real PyTorch modules
      against ours for every mapped model, after import and after export.

FILE: .safetensors or .npz (numpy only), .pth/.pt where torch is installed. See docs/pretrained.md.
"""

from absl import flags

from resnet_jax.pretrained import cli

flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    cli.run()
