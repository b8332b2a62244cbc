"""The training loop: config -> data -> sharded steps -> metrics, evaluation and checkpoints.

This is the only module that reads the config whole; everything it calls takes plain arguments.
`train_and_evaluate(config, workdir)` resumes from the newest checkpoint in `workdir` when there is
one, and writes `config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/` and, at the end,
`summary.json` (see docs/training.md). What it does on preemption, NaNs, damaged checkpoints, full
disks and bad configs is in docs/reliability.md.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from resnet_jax import config as config_lib
from resnet_jax import xla_options
from resnet_jax.data import inputs  # TensorFlow only once a host batch is asked for
from resnet_jax.engine import (
    checkpoint,
    evaluate,
    faults,
    metrics,
    numerics,
    parallel,
    stacked,
    steps,
    validation,
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
        state = parallel.create_sharded_train_state(
            model, tx, rng, image_shape, mesh, ema=config_lib.ema_on(c)
        )
        if c.get("init_from"):  # a fresh start only: a resumed fine-tune has its own checkpoints
            from resnet_jax.engine import warm_start

            state = warm_start.init_from(state, c.init_from, c.model, c.model_overrides.to_dict())
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
    return _ema_as_configured(c, state, position["step"]), int(position["step"]), position


def _ema_as_configured(c, state, step: int):
    """A restored state with an average of the weights exactly when the config asks for one (a
    change of `ema_decay` needs allow_config_change): started from the restored weights, or
    dropped."""
    wanted = config_lib.ema_on(c)
    if wanted == (state.ema is not None):
        return state
    if jax.process_index() == 0:
        print(
            f"ema_decay={c.ema_decay}: checkpoint {step} "
            + (
                "holds no average of the weights; it starts from the restored ones"
                if wanted
                else "holds an average of the weights, which this run drops"
            ),
            flush=True,
        )
    return steps.start_ema(state) if wanted else state.replace(ema=None)


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


def run_position(c, step: int, monitor: numerics.NonFiniteMonitor | None = None) -> dict:
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


def prepare_workdir(c, workdir: str, abstract) -> checkpoint.Checkpointer:
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
        workdir,
        c,
        has_checkpoints=bool(ckpt.all_steps()),
        defaults=config_lib.default_config().to_dict(),
    )
    if changes and jax.process_index() == 0:
        print(f"resnet_jax: resuming with config changes: {'; '.join(changes)}", flush=True)
    metrics.write_json(os.path.join(workdir, "config.json"), c.to_dict())
    return ckpt


def _throughput(
    batch: int, timed_steps: int, train_s: float, loop_s: float, steps_run: int, wall_s: float
) -> dict:
    """summary.json's three rates (images/s) and what each covers (see docs/training.md)."""
    rate = lambda steps, s: steps * batch / s if s > 0 and steps > 0 else None
    return {
        "images_per_sec": rate(timed_steps, train_s),
        "images_per_sec_with_checkpoints": rate(timed_steps, loop_s),
        "images_per_sec_wall": rate(steps_run, wall_s),
        "images_per_sec_covers": (
            "images_per_sec: training steps after the first, excluding compilation, evaluation "
            "and the time checkpoint saves held the loop; images_per_sec_with_checkpoints: the "
            "same steps including checkpoint saves; images_per_sec_wall: every step of this run "
            "over its whole wall time (start-up, compilation, evaluation and saves included)"
        ),
    }


def _count_params(params) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))


@contextlib.contextmanager
def finish_writes_on_error(ckpt: checkpoint.Checkpointer, logger) -> Iterator[None]:
    """On an error, lets earlier (good) checkpoints finish writing and flushes the logs first."""
    try:
        yield
    except faults.Preempted:
        raise  # it closed both itself
    except BaseException:
        for finish in (ckpt.wait, logger.close):
            try:
                finish()
            except Exception as e:
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


def print_header(run: config_lib.Run, workdir: str) -> None:
    if jax.process_index() != 0:
        return
    c = run.c
    print(
        f"{c.model} on {c.dataset}: {c.num_train_steps} steps of {c.batch_size} images "
        f"({c.image_size}x{c.image_size}, {c.num_classes} classes; {c.steps_per_epoch} "
        f"steps/epoch) on {parallel.describe_devices()}, "
        f"{jax.process_count()} process(es); workdir {workdir}",
        flush=True,
    )
    for note in run.notes:
        print(note, flush=True)
    on_cpu = jax.default_backend() == "cpu"
    unread = xla_options.unread_warning()
    if unread:
        print(unread, flush=True)
    if on_cpu and xla_options.SET_BY_PROJECT:
        print(xla_options.banner(), flush=True)
    if c.get("deterministic"):
        cpu = " (no effect here: CPU programs are deterministic already)"
        print(
            f"deterministic GPU ops: {xla_options.flags_line(xla_options.DETERMINISTIC)}"
            f"{cpu if on_cpu else ''}",
            flush=True,
        )
    unused_gpu = parallel.unused_gpu_warning()
    if unused_gpu:
        print(f"WARNING: {unused_gpu}", flush=True)


def already_finished(summary_path: str, t0: float, c=None, prefix: str = "") -> dict:
    """A rerun of a finished run: reports it and touches nothing (no metrics, no events file).

    `c`: the run's resolved config (top-5 is not printed for 5 classes or fewer); `prefix`: the
    run's name where several are reported."""
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    if jax.process_index() == 0:
        e = summary["eval"]
        accuracy = metrics.accuracy_text(e, c.num_classes if c else None, ", ")
        print(
            f"{prefix}already finished at step {summary['step']}: {accuracy} "
            f"(from summary.json; it trained in "
            f"{summary['wall_time_s']:.0f} s); nothing to do ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    return summary


@dataclasses.dataclass(frozen=True)
class Program:
    """What every run of one program shares, made once at start-up: the run (`config.Run`: the
    resolved config, the dataset's record and the plan of reading it), the mesh, the model and
    optimizer, the train state's shapes and the finish of the input path's batches."""

    run: config_lib.Run
    mesh: Any
    model: Any
    tx: Any
    schedule: Any
    abstract: Any
    finish: Any


def start_up(config: ml_collections.ConfigDict, workdir: str, check_workdir: str = "") -> Program:
    """The start-up of a run, or of several runs as one program in `workdir`: checks (seconds,
    before any compile; `check_workdir`: the run whose checkpoints decide whether init_from is
    read), the config turned into the dataset's record and the run's plan once, the model, the
    optimizer, the header, and the input path's finish (which prepares the data's copy)."""
    validation.check_config(config, check_workdir or workdir)
    run = config_lib.resolve_run(config)  # the one place the dataset is opened
    mesh = parallel.make_mesh()
    validation.check_resolved(
        run, device_count=mesh.devices.size, process_count=jax.process_count()
    )
    c = run.c
    model, schedule, tx = config_lib.build(c)
    abstract = validation.abstract_state(
        lambda: parallel.abstract_train_state(
            model, tx, (c.image_size, c.image_size, 3), mesh, ema=config_lib.ema_on(c)
        ),
        c,
    )
    print_header(run, workdir)
    finish = inputs.finish(run.data, run.plan)  # one normalisation for training and evaluation
    return Program(run, mesh, model, tx, schedule, abstract, finish)


class Run:
    """One run's own pieces: resolved config, workdir, checkpoints, NaN monitor, metrics writer."""

    def __init__(self, c, workdir: str, ckpt: checkpoint.Checkpointer, state, start, position):
        self.c, self.workdir, self.ckpt, self.state, self.start = c, workdir, ckpt, state, start
        self.monitor = numerics.NonFiniteMonitor(
            c.nonfinite_policy, dtype=c.dtype, skipped=position.get("skipped_steps", 0)
        )
        self.monitor.last_good_checkpoint = start or None
        self.logger = None
        self.checked, self.last_train, self.last_eval = [], {}, {}
        self.failed: str | None = None
        self.eval_time = 0.0

    @property
    def name(self) -> str:
        return f"seed {self.c.seed}"

    def stop(self, message: str) -> None:
        """Ends this run alone: its good checkpoints finish writing, its logs are flushed."""
        self.failed = message
        print(f"resnet_jax: run {self.name} ({self.workdir}) stopped: {message}", file=sys.stderr)
        sys.stderr.flush()
        self.ckpt.close()
        self.logger.close()


def open_run(p: Program, c, workdir: str, t0: float, prefix: str = "") -> Run | dict:
    """The run of config `c` in `workdir` restored or started (a `Run`), or the summary of a run
    that already finished there."""
    ckpt = prepare_workdir(c, workdir, p.abstract)
    state, start, position = restore_or_init(c, p.model, p.tx, p.mesh, ckpt, p.abstract)
    summary_path = os.path.join(workdir, "summary.json")
    if start == c.num_train_steps and os.path.exists(summary_path):
        ckpt.close()
        return already_finished(summary_path, t0, c, prefix)
    return Run(c, workdir, ckpt, state, start, position)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from `workdir` if it holds a checkpoint), evaluates; returns summary.json."""
    # From the start: a stop during start-up or compilation ends the run at once (nothing to save).
    with faults.PreemptionWatcher(jax.process_count()) as preemption:
        return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config, workdir: str, preemption: faults.PreemptionWatcher) -> dict:
    t0 = time.perf_counter()
    p = start_up(config, workdir)
    run = open_run(p, p.run.c, workdir, t0)
    if isinstance(run, dict):
        return run
    summaries, _ = train_runs(p, [run], preemption, t0)
    return summaries[run.c.seed]


class _Prefixed:
    """A console stream that starts each line with the run's name."""

    def __init__(self, prefix: str, stream):
        self.prefix, self.stream = prefix, stream

    def write(self, text: str) -> None:
        lines = text.splitlines(keepends=True)
        self.stream.write("".join(self.prefix + ln if ln.strip() else ln for ln in lines))

    def flush(self) -> None:
        self.stream.flush()


# The expected time is said once the loop has timed this long (and two steps), or this many
# steps: the first steps after compilation are slower (allocations, caches), so fewer would
# overstate it.
ANNOUNCE_AFTER_S, ANNOUNCE_AFTER_STEPS = 10.0, 50
# ... and only for a run with at least this much left to train: one that ends in seconds says
# so itself.
ANNOUNCE_MIN_LEFT_S = 60.0


def duration_text(seconds: float) -> str:
    """`45 s`, `4 min`, `2 h 14 min`."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def expected_time_line(steps_left: int, steps_per_sec: float, total: int) -> str:
    """The run's remaining training time at its measured rate, and the key that shortens it."""
    return (
        f"expected time: about {duration_text(steps_left / steps_per_sec)} for the {steps_left} "
        f"steps left, at the {steps_per_sec:.3g} steps/s measured on this machine (evaluation and "
        f"checkpoints aside); --config.num_train_steps=N (now {total}) shortens it"
    )


def _announce_expected_time(m, done: int, total: int, timed_steps: int, since: float) -> bool:
    """Prints `expected_time_line` once enough steps are timed (`since`: when timing began, moved
    on by the time evaluations and saves took); returns whether it is settled."""
    timed_s = time.perf_counter() - since
    if timed_steps < ANNOUNCE_AFTER_STEPS and (timed_steps < 2 or timed_s < ANNOUNCE_AFTER_S):
        return False
    jax.block_until_ready(m)  # the host runs ahead of the device: time what is done
    rate = timed_steps / max(time.perf_counter() - since, 1e-9)
    if (total - done) / rate >= ANNOUNCE_MIN_LEFT_S:
        print(expected_time_line(total - done, rate, total), flush=True)
    return True


def train_runs(p: Program, runs: list[Run], preemption, t0: float, how: str | None = None):
    """Trains runs that start from the same step as one program: one run as it is (`how` None),
    or several with their states stacked and split over the mesh as `how` says (`stacked`).
    Returns ({seed: summary} of the runs that finished, images/s of all runs together).

    A NaN under 'stop' ends the one run as a NonFiniteError; among stacked runs it stops only
    the run it hit (the caller reports those at the end)."""
    c, start, k, mesh = runs[0].c, runs[0].start, len(runs), p.mesh
    d, plan, total = p.run.data, p.run.plan, c.num_train_steps
    step_options = dict(
        label_smoothing=c.label_smoothing,
        skip_nonfinite=c.nonfinite_policy == "skip",
        finish=p.finish,
        grad_accum_steps=c.grad_accum_steps,
        bn_group_size=c.bn_group_size or None,
        ema_decay=c.ema_decay,
    )
    if how is None:
        state, unstack, seed = runs[0].state, (lambda s: [s]), c.seed
        batch_sharding = parallel.batch_sharded(mesh)
        train_step = parallel.jit_train_step(p.model, p.tx, p.schedule, mesh, **step_options)
    else:
        state = stacked.stack([r.state for r in runs], stacked.state_sharding(how, mesh))
        unstack, seed = (lambda s: stacked.unstack(s, k, mesh)), [r.c.seed for r in runs]
        batch_sharding = stacked.batch_sharding(how, mesh)
        train_step = stacked.jit_train_step(p.model, p.tx, p.schedule, mesh, how, **step_options)
    for r in runs:
        # The pre-save check compiled now, or the first save compiles it inside the loop (about
        # 20 s for a ResNet-50 state on a 2-core CPU; docs/measurements/cpu.md). The same tree
        # for every run: compiles once.
        numerics.warm_up(r.state)
        r.state = None
        r.logger = metrics.MetricsLogger(
            r.workdir,
            total_steps=total,
            global_batch_size=c.batch_size,
            num_classes=c.num_classes,
            resume_step=r.start,  # the steps after it are logged again: one record per step
            **({} if how is None else {"stream": _Prefixed(f"{r.name}: ", sys.stdout)}),
        )
    eval_fn = evaluate.make_evaluator(
        p.model, mesh, d, plan, finish=p.finish, views="center", seed=seed
    )
    batches = inputs.train_batches(
        d,
        plan,
        seed=seed,
        start_step=start,
        batch_sharding=batch_sharding,
        local_batch_size=parallel.local_batch_size(c.batch_size, mesh),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    batches = parallel.prefetch_to_mesh(batches, mesh, c.prefetch_batches, batch_sharding)
    profiler = _Profiler(c, runs[0].workdir)
    hook = faults.FaultHook()
    train_step = hook.wrap_step(train_step)
    pending, in_flight = [], collections.deque()  # in flight: dispatched steps, oldest first
    eval_time, save_time, timed_from, timed_steps = 0.0, 0.0, None, 0
    announced = jax.process_index() != 0  # the expected time, once, by process 0
    live = lambda: [(i, r) for i, r in enumerate(runs) if r.failed is None]

    def stopped(r, error):  # one run ends the program; one of several stops alone
        if how is None:
            raise error
        r.stop(str(error))

    def check_metrics(done):  # one transfer for every run; a NaN under 'stop' raises here
        fetched = pending if how is None else jax.device_get(pending)
        for i, r in live():
            mine = fetched if how is None else [{n: v[i] for n, v in m.items()} for m in fetched]
            try:
                r.checked.extend(r.monitor.check(done - len(pending) + 1, mine))
            except faults.NonFiniteError as e:
                stopped(r, e)
        pending.clear()

    def evaluate_all(done, state):
        nonlocal eval_time
        # Queued train steps must finish first, or their compute is counted as eval time and
        # training images/s comes out too high.
        jax.block_until_ready(state)
        t = time.perf_counter()
        states = unstack(state)
        for i, r in live():
            s = time.perf_counter()
            r.last_eval = evaluate.evaluate_state(functools.partial(eval_fn, run=i), states[i])
            r.logger.log_eval(done, r.last_eval)
            r.eval_time += time.perf_counter() - s
        eval_time += time.perf_counter() - t

    def save(done, state, force=False):  # never writes a state that is not finite
        nonlocal save_time
        if not (force or runs[0].ckpt.should_save(done)):
            return
        # Queued train steps finish first, so their compute is not counted as checkpoint time.
        jax.block_until_ready(state)
        t = time.perf_counter()
        check_metrics(done)
        states, saved = unstack(state), False
        for i, r in live():
            try:
                fingerprint = r.monitor.check_state(done, states[i])
            except faults.NonFiniteError as e:
                stopped(r, e)
                continue
            position = run_position(r.c, done, r.monitor)
            if r.ckpt.save(done, states[i], position, force=force, fingerprint=fingerprint):
                r.monitor.last_good_checkpoint = done
                saved = True
        if saved:
            hook.after_save_started(done)
        save_time += time.perf_counter() - t

    with contextlib.ExitStack() as stack:
        for r in runs:
            stack.enter_context(finish_writes_on_error(r.ckpt, r.logger))
        for step in range(start, total):
            profiler.before(step)
            batch = next(batches)
            if step + 1 == c.debug_nan_step:  # the test hook poisons the first run alone
                batch = (
                    numerics.poison_batch(batch) if how is None else stacked.poison_run(batch, 0)
                )
            state, m = train_step(state, batch)
            pending.append(m)
            in_flight.append(m)
            if len(in_flight) > faults.MAX_STEPS_AHEAD:  # so that a stop waits a bounded time
                jax.block_until_ready(in_flight.popleft())
            profiler.after(step, state, last=step + 1 == total)
            done = step + 1
            if timed_from is None:  # compilation is not throughput: time from step 1's end
                jax.block_until_ready(m)
                timed_from = time.perf_counter()
                for _, r in live():
                    r.logger.start(done)
            else:
                timed_steps += 1
                if not announced and done < total:
                    announced = _announce_expected_time(
                        m, done, total, timed_steps, timed_from + eval_time + save_time
                    )
            if done % c.log_every_steps == 0 or done == total:
                check_metrics(done)
                for _, r in live():
                    r.last_train = r.logger.log_train(done, r.monitor.loggable(r.checked))
                    r.checked.clear()
            if c.eval_every_steps > 0 and done % c.eval_every_steps == 0 and done != total:
                evaluate_all(done, state)
                for _, r in live():
                    r.logger.start(done)  # eval time is not training time
            save(done, state)
            hook.after_step(done, lambda: [r.ckpt.wait() for _, r in live()])
            if not live():
                break
            if done < total and preemption.should_stop(done):
                where = (
                    f"checkpoint {done} is in {runs[0].ckpt.directory}"
                    if how is None
                    else f"every run has checkpoint {done} in its workdir"
                )
                preemption.stop(
                    done,
                    functools.partial(save, done, state, force=True),
                    [close for _, r in live() for close in (r.ckpt.close, r.logger.close)],
                    where,
                )
        jax.block_until_ready(state)
        loop_time = (time.perf_counter() - timed_from - eval_time) if timed_from else 0.0
        train_time = loop_time - save_time
        if live():
            save(total, state, force=True)
            evaluate_all(total, state)  # after loop_time: the final evaluation counts as eval
        summaries = {}
        for _, r in live():
            r.ckpt.close()
            r.logger.close()
            summary = final_summary(
                r.c,
                state.params if how is None else stacked.run_params(state),
                r.last_eval,
                r.last_train,
                t0=t0,
                timed_steps=timed_steps,
                train_time=train_time,
                loop_time=loop_time,
                steps_run=total - start,
                eval_time=r.eval_time,
                save_time=save_time,
                skipped=r.monitor.skipped,
            )
            prefix = "" if how is None else f"{r.name}: "
            path = os.path.join(r.workdir, "summary.json")
            write_summary(r.c, path, summary, prefix=prefix, what=d.scored)
            summaries[r.c.seed] = summary
    rate = timed_steps * c.batch_size * k / train_time if train_time > 0 and timed_steps else None
    return summaries, rate


def final_summary(
    c,
    params,
    last_eval: dict,
    last_train: dict,
    *,
    t0: float,
    timed_steps: int,
    train_time: float,
    loop_time: float,
    steps_run: int,
    eval_time: float,
    save_time: float,
    skipped: int,
) -> dict:
    """summary.json of a run that trained from `t0` (perf_counter) to now (docs/training.md)."""
    wall = time.perf_counter() - t0
    return {
        "step": c.num_train_steps,
        "model": c.model,
        "dataset": c.dataset,
        "params": _count_params(params),
        "eval": last_eval,
        "train": last_train,
        "wall_time_s": wall,
        **_throughput(c.batch_size, timed_steps, train_time, loop_time, steps_run, wall),
        "eval_time_s": eval_time,
        "checkpoint_time_s": save_time,
        "devices": jax.device_count(),
        "processes": jax.process_count(),
        "skipped_steps": skipped,
    }


def write_summary(
    c, summary_path: str, summary: dict, prefix: str = "", what: str = "test accuracy"
) -> None:
    """Writes summary.json and prints the final accuracy line (`what` the accuracy is of; after
    `prefix`, the run's name where several are reported)."""
    metrics.write_json(summary_path, summary)
    if jax.process_index() == 0:
        last_eval = summary["eval"]
        averaged = (
            "; averaged weights (EMA): "
            f"{metrics.accuracy_text(metrics.ema_view(last_eval), c.num_classes, ', ')}"
            if "ema_top1" in last_eval
            else ""
        )
        print(
            f"{prefix}final {what}: {metrics.accuracy_text(last_eval, c.num_classes, ', ')} "
            f"on {last_eval['count']} examples "
            f"(wall time {summary['wall_time_s']:.0f} s){averaged}",
            flush=True,
        )
