"""Launch or resume an experiment: one `python -m resnet_jax.main` subprocess per (entry, seed).

  python -m experiments.run NAME|PATH.py[:NAME] --workdir ROOT [--only ENTRY[,ENTRY]] [--seeds K]
                            [--parallel N] [--dry_run] [--print_commands] [--python PY]
  python -m experiments.run --config configs/X.py[:arg] --grid KEY=V1,V2 [--grid KEY2=...]
                            --seeds K --workdir ROOT [--name NAME] [--config.KEY=V ...]

NAME is one of the project's experiments (`--list`); PATH.py is any file that defines
`Experiment`s at module level; `--grid` makes one entry per cell of the product of its axes
(experiments/grid.py). The experiment's definition is left in ROOT/NAME.experiment.json, so
`python -m experiments.report --workdir ROOT` reports it with no file or name.

Runs go into ROOT/<entry>/seed<k>. On an accelerator they go one after another; `--parallel N`
runs N at a time, sharing it (each process may take 1/N of its memory): CIFAR nets are bound by
kernel launches, not arithmetic, so N small runs on one GPU take little longer than one. On a
CPU-only host the default is one run per core, each with one XLA thread (measured faster than
one run on all cores for the small nets; docs/benchmarks.md). A run whose workdir has a
`summary.json` (and, for a 10-crop / multi-scale entry, its `eval_<views>.json`) is finished and
skipped; any other run is (re)started, and the trainer resumes it from the checkpoint in its workdir. `--print_commands` prints one shell command per unfinished run, for a
cluster scheduler (see docs/experiments.md for a SLURM array).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import pathlib
import platform
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent import futures

import experiments
from experiments import Entry, Experiment, grid
from experiments.grid import format_value
from resnet_jax import xla_options

REPO = experiments.REPO
RUN_RECORD = "run.json"  # what run.py launched in a workdir; guards against name clashes
LOG = "run.log"
EXPERIMENT_RECORD = ".experiment.json"  # ROOT/<name>.experiment.json: the definition launched


@dataclasses.dataclass(frozen=True)
class Run:
    entry: Entry
    seed: int
    workdir: pathlib.Path
    status: (
        str  # 'done', 'partial' (started, or trained but its evaluation protocol not run), 'todo'
    )
    train: tuple[str, ...] | None  # trainer arguments after `python`; None once trained
    evaluate: tuple[str, ...] | None  # `--mode=eval` arguments; None for centre crop or once done

    @property
    def phases(self) -> list[tuple[str, ...]]:
        return [p for p in (self.train, self.evaluate) if p is not None]

    def command(self, python: str = "python") -> str:
        """One shell line for what is left to do ('' when done)."""
        return " && ".join(shlex.join([python, *args]) for args in self.phases)


def seeds_of(entry: Entry, seeds: int | None) -> range:
    return range(entry.seeds if seeds is None else seeds)


def run_dir(root: os.PathLike, entry: Entry, seed: int) -> pathlib.Path:
    return pathlib.Path(root) / entry.name / f"seed{seed}"


def eval_file(workdir: pathlib.Path, views: str) -> pathlib.Path:
    """Where `--mode=eval` leaves the result of a protocol (resnet_jax/engine/evaluate.py)."""
    return workdir / f"eval_{views}.json"


def is_trained(workdir: pathlib.Path) -> bool:
    return (workdir / "summary.json").exists()


def is_evaluated(workdir: pathlib.Path, views: str) -> bool:
    return views == "center" or eval_file(workdir, views).exists()


def run_status(workdir: pathlib.Path, views: str = "center") -> str:
    if is_trained(workdir) and is_evaluated(workdir, views):
        return "done"
    if (
        is_trained(workdir)
        or (workdir / "metrics.jsonl").exists()
        or (workdir / "checkpoints").exists()
    ):
        return "partial"
    return "todo"


def train_args(entry: Entry, seed: int, workdir: os.PathLike) -> tuple[str, ...]:
    """The trainer's command line (after `python`) for one run. Model overrides go as one dict
    literal: the config's empty `model_overrides` accepts no new keys one by one."""
    args = [
        "-m",
        "resnet_jax.main",
        f"--config={entry.config}",
        f"--workdir={workdir}",
        f"--config.seed={seed}",
    ]
    args += [f"--config.{k}={format_value(v)}" for k, v in entry.overrides.items()]
    if entry.model_overrides:
        args.append(f"--config.model_overrides={format_value(dict(entry.model_overrides))}")
    return tuple(args)


def eval_args(entry: Entry, seed: int, workdir: os.PathLike) -> tuple[str, ...]:
    return train_args(entry, seed, workdir) + (
        "--mode=eval",
        f"--config.eval_views={entry.eval_views}",
    )


def vmap_runs(runs: Sequence[Run], k: int) -> list[Run]:
    """The runs still to train, `k` seeds of an entry at a time as one program
    (`--config.seeds`, docs/training.md): one Run per group, named by its first seed, whose command
    trains every seed of the group into its own ROOT/<entry>/seed<k>. Evaluation protocols other
    than the centre crop stay with the single runs (plan again once these are trained)."""
    if k < 1:
        raise ValueError(f"--vmap must be >= 1 runs per program, got {k}")
    todo = [r for r in runs if r.train is not None]
    groups = []
    for name in dict.fromkeys(r.entry.name for r in todo):
        mine = [r for r in todo if r.entry.name == name]
        entry = mine[0].entry
        for i in range(0, len(mine), k):
            group = mine[i : i + k]
            seeds = tuple(r.seed for r in group)
            args = [
                f"--config.seeds={format_value(seeds)}" if a.startswith("--config.seed=") else a
                for a in train_args(entry, seeds[0], group[0].workdir.parent)
            ]
            groups.append(dataclasses.replace(group[0], train=tuple(args), evaluate=None))
    return groups


def select(exp: Experiment, only: Sequence[str] | None) -> list[Entry]:
    if not only:
        return list(exp.entries)
    return [exp.entry(name) for name in only]  # raises, naming the valid entries


def plan(
    exp: Experiment,
    root: os.PathLike,
    *,
    only: Sequence[str] | None = None,
    seeds: int | None = None,
) -> list[Run]:
    runs = []
    # The runs start in the checkout (REPO), which need not be the directory ROOT was named from.
    root = pathlib.Path(root).absolute()
    for entry in select(exp, only):
        for seed in seeds_of(entry, seeds):
            wd = run_dir(root, entry, seed)
            train = None if is_trained(wd) else train_args(entry, seed, wd)
            evaluate = None if is_evaluated(wd, entry.eval_views) else eval_args(entry, seed, wd)
            runs.append(Run(entry, seed, wd, run_status(wd, entry.eval_views), train, evaluate))
    return runs


def _claim_workdir(run: Run, exp: Experiment) -> None:
    """Records what is trained in the workdir; refuses a workdir that holds a different run."""
    record_path = run.workdir / RUN_RECORD
    # The workdir is left out of the comparison: ROOT may be given relative once, absolute later.
    record = {
        "experiment": exp.name,
        "entry": run.entry.name,
        "seed": run.seed,
        "args": list(train_args(run.entry, run.seed, "WORKDIR")),
    }
    if record_path.exists():
        old = json.loads(record_path.read_text())
        if old["args"] != record["args"]:
            raise RuntimeError(
                f"{run.workdir} was started with a different command:\n  {shlex.join(old['args'])}\n"
                f"now:\n  {shlex.join(record['args'])}\nUse another --workdir for this experiment."
            )
        return
    run.workdir.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(record, indent=1) + "\n")


def _stamp(run: Run, **fields) -> None:
    """Adds to the run's record: where and when it really ran (CPU timings mean little without
    the machine and its load). `started` is kept from the first start when a run is resumed."""
    path = run.workdir / RUN_RECORD
    record = json.loads(path.read_text())
    if "started" in fields and "started" in record:
        fields["resumed"] = fields.pop("started")
    record.update(fields)
    path.write_text(json.dumps(record, indent=1) + "\n")


def record_experiment(exp: Experiment, root: os.PathLike, command: str) -> None:
    """Leaves the definition launched into ROOT, for the report (a grid has no file or name)."""
    pathlib.Path(root).mkdir(parents=True, exist_ok=True)
    path = pathlib.Path(root) / f"{exp.name}{EXPERIMENT_RECORD}"
    record = {"experiment": experiments.to_record(exp), "command": command}
    path.write_text(json.dumps(record, indent=1) + "\n")


def _experiment_records(root: os.PathLike) -> dict[str, dict]:
    return {
        p.name.removesuffix(EXPERIMENT_RECORD): json.loads(p.read_text())
        for p in sorted(pathlib.Path(root).glob(f"*{EXPERIMENT_RECORD}"))
    }


def recorded_experiments(root: os.PathLike) -> dict[str, Experiment]:
    """name -> the experiment launched into ROOT."""
    return {
        name: experiments.from_record(r["experiment"])
        for name, r in _experiment_records(root).items()
    }


def launch_command(root: os.PathLike, name: str) -> str | None:
    return _experiment_records(root).get(name, {}).get("command")


# Memory XLA may take on an accelerator, shared by `--parallel` runs (the rest is headroom for
# the CUDA context of each process).
_SHARED_MEMORY_FRACTION = 0.9
# One XLA CPU thread per process when there are as many runs as cores. On a quiet 2-core CPU
# (2026-12-03, docs/benchmarks.md) two ResNet-20 train steps at batch 32 with one thread each made
# 1.11-1.32x the images/s of one on both cores (ResNet-56: 1.12-1.18x): at batch 32 XLA's intra-op
# threads partly wait on each other. The processes are not pinned to cores: a pinned process's
# Python thread and its XLA thread then share one core, and under load from other jobs it ran at
# half speed.
_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"
# With one thread XLA's own CPU fusions beat the project's YNNPACK option, whose gain is spreading
# elementwise work over several threads: two runs at once, batch 32, ResNet-56 73.5 against 65
# images/s each, ResNet-20 210 against 182 (2-core Xeon, 2026-12-06, docs/measurements/cpu.md).
_ONE_THREAD_ENV = {"RESNET_JAX_XLA_DEFAULTS": "0"}


def cpu_only() -> bool:
    """True when runs here train on the host CPU: JAX_PLATFORMS says cpu, or the machine has no
    GPU or TPU device files. Decided without importing JAX, which would take an accelerator."""
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        return True
    devices = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/accel*", "/dev/vfio/[0-9]*")
    return not any(glob.glob(pattern) for pattern in devices)


def host_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


def default_parallel() -> int:
    """Runs at a time when --parallel is not given: one per core on a CPU, else one."""
    return host_cores() if cpu_only() else 1


def run_env(parallel: int = 1, *, cpu: bool = False) -> dict:
    """The environment of a run's processes. On an accelerator, with `parallel` > 1, each gets
    1/parallel of its memory (`XLA_PYTHON_CLIENT_MEM_FRACTION`) unless the caller set a fraction.
    On a CPU with at least as many runs as cores, XLA runs one thread per process."""
    env = xla_options.user_environ()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if cpu:
        if parallel >= host_cores():
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {_ONE_THREAD}".strip()
            env.update(_ONE_THREAD_ENV)
    elif parallel > 1 and "XLA_PYTHON_CLIENT_MEM_FRACTION" not in env:
        env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{_SHARED_MEMORY_FRACTION / parallel:.3f}"
    return env


def _phases(r: Run, python: str, env: dict) -> int:
    """Runs a run's phases (train, then evaluate) into its log; the first non-zero exit code."""
    with open(r.workdir / LOG, "a") as log:
        for args in r.phases:
            log.write(f"\n$ {shlex.join([python, *args])}\n")
            log.flush()
            rc = subprocess.run(
                [python, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            ).returncode
            if rc:
                return rc
    return 0


def execute(
    exp: Experiment,
    runs: Sequence[Run],
    *,
    python: str = sys.executable,
    out=None,
    parallel: int = 1,
    cpu: bool = False,
) -> list[Run]:
    """Trains (then evaluates) the unfinished runs, `parallel` at a time; returns the failed ones.

    `cpu`: the runs train on this host's CPU (with as many runs as cores, one XLA thread each).
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1 runs at a time, got {parallel}")
    out = out or sys.stdout
    failed = []
    todo = [r for r in runs if r.status != "done"]
    for r in runs:
        if r.status == "done":
            print(f"skip   {r.entry.name} seed {r.seed}: finished ({r.workdir})", file=out)
    env = run_env(parallel, cpu=cpu)
    if cpu and todo:
        threads = "one XLA thread each" if parallel >= host_cores() else "sharing the threads"
        print(
            f"on the CPU ({host_cores()} cores): {parallel} run(s) at a time, {threads}",
            file=out,
            flush=True,
        )
    lock = threading.Lock()  # one line at a time from the runs' threads

    def one(i: int, r: Run) -> None:
        verb = "resume" if r.status == "partial" else "start "
        with lock:
            print(
                f"{verb} [{i}/{len(todo)}] {r.entry.name} seed {r.seed}  (log: {r.workdir / LOG})",
                file=out,
                flush=True,
            )
        t0 = time.time()
        _stamp(
            r,
            started=t0,
            host=platform.node(),
            cpus=os.cpu_count(),
            load_avg_1min=os.getloadavg()[0],
        )
        rc = _phases(r, python, env)
        took = time.time() - t0
        _stamp(r, finished=time.time())
        with lock:
            if rc == 0 and run_status(r.workdir, r.entry.eval_views) == "done":
                print(f"done   {r.entry.name} seed {r.seed} in {took:.0f} s", file=out, flush=True)
                return
            failed.append(r)
            tail = (r.workdir / LOG).read_text().splitlines()[-15:]
            print(
                f"FAILED {r.entry.name} seed {r.seed} (exit {rc}, {took:.0f} s); log tail:\n  "
                + "\n  ".join(tail),
                file=out,
                flush=True,
            )

    for r in todo:
        _claim_workdir(r, exp)  # before anything starts: a clash stops the whole launch
    with futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        for done in [pool.submit(one, i, r) for i, r in enumerate(todo, 1)]:
            done.result()  # re-raises a bug in the bookkeeping
    return sorted(failed, key=todo.index)


def describe(runs: Sequence[Run], python: str) -> str:
    counts = {s: sum(r.status == s for r in runs) for s in ("done", "partial", "todo")}
    lines = [
        f"{len(runs)} runs: {counts['done']} done, {counts['partial']} partial, "
        f"{counts['todo']} to do"
    ]
    for r in runs:
        lines.append(
            f"  [{r.status:7s}] {r.entry.name:24s} seed {r.seed}  eval {r.entry.eval_views:10s}"
            f" {r.workdir}"
        )
        if r.phases:
            lines.append(f"            {r.command(python)}")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m experiments.run", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "name", nargs="?", help="experiment name (see --list), or PATH.py[:NAME] of your own file"
    )
    p.add_argument("--config", help="config file of a --grid (PATH.py[:arg])")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        help="KEY=V1,V2: an axis of the grid (repeatable; model spec fields as "
        "model_overrides.FIELD); with --config, instead of NAME",
    )
    p.add_argument(
        "--name",
        dest="name_flag",
        default=None,
        help="the grid's name (default: the workdir's name)",
    )
    p.add_argument("--workdir", help="root folder: runs go to ROOT/<entry>/seed<k>")
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="entry name(s) to run, comma separated or repeated",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds 0..K-1 for every entry (default: each entry's own count)",
    )
    p.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="runs at a time on this host, sharing its accelerator (each takes 1/N of its "
        "memory); default 1, or on a CPU-only host one run per core, each with one XLA thread",
    )
    p.add_argument(
        "--vmap",
        type=int,
        default=None,
        help="train K seeds of an entry as one program (--config.seeds; device input path "
        "only): for small nets on an accelerator, not for big nets or a CPU",
    )
    p.add_argument("--dry_run", action="store_true", help="list the runs and their status")
    p.add_argument(
        "--print_commands",
        action="store_true",
        help="print one command per unfinished run (for a scheduler) and exit",
    )
    p.add_argument(
        "--python",
        default=None,
        help="interpreter in commands (default: this one; 'python' for --print_commands)",
    )
    p.add_argument("--list", action="store_true", help="list the experiments and exit")
    argv = sys.argv[1:] if argv is None else argv
    # Taken out first: argparse would read a value with a space as the positional NAME.
    overrides = [x for x in argv if x.startswith("--config.")]
    a = p.parse_args([x for x in argv if not x.startswith("--config.")])
    try:
        a.overrides = grid.parse_overrides(overrides)
    except ValueError as e:
        p.error(str(e))
    return a


def experiment_of(a) -> Experiment:
    """The experiment the command line names: NAME, PATH.py[:NAME], or --config with --grid."""
    if a.config or a.grid:
        if a.name or not a.config:
            raise ValueError("a grid is --config FILE with --grid KEY=V1,V2, and no NAME")
        name = a.name_ or pathlib.Path(a.workdir).resolve().name
        return grid.grid_experiment(name, a.config, a.grid, a.overrides, a.seeds or 3)
    return with_overrides(experiments.resolve(a.name), a.overrides)


def with_overrides(exp: Experiment, overrides: dict) -> Experiment:
    """Every entry with `--config.KEY=V` on top of its own keys (a short smoke run of an
    experiment: `--config.num_train_steps=20`). Its commands differ from the experiment's, so its
    runs need a workdir of their own (a workdir of the other command is refused)."""
    if not overrides:
        return exp
    overrides = dict(overrides)
    spec = dict(overrides.pop("model_overrides", None) or {})
    entries = tuple(
        dataclasses.replace(
            e,
            overrides={**e.overrides, **overrides},
            model_overrides={**e.model_overrides, **spec},
        )
        for e in exp.entries
    )
    return dataclasses.replace(exp, entries=entries)


def main(argv=None) -> int:
    a = parse_args(argv)
    a.name_ = a.__dict__.pop("name_flag", None)
    if a.list or not (a.name or a.config or a.grid):
        if not a.list:
            print("error: give an experiment name; valid ones:", file=sys.stderr)
        for name in experiments.available_experiments():
            exp = experiments.get_experiment(name)
            print(f"{name:22s} {len(exp.entries):2d} entries  {exp.title}")
        return 0 if a.list else 2
    try:
        if not a.workdir:
            raise ValueError("--workdir is required")
        exp = experiment_of(a)
        only = [n for chunk in a.only for n in chunk.split(",") if n]
        runs = plan(exp, a.workdir, only=only, seeds=a.seeds)
    except (ValueError, ImportError) as e:  # ImportError: a file of yours that fails
        print(f"error: {e}", file=sys.stderr)
        return 2
    python = a.python or sys.executable
    if a.dry_run:
        print(f"{exp.name}: {exp.title} [dataset: {exp.dataset}]")
        print(describe(runs, python))
        return 0
    argv = sys.argv[1:] if argv is None else argv
    record_experiment(exp, a.workdir, shlex.join(["python", "-m", "experiments.run", *argv]))
    if a.print_commands:
        for r in runs:
            if r.status != "done":
                print(r.command(a.python or "python"))
        return 0
    parallel = default_parallel() if a.parallel is None else a.parallel
    if parallel < 1:
        print(f"error: --parallel must be >= 1, got {parallel}", file=sys.stderr)
        return 2
    if a.vmap:  # train K seeds per program, then whatever is left (other eval protocols)
        # A group that fails is retried below, seed by seed, from its runs' checkpoints.
        execute(exp, vmap_runs(runs, a.vmap), python=python, parallel=parallel, cpu=False)
        runs = plan(exp, a.workdir, only=only, seeds=a.seeds)
    failed = execute(exp, runs, python=python, parallel=parallel, cpu=cpu_only())
    print(
        f"{exp.name}: {len(runs) - len(failed)}/{len(runs)} runs finished; "
        f"report: python -m experiments.report {shlex.quote(exp.name)} --workdir {a.workdir}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
