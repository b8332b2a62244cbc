"""Several seeds of one config trained as one program (`--config.seeds=0,1,2`).

Each run is the single run of `trainer` with `seed=k`, in its own workdir `WORKDIR/seed<k>`, and
writes there exactly what that run writes (config.json with `seed=k`, metrics.jsonl, TensorBoard
events, checkpoints, summary.json), so reports, plots, predict, `--mode=eval` and a later single-run
resume see no difference. The runs' train states are stacked and trained by one vmapped step
(`stacked`); each run gathers its own batches (order and augmentation of its seed) from the one
copy of the split held on the devices.

Faults hold per run: each has its own checkpoints, NaN monitor and damaged-checkpoint handling. A
NaN under `nonfinite_policy='stop'` stops only the run it hit (named on stderr); the others train on,
and at the end the program exits with the NaN's code naming the runs that stopped. A stop
(SIGTERM) checkpoints every run. Runs found at different steps on resume (one stopped by a NaN
earlier, say) train in groups, one group per step they resume from.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import sys
import time

import jax
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax.engine import (
    checkpoint,
    evaluate,
    faults,
    metrics,
    numerics,
    parallel,
    stacked,
    trainer,
    validation,
)


def run_workdir(workdir: str, seed: int) -> str:
    """Where the run of `seed` lives (the layout `experiments.run` uses too)."""
    return os.path.join(workdir, f"seed{seed}")


def run_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The single run's config: `seed` set, `seeds` empty (so its config.json is a single run's)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed, c.seeds = int(seed), ()
    return c


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    seeds = [int(s) for s in config.seeds]
    if len(set(seeds)) != len(seeds):
        raise faults.ConfigError(f"seeds={tuple(config.seeds)} repeats a seed")
    return seeds


class _Prefixed:
    """A console stream that starts each line with the run's name."""

    def __init__(self, prefix: str, stream):
        self.prefix, self.stream = prefix, stream

    def write(self, text: str) -> None:
        lines = text.splitlines(keepends=True)
        self.stream.write("".join(self.prefix + ln if ln.strip() else ln for ln in lines))

    def flush(self) -> None:
        self.stream.flush()


class _Run:
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


def train_and_evaluate_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict]:
    """Trains the runs of `config.seeds` as one program; returns {seed: summary.json}.

    Raises `faults.NonFiniteError` at the end when a NaN stopped some runs (the others finished).
    """
    with faults.PreemptionWatcher(jax.process_count()) as preemption:
        return _train_runs(config, workdir, preemption)


def _train_runs(config, workdir: str, preemption: faults.PreemptionWatcher) -> dict[int, dict]:
    t0 = time.perf_counter()
    seeds = seeds_of(config)
    validation.check_config(run_config(config, seeds[0]), run_workdir(workdir, seeds[0]))
    c = config_lib.resolve_config(run_config(config, seeds[0]))
    if config_lib.input_pipeline(c) != "device":
        raise faults.ConfigError(
            f"seeds as one program need the device input path (the 32x32 datasets); "
            f"{c.dataset} with input_pipeline={config_lib.input_pipeline(c)!r} trains one seed "
            "per process: drop --config.seeds and set --config.seed"
        )
    mesh = parallel.make_mesh()
    validation.check_resolved(c, device_count=mesh.devices.size, process_count=jax.process_count())
    model = config_lib.build_model(c)
    schedule, tx = config_lib.build_optimizer(c)
    abstract = validation.abstract_state(
        lambda: parallel.abstract_train_state(
            model, tx, (c.image_size, c.image_size, 3), mesh, ema=config_lib.ema_on(c)
        ),
        c,
    )
    trainer.print_header(c, workdir)
    summaries, groups = {}, collections.defaultdict(list)
    for seed in seeds:
        rc = config_lib.resolve_config(run_config(config, seed))
        wd = run_workdir(workdir, seed)
        ckpt = trainer.prepare_workdir(rc, wd, abstract)
        state, start, position = trainer.restore_or_init(rc, model, tx, mesh, ckpt, abstract)
        summary_path = os.path.join(wd, "summary.json")
        if start == rc.num_train_steps and os.path.exists(summary_path):
            ckpt.close()
            summaries[seed] = trainer.already_finished(summary_path, t0, rc, f"seed {seed}: ")
        else:
            groups[start].append(_Run(rc, wd, ckpt, state, start, position))
    record = {"seeds": seeds, "groups": []}
    pieces = (model, tx, schedule, mesh, preemption, t0)
    for start in sorted(groups):
        done, group_record = _train_group(groups[start], *pieces)
        summaries.update(done)
        record["groups"].append(group_record)
    failed = [r for g in groups.values() for r in g if r.failed]
    record["stopped"] = {r.c.seed: r.failed for r in failed}
    if record["groups"]:
        metrics.write_json(os.path.join(workdir, "runs.json"), record)
    if failed:
        raise faults.NonFiniteError(
            f"{len(failed)} of {len(seeds)} runs stopped on a non-finite value: "
            + "; ".join(f"{r.name} ({r.workdir}): {r.failed.rstrip('.')}" for r in failed)
            + f". The other runs finished; their summaries are in {workdir}/seed<k>"
        )
    return summaries


# docs/training.md: ResNet-20, batch 32, 4 seeds, 2-core Intel Xeon (Sapphire Rapids), 2026-12-06.
_CPU_MEASURED = (
    "ResNet-20, batch 32, 4 seeds: the step at 0.63-0.67x the images/s of one run's step"
)


def _train_group(runs: list[_Run], model, tx, schedule, mesh, preemption, t0):
    """Trains runs that resume from the same step as one program; {seed: summary} and a record."""
    c, start, k = runs[0].c, runs[0].start, len(runs)
    total = c.num_train_steps
    how = stacked.layout(k, mesh)
    print(
        f"{k} runs as one program (seeds {', '.join(str(r.c.seed) for r in runs)}) from step "
        f"{start}; across {mesh.devices.size} device(s) the {how} axis is split",
        flush=True,
    )
    if k > 1 and jax.default_backend() == "cpu":
        print(
            f"resnet_jax: note: on a CPU, runs as one program train slower than one after another "
            f"({_CPU_MEASURED}): under vmap the convolutions become grouped ones, which XLA's CPU "
            f"backend runs slowly. Seeds as one program pay off on an accelerator; on a CPU, "
            f"`experiments.run` without --vmap runs one seed per core",
            file=sys.stderr,
            flush=True,
        )
    state = stacked.stack([r.state for r in runs], stacked.state_sharding(how, mesh))
    for r in runs:
        numerics.warm_up(r.state)  # the same tree for every run: compiles once
        r.state = None
        r.logger = metrics.MetricsLogger(
            r.workdir,
            total_steps=total,
            global_batch_size=c.batch_size,
            stream=_Prefixed(f"{r.name}: ", sys.stdout),
            num_classes=c.num_classes,
        )
    eval_args = evaluate.eval_data_args(c)
    train_step = stacked.jit_train_step(
        model,
        tx,
        schedule,
        mesh,
        how,
        label_smoothing=c.label_smoothing,
        skip_nonfinite=c.nonfinite_policy == "skip",
        finish=eval_args["finish"],
        grad_accum_steps=c.grad_accum_steps,
        ema_decay=c.ema_decay,
    )
    eval_fn = evaluate.make_evaluator(model, mesh, **eval_args, views="center")
    from resnet_jax.data import device_input  # one copy of the split, every run's batches

    batches = device_input.train_batches(
        c.dataset,
        data_dir=c.data_dir,
        batch_sharding=stacked.batch_sharding(how, mesh),
        global_batch_size=c.batch_size,
        seed=[r.c.seed for r in runs],
        start_step=start,
        split=c.train_split,
        augment=c.augment,
    )
    hook = faults.FaultHook()
    train_step = hook.wrap_step(train_step)
    pending, in_flight = [], collections.deque()
    eval_time, save_time, timed_from, timed_steps = 0.0, 0.0, None, 0
    live = lambda: [(i, r) for i, r in enumerate(runs) if r.failed is None]

    def check_metrics(done):  # one transfer for every run; a NaN under 'stop' ends its run only
        fetched = jax.device_get(pending)
        for i, r in live():
            mine = [{name: v[i] for name, v in m.items()} for m in fetched]
            try:
                r.checked.extend(r.monitor.check(done - len(pending) + 1, mine))
            except faults.NonFiniteError as e:
                r.stop(str(e))
        pending.clear()

    def evaluate_all(done, state):
        nonlocal eval_time
        jax.block_until_ready(state)  # queued steps are training time, not evaluation time
        t = time.perf_counter()
        states = stacked.unstack(state, k, mesh)
        for i, r in live():
            s = time.perf_counter()
            r.last_eval = evaluate.evaluate_state(eval_fn, states[i])
            r.logger.log_eval(done, r.last_eval)
            r.eval_time += time.perf_counter() - s
        eval_time += time.perf_counter() - t

    def save(done, state, force=False):  # never writes a state that is not finite
        nonlocal save_time
        if not (force or runs[0].ckpt.should_save(done)):
            return
        jax.block_until_ready(state)
        t = time.perf_counter()
        check_metrics(done)
        states = stacked.unstack(state, k, mesh)
        for i, r in live():
            try:
                fingerprint = r.monitor.check_state(done, states[i])
            except faults.NonFiniteError as e:
                r.stop(str(e))
                continue
            position = trainer.run_position(r.c, done, r.monitor)
            if r.ckpt.save(done, states[i], position, force=force, fingerprint=fingerprint):
                r.monitor.last_good_checkpoint = done
        hook.after_save_started(done)
        save_time += time.perf_counter() - t

    with contextlib.ExitStack() as stack:
        for r in runs:
            stack.enter_context(trainer.finish_writes_on_error(r.ckpt, r.logger))
        for step in range(start, total):
            batch = next(batches)
            if step + 1 == c.debug_nan_step:  # the test hook poisons the first run alone
                batch = stacked.poison_run(batch, 0)
            state, m = train_step(state, batch)
            pending.append(m)
            in_flight.append(m)
            if len(in_flight) > faults.MAX_STEPS_AHEAD:  # so that a stop waits a bounded time
                jax.block_until_ready(in_flight.popleft())
            done = step + 1
            if timed_from is None:  # compilation is not throughput: time from step 1's end
                jax.block_until_ready(m)
                timed_from = time.perf_counter()
                for _, r in live():
                    r.logger.start(done)
            else:
                timed_steps += 1
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
                preemption.stop(
                    done,
                    functools.partial(save, done, state, force=True),
                    [close for _, r in live() for close in (r.ckpt.close, r.logger.close)],
                    f"every run has checkpoint {done} in its workdir",
                )
        jax.block_until_ready(state)
        loop_time = (time.perf_counter() - timed_from - eval_time) if timed_from else 0.0
        train_time = loop_time - save_time
        if live():
            save(total, state, force=True)
            evaluate_all(total, state)
        summaries = {}
        for _, r in live():
            r.ckpt.close()
            r.logger.close()
            summary = trainer.final_summary(
                r.c,
                abstract_params(state),
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
            trainer.write_summary(
                r.c, os.path.join(r.workdir, "summary.json"), summary, prefix=f"{r.name}: "
            )
            summaries[r.c.seed] = summary
    rate = timed_steps * c.batch_size * k / train_time if train_time > 0 and timed_steps else None
    return summaries, {
        "seeds": [r.c.seed for r in runs],
        "start_step": start,
        "layout": how,
        "devices": mesh.devices.size,
        "images_per_sec_all_runs": rate,
    }


def abstract_params(state):
    """One run's params (shapes only) of a stacked state: what its parameter count is read from."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.params)


def evaluate_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict]:
    """`--mode=eval` of every run of `config.seeds` (each its newest checkpoint)."""
    return {
        seed: evaluate.evaluate_checkpoint(run_config(config, seed), run_workdir(workdir, seed))
        for seed in seeds_of(config)
    }
