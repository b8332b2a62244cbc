r"""The tables of docs/measurements/ as data, run one entry per process, resumable.

    python -m resnet_jax.bench_suite --suite cpu --out runs/bench_cpu
    python3 -m resnet_jax.bench_suite --suite gpu --out runs/bench_gpu --max_minutes 8

Each entry is one `python -m resnet_jax.benchmark ... --json` in its own process, so every row
gets a fresh allocator (a clean peak-memory figure) and its own `XLA_FLAGS`. Results land in
`OUT/<id>.json` as soon as an entry finishes; entries whose JSON already exists are skipped, so a
suite cut by a time limit (a job scheduler's, say) resumes where it stopped. The markdown
table of everything done so far is printed last and written to `OUT/table.md`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

from absl import flags

from resnet_jax import entry
from resnet_jax.bench import core as bench_core


@dataclasses.dataclass(frozen=True)
class Entry:
    id: str  # file name and table key
    model: str
    batch_size: int
    mode: str = "train"
    dtype: str = "float32"
    steps: int = 20
    warmup: int = 3
    feed: str = "device"
    bn_group_size: int | None = None
    xla_flags: str = ""  # appended to the environment's XLA_FLAGS

    def argv(self, python: str = sys.executable) -> list[str]:
        args = [
            python,
            "-m",
            "resnet_jax.benchmark",
            f"--model={self.model}",
            f"--batch_size={self.batch_size}",
            f"--mode={self.mode}",
            f"--dtype={self.dtype}",
            f"--steps={self.steps}",
            f"--warmup={self.warmup}",
            "--windows=5",
        ]
        if self.feed != "device":
            args.append(f"--feed={self.feed}")
        if self.bn_group_size:
            args.append(f"--bn_group_size={self.bn_group_size}")
        return args + ["--json"]

    def command(self) -> str:
        """The shell command a reader can paste to reproduce the row."""
        prefix = f"XLA_FLAGS='{self.xla_flags}' " if self.xla_flags else ""
        return prefix + shlex.join(["python"] + self.argv()[1:-1])


# Order = priority: a run cut short by its time limit has the most important rows first.
CPU_SUITE = (
    Entry("r20-train-128", "resnet20", 128),
    Entry("r20-eval-128", "resnet20", 128, mode="eval"),
    Entry("r56-train-128", "resnet56", 128),
    Entry("r56-eval-128", "resnet56", 128, mode="eval"),
    Entry("r50-train-8", "resnet50", 8, steps=10, warmup=2),
    Entry("r50-eval-8", "resnet50", 8, mode="eval", steps=10, warmup=2),
)

_BF16 = dict(dtype="bfloat16", steps=50, warmup=5)
# XLA GPU flags worth trying on a convnet (docs/measurements/gpu.md says why); each is one A/B row
# against r50-train-256 and is kept only if it measurably helps.
GPU_FLAG_TRIALS = (
    ("nhwc", "--xla_gpu_force_conv_nhwc=true"),
    ("cmdbuf-off", "--xla_gpu_enable_command_buffer="),
    ("conv-fusion", "--xla_gpu_experimental_enable_conv_fusion=true"),
    ("no-runtime-fusion", "--xla_gpu_use_runtime_fusion=false"),
    ("autotune-0", "--xla_gpu_autotune_level=0"),
)
GPU_SUITE = (
    Entry("r50-train-256", "resnet50", 256, **_BF16),
    Entry("r50-train-128", "resnet50", 128, **_BF16),
    Entry("r50-eval-256", "resnet50", 256, mode="eval", **_BF16),
    Entry("r18-train-256", "resnet18", 256, **_BF16),
    Entry("r18-train-128", "resnet18", 128, **_BF16),
    Entry("r34-train-256", "resnet34", 256, **_BF16),
    Entry("r34-train-128", "resnet34", 128, **_BF16),
    Entry("r101-train-256", "resnet101", 256, **_BF16),
    Entry("r101-train-128", "resnet101", 128, **_BF16),
    Entry("r152-train-256", "resnet152", 256, **_BF16),
    Entry("r152-train-128", "resnet152", 128, **_BF16),
    # Step + per-step host-to-device copy through the trainer's prefetch (no tf.data).
    Entry("r50-train-256-hostfeed", "resnet50", 256, feed="host", **_BF16),
    # The paper's per-GPU BN statistics (groups of 32) against BN over the whole batch.
    Entry("r50-train-256-bn32", "resnet50", 256, bn_group_size=32, **_BF16),
    Entry("r50-train-256-f32", "resnet50", 256, dtype="float32", steps=30, warmup=3),
    Entry("r50-train-512", "resnet50", 512, **_BF16),
    Entry("r56-train-128", "resnet56", 128, **_BF16),  # small steps: dispatch-bound?
    Entry("r56-train-1024", "resnet56", 1024, **_BF16),
) + tuple(
    Entry(f"r50-train-256-{name}", "resnet50", 256, xla_flags=f, **_BF16)
    for name, f in GPU_FLAG_TRIALS
)

SUITES = {"cpu": CPU_SUITE, "gpu": GPU_SUITE}


def run_entry(entry: Entry, out_dir: str, python: str, timeout_s: float) -> dict:
    """Runs one entry in a subprocess; returns its result (or an 'error' row) and saves it."""
    env = dict(os.environ)
    if entry.xla_flags:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + entry.xla_flags).strip()
    try:
        proc = subprocess.run(
            entry.argv(python), env=env, capture_output=True, text=True, timeout=timeout_s
        )
        if proc.returncode == 0:
            result = json.loads(proc.stdout)
        else:
            tail = proc.stderr.strip().splitlines()[-1:] or ["?"]
            oom = bench_core.is_out_of_memory(RuntimeError(proc.stderr))
            result = {"error": "out of memory" if oom else f"failed: {tail[0][:120]}"}
    except subprocess.TimeoutExpired:
        result = {"error": f"timed out after {timeout_s:.0f} s"}
    result = {"model": entry.model, "batch_size": entry.batch_size, **result}
    result.update(id=entry.id, command=entry.command())
    with open(os.path.join(out_dir, f"{entry.id}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


def load_results(entries: Sequence[Entry], out_dir: str) -> list[dict]:
    rows = []
    for e in entries:
        path = os.path.join(out_dir, f"{e.id}.json")
        if os.path.exists(path):
            with open(path) as f:
                rows.append(json.load(f))
    return rows


def suite_table(rows: Sequence[dict]) -> str:
    """Markdown: one row per entry with its conditions and figures, then each row's command.

    'peak GiB' is the allocator's peak (GPU/TPU); 'XLA GiB' the compiled step's static need
    (arguments + outputs + temporaries - donated), which every backend reports.
    """
    head = (
        "| id | model | px | batch | mode | dtype | feed / flags | images/s | step ms "
        "(median, min-p90) | compile s | TFLOP/s | MFU % | peak GiB | XLA GiB | device | date | load |"
    )
    lines = [head, "|---|---|---:|---:|---|---|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|"]
    f = bench_core._fmt
    for r in rows:
        extra = r.get("feed", "device") if r.get("feed", "device") != "device" else ""
        if r.get("xla_flags"):
            extra = (extra + " " + r["xla_flags"]).strip()
        if "error" in r:
            lines.append(
                f"| {r['id']} | {r['model']} | | {r['batch_size']} | | | | {r['error']} "
                "| | | | | | | | | |"
            )
            continue
        mem, xla = r.get("peak_memory_bytes"), r.get("compiled_memory_bytes")
        lines.append(
            f"| {r['id']} | {r['model']} | {r['image_size']} | {r['batch_size']} | {r['mode']} | "
            f"{r['dtype']} | {extra} | {f(r['images_per_sec'], 'rate')} | "
            f"{f(r['step_ms'], '.2f')} "
            f"({f(r['step_ms_min'], '.2f')}-{f(r['step_ms_p90'], '.2f')}) | "
            f"{f(r['compile_s'], '.1f')} | {f(r['tflops'], '.3g')} | "
            f"{f(r['mfu'] and 100 * r['mfu'], '.1f')} | {f(mem and mem / 2**30, '.2f')} | "
            f"{f(xla and xla / 2**30, '.2f')} | "
            f"{r['device']} | {r['date']} | {f(r.get('host_load'), '.1f')} |"
        )
    lines += ["", "Commands:", ""] + [f"- `{r['id']}`: `{r['command']}`" for r in rows]
    return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_enum("suite", "cpu", sorted(SUITES), "Which table to run.")
    flags.DEFINE_string("out", None, "Directory for per-entry JSON and table.md (resumable).")
    flags.DEFINE_list("only", None, "Run just these entry ids.")
    flags.DEFINE_float("max_minutes", 0, "Start no new entry after this many minutes (0: none).")
    flags.DEFINE_float("entry_timeout_s", 900, "Kill an entry after this long.")
    flags.DEFINE_bool("rerun", False, "Run entries even if their JSON exists.")
    flags.DEFINE_string("python", sys.executable, "Interpreter for the entries.")
    flags.mark_flag_as_required("out")


def main(argv: Sequence[str]) -> None:
    del argv
    entries = [e for e in SUITES[FLAGS.suite] if not FLAGS.only or e.id in FLAGS.only]
    os.makedirs(FLAGS.out, exist_ok=True)
    start = time.monotonic()
    for e in entries:
        if not FLAGS.rerun and os.path.exists(os.path.join(FLAGS.out, f"{e.id}.json")):
            continue
        if FLAGS.max_minutes and time.monotonic() - start > 60 * FLAGS.max_minutes:
            print(f"time budget spent; rerun the same command to resume at {e.id}", flush=True)
            break
        t = time.monotonic()
        r = run_entry(e, FLAGS.out, FLAGS.python, FLAGS.entry_timeout_s)
        print(
            f"{e.id}: {r.get('error') or format(r['images_per_sec'], ',.1f') + ' img/s'} "
            f"({time.monotonic() - t:.0f} s, {datetime.datetime.now():%H:%M:%S})",
            flush=True,
        )
    table = suite_table(load_results(entries, FLAGS.out))
    with open(os.path.join(FLAGS.out, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)


def run() -> None:
    """`python -m resnet_jax.bench_suite`."""
    _define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
