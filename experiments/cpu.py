"""CPU-sized versions of the paper's figures, on the built-in `shapes10` dataset (no download).

`fig6_cpu`: plain-20 / plain-56 / ResNet-20 / ResNet-56 with a short schedule, sized for a 2-core
machine (23 minutes in all, measured; see FIG6_CPU_SCHEDULE for why not fewer steps). It shows the
*shape* of He2015 Fig. 6 (does the deeper plain net train worse while the deeper ResNet does not?), not its numbers: the data, the image count and
the schedule are all different.
"""

from __future__ import annotations

from experiments.spec import Check, Entry, Experiment, register

# The CPU recipe of configs/default.py, written out in full so that later edits of that file cannot
# silently change this experiment: SGD with momentum 0.9, weight decay 1e-4, lr 0.05 for batch 32
# (the paper's 0.1 at 128, scaled down), 50 linear warm-up steps, cosine decay to 0, no
# augmentation (under one epoch, nothing to overfit). 1000 steps of 32 (32k images, 0.8 epoch)
# took 23.1 minutes for the four nets on the 2-core VM, quiet (2026-11-22). On shapes10 2.0.0
# (2026-12-01; docs/results/fig6_cpu.md) the 20-layer nets leave chance by step 120-240, while both
# 56-layer nets are still at chance after 1000 steps: this budget shows the plain nets' degradation,
# not yet the deep ResNet's recovery.
# The test set (10k images) is evaluated at the middle and the end only: one pass costs as much as
# ~150 training steps of ResNet-56. Checkpoints every 250 steps let a killed run resume.
FIG6_CPU_SCHEDULE = {
    "dataset": "shapes10",
    "augment": "none",
    "batch_size": 32,
    "num_train_steps": 1000,
    "optimizer": "sgd",
    "learning_rate": 0.05,
    "lr_scaling": "none",
    "lr_schedule": "cosine",
    "warmup": "linear",
    "warmup_steps": 50,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "eval_every_steps": 500,
    "eval_batch_size": 500,
    "checkpoint_every_steps": 250,
    "log_every_steps": 10,
}


def _entry(kind, depth):
    model = f"{kind}{depth}"
    # Names differ from fig6's (CIFAR-10) entries: same name must mean same command everywhere.
    return Entry(
        name=f"{model}_cpu",
        label=f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}",
        config="configs/default.py",
        model=model,
        overrides={"model": model, **FIG6_CPU_SCHEDULE},
        series=kind,
    )


FIG6_CPU = Experiment(
    name="fig6_cpu",
    title="The degradation problem, CPU-sized: plain vs residual nets on shapes10",
    dataset="shapes10",
    paper_dataset="cifar10",
    source="He2015 Fig. 6 (qualitative; the paper's numbers are CIFAR-10, not comparable)",
    kind="curves",
    layer_responses=True,
    entries=tuple(_entry(k, d) for k in ("plain", "resnet") for d in (20, 56)),
    checks=(
        Check("plain56_cpu", ">", "plain20_cpu", "top1_err", "deeper plain net: higher test error"),
        Check(
            "plain56_cpu",
            ">",
            "plain20_cpu",
            "train_err",
            "deeper plain net: higher training error",
        ),
        Check(
            "resnet56_cpu", "<=", "resnet20_cpu", "top1_err", "deeper ResNet: no worse test error"
        ),
        Check(
            "resnet56_cpu",
            "<=",
            "resnet20_cpu",
            "train_err",
            "deeper ResNet: no worse training error",
        ),
    ),
    notes="Sized for a 2-core CPU; the schedule is in experiments/cpu.py (FIG6_CPU_SCHEDULE). "
    "The layer-response plot is He2015 Fig. 7 measured on these short runs.",
)

register(FIG6_CPU)
