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

from resnet_jax.engine import evaluate, faults, metrics, stacked, trainer


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


def train_and_evaluate_runs(config: ml_collections.ConfigDict, workdir: str) -> dict[int, dict]:
    """Trains the runs of `config.seeds` as one program; returns {seed: summary.json}.

    Raises `faults.NonFiniteError` at the end when a NaN stopped some runs (the others finished).
    """
    with faults.PreemptionWatcher(jax.process_count()) as preemption:
        return _train_runs(config, workdir, preemption)


def _train_runs(config, workdir: str, preemption: faults.PreemptionWatcher) -> dict[int, dict]:
    t0 = time.perf_counter()
    seeds = seeds_of(config)
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
    return {
        seed: evaluate.evaluate_checkpoint(run_config(config, seed), run_workdir(workdir, seed))
        for seed in seeds_of(config)
    }
