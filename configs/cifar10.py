"""CIFAR-10 with He2015's recipe (Sec. 4.2), exactly.

Usage: --config=configs/cifar10.py:resnet56   (any CIFAR model: resnet20..1202, plain20..110,
resnet164, preact_resnet164/1001, wrn28_10, ...). Append `,cifar100` for CIFAR-100 (He2016).
"""

from resnet_jax import recipes
from resnet_jax.config import default_config


def get_config(arg: str = "resnet20"):
    model, _, dataset = arg.partition(",")
    c = default_config()
    c.model = model
    c.dataset = dataset or "cifar10"
    c.augment = "cifar"  # pad 4 pixels each side, random 32x32 crop, random horizontal flip
    # Batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k, weight decay 1e-4, momentum 0.9, and for
    # the 110- and 1202-layer nets the 0.01 warm-up until the training error is below 80%: the
    # paper's numbers, from the one recipe table (resnet_jax/recipes.py).
    c.update(recipes.scaled(recipes.HE2015_CIFAR, model))
    c.label_smoothing = 0.0  # not used in 2015
    c.dtype = "float32"
    c.bn_group_size = 64  # BN statistics per GPU: the paper split the 128 batch over 2 GPUs
    c.log_every_steps = 200
    c.eval_every_steps = 4_000
    c.checkpoint_every_steps = 4_000
    c.keep_checkpoints = 3
    c.eval_views = "center"  # "we only evaluate the single view of the original 32x32 image"
    return c
