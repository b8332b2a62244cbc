"""An independent PyTorch implementation of the CIFAR ResNet and plain net, to check our training.

Trains He2015's CIFAR nets (3x3 conv stem with 16 filters, three stages of basic units at 16, 32
and 64 filters, option A shortcuts, global average pooling, a linear head) with the recipe of one
of our runs (its resolved config.json: batch, learning rate and decays, weight decay, momentum),
on the same prepared arrays, with plain `torch.optim.SGD` and `nn.BatchNorm2d`. If resnet_jax's
step, BN, weight decay or momentum differed from the standard, the two training-loss curves would
part. Written from the papers and torchvision's conventions, sharing no code with resnet_jax, and
run in its own environment: the project itself never imports torch.

  python3 -m venv ~/torch-venv && ~/torch-venv/bin/pip install torch numpy
  ~/torch-venv/bin/python experiments/torch_reference.py train --model resnet20 --seeds 0,1,2,3,4 \
      --like runs/cpu/resnet20_cpu/seed0/config.json --steps 300 --out runs/torch_ref
  python experiments/torch_reference.py compare --ours runs/cpu --theirs runs/torch_ref \
      --models plain20,resnet20,resnet56 --steps 300 --out docs/results/torch_reference.md

`train` writes OUT/<model>_torch/seed<k>/metrics.jsonl in our format (training loss and top-1
averaged over each logging interval), so our plot and report tools read it. `compare` needs numpy
and matplotlib only (run it with the project's environment).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import time

import numpy as np

DEPTHS = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}


def _arrays(data_dir: str | None, split: str, name: str = "shapes10"):
    """(images uint8 [N, 32, 32, 3], labels [N], mean image, pixel std) of our prepared arrays."""
    root = (
        data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    )
    path = lambda s: os.path.join(root, "resnet_jax_arrays", name, f"{s}.npz")
    train = np.load(path("train"))
    d = train if split == "train" else np.load(path(split))
    # He2015: "the per-pixel mean subtracted"; then one scalar std (our 'per_pixel_mean').
    return d["images"], d["labels"].astype(np.int64), train["mean_image"], float(train["pixel_std"])


def build(model: str, num_classes: int):
    """plainN / resnetN (N = 6n+2) as He2015 Sec. 4.2 describes, with torchvision's init."""
    import torch
    from torch import nn

    plain = model.startswith("plain")
    n = DEPTHS[model.replace("plain", "resnet")]

    class Unit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            if not plain:
                # Option A: subsample, and zero-pad the new channels (no parameters).
                s = x[:, :, :: self.stride, :: self.stride]
                y = y + nn.functional.pad(s, (0, 0, 0, 0, 0, self.extra))
            return torch.relu(y)

    layers = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()]
    cin = 16
    for stage, width in enumerate((16, 32, 64)):
        for j in range(n):
            layers.append(Unit(cin, width, 2 if stage > 0 and j == 0 else 1))
            cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes)]
    net = nn.Sequential(*layers)
    for m in net.modules():  # torchvision's ResNet init; the Linear keeps PyTorch's default
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def train(model: str, seed: int, recipe: dict, steps: int, out: pathlib.Path, data_dir) -> dict:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, labels, mean, std = _arrays(data_dir, "train")
    to_input = lambda x: torch.from_numpy(
        ((x.astype(np.float32) - mean) / std).transpose(0, 3, 1, 2)
    )
    net = build(model, int(labels.max()) + 1)
    # SGD as Caffe's solver and optax here: g + wd * w (every parameter), then momentum.
    opt = torch.optim.SGD(
        net.parameters(),
        lr=recipe["peak_learning_rate"],
        momentum=recipe["momentum"],
        weight_decay=recipe["weight_decay"],
        nesterov=recipe["nesterov"],
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones=list(recipe["lr_decay_steps"]), gamma=recipe["lr_decay_factor"]
    )
    batch, log_every = recipe["batch_size"], recipe.get("log_every_steps", 10)
    out.mkdir(parents=True, exist_ok=True)
    order, pos, acc, t0 = rng.permutation(len(labels)), 0, [], time.perf_counter()
    with open(out / "metrics.jsonl", "w") as f:
        for step in range(1, steps + 1):
            if pos + batch > len(order):  # a new epoch: a new permutation, the rest dropped
                order, pos = rng.permutation(len(labels)), 0
            idx = order[pos : pos + batch]
            pos += batch
            x, y = to_input(images[idx]), torch.from_numpy(labels[idx])
            net.train()
            logits = net(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            acc.append((loss.item(), (logits.argmax(1) == y).float().mean().item()))
            if step % log_every == 0 or step == steps:
                losses, top1 = zip(*acc, strict=True)
                row = {"step": step, "split": "train", "loss": float(np.mean(losses))}
                row["top1"] = float(np.mean(top1))
                f.write(json.dumps(row) + "\n")
                f.flush()
                acc = []
    seconds = time.perf_counter() - t0
    summary = {
        "model": model,
        "seed": seed,
        "steps": steps,
        "images_per_sec": steps * batch / seconds,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _curves(root: pathlib.Path, name: str, steps: int) -> dict[int, np.ndarray]:
    """seed -> training losses at steps log, 2*log, ..., `steps` (from metrics.jsonl)."""
    curves = {}
    for seed_dir in sorted(root.glob(f"{name}/seed*")):
        rows = [json.loads(line) for line in open(seed_dir / "metrics.jsonl")]
        points = {
            r["step"]: r["loss"] for r in rows if r["split"] == "train" and r["step"] <= steps
        }
        if points and max(points) == steps:
            curves[int(seed_dir.name[4:])] = (
                np.array(sorted(points)),
                np.array([points[s] for s in sorted(points)]),
            )
    return curves


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    """How two sets of loss curves ([seeds, points], same steps) agree.

    inside_*: the fraction of one side's points that lie within the other side's range over seeds
    (min to max) at the same step; z: the difference of the means over the standard error of that
    difference, per step (|z| < 2 at about 95% of steps if both come from one distribution).
    """
    lo_o, hi_o, lo_t, hi_t = ours.min(0), ours.max(0), theirs.min(0), theirs.max(0)
    se = np.sqrt(ours.var(0, ddof=1) / len(ours) + theirs.var(0, ddof=1) / len(theirs))
    z = (ours.mean(0) - theirs.mean(0)) / np.maximum(se, 1e-12)
    return {
        "ours_inside_theirs": float(((ours >= lo_t) & (ours <= hi_t)).mean()),
        "theirs_inside_ours": float(((theirs >= lo_o) & (theirs <= hi_o)).mean()),
        "z_within_2": float((np.abs(z) < 2).mean()),
        "mean_z": float(z.mean()),
        "mean_gap": float((ours.mean(0) - theirs.mean(0)).mean()),
    }


def compare(a) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = a.models.split(",")
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    rows = []
    for ax, model in zip(axes[0], models, strict=True):
        ours = _curves(pathlib.Path(a.ours), f"{model}{a.suffix}", a.steps)
        theirs = _curves(pathlib.Path(a.theirs), f"{model}_torch", a.steps)
        if len(ours) < 2 or len(theirs) < 2:
            print(f"{model}: need 2+ finished seeds on each side ({len(ours)}, {len(theirs)})")
            return 1
        steps = next(iter(ours.values()))[0]
        o = np.stack([c[1] for c in ours.values()])
        t = np.stack([c[1] for c in theirs.values()])
        rows.append(
            (model, len(ours), len(theirs), agreement(o, t), o[:, -5:].mean(), t[:, -5:].mean())
        )
        for curves, colour, label in (
            (o, "C0", "resnet_jax (JAX)"),
            (t, "C3", "PyTorch reference"),
        ):
            ax.fill_between(steps, curves.min(0), curves.max(0), color=colour, alpha=0.25, lw=0)
            ax.plot(steps, curves.mean(0), color=colour, label=f"{label}, {len(curves)} seeds")
        ax.axhline(math.log(10), color="grey", lw=0.8, ls=":")
        ax.set(title=model, xlabel="step", ylabel="training loss (mean of 10 steps)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    png = pathlib.Path(a.out).with_suffix(".png")
    fig.savefig(png, dpi=110)
    table = [
        "| model | seeds (ours / PyTorch) | our points inside PyTorch's range | PyTorch's inside ours "
        "| steps with \\|z\\| < 2 | mean z | loss, last 50 steps (ours / PyTorch) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, n_o, n_t, g, last_o, last_t in rows:
        table.append(
            f"| {model} | {n_o} / {n_t} | {g['ours_inside_theirs']:.0%} | {g['theirs_inside_ours']:.0%} "
            f"| {g['z_within_2']:.0%} | {g['mean_z']:+.2f} | {last_o:.3f} / {last_t:.3f} |"
        )
    print("\n".join(table))
    (pathlib.Path(a.out).with_suffix(".table.md")).write_text("\n".join(table) + "\n")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="experiments/torch_reference.py", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the PyTorch reference (needs torch and numpy)")
    t.add_argument(
        "--model",
        required=True,
        choices=sorted(DEPTHS) + [m.replace("resnet", "plain") for m in DEPTHS],
    )
    t.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    t.add_argument(
        "--like", required=True, help="config.json of one of our runs: its recipe is used"
    )
    t.add_argument(
        "--steps", type=int, default=300, help="steps to train (the recipe's decays still apply)"
    )
    t.add_argument("--out", required=True, help="root: runs go to OUT/<model>_torch/seed<k>")
    t.add_argument(
        "--data_dir", default=None, help="tfds data dir holding resnet_jax_arrays/ (default: ours)"
    )
    t.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    c = sub.add_parser("compare", help="compare our training-loss curves with the reference's")
    c.add_argument("--ours", required=True, help="root of our runs (ROOT/<model><suffix>/seed<k>)")
    c.add_argument("--suffix", default="_cpu", help="our entry names: <model><suffix>")
    c.add_argument("--theirs", required=True, help="root of the reference's runs")
    c.add_argument(
        "--models", required=True, help="comma-separated, e.g. plain20,resnet20,resnet56"
    )
    c.add_argument("--steps", type=int, default=300)
    c.add_argument("--out", required=True, help="writes OUT.png and OUT.table.md")
    a = p.parse_args(argv)
    if a.cmd == "compare":
        return compare(a)
    import torch

    torch.set_num_threads(a.threads)
    recipe = json.loads(pathlib.Path(a.like).read_text())
    if recipe.get("warmup_steps") or recipe.get("warmup") == "until_error":
        print("the reference implements the recipe without warm-up only", file=sys.stderr)
        return 2
    for seed in (int(s) for s in a.seeds.split(",")):
        s = train(
            a.model,
            seed,
            recipe,
            a.steps,
            pathlib.Path(a.out) / f"{a.model}_torch" / f"seed{seed}",
            a.data_dir,
        )
        print(f"{a.model} seed {seed}: {s['images_per_sec']:.0f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
