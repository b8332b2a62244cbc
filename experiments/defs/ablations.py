"""Ablations of the ResNet design, each on ImageNet (the paper's setting) and, where the change
applies to 32x32 nets, on CIFAR-10 (a twin that one GPU runs in hours).

Reports plot each ablation's error against parameters, multiply-adds and measured throughput.
ImageNet entries use the paper's recipe and 10-crop evaluation, so they share their runs with
table2/table3 (same entry names) and carry Table 3's number where the model is in it.
"""

from __future__ import annotations

import dataclasses

from experiments.defs.he2015 import TABLE3, cifar, imagenet
from experiments.spec import Check, Entry, Experiment, variant

_T3 = {e.name: e for e in TABLE3.entries}


def _relabel(base: Entry, label: str, series: str) -> Entry:
    return dataclasses.replace(base, label=label, series=series)


def _abl(name, title, dataset, entries, checks=(), notes="", source="ablation (no paper table)"):
    return Experiment(
        name=name,
        title=title,
        dataset=dataset,
        paper_dataset=dataset,
        source=source,
        entries=tuple(entries),
        kind="ablation",
        checks=tuple(checks),
        notes=notes,
    )


_R34, _R50V1 = _T3["resnet34"], _T3["resnet50_v1"]
_R50 = imagenet("resnet50", "ResNet-50 v1.5")
_R56 = cifar("resnet56", "ResNet-56")
_R164 = cifar("resnet164", "ResNet-164")

# Bottleneck vs basic blocks. ImageNet: ResNet-34 (basic) and ResNet-50 (bottleneck) have nearly
# the same multiply-adds (3.6e9 vs 3.8e9, He2015 Table 1) - the paper's own comparison; a 50-layer
# basic-block net (24 units, most in conv4 as in Table 1) matches ResNet-50's depth.
# CIFAR: depth 6n+2 (basic) vs 9n+2 (bottleneck), so n=9 basic and n=6 bottleneck are both 56
# layers; ResNet-110 (basic) and ResNet-164 (bottleneck) have about the same multiply-adds.
ABL_BLOCK = _abl(
    "abl_block",
    "Bottleneck vs basic blocks at matched depth and multiply-adds (ImageNet)",
    "imagenet2012",
    [
        _relabel(_R34, "ResNet-34 (basic, 34 layers)", "basic"),
        variant(_R34, "basic50", "basic units, 50 layers", "basic", stage_sizes=(4, 6, 10, 4)),
        _relabel(_R50V1, "ResNet-50 (bottleneck, 50 layers)", "bottleneck"),
    ],
    checks=[
        Check(
            "resnet50_v1",
            "<",
            "resnet34",
            "top1_err",
            "at matched multiply-adds the deeper bottleneck net wins",
        )
    ],
    source="He2015 Table 3 (10-crop)",
    notes="Matched multiply-adds: resnet34 vs resnet50_v1. Matched depth: basic50 vs resnet50_v1.",
)

ABL_BLOCK_CIFAR = _abl(
    "abl_block_cifar",
    "Bottleneck vs basic blocks at matched depth and multiply-adds (CIFAR-10)",
    "cifar10",
    [
        _relabel(_R56, "basic, 56 layers", "basic"),
        variant(
            _R164, "bottleneck56", "bottleneck, 56 layers", "bottleneck", stage_sizes=(6, 6, 6)
        ),
        _relabel(cifar("resnet110", ""), "basic, 110 layers", "basic"),
        _relabel(_R164, "bottleneck, 164 layers", "bottleneck"),
    ],
    notes="Matched depth: resnet56 vs bottleneck56. Matched multiply-adds: resnet110 vs resnet164.",
)

# Shortcut options A/B/C (He2015 Sec. 3.3): Table 3's ResNet-34 runs.
ABL_SHORTCUT = _abl(
    "abl_shortcut",
    "Shortcut options A / B / C on ResNet-34 (ImageNet, 10-crop)",
    "imagenet2012",
    [
        _relabel(_T3[n], _T3[n].label, o)
        for n, o in (("resnet34_a", "A"), ("resnet34", "B"), ("resnet34_c", "C"))
    ],
    checks=[c for c in TABLE3.checks if c.a.startswith("resnet34")],
    source="He2015 Table 3 (10-crop)",
)

ABL_SHORTCUT_CIFAR = _abl(
    "abl_shortcut_cifar",
    "Shortcut options A / B / C on ResNet-56 (CIFAR-10)",
    "cifar10",
    [
        _relabel(_R56, "ResNet-56 A (the paper's CIFAR option)", "A"),
        variant(_R56, "resnet56_b", "ResNet-56 B", "B", shortcut="B"),
        variant(_R56, "resnet56_c", "ResNet-56 C", "C", shortcut="C"),
    ],
)

# Where a downsampling bottleneck's stride sits (v1: first 1x1, He2015; v1.5: the 3x3,
# torchvision / NVIDIA) and pre-activation units (He2016).
ABL_VARIANT = _abl(
    "abl_variant",
    "ResNet-50 v1 vs v1.5 vs pre-activation (ImageNet, 10-crop)",
    "imagenet2012",
    [
        _relabel(_R50V1, "ResNet-50 v1 (stride on the 1x1)", "v1"),
        _relabel(_R50, "ResNet-50 v1.5 (stride on the 3x3)", "v1.5"),
        imagenet("preact_resnet50", "ResNet-50 pre-activation"),
    ],
    checks=[
        Check(
            "resnet50",
            "<",
            "resnet50_v1",
            "top1_err",
            "v1.5 is about 0.5% top-1 better than v1 (torchvision / NVIDIA)",
        )
    ],
    source="He2015 Table 3 (10-crop) for v1",
)

ABL_VARIANT_CIFAR = _abl(
    "abl_variant_cifar",
    "ResNet-164 v1 vs v1.5 vs pre-activation (CIFAR-10)",
    "cifar10",
    [
        variant(
            _R164, "resnet164_v1", "ResNet-164 v1 (stride on the 1x1)", "v1", stride_on_3x3=False
        ),
        _relabel(_R164, "ResNet-164 v1.5 (stride on the 3x3)", "v1.5"),
        _relabel(cifar("preact_resnet164", ""), "ResNet-164 pre-activation", "pre-activation"),
    ],
    checks=[
        Check(
            "preact_resnet164",
            "<",
            "resnet164",
            "top1_err",
            "pre-activation beats original units (He2016: 5.46 vs 5.93)",
        )
    ],
)

# Batch-norm statistics per group of N examples. The paper's configs already use its per-GPU
# groups (ImageNet 32 = 256 / 8 GPUs; CIFAR 64 = 128 / 2 GPUs). A group as large as the whole batch
# is global (synchronised) BN; it is written that way because `--config.bn_group_size=None`
# cannot be given on the command line (ml_collections parses the flag as an int).
ABL_BN_GROUP = _abl(
    "abl_bn_group",
    "Batch-norm group size, ResNet-50 (ImageNet, batch 256, 10-crop)",
    "imagenet2012",
    [
        _relabel(_R50, "BN over 32 (the paper's per GPU)", "bn"),
        variant(
            _R50,
            "resnet50_bn256",
            "BN over the global batch (256)",
            "bn",
            overrides={"bn_group_size": 256},
        ),
        variant(_R50, "resnet50_bn8", "BN over 8", "bn", overrides={"bn_group_size": 8}),
    ],
)

ABL_BN_GROUP_CIFAR = _abl(
    "abl_bn_group_cifar",
    "Batch-norm group size, ResNet-56 (CIFAR-10, batch 128)",
    "cifar10",
    [
        _relabel(_R56, "BN over 64 (the paper's per GPU)", "bn"),
        variant(
            _R56,
            "resnet56_bn128",
            "BN over the global batch (128)",
            "bn",
            overrides={"bn_group_size": 128},
        ),
        variant(_R56, "resnet56_bn16", "BN over 16", "bn", overrides={"bn_group_size": 16}),
    ],
)

# Zero-initialised scale of the last BN of each residual branch (Goyal et al. 2017): every unit
# starts as the identity.
ABL_ZERO_INIT = _abl(
    "abl_zero_init",
    "Zero-init of the last BN scale, ResNet-50 (ImageNet, 10-crop)",
    "imagenet2012",
    [
        _relabel(_R50, "last BN gamma = 1", "init"),
        variant(_R50, "resnet50_zero_init", "last BN gamma = 0", "init", zero_init_residual=True),
    ],
)

ABL_ZERO_INIT_CIFAR = _abl(
    "abl_zero_init_cifar",
    "Zero-init of the last BN scale, ResNet-56 (CIFAR-10)",
    "cifar10",
    [
        _relabel(_R56, "last BN gamma = 1", "init"),
        variant(_R56, "resnet56_zero_init", "last BN gamma = 0", "init", zero_init_residual=True),
    ],
)

# ResNet-D (Bag of Tricks): deep stem + average-pool downsampling shortcuts. No CIFAR twin: its
# changes target the 224-pixel stem and strided 1x1 projections, which CIFAR nets do not have.
ABL_RESNET_D = _abl(
    "abl_resnet_d",
    "ResNet-50 v1.5 vs ResNet-50-D (ImageNet, 10-crop)",
    "imagenet2012",
    [
        _relabel(_R50, "ResNet-50 v1.5", "resnet"),
        imagenet("resnet50d", "ResNet-50-D"),
    ],
    checks=[Check("resnet50d", "<", "resnet50", "top1_err", "ResNet-D improves top-1")],
)
