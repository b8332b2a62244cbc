"""CIFAR-10 with He2015's recipe (Sec. 4.2), exactly.

Usage: --config=configs/cifar10.py:resnet56   (any CIFAR model: resnet20..1202, plain20..110,
resnet164, preact_resnet164/1001, wrn28_10, ...). Append `,cifar100` for CIFAR-100 (He2016).
"""

import re

from resnet_jax.config import default_config


def get_config(arg: str = "resnet20"):
    model, _, dataset = arg.partition(",")
    c = default_config()
    c.model = model
    c.dataset = dataset or "cifar10"
    c.augment = "cifar"  # pad 4 pixels each side, random 32x32 crop, random horizontal flip
    c.batch_size = 128  # "mini-batch size of 128" (on 2 GPUs in the paper)
    c.num_train_steps = 64_000  # "terminate training at 64k iterations" (~164 epochs of 50k)
    c.optimizer = "sgd"
    c.learning_rate = 0.1  # "start with a learning rate of 0.1"
    c.lr_scaling = "none"
    c.lr_schedule = "step"
    c.lr_decay_steps = (32_000, 48_000)  # "divide it by 10 at 32k and 48k iterations"
    c.lr_decay_factor = 0.1
    c.weight_decay = 1e-4  # "weight decay of 0.0001"
    c.weight_decay_on = "all"  # Caffe's solver decays every parameter, BN scale/shift included
    c.momentum = 0.9  # "momentum of 0.9"
    c.nesterov = False  # plain momentum SGD, as Caffe
    c.label_smoothing = 0.0  # not used in 2015
    c.dtype = "float32"
    c.bn_group_size = 64  # BN statistics per GPU: the paper split the 128 batch over 2 GPUs
    depth = int(re.search(r"(\d+)", model).group(1)) if re.search(r"\d+", model) else 0
    if depth >= 110 and not model.startswith("wrn"):
        # "0.1 is slightly too large to start converging [for 110 layers], so we use 0.01 to warm up
        # the training until the training error is below 80% (about 400 iterations), and then go
        # back to 0.1." We use the fixed 400 iterations; the same holds for the 1202-layer net.
        c.warmup = "constant"
        c.warmup_steps = 400
        c.warmup_learning_rate = 0.01
    c.log_every_steps = 200
    c.eval_every_steps = 4_000
    c.checkpoint_every_steps = 4_000
    c.keep_checkpoints = 3
    c.eval_views = "center"  # "we only evaluate the single view of the original 32x32 image"
    return c
