"""He et al. 2016, "Identity Mappings in Deep Residual Networks": original vs pre-activation units.

CIFAR-10 and CIFAR-100 test error (%), ResNet-164 and ResNet-1001 (bottleneck units, depth 9n+2),
numbers as published (arXiv 1603.05027).
"""

from __future__ import annotations

from experiments.defs.he2015 import cifar
from experiments.spec import Check, Experiment

# (depth, pre-activation?) -> (CIFAR-10, CIFAR-100) error of He2016.
_PAPER = {
    (164, False): (5.93, 25.16),
    (164, True): (5.46, 24.33),
    (1001, False): (7.61, 27.82),
    (1001, True): (4.92, 22.71),
}


def _entry(depth, preact, dataset):
    model = f"{'preact_' if preact else ''}resnet{depth}"
    c10, c100 = _PAPER[(depth, preact)]
    return cifar(
        model,
        f"ResNet-{depth}, {'pre-activation' if preact else 'original'}",
        paper={"top1_err": c10 if dataset == "cifar10" else c100},
        dataset=dataset,
        series="pre-activation" if preact else "original",
    )


def _experiment(dataset):
    entries = tuple(_entry(d, p, dataset) for d in (164, 1001) for p in (False, True))
    sfx = "" if dataset == "cifar10" else f"_{dataset}"
    pretty = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[dataset]
    return Experiment(
        name=f"preact_{dataset}",
        title=f"Original vs pre-activation residual units on {pretty}",
        dataset=dataset,
        paper_dataset=dataset,
        source=f"He2016, original vs pre-activation units ({pretty} test error)",
        kind="curves",
        entries=entries,
        checks=(
            Check(
                f"preact_resnet164{sfx}",
                "<",
                f"resnet164{sfx}",
                "top1_err",
                "pre-activation improves ResNet-164",
            ),
            Check(
                f"preact_resnet1001{sfx}",
                "<",
                f"resnet1001{sfx}",
                "top1_err",
                "pre-activation improves ResNet-1001 (the original 1001 is hard to optimise)",
            ),
            Check(
                f"preact_resnet1001{sfx}",
                "<",
                f"preact_resnet164{sfx}",
                "top1_err",
                "with pre-activation, 1001 layers beat 164",
            ),
        ),
        notes="He2016 trains with the He2015 CIFAR recipe (mini-batch 128, lr 0.1 with a 0.01 warm-up "
        "for the deepest nets, /10 at 32k and 48k, 64k iterations).",
    )


HE2016_CIFAR10 = _experiment("cifar10")
HE2016_CIFAR100 = _experiment("cifar100")
