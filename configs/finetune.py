"""Fine-tuning ImageNet weights on a folder of images or a small built-in dataset, by BiT-HyperRule.

Usage: --config=configs/finetune.py:folder,resnet50 --config.dataset=folder:PATH
           --config.init_from=WEIGHTS
       --config=configs/finetune.py:cifar10 --config.init_from=WEIGHTS
       --config=configs/finetune.py:cifar100,resnet50d --config.init_from=WEIGHTS
PATH: PATH/train/<class>/<image> and PATH/test (or validation, val), as docs/data.md describes;
without an evaluation folder (or as PATH/<class>/<image>) a fifth of each class is held out.
WEIGHTS: torchvision's resnet50 as .safetensors (docs/pretrained.md gives the file), or a run
directory (`python -m resnet_jax.pretrained import ...`, or any ImageNet run of ours). The 1000-class
head is replaced by a fresh one for the dataset's classes; everything else starts pretrained.

The recipe is Kolesnikov et al.'s BiT-HyperRule for fine-tuning (Big Transfer, 2020), the one
published rule that needs no per-dataset search: its resolution rule and its schedule, both read
off the dataset. What it leaves out is said where it would be.
"""

from resnet_jax.config import default_config

DATASETS = ("folder", "cifar10", "cifar100", "shapes10")


def get_config(arg: str = "cifar10"):
    dataset, _, model = arg.partition(",")
    if dataset not in DATASETS:
        raise ValueError(f"fine-tuning dataset must be one of {DATASETS}, got {dataset!r}")
    c = default_config()
    c.model = model or "resnet50"  # any ImageNet net with a pretrained mapping
    # folder: the path comes with --config.dataset=folder:PATH.
    c.dataset = "folder:" if dataset == "folder" else dataset
    # BiT's resolution: images of at most 96x96 px are trained at 128 (BiT resizes to 160 and
    # crops 128), larger ones at 384 (448, crops 384). A folder's size is read from its images
    # (image_size None); the 32x32 sets are small, so 128: held at 32x32 in device memory and
    # upsampled inside the step. At 32x32 the ImageNet stem would leave stage 4 1x1 maps.
    c.image_size = None if dataset == "folder" else 128
    # BiT: random crop + horizontal flip for every task. Here: shifts of up to an eighth of the
    # side with mirror padding by the mean (16 px at 128, BiT's 128-of-160 crop range), and flips.
    c.augment = "cifar"
    # normalization None: with init_from, ImageNet's channel mean and std, as the weights expect.
    # BiT's batch. A training set smaller than it (a folder of a few hundred images) takes the
    # largest power of two (times the device count) it fills, the rate scaled linearly with it
    # (`config.fitted_batch_size`; bit_hyperrule below turns that on).
    c.batch_size = 512
    c.learning_rate = 0.003  # BiT: small, so the pretrained features are refined, not overwritten
    c.lr_scaling = "none"  # 0.003 is BiT's rate at batch 512 already
    c.optimizer = "sgd"
    c.momentum = 0.9  # BiT
    c.nesterov = False
    # BiT's schedule from the training set's size: 500 steps under 20k examples, 10k under 500k
    # (CIFAR's 50k, shapes10's 40k), 20k above; linear warm-up (100 or 500 steps), the rate
    # divided by 10 at 30%, 60% and 90%. BiT also mixes pairs of images (MixUp, alpha 0.1) on
    # datasets of 20k examples or more; our pipeline has no MixUp. A folder under 10,240 images
    # trains at most folder_epochs (25) epochs instead of the 500 steps, which ignore the size
    # below 20k: 474 epochs of a 135-image folder, hours on a CPU (`config.fit_length_to_folder`).
    c.bit_hyperrule = True
    c.lr_schedule = "step"
    c.lr_decay_factor = 0.1
    c.warmup = "linear"
    c.warmup_learning_rate = 0.0
    # No weight decay: decay pulls every weight towards zero, i.e. away from the pretrained
    # solution, and a short fine-tune from a good start has little to regularise against.
    c.weight_decay = 0.0
    c.label_smoothing = 0.0
    c.dtype = "float32"  # set 'bfloat16' on accelerators: params and optimizer state stay float32
    # BN over the whole batch: the running statistics start from ImageNet's and move to this
    # dataset's at the usual momentum; per-group statistics would only add noise here.
    c.bn_group_size = None
    c.log_every_steps = 100
    c.eval_every_steps = 1_000
    c.eval_batch_size = 500
    c.checkpoint_every_steps = 1_000
    c.keep_checkpoints = 2
    c.eval_views = "center"
    return c
