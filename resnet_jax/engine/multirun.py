"""Several seeds of one config trained as one program (`--config.seeds=0,1,2`).

Each run is the single run of `trainer` with `seed=k`, in its own workdir `WORKDIR/seed<k>`, and
writes there exactly what that run writes (config.json with `seed=k`, metrics.jsonl, TensorBoard
events, checkpoints, summary.json), so reports, plots, predict, `--mode=eval` and a later single-run
resume see no difference. The runs' train states are stacked and trained by one vmapped step
(`stacked`); each run gets its own batches, those of its single run (order and augmentation of
its seed): gathered from the one copy of the split held on the devices, read by its own tf.data
stream on the host path, or made from its seed (synthetic data).

Faults hold per run: each has its own checkpoints, NaN monitor and damaged-checkpoint handling. A
NaN under `nonfinite_policy='stop'` stops only the run it hit (named on stderr); the others train on,
and at the end the program exits with the NaN's code naming the runs that stopped. A stop
(SIGTERM) checkpoints every run. Runs found at different steps on resume (one stopped by a NaN
earlier, say) train in groups, one group per step they resume from.
"""

from __future__ import annotations

import collections
import os
import sys
import time

import jax
import ml_collections

from resnet_jax import config as config_lib
from resnet_jax.engine import evaluate, faults, metrics, stacked, trainer, validation


def run_workdir(workdir: str, seed: int) -> str:
    """Where the run of `seed` lives (the layout `experiments.run` uses too)."""
    return os.path.join(workdir, f"seed{seed}")


def run_config(config: ml_collections.ConfigDict, seed: int) -> ml_collections.ConfigDict:
    """The single run's config: `seed` set, `seeds` empty (so its config.json is a single run's)."""
    c = ml_collections.ConfigDict(config.to_dict())
    c.seed, c.seeds = int(seed), ()
    return c


def seeds_of(config: ml_collections.ConfigDict) -> list[int]:
    """The seeds of `config.seeds`; a repeated seed, or a `seed` beside them, is refused."""
    seeds = [int(s) for s in config.seeds]
    if len(set(seeds)) != len(seeds):
        raise faults.ConfigError(f"seeds={tuple(config.seeds)} repeats a seed")
    default = config_lib.default_config().seed
    if config.seed != default:
        raise faults.ConfigError(
            f"seed={config.seed} and seeds={tuple(seeds)} both given: seeds sets the seed of "
            f"every run, and seed must keep its default {default}; drop --config.seed (or add "
            f"{config.seed} to seeds)"
        )
    return seeds


# What a single run writes in its workdir (trainer, `--mode=eval`, the profiler): moved whole
# when it continues as one seed's run.
_SINGLE_RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", "checkpoints")
_SINGLE_RUN_PREFIXES = ("checkpoints.damaged", "events.out.tfevents.", "eval_", "profile")


def _moving(workdir: str) -> list[str]:
    """The `seed<k>.moving` folders of moves of a single run that were cut off."""
    names = os.listdir(workdir) if os.path.isdir(workdir) else []
    return [n for n in names if n.startswith("seed") and n.endswith(".moving")]


def _move_single_run(workdir: str, target: str) -> None:
    """Moves the single run's files of `workdir` into `target` through `target.moving`, so that
    a move cut off half way is finished by the next one, and `target` appears whole."""
    staging = f"{target}.moving"
    os.makedirs(staging, exist_ok=True)
    for name in sorted(os.listdir(workdir)):
        if name in _SINGLE_RUN_FILES or name.startswith(_SINGLE_RUN_PREFIXES):
            os.replace(os.path.join(workdir, name), os.path.join(staging, name))
    os.replace(staging, target)


def single_run_as_seed(config: ml_collections.ConfigDict, workdir: str, seeds: list[int]) -> None:
    """A workdir that holds a single run (checkpoints of its own) is refused to `seeds`, which
    would train WORKDIR/seed<k> from step 0 beside it and never resume it. With
    allow_config_change the single run continues as the run of its seed, which must be among
    `seeds` with no run of its own yet: its files move into WORKDIR/seed<k>, and it says so."""
    for name in _moving(workdir):  # a move the last run started and did not finish
        target = os.path.join(workdir, name[: -len(".moving")])
        print(
            f"resnet_jax: finishing the move of the single run of {workdir} into {target}, "
            "cut off last time",
            flush=True,
        )
        _move_single_run(workdir, target)
    steps = validation.checkpoint_steps(workdir)
    if not steps:
        return
    saved = evaluate.saved_config(workdir) or {}
    seed = saved.get("seed")
    what = (
        f"{workdir} holds a single run (seed {seed}, checkpoints {', '.join(map(str, steps))}), "
        f"and --config.seeds={','.join(map(str, seeds))} would train {workdir}/seed<k> from step "
        "0 beside it and never resume it"
    )
    fixes = "resume it without --config.seeds, or train the seeds into another --workdir"
    if not config.get("allow_config_change", False):
        raise faults.ConfigError(
            f"{what}. To {fixes}; to continue it as the run of seed {seed}, add "
            "--config.allow_config_change=True"
        )
    why, target = None, run_workdir(workdir, seed) if seed is not None else None
    if seed is None:
        why = "its seed is unknown (it has no config.json)"
    elif seed not in seeds:
        why = f"its seed {seed} is not among the seeds"
    elif os.path.exists(target):
        why = f"{target} exists already"
    elif jax.process_count() > 1:
        why = "several processes run the program; continue it with one"
    if why:
        raise faults.ConfigError(f"{what}; it cannot continue as one of them: {why}. To {fixes}")
    _move_single_run(workdir, target)
    print(
        f"resnet_jax: continuing the single run of {workdir} (seed {seed}, checkpoint "
        f"{steps[-1]}) as the run of seed {seed}: its files moved to {target}",
        flush=True,
    )


def train_and_evaluate_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict]:
    """Trains the runs of `config.seeds` as one program; returns {seed: summary.json}.

    Raises `faults.NonFiniteError` at the end when a NaN stopped some runs (the others finished).
    """
    with faults.PreemptionWatcher(jax.process_count()) as preemption:
        return _train_runs(config, workdir, preemption)


def _train_runs(config, workdir: str, preemption: faults.PreemptionWatcher) -> dict[int, dict]:
    t0 = time.perf_counter()
    seeds = seeds_of(config)
    single_run_as_seed(config, workdir, seeds)
    # One start-up for every run: the dataset opened once, one model, one compiled step.
    first = run_config(config, seeds[0])
    p = trainer.start_up(first, workdir, run_workdir(workdir, seeds[0]))
    summaries, groups = {}, collections.defaultdict(list)
    for seed in seeds:
        run = trainer.open_run(
            p, run_config(p.run.c, seed), run_workdir(workdir, seed), t0, f"seed {seed}: "
        )
        if isinstance(run, dict):
            summaries[seed] = run
        else:
            groups[run.start].append(run)
    record = {"seeds": seeds, "groups": []}
    for start in sorted(groups):
        runs = groups[start]
        # A process reads only its share of each run's host batch: several processes then
        # split each run's batch over the devices.
        split_runs = jax.process_count() == 1 or p.run.data.input_pipeline != "host"
        how = _announce(runs, p.mesh, split_runs)
        done, rate = trainer.train_runs(p, runs, preemption, t0, how)
        summaries.update(done)
        record["groups"].append(
            {
                "seeds": [r.c.seed for r in runs],
                "start_step": start,
                "layout": how,
                "devices": p.mesh.devices.size,
                "images_per_sec_all_runs": rate,
            }
        )
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


def _announce(runs: list[trainer.Run], mesh, split_runs: bool) -> str:
    """How runs that resume from the same step split the mesh (`stacked.layout`; `split_runs`
    False: each run's batch), said on stdout."""
    k = len(runs)
    how = stacked.layout(k, mesh) if split_runs else stacked.BATCH
    print(
        f"{k} runs as one program (seeds {', '.join(str(r.c.seed) for r in runs)}) from step "
        f"{runs[0].start}; across {mesh.devices.size} device(s) the {how} axis is split",
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
    return how


def evaluate_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict]:
    """`--mode=eval` of every run of `config.seeds` (each its newest checkpoint)."""
    seeds = seeds_of(config)
    if validation.checkpoint_steps(workdir) and not validation.seed_runs(workdir):
        raise faults.ConfigError(
            f"{workdir} holds a single run, not runs of --config.seeds: evaluate it without seeds"
        )
    return {
        seed: evaluate.evaluate_checkpoint(run_config(config, seed), run_workdir(workdir, seed))
        for seed in seeds
    }
