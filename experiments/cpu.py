"""CPU-sized versions of the paper's figures, on the built-in `shapes10` dataset (no download).

`fig6_cpu`: plain-20 / plain-56 / ResNet-20 / ResNet-56 with a short schedule, sized to take about
20 minutes in all on a 2-core machine. It shows the *shape* of He2015 Fig. 6 (does the deeper plain
net train worse while the deeper ResNet does not?), not its numbers: the data, the image count and
the schedule are all different.
"""
from __future__ import annotations

from experiments import Check, Entry, Experiment, register

# Short schedule: the learning rate is dropped /10 at 50% and 75% of training, the paper's CIFAR
# shape (32k, 48k of 64k) compressed; batch 64 keeps a step cheap on 2 cores.
FIG6_CPU_SCHEDULE = {
    "dataset": "shapes10",
    "num_train_steps": 600,
    "batch_size": 64,
    "eval_every_steps": 100,
    "log_every_steps": 20,
}


def _entry(kind, depth):
  model = f"{kind}{depth}"
  # Names differ from fig6's (CIFAR-10) entries: same name must mean same command everywhere.
  return Entry(name=f"{model}_cpu", label=f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}",
               config=f"configs/default.py:{model}", model=model,
               overrides=dict(FIG6_CPU_SCHEDULE), series=kind)


FIG6_CPU = Experiment(
    name="fig6_cpu",
    title="The degradation problem, CPU-sized: plain vs residual nets on shapes10",
    dataset="shapes10", paper_dataset="cifar10",
    source="He2015 Fig. 6 (qualitative; the paper's numbers are CIFAR-10, not comparable)",
    kind="curves",
    entries=tuple(_entry(k, d) for k in ("plain", "resnet") for d in (20, 56)),
    checks=(
        Check("plain56_cpu", ">", "plain20_cpu", "top1_err", "deeper plain net: higher test error"),
        Check("plain56_cpu", ">", "plain20_cpu", "train_err",
              "deeper plain net: higher training error"),
        Check("resnet56_cpu", "<=", "resnet20_cpu", "top1_err",
              "deeper ResNet: no worse test error"),
        Check("resnet56_cpu", "<=", "resnet20_cpu", "train_err",
              "deeper ResNet: no worse training error"),
    ),
    notes="Sized for a 2-core CPU; the schedule is in experiments/cpu.py (FIG6_CPU_SCHEDULE).",
)

register(FIG6_CPU)
