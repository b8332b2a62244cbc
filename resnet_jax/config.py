"""Config -> objects: the default config, its resolution, and the model and optimizer it names.

The one place that turns an ml_collections config into things: the trainer, evaluation, the
experiments and the benchmark all build their model and optimizer here, so a config means the same
run wherever it is used. Below it lie only `models`, `optim` and `data` (which never read a config).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_dict

from resnet_jax import optim, plugins
from resnet_jax.data import catalog, folder  # numpy and Pillow only: no TensorFlow

# Evaluation protocols: one centre crop, He2015's 10 crops, or its fully-convolutional multi-scale.
EVAL_VIEWS = catalog.EVAL_VIEWS

# The most epochs a folder trains by default (`fit_length_to_folder`). 25: what PyTorch's
# transfer-learning tutorial trains on its 244 images of ants and bees, a folder of the size
# this rule is for (SGD, lr 0.001, momentum 0.9, num_epochs=25).
FOLDER_EPOCHS = 25.0
# BiT-HyperRule's length follows the data from here up (10k steps, then 20k); below, it is 500
# steps whatever the size.
BIT_SMALL_EXAMPLES = 20_000


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with its default; config files override a few of them."""
    c = ml_collections.ConfigDict()
    c.model = "resnet20"  # a name from resnet_jax.models.available_models()
    c.model_overrides = ml_collections.ConfigDict()  # ResNetSpec fields, e.g. {'shortcut': 'B'}
    # Python files (PATH.py, relative to the current directory; the run records them absolute) or
    # module names, imported before the model is built: e.g. a unit registered with
    # resnet_jax.models.register_block, chosen by model_overrides={'block': NAME}
    c.plugins = ()
    c.dtype = "float32"  # compute dtype ('bfloat16' for mixed precision); params stay float32
    c.bn_group_size = config_dict.placeholder(int)  # None or 0: BN over the global batch
    # imagenet2012, cifar10, cifar100, shapes10, synthetic (random, on device), or folder:PATH
    # (PATH/train/<class>/<image>, evaluated on PATH/test, validation or val; docs/data.md)
    c.dataset = "shapes10"
    # A folder without an evaluation folder (PATH/train/<class>/<image> or PATH/<class>/<image>):
    # the part of each class held out to evaluate on, each file by a hash of its path; 0 refuses
    # such a folder.
    c.holdout_fraction = folder.HOLDOUT_FRACTION
    c.data_dir = config_dict.placeholder(str)  # tfds data dir (None: the tfds default)
    # device: the whole split in accelerator memory, augmented there (32x32 sets, no TensorFlow);
    # host: tf.data on the CPU. None: device for the 32x32 sets, host for ImageNet; a folder:
    # device when its training split fits folder.DEVICE_LIMIT_BYTES (4 GiB as uint8), else host.
    c.input_pipeline = config_dict.placeholder(str)
    # None: the dataset's native training size; a folder's from its images: with init_from
    # BiT-HyperRule's (128 or 384), from scratch their own size, up to 224 (ImageNet's)
    c.image_size = config_dict.placeholder(int)
    c.num_classes = config_dict.placeholder(int)  # None: the dataset's
    c.augment = config_dict.placeholder(str)  # None: the family's standard (paper / cifar)
    # 32x32 sets and folders: per_pixel_mean (He2015) | per_channel | mean_std (ImageNet's, the
    # default with init_from: what the weights expect)
    c.normalization = config_dict.placeholder(str)
    c.train_split = config_dict.placeholder(
        str
    )  # tfds split string; None: the dataset's train split
    c.eval_split = config_dict.placeholder(
        str
    )  # None: the dataset's eval split (test / validation)
    c.batch_size = 128  # global, over all devices and hosts
    # k > 1: each step's batch as k micro-batches of batch_size / k, one after another, their
    # gradients averaged into one update; each micro-batch has its own BN statistics and only one
    # micro-batch's activations are in memory at a time (docs/training.md)
    c.grad_accum_steps = 1
    c.num_epochs = 1.0  # training length in epochs (when num_train_steps is -1)
    c.num_train_steps = -1  # > 0 wins over num_epochs
    # True: the schedule's length, warm-up and decays follow BiT-HyperRule from the training set's
    # size (`bit_schedule`), over num_epochs and the warm-up and decay keys; a batch_size larger
    # than the training set shrinks to fit it, the rates scaled with it (`fitted_batch_size`)
    c.bit_hyperrule = False
    # A folder of images (dataset=folder:PATH) trains at most this many epochs of its training
    # images, warm-up and decays kept at their fractions of the run (`fit_length_to_folder`);
    # with bit_hyperrule only below BiT's 20k examples. 0: the recipe's length, however small
    # the folder
    c.folder_epochs = FOLDER_EPOCHS
    c.optimizer = "sgd"  # sgd | lars
    c.learning_rate = 0.1  # base rate, before linear scaling
    c.lr_scaling = "none"  # none | linear (lr = learning_rate * batch_size / 256)
    c.lr_schedule = "step"  # step | cosine | constant
    c.lr_decay_epochs = ()  # step schedule: multiply by lr_decay_factor at these epochs ...
    c.lr_decay_steps = ()  # ... or at these steps (wins when set)
    c.lr_decay_factor = 0.1  # step schedule: the factor at each decay
    c.end_learning_rate = 0.0  # cosine floor
    # linear (ramp from warmup_learning_rate) | constant (hold it for the warm-up steps) |
    # until_error (hold it until the training error falls below warmup_until_error: He2015's
    # ResNet-110 rule, no step count)
    c.warmup = "linear"
    c.warmup_epochs = 0.0  # warm-up length in epochs
    c.warmup_steps = 0  # > 0 wins over warmup_epochs
    c.warmup_learning_rate = 0.0  # rate at the start of warm-up, before linear scaling
    c.warmup_until_error = 0.8  # until_error: the training-error threshold (fraction)
    # until_error: the error is a moving average over about this many training images
    c.warmup_error_images = 2560
    c.weight_decay = 1e-4  # L2 coefficient, added to the gradient
    c.weight_decay_on = "all"  # all | kernels
    c.momentum = 0.9  # SGD / LARS momentum
    c.nesterov = False  # Nesterov momentum instead of heavy-ball
    c.lars_trust_coefficient = 0.001  # optimizer=lars: its eta
    c.label_smoothing = 0.0  # mass spread uniformly over all classes
    # > 0, e.g. 0.9999: keep an exponential moving average of the params and BN statistics (its
    # decay warmed up as min(d, (1 + step) / (10 + step))), evaluated beside the trained weights
    # (ema_* metrics; predict --weights ema). 0: off
    c.ema_decay = 0.0
    c.seed = 0  # initialisation and data order
    # Deterministic GPU reductions and scatters (--xla_gpu_deterministic_ops, set before JAX starts):
    # bitwise repeatable GPU runs at a cost in speed. CPU programs are deterministic already.
    c.deterministic = False
    # Several seeds as one program, e.g. (0, 1, 2): one run per seed in WORKDIR/seed<k>, their
    # steps vmapped together, on every input path (docs/training.md); `seed` then stays at 0.
    # Empty: one run of `seed`.
    c.seeds = ()
    # Pretrained start: a run directory (its newest checkpoint) or a PyTorch-named weights file
    # (.safetensors, .npz, .pth); params and BN statistics only, the head fresh if the class count
    # differs. Read only when the workdir has no checkpoint (docs/pretrained.md).
    c.init_from = config_dict.placeholder(str)
    c.log_every_steps = 100  # train metrics to console, metrics.jsonl, TensorBoard
    c.eval_every_steps = 0  # 0: evaluate only at the end
    c.eval_batch_size = config_dict.placeholder(int)  # None: batch_size
    c.eval_views = "center"  # --mode=eval: center | 10crop | multiscale
    c.eval_scales = (224, 256, 384, 480, 640)  # multiscale shorter sides (He2015 Table 4)
    c.checkpoint_every_steps = 1000  # 0: only at the end (and on preemption)
    c.keep_checkpoints = 3  # newest checkpoints kept on disk (None: all)
    c.prefetch_batches = 2  # batches put on the devices ahead of the step
    c.synthetic_batches = 8  # dataset=synthetic: distinct device-resident batches, trained in turn
    c.profile = False  # trace profile_steps steps with jax.profiler into WORKDIR/profile
    c.profile_start_step = 10  # profile: first traced step
    c.profile_steps = 5  # profile: steps traced
    # Faults (docs/reliability.md). NaN/Inf loss or gradient: 'stop' (exit 65) or 'skip' the update.
    c.nonfinite_policy = "stop"
    c.debug_nan_step = 0  # test hook: K > 0 feeds the K-th batch with NaN images
    c.allow_config_change = False  # resume a workdir whose config.json differs (see the doc)
    c.restart_from_scratch = False  # if no checkpoint of the workdir loads: set them aside, start
    return c


@dataclasses.dataclass(frozen=True)
class Run:
    """A run as it starts: its resolved config `c`, the record of its dataset (`catalog.Dataset`)
    and the plan of reading it (`catalog.Plan`). Made once (`resolve_run`); below it, records.

    notes: the lines the run prints about its data (`catalog.notes`, and a batch fitted to a small
    training set) and a warning where it ends inside its warm-up. problems: what resolving found
    wrong with the run as a whole (a schedule whose decays fall inside its warm-up), reported by
    the checks with the data's own. Both are made as a run starts; a run rebuilt from its
    config.json (`saved`) has neither."""

    c: ml_collections.ConfigDict
    data: catalog.Dataset
    plan: catalog.Plan
    notes: tuple[str, ...]
    problems: tuple[str, ...]


def resolve_run(config: ml_collections.ConfigDict, saved: dict | None = None) -> Run:
    """The config resolved with every derived value (`resolve_config`), its dataset opened once.

    saved: the run's own resolved config (its config.json), from which a folder's record is
    rebuilt without scanning the folder (--mode=eval, predict, export).
    """
    c = ml_collections.ConfigDict(config.to_dict())
    d = open_data(c, saved)
    _resolve(c, d)
    plan = catalog.Plan(
        train_split=c.train_split,
        eval_split=c.eval_split,
        augment=c.augment,
        normalization=normalization(c, d),
        batch_size=c.batch_size,
        eval_batch_size=c.eval_batch_size,
        eval_views=c.eval_views,
        eval_scales=tuple(c.eval_scales),
        synthetic_batches=c.synthetic_batches,
    )
    if saved:  # a run that has started: checked and announced then, its folder not read again
        return Run(c, d, plan, notes=(), problems=())
    notes = _notes(c, d, plan) + _warmup_notes(c)
    return Run(c, d, plan, notes=notes, problems=_schedule_problems(c))


def open_data(c, saved: dict | None = None) -> catalog.Dataset:
    """The record of the dataset a config names (`catalog.open` with the config's choices);
    `saved`: as `resolve_run`'s, for the run of the same dataset."""
    if saved and saved.get("dataset") != c.dataset:
        saved = None  # another dataset's run: read this one afresh
    return catalog.open(
        c.dataset,
        data_dir=c.get("data_dir"),
        image_size=c.get("image_size"),
        input_pipeline=c.get("input_pipeline"),
        holdout=c.get("holdout_fraction", folder.HOLDOUT_FRACTION),
        fine_tuning=bool(c.get("init_from")),
        num_classes=c.get("num_classes"),
        model=c.get("model"),
        pool_examples=c.get("synthetic_batches", 8) * c.get("batch_size", 128),
        saved=saved,
    )


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every derived value filled in: sizes from the dataset, epochs turned into steps
    (`resolve_run`'s config)."""
    return resolve_run(config).c


def _resolve(c: ml_collections.ConfigDict, d: catalog.Dataset) -> None:
    """Fills in `c` from the record `d`: adds `steps_per_epoch`, `peak_learning_rate`,
    `peak_warmup_learning_rate` and `num_train_examples`; sets `num_classes`, `image_size`,
    `num_train_steps`, `warmup_steps` and `lr_decay_steps` to what the run uses."""
    if c.num_classes is None:
        c.num_classes = d.num_classes
    if "plugins" in c:
        c.plugins = plugins.absolute(c.plugins)
    if c.image_size is None:
        c.image_size = d.image_size
    c.update(catalog.run_keys(d))
    c.num_train_examples = d.num_train
    if c.get("bit_hyperrule") and d.num_train < c.batch_size:
        _fit_batch(c, d.num_train)
    c.steps_per_epoch = max(d.num_train // c.batch_size, 1)
    if c.get("bit_hyperrule"):
        total, warmup, decays = bit_schedule(d.num_train, c.num_train_steps)
        c.num_train_steps, c.warmup_steps, c.lr_decay_steps = total, warmup, decays
    epochs_to_steps = lambda e: int(round(e * c.steps_per_epoch))
    if c.num_train_steps <= 0:
        c.num_train_steps = max(epochs_to_steps(c.num_epochs), 1)
    if c.warmup_steps <= 0:
        c.warmup_steps = epochs_to_steps(c.warmup_epochs)
    if not c.lr_decay_steps:
        c.lr_decay_steps = tuple(epochs_to_steps(e) for e in c.lr_decay_epochs)
    c.lr_decay_steps = tuple(int(s) for s in c.lr_decay_steps)
    if d.kind == "folder" and c.get("folder_epochs", 0) > 0:
        fit_length_to_folder(c, d.num_train)
    if c.lr_scaling not in ("none", "linear"):
        raise ValueError(f"lr_scaling must be 'none' or 'linear', got {c.lr_scaling!r}")
    scale = (
        (lambda lr: optim.scaled_learning_rate(lr, c.batch_size))
        if c.lr_scaling == "linear"
        else (lambda lr: lr)
    )
    c.peak_learning_rate = scale(c.learning_rate)
    c.peak_warmup_learning_rate = scale(c.warmup_learning_rate)
    if c.eval_batch_size is None:
        c.eval_batch_size = c.batch_size
    if c.eval_batch_size > d.num_eval > 0:
        # One batch holds the whole evaluation split: pad it to the devices, not to the batch.
        c.eval_batch_size = max(-(-d.num_eval // jax.device_count()), 1) * jax.device_count()


def fitted_batch_size(num_examples: int, device_count: int) -> int:
    """The largest device_count x 2^k that `num_examples` fill (a recipe's batch for a training
    set smaller than its own); 0 when they fill not even one example per device."""
    if num_examples < device_count:
        return 0
    return device_count * 2 ** int(math.log2(num_examples // device_count))


def _fit_batch(c: ml_collections.ConfigDict, num_train: int) -> None:
    """A recipe's batch (BiT's 512) shrunk to a training set smaller than it, the rates scaled
    linearly with it (as BiT scales its rate with the batch); says so in `batch_size_rule`."""
    devices = jax.device_count()
    fitted = fitted_batch_size(num_train, devices)
    if not fitted:
        return  # refused by the checks, naming batch_size
    ratio, was, rate = fitted / c.batch_size, c.batch_size, c.learning_rate
    if c.lr_scaling == "none":  # 'linear' scales the rate with the batch already
        c.learning_rate, c.warmup_learning_rate = rate * ratio, c.warmup_learning_rate * ratio
    c.batch_size = fitted
    c.batch_size_rule = (
        f"batch_size {fitted}: the recipe's {was} is more than the {num_train} training images; "
        f"the largest power of two (times the {devices} device(s)) they fill, learning_rate "
        f"{rate:g} scaled linearly to {c.learning_rate:g}; set --config.batch_size (at most "
        f"{num_train}) to choose"
    )


def fit_length_to_folder(c: ml_collections.ConfigDict, num_train: int) -> None:
    """A recipe's length cut to `folder_epochs` epochs of a folder of `num_train` training images
    where it is longer, its warm-up and decays at the same fractions of the run (recipes.py's
    rule); says so in `length_rule`.

    Why: a recipe's length is set for its own dataset and repeats a small folder hundreds of
    times. configs/default.py's 3,000 steps of 32 are 2.4 epochs of shapes10 but 711 of 135
    images; BiT-HyperRule's 500 steps of 512 are 12.8 epochs of 20k examples, 256 of VTAB-1k's
    1,000 and, at the batch of 128 those 135 images fill, 474. On 2 CPU cores those are hours:
    the runs' own ETAs were 3 h 52 min (96 px) and 6 h 01 min (ResNet-50 at 128 px) on a 2-core
    AMD EPYC shared with other jobs, 2026-12-07; 25 epochs are minutes. The recipe stands
    wherever it is the shorter: from scratch on 3,840 images or more (3,000 x 32 / 25), a
    fine-tune on 10,240 or more (500 x 512 / 25); and BiT's lengths from 20k examples up, which
    do follow the data, are never cut.
    """
    if c.get("bit_hyperrule") and num_train >= BIT_SMALL_EXAMPLES:
        return
    was, epochs = c.num_train_steps, c.folder_epochs
    steps = max(int(round(epochs * c.steps_per_epoch)), 1)
    if steps >= was:
        return
    at = lambda s: int(round(s * steps / was))
    c.num_train_steps, c.warmup_steps = steps, at(c.warmup_steps)
    c.lr_decay_steps = tuple(at(s) for s in c.lr_decay_steps)
    c.length_rule = (
        f"num_train_steps {steps}: {epochs:g} epochs (folder_epochs) of the {num_train} training "
        f"images at {c.steps_per_epoch} step(s) of {c.batch_size} each, where the recipe's {was} "
        f"steps would be {was * c.batch_size / num_train:.0f} epochs; warm-up and decays at the "
        "same fractions of the run; --config.folder_epochs=0 keeps the recipe's length, a "
        "smaller --config.num_train_steps shortens it"
    )


def bit_schedule(num_examples: int, num_steps: int = -1) -> tuple[int, int, tuple[int, ...]]:
    """(steps, warm-up steps, decay steps) of BiT-HyperRule for a training set of `num_examples`.

    Kolesnikov et al. (2020), as big_transfer's `bit_hyperrule.get_schedule`: 500 steps under 20k
    examples (warm-up 100), 10k under 500k and 20k above (warm-up 500); the rate divided by 10 at
    30%, 60% and 90%. `num_steps` > 0 keeps those fractions over another length.
    """
    if num_examples < 20_000:
        total, warmup = 500, 100
    elif num_examples < 500_000:
        total, warmup = 10_000, 500
    else:
        total, warmup = 20_000, 500
    if num_steps > 0:
        total, warmup = num_steps, int(round(num_steps * warmup / total))
    return total, warmup, tuple(int(round(total * f)) for f in (0.3, 0.6, 0.9))


def _notes(c: ml_collections.ConfigDict, d: catalog.Dataset, plan: catalog.Plan) -> tuple[str, ...]:
    fitted = [c[k] for k in ("batch_size_rule", "length_rule") if c.get(k)]
    return tuple(catalog.notes(d, plan, c.model) + fitted)


def _schedule_problems(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The schedule checked once the run's length is known (its decays against its warm-up)."""
    try:
        build_optimizer(c)
    except ValueError as e:
        return (
            f"the learning-rate schedule: {e} (num_train_steps {c.num_train_steps}, warmup_steps "
            f"{c.warmup_steps}, lr_decay_steps {tuple(c.lr_decay_steps)}); lengthen the run or "
            "move the decays",
        )
    return ()


def _warmup_notes(c: ml_collections.ConfigDict) -> tuple[str, ...]:
    """A warning where the run ends inside its warm-up: it never trains at its peak rate."""
    if c.warmup == "until_error" or not 0 < c.num_train_steps <= c.warmup_steps:
        return ()  # until_error's warm-up ends with the training error, not at a step
    try:
        schedule, _ = build_optimizer(c)
    except ValueError:  # a schedule that cannot be built is one of `_schedule_problems`
        return ()
    last = float(schedule(c.num_train_steps - 1))
    return (
        f"WARNING: the run ends inside its warm-up ({c.num_train_steps} steps, warmup_steps "
        f"{c.warmup_steps}): the learning rate never reaches its peak {c.peak_learning_rate:g} "
        f"(the last step's is {last:.3g}); lengthen --config.num_train_steps past the warm-up or "
        "shorten --config.warmup_steps",
    )


def normalization(c: ml_collections.ConfigDict, d: catalog.Dataset) -> str:
    """The config's normalisation, else the record's default for the kind of run (ImageNet's for
    a run from pretrained weights where the data would bring its own statistics)."""
    return c.get("normalization") or catalog.default_normalization(d, bool(c.get("init_from")))


def build_finish(c: ml_collections.ConfigDict):
    """The `resnet_jax.data.finish.Finish` of a resolved config's input path: what turns its uint8
    batches into model inputs inside the train, eval and predict steps (the record rebuilt from
    `c` itself, so a folder is not scanned)."""
    from resnet_jax.data import inputs

    run = resolve_run(c, saved=c)
    return inputs.finish(run.data, run.plan)


def ema_on(c: ml_collections.ConfigDict) -> bool:
    """Whether the run keeps an average of its weights (False for runs from before `ema_decay`)."""
    return bool(c.get("ema_decay", 0.0))


def build_model(c: ml_collections.ConfigDict):
    """The config's model, its `plugins` imported first (they may register what it names)."""
    from resnet_jax import models

    plugins.load(c.get("plugins", ()))
    return models.create_model(
        c.model,
        num_classes=c.num_classes,
        dtype=jnp.dtype(c.dtype),
        bn_group_size=c.bn_group_size or None,
        **c.model_overrides.to_dict(),
    )


def build_optimizer(c: ml_collections.ConfigDict):
    """(learning-rate schedule, optax transformation) of a resolved config (`build`'s: the model
    object it makes first holds no parameters and costs nothing)."""
    return build(c)[1:]


def build(c: ml_collections.ConfigDict):
    """(model, learning-rate schedule, optax transformation) of a resolved config: the model
    (`models`), then the schedule and optimizer (`optim`)."""
    model = build_model(c)
    gate = None
    if c.warmup == "until_error":
        gate = optim.error_gated_warmup(
            c.peak_warmup_learning_rate / c.peak_learning_rate,
            c.warmup_until_error,
            window_steps=c.warmup_error_images / c.batch_size,
        )
    schedule = optim.make_schedule(
        c.peak_learning_rate,
        c.num_train_steps,
        schedule=c.lr_schedule,
        boundaries=c.lr_decay_steps,
        decay_factor=c.lr_decay_factor,
        warmup_steps=0 if gate else c.warmup_steps,
        warmup=c.warmup,
        warmup_lr=c.peak_warmup_learning_rate,
        end_lr=c.end_learning_rate,
    )
    tx = optim.make_optimizer(
        schedule,
        optimizer=c.optimizer,
        momentum=c.momentum,
        nesterov=c.nesterov,
        weight_decay=c.weight_decay,
        weight_decay_on=c.weight_decay_on,
        lars_trust_coefficient=c.lars_trust_coefficient,
        gate=gate,
    )
    return model, schedule, tx
