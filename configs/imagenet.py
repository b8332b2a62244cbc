"""ImageNet (ILSVRC-2012): He2015's recipe, or a modern one.

Usage: --config=configs/imagenet.py:resnet50          the paper's recipe (Sec. 3.4)
       --config=configs/imagenet.py:resnet50,modern   Goyal et al. 2017 / "Bag of Tricks" recipe
       --config=configs/imagenet.py:resnet50,one_gpu  the paper's recipe on one device, exactly
Any ImageNet model works (resnet18..152, resnet50_v1, plain34, resnet34_a, resnet50d, ...).
Prepare the data first: see README.md ("ImageNet").
"""

from resnet_jax.config import default_config


def paper(c):
    c.augment = "paper"  # shorter side random in [256, 480], random 224 crop, flip, lighting
    c.batch_size = 256  # "mini-batch size of 256"
    c.num_epochs = 90  # the paper ran ~120 epochs (60e4 iterations); 90 is the common practice
    c.learning_rate = 0.1  # "starts from 0.1"
    c.lr_scaling = "none"  # 256 is the reference batch already
    c.lr_schedule = "step"
    # "divided by 10 when the error plateaus": the usual fixed version of that rule.
    c.lr_decay_epochs = (30, 60, 80)
    c.weight_decay = 1e-4  # "weight decay of 0.0001"
    c.weight_decay_on = "all"  # Caffe decays every parameter
    c.momentum = 0.9  # "momentum of 0.9"
    c.nesterov = False
    c.label_smoothing = 0.0
    c.dtype = "float32"
    c.bn_group_size = 32  # BN statistics per GPU of 32 images (8 GPUs x 32 = 256)
    c.eval_views = "10crop"  # the paper's comparisons use 10-crop testing (Tables 2-3)
    return c


def one_gpu(c):
    """The paper's step on one device: its 8 GPUs x 32 images become 8 micro-batches of 32, one
    after another, with BN statistics per 32 images as on each of its GPUs. The gradient and the
    BN groups are those of the paper's step; the BN running statistics move by the mean of the 8
    groups' statistics, as across 8 devices here. A ResNet-50 step then holds the activations of
    32 images, not 256."""
    c = paper(c)
    c.grad_accum_steps = 8  # 256 = 8 x 32
    c.bn_group_size = 32  # one group per micro-batch
    return c


def modern(c):
    c.augment = "inception"  # random-resized crop (8%-100% area, 3/4-4/3 aspect) + flip
    c.batch_size = 1024  # large batch for many accelerators; the rules below keep it accurate
    c.num_epochs = 90
    c.learning_rate = 0.1
    c.lr_scaling = "linear"  # Goyal et al.: lr = 0.1 x batch / 256 = 0.4
    c.lr_schedule = "cosine"  # smooth decay to 0 (Loshchilov & Hutter), no plateau tuning
    c.warmup = "linear"
    c.warmup_epochs = 5  # Goyal et al.: ramp up over 5 epochs so the large lr does not diverge
    c.warmup_learning_rate = 0.0
    c.weight_decay = 1e-4
    c.weight_decay_on = "kernels"  # "no bias decay": BN scale/shift and biases not decayed
    c.momentum = 0.9
    c.nesterov = True  # a free, small gain for large-batch momentum SGD
    c.label_smoothing = 0.1  # Szegedy et al. 2016, +~0.4% top-1 on ResNet-50
    c.dtype = "bfloat16"  # bf16 compute, float32 params and optimizer state
    c.bn_group_size = None  # synchronised BN over the global batch
    c.model_overrides = {"zero_init_residual": True}  # Goyal et al.: each unit starts as identity
    c.eval_views = "center"  # the modern protocol: resize to 256, centre 224 crop
    return c


def get_config(arg: str = "resnet50"):
    model, _, variant = arg.partition(",")
    recipes = {"": paper, "paper": paper, "modern": modern, "one_gpu": one_gpu}
    if variant not in recipes:
        raise ValueError(
            f"unknown ImageNet recipe {variant!r}: use MODEL, MODEL,paper, MODEL,modern or "
            "MODEL,one_gpu"
        )
    c = default_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.image_size = 224
    c = recipes[variant](c)
    c.log_every_steps = 100
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 2_000
    c.keep_checkpoints = 3
    return c
