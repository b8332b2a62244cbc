"""Fine-tuning ImageNet weights on a small 32x32 dataset (CIFAR-10/100, shapes10).

Usage: --config=configs/finetune.py:cifar10 --config.init_from=WEIGHTS
       --config=configs/finetune.py:cifar100,resnet50d --config.init_from=WEIGHTS
WEIGHTS: torchvision's resnet50 as .safetensors (docs/pretrained.md gives the file), or a run
directory (`python -m resnet_jax.pretrained import ...`, or any ImageNet run of ours). The 1000-class
head is replaced by a fresh one for the dataset's classes; everything else starts pretrained.

The recipe is Kolesnikov et al.'s BiT-HyperRule for fine-tuning (Big Transfer, 2020), the one
published rule that needs no per-dataset search, adapted where our 32x32 pipeline differs.
"""

from resnet_jax.config import default_config

DATASETS = ("cifar10", "cifar100", "shapes10")


def get_config(arg: str = "cifar10"):
    dataset, _, model = arg.partition(",")
    if dataset not in DATASETS:
        raise ValueError(f"fine-tuning dataset must be one of {DATASETS}, got {dataset!r}")
    c = default_config()
    c.model = model or "resnet50"  # any ImageNet net with a pretrained mapping
    c.dataset = dataset
    # The 32x32 images stay 32x32 (the on-device pipeline does not upsample): the ImageNet stem then
    # leaves 8x8 maps for stage 1 and 1x1 for stage 4. Features still transfer, but expect less than
    # the published fine-tunes at 224 or BiT's 128 crops of 160 upsampled images.
    c.augment = "cifar"  # BiT: random crop + horizontal flip for every task (here pad-4 crops)
    # ImageNet weights expect inputs normalised per channel (torchvision's mean/std); this dataset's
    # own per-channel statistics do the same job (He2015's per-pixel mean would not).
    c.normalization = "per_channel"
    c.batch_size = 512  # BiT
    c.learning_rate = 0.003  # BiT: small, so the pretrained features are refined, not overwritten
    c.lr_scaling = "none"  # 0.003 is BiT's rate at batch 512 already
    c.optimizer = "sgd"
    c.momentum = 0.9  # BiT
    c.nesterov = False
    # BiT: 10k steps for datasets of 20k-500k examples (CIFAR's 50k, shapes10's 40k), the rate
    # divided by 10 at 3k, 6k and 9k, after a linear warm-up over the first 500. BiT also mixes
    # pairs of images (MixUp, alpha 0.1) on datasets this large; our pipeline has no MixUp.
    c.num_train_steps = 10_000
    c.lr_schedule = "step"
    c.lr_decay_steps = (3_000, 6_000, 9_000)
    c.lr_decay_factor = 0.1
    c.warmup = "linear"
    c.warmup_steps = 500
    c.warmup_learning_rate = 0.0
    # No weight decay: decay pulls every weight towards zero, i.e. away from the pretrained
    # solution, and a 10k-step fine-tune from a good start has little to regularise against.
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
    c.eval_views = "center"  # the native 32x32 image, as the CIFAR protocol
    return c
