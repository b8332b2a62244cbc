"""Launch or resume an experiment: one `python -m resnet_jax.main` subprocess per (entry, seed).

  python -m experiments.run NAME --workdir ROOT [--only ENTRY[,ENTRY]] [--seeds K]
                            [--dry_run] [--print_commands] [--python PY]

Runs go one after another on this host into ROOT/<entry>/seed<k>. A run whose workdir has a
`summary.json` is finished and skipped; any other run is (re)started, and the trainer resumes it from
the checkpoint in its workdir. `--print_commands` prints one shell command per unfinished run, for a
cluster scheduler (see docs/experiments.md for a SLURM array).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from typing import Any, Sequence

import experiments
from experiments import Entry, Experiment

REPO = pathlib.Path(__file__).resolve().parent.parent
RUN_RECORD = "run.json"  # what run.py launched in a workdir; guards against name clashes
LOG = "run.log"


@dataclasses.dataclass(frozen=True)
class Run:
  entry: Entry
  seed: int
  workdir: pathlib.Path
  status: str  # 'done' (summary.json), 'partial' (workdir with outputs), 'todo'
  args: tuple[str, ...]  # arguments after `python`

  def command(self, python: str = "python") -> str:
    return shlex.join([python, *self.args])


def seeds_of(entry: Entry, seeds: int | None) -> range:
  return range(entry.seeds if seeds is None else seeds)


def run_dir(root: os.PathLike, entry: Entry, seed: int) -> pathlib.Path:
  return pathlib.Path(root) / entry.name / f"seed{seed}"


def run_status(workdir: pathlib.Path) -> str:
  if (workdir / "summary.json").exists():
    return "done"
  if (workdir / "metrics.jsonl").exists() or (workdir / "checkpoints").exists():
    return "partial"
  return "todo"


def format_value(value: Any) -> str:
  """A config value as ml_collections' `--config.k=v` flag parser reads it."""
  if isinstance(value, (tuple, list)):
    return "(" + ",".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def train_args(entry: Entry, seed: int, workdir: os.PathLike) -> tuple[str, ...]:
  """The trainer's command line (after `python`) for one run."""
  args = ["-m", "resnet_jax.main", f"--config={entry.config}", f"--workdir={workdir}",
          f"--config.seed={seed}"]
  args += [f"--config.{k}={format_value(v)}" for k, v in entry.overrides.items()]
  args += [f"--config.model_overrides.{k}={format_value(v)}"
           for k, v in entry.model_overrides.items()]
  return tuple(args)


def select(exp: Experiment, only: Sequence[str] | None) -> list[Entry]:
  if not only:
    return list(exp.entries)
  return [exp.entry(name) for name in only]  # raises, naming the valid entries


def plan(exp: Experiment, root: os.PathLike, *, only: Sequence[str] | None = None,
         seeds: int | None = None) -> list[Run]:
  runs = []
  for entry in select(exp, only):
    for seed in seeds_of(entry, seeds):
      wd = run_dir(root, entry, seed)
      runs.append(Run(entry, seed, wd, run_status(wd), train_args(entry, seed, wd)))
  return runs


def _claim_workdir(run: Run, exp: Experiment) -> None:
  """Records what is trained in the workdir; refuses a workdir that holds a different run."""
  record_path = run.workdir / RUN_RECORD
  record = {"experiment": exp.name, "entry": run.entry.name, "seed": run.seed,
            "args": list(run.args)}
  if record_path.exists():
    old = json.loads(record_path.read_text())
    if old["args"] != record["args"]:
      raise RuntimeError(
          f"{run.workdir} was started with a different command:\n  {shlex.join(old['args'])}\n"
          f"now:\n  {shlex.join(record['args'])}\nUse another --workdir for this experiment.")
    return
  run.workdir.mkdir(parents=True, exist_ok=True)
  record_path.write_text(json.dumps(record, indent=1) + "\n")


def execute(exp: Experiment, runs: Sequence[Run], *, python: str = sys.executable,
            out=sys.stdout) -> list[Run]:
  """Trains the unfinished runs one after another; returns the runs that failed."""
  failed = []
  todo = [r for r in runs if r.status != "done"]
  for r in runs:
    if r.status == "done":
      print(f"skip   {r.entry.name} seed {r.seed}: finished ({r.workdir})", file=out)
  for i, r in enumerate(todo, 1):
    _claim_workdir(r, exp)
    verb = "resume" if r.status == "partial" else "start "
    print(f"{verb} [{i}/{len(todo)}] {r.entry.name} seed {r.seed}  (log: {r.workdir / LOG})",
          file=out, flush=True)
    t0 = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    with open(r.workdir / LOG, "a") as log:
      log.write(f"\n$ {r.command(python)}\n")
      log.flush()
      rc = subprocess.run([python, *r.args], cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT).returncode
    took = time.time() - t0
    if rc == 0 and run_status(r.workdir) == "done":
      print(f"done   {r.entry.name} seed {r.seed} in {took:.0f} s", file=out, flush=True)
    else:
      failed.append(r)
      tail = (r.workdir / LOG).read_text().splitlines()[-15:]
      print(f"FAILED {r.entry.name} seed {r.seed} (exit {rc}, {took:.0f} s); log tail:\n  "
            + "\n  ".join(tail), file=out, flush=True)
  return failed


def describe(runs: Sequence[Run], python: str) -> str:
  counts = {s: sum(r.status == s for r in runs) for s in ("done", "partial", "todo")}
  lines = [f"{len(runs)} runs: {counts['done']} done, {counts['partial']} partial, "
           f"{counts['todo']} to do"]
  for r in runs:
    lines.append(f"  [{r.status:7s}] {r.entry.name:24s} seed {r.seed}  {r.workdir}")
    lines.append(f"            {r.command(python)}")
  return "\n".join(lines)


def parse_args(argv):
  p = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__.split("\n")[0])
  p.add_argument("name", nargs="?", help="experiment name (see --list)")
  p.add_argument("--workdir", help="root folder: runs go to ROOT/<entry>/seed<k>")
  p.add_argument("--only", action="append", default=[],
                 help="entry name(s) to run, comma separated or repeated")
  p.add_argument("--seeds", type=int, default=None, help="seeds 0..K-1 for every entry "
                 "(default: each entry's own count)")
  p.add_argument("--dry_run", action="store_true", help="list the runs and their status")
  p.add_argument("--print_commands", action="store_true",
                 help="print one command per unfinished run (for a scheduler) and exit")
  p.add_argument("--python", default=None,
                 help="interpreter in commands (default: this one; 'python' for --print_commands)")
  p.add_argument("--list", action="store_true", help="list the experiments and exit")
  return p.parse_args(argv)


def main(argv=None) -> int:
  a = parse_args(argv)
  if a.list or not a.name:
    for name in experiments.available_experiments():
      exp = experiments.get_experiment(name)
      print(f"{name:22s} {len(exp.entries):2d} entries  {exp.title}")
    return 0 if a.list else 2
  try:
    exp = experiments.get_experiment(a.name)
    only = [n for chunk in a.only for n in chunk.split(",") if n]
    if not a.workdir:
      raise ValueError("--workdir is required")
    runs = plan(exp, a.workdir, only=only, seeds=a.seeds)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if a.print_commands:
    for r in runs:
      if r.status != "done":
        print(r.command(a.python or "python"))
    return 0
  python = a.python or sys.executable
  if a.dry_run:
    print(f"{exp.name}: {exp.title} [dataset: {exp.dataset}]")
    print(describe(runs, python))
    return 0
  failed = execute(exp, runs, python=python)
  print(f"{exp.name}: {len(runs) - len(failed)}/{len(runs)} runs finished; "
        f"report: python -m experiments.report {exp.name} --workdir {a.workdir}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
