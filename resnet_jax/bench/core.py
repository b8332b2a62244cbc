"""Model-independent pieces of the benchmark: timing, statistics, FLOPs, MFU, memory, tables.

Nothing here knows about ResNets or the training engine, so it can be tested on a toy step and
reused by other tools (the trainer's progress line, experiments). `resnet_jax.bench.cli` wires it
to the project's real train and eval steps.

Units: times in seconds unless a name ends in `_ms`; FLOPs are floating-point operations (one
multiply-add = 2 FLOPs); TFLOP/s = 1e12 FLOP/s; memory in bytes.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

# Dense (no structured sparsity) tensor-core peaks in TFLOP/s per device, from the vendors'
# datasheets. Sparse figures are twice these and are not reachable by a convnet's training step.
# 'float32' is the TF32 tensor-core peak on NVIDIA parts: JAX's default matmul/conv precision lets
# cuBLAS/cuDNN use TF32 for float32 inputs on Ampere and later. TPUs have no float32 entry because
# their float32 matmuls run as several bf16 passes whose count depends on the precision setting.
# Patterns are regexes tried in order against `device.device_kind`; specific parts come before the
# family name they contain (H100 PCIe before H100).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"GH200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    (r"H200 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5}),
    (r"H200", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    (r"H100 PCIe", {"bfloat16": 756.5, "float16": 756.5, "float32": 378.0}),
    (r"H100 NVL", {"bfloat16": 835.5, "float16": 835.5, "float32": 417.5}),
    (r"H100|H800", {"bfloat16": 989.4, "float16": 989.4, "float32": 494.7}),
    (r"A100|A800", {"bfloat16": 312.0, "float16": 312.0, "float32": 156.0}),
    (r"L40S", {"bfloat16": 362.1, "float16": 362.1, "float32": 183.0}),
    (r"\bL4\b", {"bfloat16": 121.0, "float16": 121.0, "float32": 60.0}),
    (r"TPU v4", {"bfloat16": 275.0}),
    (r"TPU v5 ?lite|TPU v5e", {"bfloat16": 197.0}),
    (r"TPU v5p|TPU v5$", {"bfloat16": 459.0}),
    (r"TPU v6 ?lite|TPU v6e", {"bfloat16": 918.0}),
)


def lookup_peak_tflops(device_kind: str, dtype: str) -> float | None:
    """Dense peak TFLOP/s of one device of this kind for `dtype`; None when unknown (CPUs)."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_kind, flags=re.IGNORECASE):
            return peaks.get(dtype)
    return None


# ---------------------------------------------------------------------------------------------
# Statistics


def percentile(values: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) with linear interpolation between order statistics."""
    if not len(values):
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100], got {q}")
    ordered = sorted(float(v) for v in values)
    rank = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, min, p90, max, mean and count of a sample (e.g. per-step seconds)."""
    return {
        "median": percentile(values, 50),
        "min": min(float(v) for v in values),
        "p90": percentile(values, 90),
        "max": max(float(v) for v in values),
        "mean": float(sum(values)) / len(values),
        "n": len(values),
    }


def achieved_tflops(flops_per_step: float | None, step_seconds: float) -> float | None:
    """Achieved TFLOP/s over all devices: FLOPs of one global step / step time."""
    if not flops_per_step or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / 1e12


def mfu(
    flops_per_step: float | None,
    step_seconds: float,
    peak_tflops_per_device: float | None,
    num_devices: int = 1,
) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the summed peak of the devices."""
    tflops = achieved_tflops(flops_per_step, step_seconds)
    if tflops is None or not peak_tflops_per_device:
        return None
    return tflops / (peak_tflops_per_device * num_devices)


# ---------------------------------------------------------------------------------------------
# FLOPs: the model's count, and XLA's beside it

# FLOPs per multiply-add of the forward pass: 2 (one multiply, one add). A training step does the
# forward pass, the gradient with respect to the activations and the one with respect to the
# weights, each about as many multiply-adds: 3 x 2 per multiply-add (Kaplan et al. 2020, PAPER.md).
FLOPS_PER_MAC = {"train": 3 * 2, "eval": 2}
# Above this relative gap between the model's count and XLA's, the report warns: one of them
# misses work (XLA on GPU does not count cuDNN convolution custom calls).
FLOPS_DISAGREEMENT = 0.10


def model_flops(macs: float, mode: str) -> float:
    """FLOPs of a train or eval step that does `macs` forward multiply-adds (whole batch)."""
    if mode not in FLOPS_PER_MAC:
        raise ValueError(f"mode must be one of {tuple(FLOPS_PER_MAC)}, got {mode!r}")
    return FLOPS_PER_MAC[mode] * float(macs)


def flops_disagreement(model_flops: float, xla_flops: float | None) -> str | None:
    """A one-line warning when XLA's count is more than 10% off the model's; else None."""
    if not xla_flops or not model_flops:
        return None
    ratio = xla_flops / model_flops
    if abs(ratio - 1.0) <= FLOPS_DISAGREEMENT:
        return None
    return (
        f"XLA's cost analysis counts {xla_flops:.3g} FLOP per step, {ratio:.3g}x the model's "
        f"{model_flops:.3g} (3 x 2 x multiply-adds for training, 2 x for evaluation); TFLOP/s and "
        f"MFU use the model's count. XLA leaves out work it hands to libraries (cuDNN convolutions "
        f"on GPU)"
    )


# ---------------------------------------------------------------------------------------------
# XLA cost and memory analysis


def _flops_from_cost(cost: Any) -> float | None:
    # jax returns a dict (recent versions) or a list with one dict per computation (older ones).
    if cost is None:
        return None
    if isinstance(cost, (list, tuple)):
        total = [c.get("flops") for c in cost if c]
        total = [f for f in total if f is not None]
        return float(sum(total)) if total else None
    flops = cost.get("flops")
    return None if flops is None else float(flops)


def _cost_flops(stage: Any) -> float | None:
    try:
        return _flops_from_cost(stage.cost_analysis())
    except Exception:  # Backends may not implement cost analysis at all.
        return None


def step_flops_both(
    lowered: Any, compiled: Any, num_devices: int
) -> tuple[float | None, float | None]:
    """(compiled, lowered) FLOPs of one global step; None where the analysis gives nothing.

    After SPMD partitioning the compiled module is the program of ONE device, so its count is
    multiplied by the number of devices; the lowered module is already the global computation.
    """
    c, low = _cost_flops(compiled), _cost_flops(lowered)
    return (c * num_devices if c else None), (low or None)


def step_flops(lowered: Any, compiled: Any, num_devices: int) -> tuple[float | None, str]:
    """FLOPs of one global step from XLA's cost analysis, and which analysis gave them.

    The compiled module is preferred: it is what runs. But a backend's cost model can miss work it
    hands to libraries (convolutions lowered to cuDNN custom calls on GPU), silently understating
    FLOPs and MFU; when the compiled count is under 80% of the pre-optimisation (lowered) count,
    the lowered one is used instead.
    """
    c, low = step_flops_both(lowered, compiled, num_devices)
    if c and (not low or c >= 0.8 * low):
        return c, "compiled"
    if low:
        return low, "lowered"
    return None, "unavailable"


def compiled_memory_bytes(compiled: Any) -> int | None:
    """Bytes one device needs to run the executable (arguments + outputs + temporaries − aliased).

    XLA's static estimate; unlike the allocator's peak it is available on every backend (CPU too).
    Donated arguments that alias outputs are counted once.
    """
    try:
        m = compiled.memory_analysis()
    except Exception:
        return None
    if m is None:
        return None
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        + m.temp_size_in_bytes
        - m.alias_size_in_bytes
    )


def peak_memory_bytes(devices: Sequence[Any]) -> int | None:
    """Largest allocator peak over `devices` (GPU/TPU); None where the backend keeps no stats (CPU).

    The allocator peak is since process start, so in a sweep run batch sizes in increasing order.
    """
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


# ---------------------------------------------------------------------------------------------
# Devices and host


def cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_devices(devices: Sequence[Any]) -> str:
    """e.g. 'NVIDIA H100 80GB HBM3 x8' or 'cpu (Intel Xeon Processor, 2 cores) x1'."""
    kind = devices[0].device_kind
    if devices[0].platform == "cpu":
        kind = f"cpu ({cpu_model_name()}, {os.cpu_count()} cores)"
    return f"{kind} x{len(devices)}"


def host_load() -> float | None:
    """1-minute load average of the host; figures taken under load are noted as such."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Timing:
    """Result of `time_step`. Window times are seconds per step (window wall time / steps)."""

    step_seconds: list[float]  # one entry per window
    steps_per_window: int
    warmup_seconds: float
    carry: Any  # the carried state after the last step, so callers can keep using it

    @property
    def stats(self) -> dict[str, float]:
        return summarize(self.step_seconds)


def split_steps(steps: int, windows: int) -> tuple[int, int]:
    """(windows, steps per window): at least `steps` timed steps in at most `windows` windows."""
    if steps < 1 or windows < 1:
        raise ValueError(f"steps and windows must be >= 1, got {steps}, {windows}")
    windows = min(windows, steps)
    return windows, math.ceil(steps / windows)


def time_step(
    step: Callable[[Any, Any], tuple[Any, Any]],
    carry: Any,
    batch: Any,
    *,
    steps: int,
    warmup: int,
    windows: int = 5,
    batches: Iterator[Any] | None = None,
    guard_transfers: bool = True,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time `carry, out = step(carry, batch)`; with `batches`, each step takes the next one instead.

    The timed steps are split into `windows` back-to-back windows. Inside a window steps are only
    dispatched, with no host synchronisation, so the device queue stays full as in training;
    one `jax.block_until_ready` on the window's final carry and outputs ends it. Blocking after
    every step would add a host round trip per step and measure latency instead of throughput,
    while a single window would give no spread; per-window means give median/min/p90 that are
    robust to a noisy neighbour without either bias.

    With `guard_transfers`, any implicit host<->device transfer in the loop (a numpy array or
    Python scalar passed to the step, a `float()` of a device value) raises instead of silently
    syncing every step; explicit `jax.device_put`-style copies (the host feed) stay allowed.
    """
    with jax.transfer_guard("disallow" if guard_transfers else "allow"):
        return _time_step(step, carry, batch, steps, warmup, windows, batches, clock)


def _time_step(step, carry, batch, steps, warmup, windows, batches, clock) -> Timing:
    windows, per_window = split_steps(steps, windows)
    get = (lambda: batch) if batches is None else (lambda: next(batches))
    start = clock()
    outs = []
    for _ in range(max(warmup, 0)):
        carry, out = step(carry, get())
        outs.append(out)
    jax.block_until_ready((carry, outs))
    warmup_seconds = clock() - start

    per_step = []
    for _ in range(windows):
        outs = []
        start = clock()
        for _ in range(per_window):
            carry, out = step(carry, get())
            outs.append(out)
        jax.block_until_ready((carry, outs))
        per_step.append((clock() - start) / per_window)
    return Timing(per_step, per_window, warmup_seconds, carry)


# ---------------------------------------------------------------------------------------------
# Reports


def _fmt(value: Any, spec: str) -> str:
    """format(), 'n/a' for missing values; spec 'rate' keeps 3 significant digits below 10."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if spec == "rate":  # 3,210.5 img/s on a GPU, 0.534 img/s for ResNet-50 on a 2-core CPU
        spec = ",.1f" if abs(value) >= 10 else ".3g"
    return format(value, spec)


def _gib(value: int | None) -> float | None:
    return None if value is None else value / 2**30


# (header, result key, transform, format) for the markdown table.
TABLE_COLUMNS = (
    ("model", "model", None, "s"),
    ("px", "image_size", None, "d"),
    ("batch", "batch_size", None, "d"),
    ("images/s", "images_per_sec", None, "rate"),
    ("step ms (median)", "step_ms", None, ".2f"),
    ("min ms", "step_ms_min", None, ".2f"),
    ("p90 ms", "step_ms_p90", None, ".2f"),
    ("compile s", "compile_s", None, ".1f"),
    ("TFLOP/s", "tflops", None, ".3g"),  # 3 significant digits: CPUs reach only 0.0x
    ("MFU", "mfu", lambda v: None if v is None else 100 * v, ".1f"),
    ("peak mem GiB", "peak_memory_bytes", _gib, ".2f"),
)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A markdown table of benchmark results, one row per result; a row with 'error' says why."""
    headers = [h for h, *_ in TABLE_COLUMNS]
    lines = ["| " + " | ".join(headers) + " |", "|---|" + "---:|" * (len(headers) - 1)]
    for row in rows:
        if row.get("error"):
            cells = [
                str(row.get("model", "")),
                _fmt(row.get("image_size"), "d"),
                _fmt(row.get("batch_size"), "d"),
                row["error"],
            ]
            cells += [""] * (len(headers) - len(cells))
        else:
            cells = []
            for _, key, transform, spec in TABLE_COLUMNS:
                value = row.get(key)
                cells.append(_fmt(transform(value) if transform else value, spec))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def is_out_of_memory(error: BaseException) -> bool:
    """True for the allocator's out-of-memory error (a sweep records it and stops growing)."""
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text
