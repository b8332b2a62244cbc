"""The GPU checks of seeds as one program, in order, within a time budget; a table last.

  python -m experiments.gpu_checks --workdir runs/gpu [--budget_s 780] [--tiny]

1. ResNet-20, batch 128: K = 1, 4, 8, 16 runs in one program (the vmapped step of
   `resnet_jax.engine.stacked`), images/s of all runs together. Goal: K=8 >= 4x K=1.
2. ResNet-20, batch 128, one run end to end through the trainer on the device input path
   (summary.json's `images_per_sec`). Goal: >= 36,000 images/s (90% of the bare step).
3. ResNet-50 bf16 batch 256: the MFU `resnet_jax.benchmark` prints (goal ~16-17%), and the time a
   checkpoint save holds the trainer's loop (`checkpoint_time_s` per save; goal < 0.5 s).
4. With the time left: `experiments.run fig6_shapes10 --vmap 4`, stopped by SIGTERM (every run
   checkpoints) when the budget ends; the next call resumes it.

A check that does not fit in the time left is skipped and says so. `--tiny` runs every check with
small sizes on a CPU, to try the script where there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def stacked_step_rate(model: str, batch: int, runs: int, steps: int, depth=None) -> float:
    """Images/s of all `runs` together through the vmapped train step (synthetic uint8 batches)."""
    import jax
    import jax.numpy as jnp

    from resnet_jax import config as config_lib
    from resnet_jax.bench import core
    from resnet_jax.data import synthetic
    from resnet_jax.engine import parallel, stacked
    from resnet_jax.engine import steps as steps_lib

    c = config_lib.default_config()
    c.update(model=model, dataset="synthetic", batch_size=batch, image_size=32, num_classes=10)
    if depth:
        c.model_overrides.stage_sizes = depth
    c = config_lib.resolve_config(c)
    model_, schedule, tx = config_lib.build(c)
    mesh = parallel.make_mesh()
    how = stacked.layout(runs, mesh)
    init = jax.jit(lambda k: steps_lib.create_train_state(model_, tx, k, (32, 32, 3)))
    state = stacked.stack(
        [init(jax.random.PRNGKey(s)) for s in range(runs)], stacked.state_sharding(how, mesh)
    )
    key = jax.random.PRNGKey(0)
    batch_ = jax.device_put(
        {
            "image": jax.random.randint(key, (runs, batch, 32, 32, 3), 0, 256).astype(jnp.uint8),
            "label": jax.random.randint(key, (runs, batch), 0, 10),
        },
        stacked.batch_sharding(how, mesh),
    )
    step = stacked.jit_train_step(model_, tx, schedule, mesh, how, finish=synthetic.FINISH)
    timing = core.time_step(step, state, batch_, steps=steps, warmup=3, windows=5)
    return runs * batch / timing.stats["median"]


def _python(args, workdir: pathlib.Path, timeout: float) -> subprocess.CompletedProcess | None:
    """Runs `python ARGS` in the repository; SIGTERM after `timeout` s (runs checkpoint), then
    the return code of what it did."""
    log = open(workdir / "gpu_checks.log", "a")
    log.write(f"\n$ python {' '.join(map(str, args))}\n")
    log.flush()
    proc = subprocess.Popen(
        [sys.executable, *map(str, args)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        start_new_session=True,  # a stop reaches the runner's trainers too
    )
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
        _wait_for_group(proc.pid, timeout=120)
    log.write(out)
    log.close()
    return subprocess.CompletedProcess(args, proc.returncode, out, "")


def _wait_for_group(pgid: int, timeout: float) -> None:
    """Waits until every process of group `pgid` has ended: the runner dies at SIGTERM at once,
    while its trainers still finish their steps in flight and write their checkpoints."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def _summary(workdir: pathlib.Path) -> dict:
    return json.loads((workdir / "summary.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.gpu_checks", description=__doc__)
    p.add_argument("--workdir", required=True, help="where the runs and the log go")
    p.add_argument("--budget_s", type=float, default=780, help="seconds for all checks")
    p.add_argument("--tiny", action="store_true", help="small sizes: try the script on a CPU")
    a = p.parse_args(argv)
    root = pathlib.Path(a.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    budget, rows = Budget(a.budget_s), []
    tiny = a.tiny
    batch, steps = (16, 4) if tiny else (128, 60)
    depth = (1, 1, 1) if tiny else None

    def row(check, figure, goal, ok):
        rows.append({"check": check, "figure": figure, "goal": goal, "ok": ok})
        print(f"{check}: {figure} (goal {goal})", flush=True)

    # 1. K runs in one program.
    rates = {}
    for k in (1, 2) if tiny else (1, 4, 8, 16):
        if budget.left() < 30:
            row(f"1. resnet20 K={k}", "skipped: no time left", "", None)
            continue
        rates[k] = stacked_step_rate("resnet20", batch, k, steps, depth)
        row(f"1. resnet20 b{batch} K={k}", f"{rates[k]:,.0f} img/s (all runs)", "", None)
    big = 2 if tiny else 8
    if 1 in rates and big in rates:
        row(
            f"1. K={big} / K=1",
            f"{rates[big] / rates[1]:.2f}x",
            ">= 4x",
            rates[big] >= 4 * rates[1],
        )

    # 2. One run through the trainer on the device path.
    e2e = root / "resnet20_e2e"
    if budget.left() > 60:
        _python(
            [
                "-m",
                "resnet_jax.main",
                "--config=configs/default.py",
                f"--workdir={e2e}",
                "--config.batch_size=" + str(batch),
                f"--config.num_train_steps={40 if tiny else 3000}",
                "--config.checkpoint_every_steps=0",
                f"--config.log_every_steps={20 if tiny else 1000}",
            ]
            + (["--config.model_overrides={'stage_sizes':(1,1,1)}"] if tiny else []),
            root,
            budget.left() - 30,
        )
        if (e2e / "summary.json").exists():
            rate = _summary(e2e)["images_per_sec"]
            row("2. resnet20 trainer, device path", f"{rate:,.0f} img/s", ">= 36,000", rate >= 36e3)

    # 3. ResNet-50 bf16: the benchmark's MFU, and the loop's hold per checkpoint save.
    # Batch 32 in the tiny case: configs/imagenet.py's BN groups of 32 must divide the batch.
    model50, batch50 = ("resnet18", 32) if tiny else ("resnet50", 256)
    if budget.left() > 120:
        bench = _python(
            [
                "-m",
                "resnet_jax.benchmark",
                f"--model={model50}",
                f"--batch_size={batch50}",
                "--dtype=bfloat16",
                f"--steps={3 if tiny else 50}",
                "--json",
            ]
            + (["--image_size=64"] if tiny else []),
            root,
            budget.left() - 60,
        )
        try:
            out = bench.stdout
            result = json.loads(out[out.rfind("\n{") + 1 :])  # the indented JSON printed last
            mfu = result.get("mfu")
            row(f"3. {model50} bf16 b{batch50} MFU", f"{mfu}", "~16-17% (analytic FLOPs)", None)
        except (ValueError, IndexError):
            row(f"3. {model50} benchmark", "no JSON (see gpu_checks.log)", "", False)
    save_run = root / f"{model50}_saves"
    if budget.left() > 120:
        saves, every = 3, (2 if tiny else 50)
        _python(
            [
                "-m",
                "resnet_jax.main",
                "--config=configs/imagenet.py",
                f"--workdir={save_run}",
                f"--config.model={model50}",
                "--config.dataset=synthetic",
                f"--config.batch_size={batch50}",
                "--config.dtype=bfloat16",
                f"--config.num_train_steps={saves * every}",
                f"--config.checkpoint_every_steps={every}",
                f"--config.log_every_steps={every}",
            ]
            + (["--config.image_size=64"] if tiny else []),
            root,
            budget.left() - 60,
        )
        if (save_run / "summary.json").exists():
            per_save = _summary(save_run)["checkpoint_time_s"] / saves
            row("3. loop held per save", f"{per_save:.3f} s", "< 0.5 s", per_save < 0.5)

    # 4. fig6_shapes10 with seeds as one program, for the time left (resumed by the next call).
    if budget.left() > 60:
        fig6 = root / "fig6_shapes10"
        args = ["-m", "experiments.run", "fig6_shapes10", f"--workdir={fig6}"]
        args += ["--only=resnet20_shapes10", "--seeds=2", "--vmap=2"] if tiny else ["--vmap=4"]
        done = _python(args, root, budget.left() - 20)
        row(
            "4. fig6_shapes10 --vmap",
            f"exit {done.returncode} (75 or -15: stopped, resumes)",
            "",
            None,
        )

    print("\n| check | figure | goal | ok |\n|---|---|---|---|")
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "NO")
        print(f"| {r['check']} | {r['figure']} | {r['goal']} | {ok} |")
    (root / "gpu_checks.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
