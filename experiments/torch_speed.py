"""Our CPU train step beside PyTorch's, on the same cores: the side-by-side speed benchmark.

PyTorch is never a dependency of resnet_jax: its side runs in its own environment, and this file
imports torch only inside `torch_step`. The nets are experiments/torch_reference.py's He2015 CIFAR
nets (option A shortcuts), trained as our step trains them: SGD with momentum 0.9 and weight decay
1e-4, cross-entropy, float32, BN over the batch. Rounds interleave the three contenders (ours,
PyTorch with contiguous NCHW tensors, PyTorch with channels_last) so that a change in the
machine's load falls on all of them; each contender runs in a fresh process, and each figure is
the median step time of its round. PyTorch's OpenMP threads collapse when other processes share
the cores, so the load average is recorded beside every round: compare only quiet rounds.

  python3 -m venv ~/torch-venv && ~/torch-venv/bin/pip install torch numpy
  python -m experiments.torch_speed --torch_python ~/torch-venv/bin/python \
      --cases resnet20:128,resnet56:32 --rounds 3 --out docs/measurements/torch_speed.md

`--torch_python` runs `experiments/torch_speed.py torch ...` under that interpreter; our side is
`python -m resnet_jax.benchmark --json` under this one, with the project's CPU defaults.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONTENDERS = ("resnet_jax", "torch", "torch_channels_last")


def torch_step(model: str, batch: int, channels_last: bool, steps: int, warmup: int) -> dict:
    """Median step time of PyTorch eager training `model` on random 32x32 batches."""
    import torch

    sys.path.insert(0, str(ROOT / "experiments"))
    from torch_reference import build

    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = build(model, 10).to(memory_format=fmt)
    # The same update as optax's chain here: g + wd * w, then momentum (Caffe's SGD).
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,))
    net.train()

    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # the step's result reaches the host, as ours does when timed

    step_s = _median_ms(step, steps, warmup) / 1e3
    return {
        "step_ms": 1e3 * step_s,
        "images_per_sec": batch / step_s,
        "threads": torch.get_num_threads(),
        "version": torch.__version__,
    }


def conv_shapes(model: str) -> list[tuple[int, int, int, int, int]]:
    """(count, input side, cin, cout, stride) of every 3x3 conv of He2015's CIFAR net `model`."""
    n = (int(model.removeprefix("resnet").removeprefix("plain")) - 2) // 6
    return [
        (1, 32, 3, 16, 1),  # stem
        (2 * n, 32, 16, 16, 1),
        (1, 32, 16, 32, 2),
        (2 * n - 1, 16, 32, 32, 1),
        (1, 16, 32, 64, 2),
        (2 * n - 1, 8, 64, 64, 1),
    ]


def _median_ms(run, steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        run()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def torch_convs(model: str, batch: int, steps: int, warmup: int) -> list[dict]:
    """Each conv shape of `model`: forward and both gradients, channels_last, median ms."""
    import torch

    out = []
    for count, side, cin, cout, stride in conv_shapes(model):
        x = torch.randn(batch, cin, side, side).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        conv = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        conv = conv.to(memory_format=torch.channels_last)
        dy = torch.randn_like(conv(x))

        def run(x=x, conv=conv, dy=dy):
            x.grad = conv.weight.grad = None
            conv(x).backward(dy)

        ms = _median_ms(run, steps, warmup)
        out.append(dict(count=count, side=side, cin=cin, cout=cout, stride=stride, ms=ms))
    return out


def jax_convs(model: str, batch: int, steps: int, warmup: int) -> list[dict]:
    """The same convs in JAX as our models write them (NHWC, HWIO), under the project's options."""
    import jax
    from jax import lax

    import resnet_jax  # noqa: F401  (its XLA options, set before JAX starts)

    out = []
    for count, side, cin, cout, stride in conv_shapes(model):
        kx, kw, kd = jax.random.split(jax.random.key(0), 3)
        x = jax.random.normal(kx, (batch, side, side, cin))
        w = jax.random.normal(kw, (3, 3, cin, cout)) * 0.1

        def conv(x, w, stride=stride):
            dn = ("NHWC", "HWIO", "NHWC")
            return lax.conv_general_dilated(
                x, w, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=dn
            )

        dy = jax.random.normal(kd, jax.eval_shape(conv, x, w).shape)
        grads = jax.jit(lambda x, w, dy, conv=conv: jax.vjp(conv, x, w)[1](dy))
        run = functools.partial(lambda g, *a: jax.block_until_ready(g(*a)), grads, x, w, dy)
        ms = _median_ms(run, steps, warmup)
        out.append(dict(count=count, side=side, cin=cin, cout=cout, stride=stride, ms=ms))
    return out


def _ours(model: str, batch: int, steps: int) -> dict:
    cmd = [sys.executable, "-m", "resnet_jax.benchmark", f"--model={model}"]
    cmd += [f"--batch_size={batch}", "--image_size=32", f"--steps={steps}", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    r = json.loads(out[out.index("{") :])
    return {"step_ms": r["step_ms"], "images_per_sec": r["images_per_sec"]}


def _theirs(python: str, model: str, batch: int, steps: int, channels_last: bool) -> dict:
    cmd = [python, str(ROOT / "experiments" / "torch_speed.py"), "torch", f"--model={model}"]
    cmd += [f"--batch={batch}", f"--steps={steps}"] + (["--channels_last"] if channels_last else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_name() -> str:
    """The CPU's model name and its widest vector ISA, as /proc/cpuinfo gives them."""
    try:
        info = pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), ""
    )
    flags = set(
        next(
            (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
        )
    )
    isa = next(
        (
            name
            for flag, name in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2"))
            if flag in flags
        ),
        "SSE",
    )
    extra = " + AVX512_BF16" if "avx512_bf16" in flags else ""
    return f"{model} ({isa}{extra}), {os.cpu_count()} cores"


def compare(cases: list[tuple[str, int]], rounds: int, torch_python: str, steps: int) -> list[dict]:
    rows = []
    for r in range(rounds):
        for model, batch in cases:
            for who in CONTENDERS:
                load = os.getloadavg()[0]
                if who == "resnet_jax":
                    res = _ours(model, batch, steps)
                else:
                    res = _theirs(torch_python, model, batch, steps, who.endswith("last"))
                row = {"round": r, "model": model, "batch": batch, "who": who, "load": load, **res}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """Markdown: per case, each contender's median images/s and ours over each of PyTorch's."""
    cases = sorted({(r["model"], r["batch"]) for r in rows}, key=lambda c: (c[0], -c[1]))
    lines = [
        "| model | batch | resnet_jax img/s | PyTorch img/s | PyTorch channels_last img/s "
        "| ours / PyTorch | ours / channels_last | rounds | load (1-min avg) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for model, batch in cases:
        mine = [r for r in rows if (r["model"], r["batch"]) == (model, batch)]
        by = {w: [r["images_per_sec"] for r in mine if r["who"] == w] for w in CONTENDERS}
        # Ratios per round, then their median: a round's contenders shared its load.
        ratio = {
            w: statistics.median(a / b for a, b in zip(by["resnet_jax"], by[w], strict=True))
            for w in CONTENDERS[1:]
        }
        loads = [r["load"] for r in mine]
        med = {w: statistics.median(v) for w, v in by.items()}
        lines.append(
            f"| {model} | {batch} | {med['resnet_jax']:.0f} | {med['torch']:.0f} | "
            f"{med['torch_channels_last']:.0f} | {ratio['torch']:.2f} | "
            f"{ratio['torch_channels_last']:.2f} | {len(by['resnet_jax'])} | "
            f"{min(loads):.1f}-{max(loads):.1f} |"
        )
    return "\n".join(lines)


def conv_table(cases: list[tuple[str, int]], torch_python: str, steps: int) -> str:
    """Markdown: per conv shape, ms of ours and PyTorch's (forward + both gradients), and each
    net's convs summed with their counts: the part of a step that is the conv kernels alone."""
    lines = [
        f"{cpu_name()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load "
        f"{os.getloadavg()[0]:.1f}; forward + input and kernel gradients of one 3x3 conv, median "
        f"of {steps} steps",
        "",
        "| net, batch | conv (side, cin -> cout, stride) | count | resnet_jax ms | PyTorch "
        "channels_last ms | ours / PyTorch time |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, batch in cases:
        ours = jax_convs(model, batch, steps, 3)
        cmd = [torch_python, str(ROOT / "experiments" / "torch_speed.py"), "torch", "--convs"]
        cmd += [f"--model={model}", f"--batch={batch}", f"--steps={steps}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        theirs = json.loads(out.strip().splitlines()[-1])
        for o, t in zip(ours, theirs, strict=True):
            shape = f"{o['side']} px, {o['cin']} -> {o['cout']}, /{o['stride']}"
            lines.append(
                f"| {model}, {batch} | {shape} | {o['count']} | {o['ms']:.2f} | {t['ms']:.2f} | "
                f"{o['ms'] / t['ms']:.2f} |"
            )
        a = sum(o["count"] * o["ms"] for o in ours)
        b = sum(t["count"] * t["ms"] for t in theirs)
        lines.append(
            f"| {model}, {batch} | **all convs of the net** | | **{a:.1f}** | **{b:.1f}** | **{a / b:.2f}** |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    t = sub.add_parser("torch", help="time PyTorch's step (run under the PyTorch interpreter)")
    t.add_argument("--model", default="resnet20")
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--channels_last", action="store_true")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--warmup", type=int, default=5)
    t.add_argument("--convs", action="store_true", help="time each conv shape of the net alone")
    p.add_argument("--torch_python", help="the interpreter of an environment with torch")
    p.add_argument("--cases", default="resnet20:128,resnet56:32", help="MODEL:BATCH,...")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20, help="timed steps per contender and round")
    p.add_argument("--out", help="write the table (markdown) and the rounds (.jsonl beside it)")
    p.add_argument(
        "--convs",
        action="store_true",
        help="instead: each conv shape of the nets alone (forward + both gradients), ours and "
        "PyTorch's channels_last, and their sum over the net",
    )
    a = p.parse_args(argv)
    if a.cmd == "torch":
        if a.convs:
            print(json.dumps(torch_convs(a.model, a.batch, a.steps, a.warmup)))
        else:
            print(json.dumps(torch_step(a.model, a.batch, a.channels_last, a.steps, a.warmup)))
        return 0
    if not a.torch_python:
        p.error("--torch_python is required: the python of an environment with torch installed")
    cases = [(m, int(b)) for m, b in (c.split(":") for c in a.cases.split(","))]
    if a.convs:
        text = conv_table(cases, a.torch_python, a.steps)
        print(text)
        if a.out:
            pathlib.Path(a.out).write_text(text + "\n")
        return 0
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = compare(cases, a.rounds, a.torch_python, a.steps)
    text = (
        f"{cpu_name()}; started {started}, {a.rounds} interleaved rounds of {a.steps} timed "
        f"steps each (median step per round)\n\n{table(rows)}\n"
    )
    print(text)
    if a.out:
        out = pathlib.Path(a.out)
        out.write_text(text)
        out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
