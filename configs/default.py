"""The `make train` job: CIFAR ResNet-20 on the built-in shapes10 dataset, minutes on 2 CPU cores.

shapes10 (32x32, 10 classes, 40k train / 10k test) is generated locally on first use, so this runs
on a fresh machine without a download. The recipe is the CIFAR one (He2015 Sec. 4.2) shortened.

The loss leaves ln(10) within the first 100-150 steps (under 5% of the run) for every seed tried;
shapes10's labelled shape differs from its background in brightness so that this take-off comes
early (with colour contrast alone, version 1.0.0, ResNet-20 sat at chance for its first ~10k
images, and when it took off decided the final accuracy). README gives the range of the final
accuracy measured over seeds.
"""

from resnet_jax.config import default_config


def get_config():
    c = default_config()
    c.model = "resnet20"  # He2015's smallest CIFAR net (0.27M params)
    c.dataset = "shapes10"
    # 2.4 epochs: too short to overfit much, so augmentation would only slow learning down.
    c.augment = "none"
    c.batch_size = 32  # on 2 CPU cores small batches learn more per second than large ones
    c.num_train_steps = 3000  # 96k images, 2.4 epochs: 5-7 minutes of 2 idle CPU cores
    c.learning_rate = (
        0.05  # half the paper's 0.1 for a quarter of its batch; beat 0.1 at batch 64 in a trial
    )
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
