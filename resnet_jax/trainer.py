"""The training loop: config -> data -> sharded steps -> metrics, evaluation and checkpoints.

This is the only module that reads the config whole; everything it calls takes plain arguments.
`train_and_evaluate(config, workdir)` resumes from the newest checkpoint in `workdir` when there is
one, and writes `config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/` and, at the end,
`summary.json` (see docs/training.md). What it does on preemption, NaNs, damaged checkpoints, full
disks and bad configs is in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from ml_collections import config_dict

from resnet_jax import checkpoint, evaluate, faults, metrics, numerics, optim, parallel, validation
from resnet_jax.data import synthetic  # JAX only: no TensorFlow


def default_config() -> ml_collections.ConfigDict:
    """Every key the trainer reads, with its default; config files override a few of them."""
    c = ml_collections.ConfigDict()
    c.model = "resnet20"  # a name from resnet_jax.models.available_models()
    c.model_overrides = ml_collections.ConfigDict()  # ResNetSpec fields, e.g. {'shortcut': 'B'}
    c.dtype = "float32"  # compute dtype ('bfloat16' for mixed precision); params stay float32
    c.bn_group_size = config_dict.placeholder(int)  # None or 0: BN over the global batch
    c.dataset = (
        "shapes10"  # imagenet2012, cifar10, cifar100, shapes10, synthetic (random, on device)
    )
    c.data_dir = config_dict.placeholder(str)  # tfds data dir (None: the tfds default)
    c.image_size = config_dict.placeholder(int)  # None: the dataset's native training size
    c.num_classes = config_dict.placeholder(int)  # None: the dataset's
    c.augment = config_dict.placeholder(str)  # None: the family's standard (paper / cifar)
    c.normalization = config_dict.placeholder(
        str
    )  # 32x32 sets: per_pixel_mean (He2015) | per_channel
    c.train_split = config_dict.placeholder(
        str
    )  # tfds split string; None: the dataset's train split
    c.eval_split = config_dict.placeholder(
        str
    )  # None: the dataset's eval split (test / validation)
    c.batch_size = 128  # global, over all devices and hosts
    c.num_epochs = 1.0
    c.num_train_steps = -1  # > 0 wins over num_epochs
    c.optimizer = "sgd"  # sgd | lars
    c.learning_rate = 0.1  # base rate, before linear scaling
    c.lr_scaling = "none"  # none | linear (lr = learning_rate * batch_size / 256)
    c.lr_schedule = "step"  # step | cosine | constant
    c.lr_decay_epochs = ()  # step schedule: multiply by lr_decay_factor at these epochs ...
    c.lr_decay_steps = ()  # ... or at these steps (wins when set)
    c.lr_decay_factor = 0.1
    c.end_learning_rate = 0.0  # cosine floor
    c.warmup = "linear"  # linear (ramp from warmup_learning_rate) | constant (hold it)
    c.warmup_epochs = 0.0
    c.warmup_steps = 0  # > 0 wins over warmup_epochs
    c.warmup_learning_rate = 0.0
    c.weight_decay = 1e-4
    c.weight_decay_on = "all"  # all | kernels
    c.momentum = 0.9
    c.nesterov = False
    c.lars_trust_coefficient = 0.001
    c.label_smoothing = 0.0
    c.seed = 0
    c.log_every_steps = 100
    c.eval_every_steps = 0  # 0: evaluate only at the end
    c.eval_batch_size = config_dict.placeholder(int)  # None: batch_size
    c.eval_views = "center"  # --mode=eval: center | 10crop | multiscale
    c.eval_scales = (224, 256, 384, 480, 640)  # multiscale shorter sides (He2015 Table 4)
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 3
    c.prefetch_batches = 2
    c.synthetic_batches = 8  # dataset=synthetic: distinct device-resident batches, trained in turn
    c.profile = False  # trace profile_steps steps with jax.profiler into WORKDIR/profile
    c.profile_start_step = 10
    c.profile_steps = 5
    # Faults (docs/reliability.md). NaN/Inf loss or gradient: 'stop' (exit 65) or 'skip' the update.
    c.nonfinite_policy = "stop"
    c.debug_nan_step = 0  # test hook: K > 0 feeds the K-th batch with NaN images
    c.allow_config_change = False  # resume a workdir whose config.json differs (see the doc)
    c.restart_from_scratch = False  # if no checkpoint of the workdir loads: set them aside, start
    return c


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy with every derived value filled in: sizes from the dataset, epochs turned into steps.

    Adds `steps_per_epoch`, `peak_learning_rate` and `num_train_examples`; sets `num_classes`,
    `image_size`, `num_train_steps`, `warmup_steps` and `lr_decay_steps` to what the run uses.
    """
    from resnet_jax.data import datasets  # plain Python: TensorFlow only once a builder is needed

    c = ml_collections.ConfigDict(config.to_dict())
    if c.dataset == synthetic.NAME:
        info = synthetic.info(c.num_classes, c.image_size, c.batch_size, c.synthetic_batches)
    else:
        info = datasets.get_info(c.dataset, data_dir=c.data_dir)
    if c.num_classes is None:
        c.num_classes = info.num_classes
    if c.image_size is None:
        c.image_size = info.image_size
    c.num_train_examples = info.num_train
    c.steps_per_epoch = max(info.num_train // c.batch_size, 1)
    epochs_to_steps = lambda e: int(round(e * c.steps_per_epoch))  # noqa: E731
    if c.num_train_steps <= 0:
        c.num_train_steps = max(epochs_to_steps(c.num_epochs), 1)
    if c.warmup_steps <= 0:
        c.warmup_steps = epochs_to_steps(c.warmup_epochs)
    if not c.lr_decay_steps:
        c.lr_decay_steps = tuple(epochs_to_steps(e) for e in c.lr_decay_epochs)
    c.lr_decay_steps = tuple(int(s) for s in c.lr_decay_steps)
    c.peak_learning_rate = (
        optim.scaled_learning_rate(c.learning_rate, c.batch_size)
        if c.lr_scaling == "linear"
        else c.learning_rate
    )
    if c.lr_scaling not in ("none", "linear"):
        raise ValueError(f"lr_scaling must be 'none' or 'linear', got {c.lr_scaling!r}")
    if c.eval_batch_size is None:
        c.eval_batch_size = c.batch_size
    return c


def build_model(c: ml_collections.ConfigDict):
    from resnet_jax import models

    return models.create_model(
        c.model,
        num_classes=c.num_classes,
        dtype=jnp.dtype(c.dtype),
        bn_group_size=c.bn_group_size or None,
        **c.model_overrides.to_dict(),
    )


def build_optimizer(c: ml_collections.ConfigDict):
    """(learning-rate schedule, optax transformation) of a resolved config."""
    schedule = optim.make_schedule(
        c.peak_learning_rate,
        c.num_train_steps,
        schedule=c.lr_schedule,
        boundaries=c.lr_decay_steps,
        decay_factor=c.lr_decay_factor,
        warmup_steps=c.warmup_steps,
        warmup=c.warmup,
        warmup_lr=c.warmup_learning_rate,
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
    )
    return schedule, tx


def _train_batches(c, start_step: int, local_batch: int, mesh) -> Iterator[dict]:
    """Batches from `start_step` on: host numpy batches, or global arrays for synthetic data."""
    if c.dataset == synthetic.NAME:
        pool = synthetic.make_batches(
            mesh, c.synthetic_batches, c.batch_size, c.image_size, c.num_classes, seed=c.seed
        )
        return synthetic.train_batches(pool, start_step)
    from resnet_jax.data import pipeline  # TensorFlow only on the data path

    return pipeline.train_iterator(
        c.dataset,
        data_dir=c.data_dir,
        local_batch_size=local_batch,
        seed=c.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        augment=c.augment,
        image_size=c.image_size,
        split=c.train_split,
        normalization=c.normalization,
    )


def restore_or_init(c, model, tx, mesh, ckpt: checkpoint.Checkpointer, abstract):
    """(state, start_step, position) of the newest loadable checkpoint, or a fresh state at 0.

    `abstract`: the state's shapes and shardings (`parallel.abstract_train_state`).
    """
    image_shape = (c.image_size, c.image_size, 3)
    restored = ckpt.restore(abstract, fresh_start_if_damaged=c.restart_from_scratch)
    _agree_on_start(0 if restored is None else restored[1]["step"], ckpt.directory)
    if restored is None:
        rng = jax.random.PRNGKey(c.seed)
        state = parallel.create_sharded_train_state(model, tx, rng, image_shape, mesh)
        return state, 0, {}
    state, position = restored
    for key, want in (("seed", c.seed), ("global_batch_size", c.batch_size)):
        if position[key] != want:  # even with allow_config_change: the data order would differ
            raise faults.ConfigError(
                f"checkpoint in {ckpt.directory} was written with {key}={position[key]} but the "
                f"config has {want}; the input order would differ from the interrupted run's"
            )
    if position["process_count"] != jax.process_count():
        logging.warning(
            "resuming with %d processes, checkpoint written with %d: the example "
            "order changes from here on",
            jax.process_count(),
            position["process_count"],
        )
    print(f"resumed from checkpoint step {position['step']}", flush=True)
    return state, int(position["step"]), position


def _agree_on_start(step: int, directory: str) -> None:
    """Every process must resume from the same step (they might see different files)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    seen = sorted(set(np.asarray(multihost_utils.process_allgather(np.int32(step))).tolist()))
    if len(seen) > 1:
        raise faults.CheckpointLoadError(
            f"the processes would resume from different steps {seen}: they do not see the same "
            f"checkpoints in {directory}; put the workdir on a filesystem shared by all hosts"
        )


def _position(c, step: int, monitor: numerics.NonFiniteMonitor | None = None) -> dict:
    position = checkpoint.data_position(step, c.seed, c.batch_size, jax.process_count())
    if monitor is not None and monitor.policy == "skip":
        position["skipped_steps"] = monitor.skipped  # so the count survives a resume
    return position


def _checkpoints_on_disk(c) -> int:
    """Most checkpoints on disk at once: Orbax writes a new one before deleting the oldest."""
    every = c.checkpoint_every_steps
    planned = (c.num_train_steps // every if every > 0 else 0) + 1
    return (
        planned
        if c.keep_checkpoints is None or planned <= c.keep_checkpoints
        else c.keep_checkpoints + 1
    )


def _prepare_workdir(c, workdir: str, abstract) -> checkpoint.Checkpointer:
    """Checks disk and config against the workdir (before compiling), writes config.json."""
    validation.check_workdir(
        workdir,
        checkpoint_size=validation.checkpoint_bytes(abstract),
        checkpoints_on_disk=_checkpoints_on_disk(c),
    )
    ckpt = checkpoint.Checkpointer(
        workdir, every_steps=c.checkpoint_every_steps, keep=c.keep_checkpoints
    )
    changes = validation.check_same_run(
        workdir, c, has_checkpoints=bool(ckpt.all_steps()), defaults=default_config().to_dict()
    )
    if changes and jax.process_index() == 0:
        print(f"resnet_jax: resuming with config changes: {'; '.join(changes)}", flush=True)
    metrics.write_json(os.path.join(workdir, "config.json"), c.to_dict())
    return ckpt


def _count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


@contextlib.contextmanager
def _finish_writes_on_error(ckpt: checkpoint.Checkpointer, logger) -> Iterator[None]:
    """On an error, lets earlier (good) checkpoints finish writing and flushes the logs first."""
    try:
        yield
    except faults.Preempted:
        raise  # it closed both itself
    except BaseException:
        for finish in (ckpt.wait, logger.close):
            try:
                finish()
            except Exception as e:  # noqa: BLE001 - the error on its way is the one to report
                logging.warning("while stopping: %s", e)
        raise


class _Profiler:
    """Traces steps [start, start + n) with jax.profiler into WORKDIR/profile (TensorBoard's tab)."""

    def __init__(self, c, workdir):
        self.enabled, self.start, self.stop = (
            c.profile,
            c.profile_start_step,
            c.profile_start_step + c.profile_steps,
        )
        self.logdir, self.active = os.path.join(workdir, "profile"), False

    def before(self, step):
        if self.enabled and step == self.start and not self.active:
            jax.profiler.start_trace(self.logdir)
            self.active = True

    def after(self, step, state, last=False):
        if self.active and (step + 1 >= self.stop or last):
            jax.block_until_ready(state)  # the trace must contain the steps' device work
            jax.profiler.stop_trace()
            self.active = False
            print(f"profile of steps {self.start}-{step} in {self.logdir}", flush=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` if it holds a checkpoint), evaluates; returns summary.json."""
    t0 = time.perf_counter()
    validation.check_config(config)  # everything up to the first compile takes seconds
    c = resolve_config(config)
    mesh = parallel.make_mesh()
    validation.check_resolved(c, device_count=mesh.devices.size, process_count=jax.process_count())
    local_batch = parallel.local_batch_size(c.batch_size, mesh)
    model = build_model(c)
    schedule, tx = build_optimizer(c)
    abstract = validation.abstract_state(
        lambda: parallel.abstract_train_state(model, tx, (c.image_size, c.image_size, 3), mesh), c
    )
    ckpt = _prepare_workdir(c, workdir, abstract)
    state, start, position = restore_or_init(c, model, tx, mesh, ckpt, abstract)
    total = c.num_train_steps
    monitor = numerics.NonFiniteMonitor(
        c.nonfinite_policy, dtype=c.dtype, skipped=position.get("skipped_steps", 0)
    )
    monitor.last_good_checkpoint = start or None
    train_step = parallel.jit_train_step(
        model,
        tx,
        schedule,
        mesh,
        label_smoothing=c.label_smoothing,
        skip_nonfinite=c.nonfinite_policy == "skip",
    )
    eval_fn = evaluate.make_evaluator(model, mesh, **evaluate.eval_data_args(c), views="center")
    logger = metrics.MetricsLogger(workdir, total_steps=total, global_batch_size=c.batch_size)
    if jax.process_index() == 0:
        print(
            f"{c.model} on {c.dataset}: {total} steps of {c.batch_size} images "
            f"({c.steps_per_epoch} steps/epoch) on {jax.device_count()} device(s), "
            f"{jax.process_count()} process(es); workdir {workdir}",
            flush=True,
        )
        if c.dataset == synthetic.NAME:
            print(
                f"synthetic data: {c.synthetic_batches} random batches made on the devices "
                f"(no input pipeline; data options ignored); evaluation scores those "
                f"{c.synthetic_batches * c.batch_size} examples, so it measures memorisation of "
                f"random labels, not accuracy",
                flush=True,
            )

    batches = parallel.prefetch_to_mesh(
        _train_batches(c, start, local_batch, mesh), mesh, c.prefetch_batches
    )
    profiler = _Profiler(c, workdir)
    pending, checked, last_train = [], [], {}
    eval_time, timed_from, timed_steps = 0.0, None, 0
    hook = faults.FaultHook()

    def check_metrics(done):  # fetches the pending step metrics; a NaN under 'stop' raises here
        checked.extend(monitor.check(done - len(pending) + 1, pending))
        pending.clear()

    def save(done, state, force=False):  # never writes a state that is not finite
        if not (force or ckpt.should_save(done)):
            return
        check_metrics(done)
        monitor.check_state(done, state)
        if ckpt.save(done, state, _position(c, done, monitor), force=force):
            monitor.last_good_checkpoint = done
            hook.after_save_started(done)

    with (
        faults.PreemptionWatcher(jax.process_count()) as preemption,
        _finish_writes_on_error(ckpt, logger),
    ):
        for step in range(start, total):
            profiler.before(step)
            batch = next(batches)
            if step + 1 == c.debug_nan_step:
                batch = numerics.poison_batch(batch)
            state, m = train_step(state, batch)
            pending.append(m)
            profiler.after(step, state, last=step + 1 == total)
            done = step + 1
            if timed_from is None:  # compilation is not throughput: time from step 1's end
                jax.block_until_ready(m)
                timed_from = time.perf_counter()
                logger.start(done)
            else:
                timed_steps += 1
            if done % c.log_every_steps == 0 or done == total:
                check_metrics(done)
                last_train = logger.log_train(done, monitor.loggable(checked))
                checked.clear()
            if c.eval_every_steps > 0 and done % c.eval_every_steps == 0 and done != total:
                # Queued train steps must finish first, or their compute is counted as eval time
                # and training images/s comes out too high.
                jax.block_until_ready(state)
                t = time.perf_counter()
                last_eval = eval_fn(state)
                logger.log_eval(done, last_eval)
                eval_time += time.perf_counter() - t
                logger.start(done)  # eval time is not training time
            save(done, state)
            hook.after_step(done, ckpt.wait)
            if done < total and preemption.should_stop(done):
                save(done, state, force=True)
                ckpt.close()
                logger.close()
                raise faults.Preempted(
                    f"preempted by {preemption.received} after step {done}: checkpoint {done} "
                    f"is in {ckpt.directory}; rerun the same command to resume",
                    done,
                )
        jax.block_until_ready(state)
        train_time = (time.perf_counter() - timed_from - eval_time) if timed_from else 0.0
        save(total, state, force=True)

        last_eval = eval_fn(state)
        logger.log_eval(total, last_eval)
        ckpt.close()
        logger.close()
    summary = {
        "step": total,
        "model": c.model,
        "dataset": c.dataset,
        "params": _count_params(state.params),
        "eval": last_eval,
        "train": last_train,
        "wall_time_s": time.perf_counter() - t0,
        "images_per_sec": timed_steps * c.batch_size / train_time if train_time > 0 else None,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "skipped_steps": monitor.skipped,
    }
    summary_path = os.path.join(workdir, "summary.json")
    if start == total and os.path.exists(
        summary_path
    ):  # only re-evaluated: keep the training figures
        with open(summary_path, encoding="utf-8") as f:
            previous = json.load(f)
        summary.update(
            {k: previous[k] for k in ("train", "images_per_sec", "wall_time_s") if k in previous}
        )
    metrics.write_json(summary_path, summary)
    if jax.process_index() == 0:
        what = (
            "accuracy on the synthetic pool (memorisation)"
            if c.dataset == synthetic.NAME
            else "test accuracy"
        )
        print(
            f"final {what}: top-1 {100 * last_eval['top1']:.2f}%, "
            f"top-5 {100 * last_eval['top5']:.2f}% on {last_eval['count']} examples "
            f"(wall time {summary['wall_time_s']:.0f} s)",
            flush=True,
        )
    return summary
