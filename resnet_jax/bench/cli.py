r"""Throughput of the real train / eval step on device-resident random data, with MFU.

    python -m resnet_jax.benchmark --model resnet50 --batch_size 256 --dtype bfloat16 [--json]
    python -m resnet_jax.benchmark --model resnet50 --dtype bfloat16 --sweep 64,128,256
    python -m resnet_jax.benchmark --input_pipeline --dataset imagenet2012 --data_dir DIR \
        [--vs_decoder] [--feed_target 7000]

What is timed is exactly what the trainer runs: `parallel.jit_train_step` (the jitted, donated,
sharded `steps.train_step` with the `optim` optimiser) over a mesh of every device, so a multi-GPU
host (or, under SLURM / Open MPI / a TPU pod, every host) measures data parallelism including the
gradient all-reduce. The batch is generated on the devices, so no input pipeline or host-to-device
copy is in the loop; `--feed host` adds the per-step copy through the trainer's prefetch, and
`--input_pipeline` measures tf.data alone. TensorFlow is never imported unless `--input_pipeline`
is given.

FLOPs are counted from the model: 2 per forward multiply-add of every conv and dense layer at
the step's input size, 3 x that for a training step (`bench.build`). XLA's cost analysis of the
compiled step is reported beside it as `flops_xla`, with a warning when the two differ by more than
10% (on GPU XLA does not count cuDNN convolutions). MFU divides the achieved FLOP/s by the dense
peak of the devices (`--peak_tflops`, or the table in `bench_core.PEAK_TFLOPS`; none on CPU).

`--step default,bare,minimal` times the trainer's step, the project's net under the minimal
reference step, and the reference net and step (`bench.reference`) in one process, window by
window in turn, and gives each one's speed relative to the last.
"""

from __future__ import annotations

import datetime
import itertools
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from resnet_jax import entry
from resnet_jax.bench import build
from resnet_jax.bench import core as bench_core
from resnet_jax.bench import op_profile as op_profile_lib
from resnet_jax.bench.build import DTYPES, MODES, STEP_KINDS

FEEDS = ("device", "host")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")


def host_batches(
    mesh: Any,
    batch_size: int,
    image_size: int,
    num_classes: int,
    *,
    with_mask: bool = False,
    prefetch: int = 2,
    pool: int = 2,
    seed: int = 0,
):
    """Endless global batches copied from host numpy arrays by `parallel.prefetch_to_mesh`.

    The trainer's feeding path minus tf.data: every step pays a real host-to-device copy of this
    process's shard (from a small pool of arrays, so no host work is timed), overlapped with the
    running step exactly as in training. The batches are those of the synthetic device pool
    (`synthetic.make_batches`): uint8 images, and for training the 'flip' and 'light' draws.
    """
    from resnet_jax.engine import parallel

    local = parallel.local_batch_size(batch_size, mesh)
    rng = np.random.default_rng(seed + jax.process_index())
    arrays = []
    for _ in range(pool):
        arrays.append(
            {
                "image": rng.integers(0, 256, (local, image_size, image_size, 3), np.uint8),
                "label": rng.integers(0, num_classes, (local,), dtype=np.int32),
            }
        )
        if with_mask:
            arrays[-1]["mask"] = np.ones((local,), np.bool_)
        else:
            arrays[-1]["flip"] = np.zeros((local,), np.bool_)
            arrays[-1]["light"] = np.zeros((local, 3), np.float32)
    return parallel.prefetch_to_mesh(itertools.cycle(arrays), mesh, prefetch)


def benchmark(
    model_name: str,
    *,
    batch_size: int,
    dtype: str = "float32",
    image_size: int | None = None,
    mode: str = "train",
    step: str = "default",
    steps: int = 20,
    warmup: int = 3,
    windows: int = 5,
    peak_tflops: float | None = None,
    feed: str = "device",
    devices: Sequence[Any] | None = None,
    profile_dir: str | None = None,
    profile_steps: int = 5,
    op_profile: bool = False,
    grad_accum_steps: int = 1,
    **model_overrides,
) -> dict[str, Any]:
    """Compiles and times one model's train or eval step; returns a flat dict of results.

    `batch_size` is global (split over `devices`, default all). `model_overrides` go to
    `create_model` (e.g. bn_group_size=32). `step`: 'default' (what the trainer runs) or 'minimal'
    (the reference step, `bench.reference`). Times: `step_ms` is the median over windows of the
    per-step mean inside each window (see `bench_core.time_step`). feed: 'device' reuses one batch
    born on the devices (the step alone); 'host' copies a host batch in every step through the
    trainer's prefetch path (step + input transfer, without tf.data).
    """
    if feed not in FEEDS:
        raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
    built = build.build_step(
        model_name,
        kind=step,
        batch_size=batch_size,
        dtype=dtype,
        image_size=image_size,
        mode=mode,
        devices=devices,
        grad_accum_steps=grad_accum_steps,
        **model_overrides,
    )
    fed = None
    if feed == "host":
        fed = host_batches(
            built.mesh, batch_size, built.image_size, built.num_classes, with_mask=mode == "eval"
        )
    timing = bench_core.time_step(
        built.step,
        built.state,
        built.batch,
        steps=steps,
        warmup=warmup,
        windows=windows,
        batches=fed,
    )
    state = timing.carry
    if profile_dir:
        # A separate short run: tracing adds overhead, so it never overlaps the timed windows.
        with jax.profiler.trace(profile_dir):
            for _ in range(profile_steps):
                state, out = built.step(state, next(fed) if fed else built.batch)
            jax.block_until_ready((state, out))
    result = _result(model_name, built, timing.step_seconds, timing.steps_per_window, peak_tflops)
    result.update(feed=feed, warmup=warmup)
    if op_profile:  # after the timing, for the same reason as the trace above
        ops = op_profile_lib.profile(built.step, state, built.batch, built.compiled.as_text())
        result["op_profile_ms"] = op_profile_lib.by_category(ops)
    return result


def _result(
    model_name: str,
    built: build.BuiltStep,
    step_seconds: Sequence[float],
    steps_per_window: int,
    peak_tflops: float | None,
) -> dict[str, Any]:
    """The flat result dict of one timed step: rates, times, FLOPs (model and XLA), MFU, memory."""
    stats = bench_core.summarize(step_seconds)
    step_s = stats["median"]
    batch_size, dtype, devices = built.batch_size, built.dtype, built.devices
    kind = devices[0].device_kind
    peak = peak_tflops if peak_tflops else bench_core.lookup_peak_tflops(kind, dtype)
    flops = built.flops_per_step
    warning = bench_core.flops_disagreement(flops, built.flops_xla)
    if warning:
        logging.warning("%s %s: %s", model_name, built.kind, warning)
    return {
        "model": model_name,
        "mode": built.mode,
        "step": built.kind,
        "batch_size": batch_size,
        "grad_accum_steps": built.grad_accum_steps,
        "dtype": dtype,
        "image_size": built.image_size,
        "num_classes": built.num_classes,
        "images_per_sec": batch_size / step_s,
        "step_ms": 1e3 * step_s,
        "step_ms_min": 1e3 * stats["min"],
        "step_ms_p90": 1e3 * stats["p90"],
        "step_ms_max": 1e3 * stats["max"],
        "steps": steps_per_window * len(step_seconds),
        "windows": len(step_seconds),
        "lower_s": built.lower_s,
        "compile_s": built.compile_s,
        "flops_per_step": flops,
        "flops_per_image": flops / batch_size,
        "flops_source": "model",
        "flops_xla": built.flops_xla,
        "flops_xla_source": built.flops_xla_source,
        "flops_xla_ratio": built.flops_xla / flops if built.flops_xla else None,
        "flops_warning": warning,
        "flops_per_step_compiled": built.flops_per_step_compiled,
        "flops_per_step_lowered": built.flops_per_step_lowered,
        "tflops": bench_core.achieved_tflops(flops, step_s),
        "peak_tflops": peak,
        "mfu": bench_core.mfu(flops, step_s, peak, len(devices)),
        "peak_memory_bytes": bench_core.peak_memory_bytes(devices),
        "compiled_memory_bytes": bench_core.compiled_memory_bytes(built.compiled),
        "device": bench_core.describe_devices(devices),
        "device_kind": kind,
        "platform": devices[0].platform,
        "num_devices": len(devices),
        "process_count": jax.process_count(),
        "host_load": bench_core.host_load(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_version": jax.__version__,
        "date": _now(),
    }


def compare_steps(
    model_name: str,
    kinds: Sequence[str],
    *,
    batch_size: int,
    rounds: int = 10,
    steps: int = 2,
    warmup: int = 2,
    peak_tflops: float | None = None,
    grad_accum_steps: Sequence[int] = (1,),
    **kwargs,
) -> list[dict[str, Any]]:
    """Times several steps of one model in one process, window by window in turn: each step kind
    of `kinds` in each micro-batch count of `grad_accum_steps`.

    Each round times one window of `steps` steps of every one, one after the other, so a noisy
    neighbour slows all of them alike; each row's `speed_ratio` is the median over rounds of
    (last step's window time / this step's window time) in the same round: its speed relative to
    the last one named (e.g. `default,minimal`: the default step over the minimal one;
    grad_accum_steps `2,1`: the step in 2 micro-batches over the plain one).
    """
    variants = [(kind, k) for kind in kinds for k in grad_accum_steps]
    if len(variants) < 2 or len(set(variants)) != len(variants):
        raise ValueError(
            f"compare needs two or more different steps, got kinds {list(kinds)} with "
            f"grad_accum_steps {list(grad_accum_steps)}"
        )
    built = [
        build.build_step(model_name, kind=kind, batch_size=batch_size, grad_accum_steps=k, **kwargs)
        for kind, k in variants
    ]
    last_kind, last_k = variants[-1]
    relative_to = last_kind
    if len(grad_accum_steps) > 1:
        relative_to += f" in {last_k} micro-batch{'es' if last_k > 1 else ''}"
    carries = [b.state for b in built]
    per_round = [[] for _ in built]
    for r in range(rounds + 1):  # round 0 is the warm-up
        for i, b in enumerate(built):
            t = bench_core.time_step(
                b.step, carries[i], b.batch, steps=steps if r else warmup, warmup=0, windows=1
            )
            carries[i] = t.carry
            if r:
                per_round[i].extend(t.step_seconds)
    rows = []
    for b, seconds in zip(built, per_round, strict=True):
        row = _result(model_name, b, seconds, steps, peak_tflops)
        ratios = [ref / s for ref, s in zip(per_round[-1], seconds, strict=True)]
        row.update(
            feed="device",
            warmup=warmup,
            relative_to=relative_to,
            speed_ratio=bench_core.percentile(ratios, 50),
            speed_ratio_min=min(ratios),
            speed_ratio_max=max(ratios),
        )
        rows.append(row)
    return rows


def sweep(model_name: str, batch_sizes: Sequence[int], **kwargs) -> list[dict[str, Any]]:
    """`benchmark` at each batch size, smallest first; stops at the first out-of-memory batch.

    Increasing order keeps the allocator's process-wide peak meaningful for each row.
    """
    rows = []
    for b in sorted(batch_sizes):
        try:
            rows.append(benchmark(model_name, batch_size=b, **kwargs))
        except Exception as e:  # Only the allocator's OOM is a result; anything else is a bug.
            if not bench_core.is_out_of_memory(e):
                raise
            from resnet_jax.models import get_spec

            size = kwargs.get("image_size") or get_spec(model_name).input_size
            rows.append(
                {"model": model_name, "image_size": size, "batch_size": b, "error": "out of memory"}
            )
            break
        jax.clear_caches()  # drop the previous executable's buffers before the next size
    return rows


def input_pipeline(
    dataset: str,
    data_dir: str | None,
    batch_size: int,
    augment: str | None = None,
    num_batches: int = 40,
    image_size: int | None = None,
    num_threads: int | None = None,
    *,
    vs_decoder: bool = False,
    rounds: int = 5,
    feed_target: float | None = None,
) -> dict[str, Any]:
    """Host-side tf.data throughput of the project's training pipeline (imports TensorFlow).

    `input_throughput` does the measuring (`compare_with_decoder` with `vs_decoder`:
    interleaved rounds against the JPEG decoder alone on the same crops, with and without reading
    the records); this adds the host
    description, load and date so the row can go into docs/measurements/input_pipeline.md as it is, and with
    `feed_target` (images/s, e.g. one GPU's training rate) `cores_to_feed`: the cores that many
    images/s need at the measured images per CPU-second of the pipeline (a simulated GPU host whose
    cores feed one accelerator).
    """
    from resnet_jax.bench import input_throughput

    if vs_decoder:
        result = input_throughput.compare_with_decoder(
            dataset,
            data_dir,
            batch_size,
            augment,
            rounds=rounds,
            num_batches=num_batches,
            image_size=image_size,
            num_threads=num_threads,
        )
        per_cpu_sec = result["pipeline_images_per_cpu_sec"]
    else:
        result = input_throughput.measure_input_pipeline(
            dataset,
            data_dir,
            batch_size,
            augment,
            num_batches,
            image_size=image_size,
            num_threads=num_threads,
        )
        per_cpu_sec = result["images_per_cpu_sec"]
    result = dict(result)
    if feed_target is not None:
        if feed_target <= 0:
            raise ValueError(f"feed_target must be a positive rate in images/s, got {feed_target}")
        result.update(feed_target=feed_target, cores_to_feed=feed_target / per_cpu_sec)
    result.update(
        device=f"host {bench_core.cpu_model_name()}, {os.cpu_count()} cores",
        host_load=bench_core.host_load(),
        date=_now(),
    )
    return result


def format_input_pipeline(r: dict[str, Any]) -> str:
    """The human-readable line(s) of `input_pipeline`'s result."""
    if "ratio" in r:
        from resnet_jax.bench import input_throughput

        text = input_throughput.format_comparison(r)
    else:
        text = (
            f"{r['dataset']} input pipeline batch={r['batch_size']} augment={r['augment']}: "
            f"{r['images_per_sec']:,.1f} img/s, {r['images_per_sec_per_core']:,.1f} per core "
            f"(wall / {r['cores']} cores), {r['images_per_cpu_sec']:,.1f} per CPU-second"
        )
    text += f"\non {r['device']} (load {r['host_load']}), {r['date']}"
    if "cores_to_feed" in r:
        text += (
            f"\n{r['cores_to_feed']:.1f} cores at that rate per CPU-second feed "
            f"{r['feed_target']:,.0f} images/s"
        )
    return text


def format_result(r: dict[str, Any]) -> str:
    """One human-readable line per result."""

    def opt(value, spec, suffix=""):
        return "n/a" if value is None else format(value, spec) + suffix

    mfu = r["mfu"] and 100 * r["mfu"]
    mem = r["peak_memory_bytes"] and r["peak_memory_bytes"] / 2**30

    ratio = ""
    if "speed_ratio" in r:
        ratio = (
            f", speed {r['speed_ratio']:.3f}x {r['relative_to']}'s (median of paired windows, "
            f"{r['speed_ratio_min']:.3f}-{r['speed_ratio_max']:.3f})"
        )
    kind = "" if r.get("step", "default") == "default" else f" ({r['step']} step)"
    if r.get("grad_accum_steps", 1) > 1:
        kind += f" in {r['grad_accum_steps']} micro-batches"
    return (
        f"{r['model']} {r['mode']}{kind} batch={r['batch_size']} {r['dtype']} {r['image_size']}px on "
        f"{r['device']}: {r['images_per_sec']:,.1f} img/s, step {r['step_ms']:.2f} ms "
        f"(min {r['step_ms_min']:.2f}, p90 {r['step_ms_p90']:.2f}), "
        f"compile {r['compile_s']:.1f} s, {opt(r['tflops'], '.2f', ' TFLOP/s')}, "
        f"MFU {opt(mfu, '.1f', '%')}, peak mem {opt(mem, '.2f', ' GiB')}{ratio}"
    )


def table_with_header(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table of results, after a line with what they share (mode, dtype, device, date)."""
    ok = [r for r in rows if "error" not in r] or [{}]
    r = ok[0]
    head = (
        f"{r.get('mode')} step, {r.get('dtype')}, feed={r.get('feed')}, on {r.get('device')}, "
        f"{r.get('date')}, host load {r.get('host_load')}"
    )
    return head + "\n\n" + bench_core.markdown_table(rows)


FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Defined only when run as a program: absl flags are process-global, and other modules
    # (resnet_jax.tools.summary) define --model too, so defining them at import would clash.
    f = flags
    f.DEFINE_list(
        "model",
        None,
        "Registered model name(s), comma-separated (see resnet_jax.models.available_models).",
    )
    f.DEFINE_integer("batch_size", 128, "Global batch size (split over all devices).")
    f.DEFINE_enum("dtype", "float32", sorted(DTYPES), "Compute dtype; params stay float32.")
    f.DEFINE_integer("image_size", None, "Input side in pixels; default: the model's native size.")
    f.DEFINE_integer("steps", 20, "Timed steps (after warm-up), split into --windows windows.")
    f.DEFINE_integer("warmup", 3, "Untimed steps after compilation.")
    f.DEFINE_integer("windows", 5, "Timing windows; each ends with one block_until_ready.")
    f.DEFINE_enum("mode", "train", MODES, "Time the train step or the eval step.")
    f.DEFINE_list(
        "step",
        ["default"],
        f"Step kind(s) {STEP_KINDS}: default = the trainer's step; minimal = the reference net "
        "and step (resnet_jax/bench/reference.py); bare = the project's net with the reference "
        "step. Two or more: timed in turn, window by window, in one process, with each one's "
        "speed relative to the last (e.g. default,bare,minimal).",
    )
    f.DEFINE_enum(
        "feed",
        "device",
        FEEDS,
        "device: one device-resident batch; host: a host "
        "batch copied every step through parallel.prefetch_to_mesh.",
    )
    f.DEFINE_list("sweep", None, "Comma-separated batch sizes (instead of --batch_size).")
    f.DEFINE_float("peak_tflops", None, "Dense peak TFLOP/s per device for MFU (default: table).")
    f.DEFINE_bool("json", False, "Print JSON: an object for one run, a list for several.")
    f.DEFINE_list(
        "output",
        None,
        "Also write the result to these files: JSON for *.json, "
        "the text/markdown table otherwise (e.g. --output=r.json,r.md).",
    )
    f.DEFINE_string("profile_dir", None, "Write a jax.profiler trace of a few extra steps here.")
    f.DEFINE_bool(
        "op_profile",
        False,
        "Also profile a few steps op by op and print where the time goes: convolutions by "
        "direction, batch norm, layout copies, elementwise, optimizer (bench/op_profile.py).",
    )
    f.DEFINE_integer("bn_group_size", None, "Batch-norm statistics per group of N examples.")
    f.DEFINE_list(
        "grad_accum_steps",
        ["1"],
        "Train step in K micro-batches of batch_size / K (the trainer's grad_accum_steps). "
        "Several (e.g. 2,1): timed in turn like several --step kinds, each relative to the last.",
    )
    f.DEFINE_bool("input_pipeline", False, "Measure the host input pipeline instead of a model.")
    f.DEFINE_string("dataset", "shapes10", "Dataset for --input_pipeline.")
    f.DEFINE_string("data_dir", None, "tfds data_dir for --input_pipeline.")
    f.DEFINE_string(
        "augment",
        None,
        "--input_pipeline augmentation (default: the dataset "
        "family's standard one; 'none' to time decoding alone).",
    )
    f.DEFINE_integer(
        "num_batches", 40, "Batches timed by --input_pipeline (per round with --vs_decoder)."
    )
    f.DEFINE_integer("num_threads", None, "--input_pipeline tf.data threads (default: all cores).")
    f.DEFINE_bool(
        "vs_decoder",
        False,
        "--input_pipeline: interleave rounds of the JPEG decoder alone on the same crops (decode "
        "only, images in memory; and read + decode) and report the pipeline's ratio to each "
        "(ImageNet).",
    )
    f.DEFINE_integer("rounds", 10, "With several --step kinds or --vs_decoder: rounds timed.")
    f.DEFINE_float(
        "feed_target",
        None,
        "--input_pipeline: images/s to feed (e.g. 7000, one H200's ResNet-50 rate); prints the "
        "cores that rate needs at the measured images per CPU-second.",
    )


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.input_pipeline:
        result = input_pipeline(
            FLAGS.dataset,
            FLAGS.data_dir,
            FLAGS.batch_size,
            FLAGS.augment,
            FLAGS.num_batches,
            FLAGS.image_size,
            FLAGS.num_threads,
            vs_decoder=FLAGS.vs_decoder,
            rounds=FLAGS.rounds,
            feed_target=FLAGS.feed_target,
        )
        text = format_input_pipeline(result)
    else:
        if not FLAGS.model:
            raise app.UsageError("--model is required (or --input_pipeline)")
        from resnet_jax.engine import parallel

        parallel.initialize_distributed()  # no-op unless a multi-process job is detected
        kwargs = dict(
            dtype=FLAGS.dtype,
            image_size=FLAGS.image_size,
            mode=FLAGS.mode,
            steps=FLAGS.steps,
            warmup=FLAGS.warmup,
            windows=FLAGS.windows,
            peak_tflops=FLAGS.peak_tflops,
            feed=FLAGS.feed,
            profile_dir=FLAGS.profile_dir,
            op_profile=FLAGS.op_profile,
        )
        if FLAGS.bn_group_size:
            kwargs["bn_group_size"] = FLAGS.bn_group_size
        try:
            accum = [int(k) for k in FLAGS.grad_accum_steps]
        except ValueError:
            accum = []
        if not accum or min(accum) < 1:
            raise app.UsageError(f"--grad_accum_steps {FLAGS.grad_accum_steps}: positive integers")
        if len(accum) == 1 and accum[0] > 1:
            kwargs["grad_accum_steps"] = accum[0]
        bad = [k for k in FLAGS.step if k not in STEP_KINDS]
        if bad:
            raise app.UsageError(f"--step {bad} unknown; valid: {', '.join(STEP_KINDS)}")
        if len(FLAGS.step) > 1 or len(accum) > 1:
            if len(FLAGS.model) > 1 or FLAGS.sweep or FLAGS.feed != "device" or FLAGS.profile_dir:
                raise app.UsageError(
                    "several --step kinds or --grad_accum_steps compare one --model at one "
                    "--batch_size on device data (no --sweep, --feed=host or --profile_dir)"
                )
            for key in ("feed", "profile_dir", "windows", "op_profile"):
                kwargs.pop(key)
            kwargs.update(steps=max(1, FLAGS.steps // FLAGS.rounds), grad_accum_steps=accum)
            result = compare_steps(
                FLAGS.model[0],
                FLAGS.step,
                batch_size=FLAGS.batch_size,
                rounds=FLAGS.rounds,
                **kwargs,
            )
            text = "\n".join(map(format_result, result))
        elif len(FLAGS.model) == 1 and not FLAGS.sweep:
            result = benchmark(
                FLAGS.model[0], batch_size=FLAGS.batch_size, step=FLAGS.step[0], **kwargs
            )
            text = format_result(result)
            if FLAGS.op_profile:
                text += "\n\n" + op_profile_lib.table(result["op_profile_ms"], result["step_ms"])
        else:
            sizes = [int(b) for b in FLAGS.sweep] if FLAGS.sweep else [FLAGS.batch_size]
            kwargs["step"] = FLAGS.step[0]
            result = [r for m in FLAGS.model for r in sweep(m, sizes, **kwargs)]
            text = table_with_header(result)
    as_json = json.dumps(result, indent=1)
    # Every process measures, one reports. The pipeline mode never touches JAX (no backend start,
    # no GPU memory preallocation) and is one process.
    if FLAGS.input_pipeline or jax.process_index() == 0:
        print(as_json if FLAGS.json else text, flush=True)
        for path in FLAGS.output or ():
            with open(path, "w") as f:  # the format follows the file's extension
                f.write((as_json if path.endswith(".json") else text) + "\n")


def run() -> None:
    """`python -m resnet_jax.benchmark`."""
    _define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
