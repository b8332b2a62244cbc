"""Where a compiled step's time goes, op by op: convolutions by direction, BN, layout copies, ...

XLA runs a compiled CPU program as a list of thunks, one per fusion or library call, and
`jax.profiler` records each as an event named after its HLO instruction. This module times a few
steps under the profiler, reads the trace's events back (the Perfetto JSON that
`jax.profiler.trace(create_perfetto_trace=True)` writes), and sorts every instruction into a
category from the compiled HLO: which ops its fused computation holds and the `op_name` metadata
JAX gave them (`jvp(ResNet)/...` is the forward pass, `transpose(jvp(ResNet))/...` the backward).

Convolutions are told apart by direction: the forward conv; the gradient with respect to the
input (backward-data: a conv over the output gradient with the flipped kernel, so its window is
the kernel's); and the gradient with respect to the kernel (backward-filter: XLA writes it as a
conv whose window spans the whole feature map, batch and channels swapped).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Any

import jax

CATEGORIES = (
    "conv forward",
    "conv backward-data",
    "conv backward-filter",
    "layout copies",
    "batch norm",
    "relu, residual add",
    "loss, head, metrics",
    "optimizer update",
    "other",
)

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.+?) ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_LOOP = re.compile(r"(?:body|condition)=%([\w.\-]+)")
_COMP = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ", re.M)
_WINDOW = re.compile(r"window=\{size=([\dx]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


@dataclasses.dataclass(frozen=True)
class OpTime:
    name: str  # HLO instruction (the thunk's name)
    category: str
    ms_per_step: float


def _computations(hlo: str) -> dict[str, str]:
    """{computation name: its text} of an HLO module's text."""
    starts = [(m.group(1), m.start()) for m in _COMP.finditer(hlo)]
    ends = [s for _, s in starts[1:]] + [len(hlo)]
    return {name: hlo[s:e] for (name, s), e in zip(starts, ends, strict=True)}


def _conv_category(text: str) -> str:
    window = _WINDOW.search(text)
    size = [int(s) for s in window.group(1).split("x")] if window else []
    # A kernel-gradient conv's window is the feature map (e.g. 32x32); the others' is the kernel
    # (3x3 or 1x1). A library fusion may carry no metadata, so the window decides first.
    if size and max(size) > 3:
        return "conv backward-filter"
    names = [n for n in _OP_NAME.findall(text) if "conv_general_dilated" in n]
    return "conv backward-data" if any("transpose(" in n for n in names) else "conv forward"


def categorize(hlo: str) -> dict[str, str]:
    """{instruction name: category} for every instruction of the entry computation and of the
    loops' bodies (a `lax.scan`'s micro-batches, for one), whose thunks the trace records one by
    one. A loop itself is left out: its event spans its body's."""
    comps = _computations(hlo)
    entry = next((t for t in comps.values() if t.startswith("ENTRY")), "")
    out = {}
    lines, seen = entry.splitlines(), set()
    while lines:
        line = lines.pop(0)
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode = m.group(1), m.group(3)
        if opcode == "while":
            for comp in set(_LOOP.findall(line)) & (set(comps) - seen):
                seen.add(comp)
                lines += comps[comp].splitlines()[1:]  # after the computation's header
            continue
        body = line
        called = _CALLS.search(line)
        if called and called.group(1) in comps:
            body += comps[called.group(1)]
        names = " ".join(_OP_NAME.findall(body))
        if "convolution(" in body:
            cat = _conv_category(body)
        elif opcode in ("copy", "transpose") or name.startswith(("transpose", "copy")):
            cat = "layout copies"
        elif re.search(r"/bn\d*/|BatchNorm", names):
            cat = "batch norm"
        elif "ResNet)/" in names and "/head/" not in names:
            cat = "relu, residual add"
        elif re.search(r"head|log_softmax|top_k|argmax|cross_entropy|ResNet", names):
            cat = "loss, head, metrics"
        elif opcode in ("parameter", "constant", "get-tuple-element", "tuple", "bitcast"):
            continue
        elif names:
            cat = "optimizer update"
        else:
            cat = "other"
        out[name] = cat
    return out


def _trace_events(trace_dir: str) -> list[dict]:
    files = glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not files:
        raise RuntimeError(f"jax.profiler wrote no Perfetto trace under {trace_dir}")
    with gzip.open(max(files, key=os.path.getmtime)) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def profile(step: Any, state: Any, batch: Any, hlo: str, steps: int = 5) -> list[OpTime]:
    """Per-instruction milliseconds per step of `step(state, batch) -> (state, ...)`, slowest
    first. `state` is consumed (the step may donate it); `hlo` is the compiled program's text."""
    for _ in range(2):  # warm-up outside the trace
        state, _ = step(state, batch)
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for _ in range(steps):
                state, _ = step(state, batch)
            jax.block_until_ready(state)
        events = _trace_events(d)
    cats = categorize(hlo)
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in cats:
            total[e["name"]] += e.get("dur", 0.0)
    return [OpTime(name, cats[name], us / 1e3 / steps) for name, us in total.most_common()]


def by_category(ops: list[OpTime]) -> dict[str, float]:
    """{category: ms per step}, in CATEGORIES order, zeros omitted."""
    sums = collections.Counter()
    for op in ops:
        sums[op.category] += op.ms_per_step
    return {c: sums[c] for c in CATEGORIES if sums[c]}


def table(ms_by_category: dict[str, float], step_ms: float | None = None) -> str:
    """Markdown: each category's ms per step and its share of all ops' time.

    On a multi-threaded backend independent thunks run at once, so the ops' sum can exceed the
    step's wall time: read the shares, not the sum, as where the time goes.
    """
    total = sum(ms_by_category.values())
    rows = [f"| {c} | {ms:.1f} | {100 * ms / total:.0f}% |" for c, ms in ms_by_category.items()]
    rows.append(f"| all ops (summed) | {total:.1f} | 100% |")
    if step_ms:
        rows.append(f"| the step (wall, median) | {step_ms:.1f} | |")
    return "\n".join(["| ops | ms / step | share |", "|---|---:|---:|", *rows])
