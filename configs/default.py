"""The `make train` job: CIFAR ResNet-20 on the built-in shapes10 dataset, minutes on 2 CPU cores.

shapes10 (32x32, 10 classes, 40k train / 10k test) is generated locally on first use, so this runs
on a fresh machine without a download. The recipe is the CIFAR one (He2015 Sec. 4.2) shortened.
"""
from resnet_jax.trainer import default_config


def get_config():
    c = default_config()
    c.model = "resnet20"  # He2015's smallest CIFAR net (0.27M params)
    c.dataset = "shapes10"
    c.augment = "cifar"  # pad-crop-flip as for CIFAR
    c.batch_size = 64  # small batches: more updates per second of CPU
    c.num_train_steps = 700  # ~45k images (~1.1 epochs): the CPU budget of a few minutes
    c.learning_rate = 0.1
    c.lr_schedule = "cosine"  # a short run gains from decaying all the way down
    c.warmup = "linear"
    c.warmup_steps = 50
    c.weight_decay = 1e-4
    c.momentum = 0.9
    c.log_every_steps = 50
    c.eval_every_steps = 0  # test once, at the end
    c.eval_batch_size = 500
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    return c
