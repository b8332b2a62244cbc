"""He et al. 2015, "Deep Residual Learning for Image Recognition": Tables 2, 3, 4, 6 and Figs. 6, 7.

Paper numbers are the published ones (arXiv 1512.03385; error %, lower is better).
"""

from __future__ import annotations

from experiments.spec import Check, Entry, Experiment

_TABLE6_PAPER = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}

# Margins of the "no worse" claims (non-inferiority, percentage points of error), each the paper's
# own difference between the two designs compared: a net that is worse than its rival by less
# than the paper found it better is "no worse" on that scale. (value, where it comes from)
MARGIN_DEPTH_20_56 = (
    round(_TABLE6_PAPER[20] - _TABLE6_PAPER[56], 2),
    "He2015 Table 6: ResNet-56's gain over ResNet-20 on CIFAR-10 (8.75 -> 6.97)",
)
MARGIN_DEPTH_56_110 = (
    round(_TABLE6_PAPER[56] - _TABLE6_PAPER[110], 2),
    "He2015 Table 6: ResNet-110's gain over ResNet-56 on CIFAR-10 (6.97 -> 6.43)",
)
MARGIN_SHORTCUT_B_C = (
    0.33,
    "He2015 Table 3: option C's gain over B on ResNet-34 (24.52 -> 24.19 top-1)",
)
MARGIN_BOTTLENECK = (
    1.67,
    "He2015 Table 3: ResNet-50 (bottleneck) against ResNet-34 B at about the same "
    "multiply-adds (24.52 -> 22.85 top-1)",
)
MARGIN_PREACT = (
    0.47,
    "He2016 Table 2: pre-activation's gain on CIFAR-10 ResNet-164 (5.93 -> 5.46)",
)


def imagenet(model, label, *, paper=None, eval_views="10crop"):
    """An ImageNet entry of a registered model with the paper's recipe (configs/imagenet.py).

    Models (resnet_jax/models/registry.py): resnet34_a / resnet34 / resnet34_c = shortcut option
    A / B / C; resnet50_v1 = the paper's bottleneck (stride on the first 1x1). Evaluation: 10-crop at
    the 256 scale for the comparisons of Tables 2 and 3 (He2015 Sec. 3.4); multi-scale for Table 4.
    """
    return Entry(
        name=model,
        label=label,
        config=f"configs/imagenet.py:{model}",
        model=model,
        paper=dict(paper or {}),
        series=_series(model),
        eval_views=eval_views,
    )


def _series(model):
    return "plain" if model.startswith("plain") else "resnet"


def cifar(model, label, *, paper=None, seeds=1, dataset="cifar10", series=None):
    """A CIFAR entry with He2015's recipe (configs/cifar10.py; `,cifar100` selects CIFAR-100)."""
    arg, name = (
        (model, model) if dataset == "cifar10" else (f"{model},{dataset}", f"{model}_{dataset}")
    )
    return Entry(
        name=name,
        label=label,
        config=f"configs/cifar10.py:{arg}",
        model=model,
        paper=dict(paper or {}),
        seeds=seeds,
        series=series or _series(model),
    )


TABLE2 = Experiment(
    name="table2",
    title="Plain vs residual nets on ImageNet (18 and 34 layers, option A)",
    dataset="imagenet2012",
    paper_dataset="imagenet2012",
    source="He2015 Table 2 (top-1, 10-crop); top-5 of plain-34 and ResNet-34 A from Table 3",
    kind="curves",
    entries=(
        imagenet("plain18", "plain-18", paper={"top1_err": 27.94}),
        imagenet("plain34", "plain-34", paper={"top1_err": 28.54, "top5_err": 10.02}),
        imagenet("resnet18_a", "ResNet-18 (A)", paper={"top1_err": 27.88}),
        imagenet("resnet34_a", "ResNet-34 A", paper={"top1_err": 25.03, "top5_err": 7.76}),
    ),
    checks=(
        Check("plain34", ">", "plain18", "top1_err", "the deeper plain net is worse (degradation)"),
        Check("resnet34_a", "<", "resnet18_a", "top1_err", "the deeper residual net is better"),
    ),
    notes="The curves are the paper's Fig. 4 (thin = train, bold = val; our val curve is the "
    "trainer's periodic centre-crop evaluation).",
)

TABLE3 = Experiment(
    name="table3",
    title="Shortcut options and deeper bottleneck nets on ImageNet, 10-crop testing",
    dataset="imagenet2012",
    paper_dataset="imagenet2012",
    source="He2015 Table 3 (10-crop, ImageNet val)",
    entries=(
        imagenet("plain34", "plain-34", paper={"top1_err": 28.54, "top5_err": 10.02}),
        imagenet("resnet34_a", "ResNet-34 A", paper={"top1_err": 25.03, "top5_err": 7.76}),
        imagenet("resnet34", "ResNet-34 B", paper={"top1_err": 24.52, "top5_err": 7.46}),
        imagenet("resnet34_c", "ResNet-34 C", paper={"top1_err": 24.19, "top5_err": 7.40}),
        imagenet("resnet50_v1", "ResNet-50", paper={"top1_err": 22.85, "top5_err": 6.71}),
        imagenet("resnet101_v1", "ResNet-101", paper={"top1_err": 21.75, "top5_err": 6.05}),
        imagenet("resnet152_v1", "ResNet-152", paper={"top1_err": 21.43, "top5_err": 5.71}),
    ),
    checks=(
        Check("resnet34", "<", "resnet34_a", "top1_err", "B beats A"),
        Check(
            "resnet34_c",
            "<=",
            "resnet34",
            "top1_err",
            "C is marginally better than B",
            *MARGIN_SHORTCUT_B_C,
        ),
        Check("resnet152_v1", "<", "resnet50_v1", "top1_err", "deeper bottleneck nets are better"),
    ),
)

TABLE4 = Experiment(
    name="table4",
    title="Single-model results on ImageNet with multi-scale testing",
    dataset="imagenet2012",
    paper_dataset="imagenet2012",
    source="He2015 Table 4 (multi-scale, shorter side in {224, 256, 384, 480, 640}, ImageNet val)",
    entries=tuple(
        imagenet(m, label, paper={"top1_err": t1, "top5_err": t5}, eval_views="multiscale")
        for m, label, t1, t5 in (
            ("resnet34", "ResNet-34 B", 21.84, 5.71),
            ("resnet34_c", "ResNet-34 C", 21.53, 5.60),
            ("resnet50_v1", "ResNet-50", 20.74, 5.25),
            ("resnet101_v1", "ResNet-101", 19.87, 4.60),
            ("resnet152_v1", "ResNet-152", 19.38, 4.49),
        )
    ),
    notes="The same training runs as table3 (same entry names): with the same --workdir only the "
    "multi-scale evaluation (`--mode=eval --config.eval_views=multiscale`) is added.",
)

TABLE6 = Experiment(
    name="table6",
    title="CIFAR-10 ResNets of depth 20 to 1202",
    dataset="cifar10",
    paper_dataset="cifar10",
    source="He2015 Table 6 (CIFAR-10 test error; ResNet-110 best of 5 runs, mean 6.61 +- 0.16)",
    kind="curves",
    entries=tuple(
        cifar(f"resnet{d}", f"ResNet-{d}", paper={"top1_err": err}, seeds=5 if d == 110 else 1)
        for d, err in _TABLE6_PAPER.items()
    ),
    checks=(
        Check("resnet56", "<", "resnet20", "top1_err", "deeper is better up to 110 layers"),
        Check(
            "resnet1202",
            ">",
            "resnet110",
            "top1_err",
            "ResNet-1202 overfits: worse test error than ResNet-110",
        ),
    ),
    notes="The paper's ResNet-110 figure is its best of 5 runs; our table gives the mean over seeds, "
    "to compare with the paper's mean 6.61 +- 0.16.",
)

_FIG6_PLAIN = (20, 32, 44, 56)
_FIG6_RES = (20, 32, 44, 56, 110)

FIG6 = Experiment(
    name="fig6",
    title="The degradation problem on CIFAR-10: plain vs residual nets",
    dataset="cifar10",
    paper_dataset="cifar10",
    source="He2015 Fig. 6 (plain nets: curves only, no numbers published) and Table 6",
    kind="curves",
    entries=tuple(cifar(f"plain{d}", f"plain-{d}") for d in _FIG6_PLAIN)
    + tuple(
        cifar(f"resnet{d}", f"ResNet-{d}", paper={"top1_err": _TABLE6_PAPER[d]}) for d in _FIG6_RES
    ),
    checks=(
        Check("plain56", ">", "plain20", "top1_err", "deeper plain net: higher test error"),
        Check("plain56", ">", "plain20", "train_err", "deeper plain net: higher training error"),
        Check(
            "resnet56",
            "<=",
            "resnet20",
            "top1_err",
            "deeper ResNet: no worse test error",
            *MARGIN_DEPTH_20_56,
        ),
        Check(
            "resnet110",
            "<=",
            "resnet56",
            "top1_err",
            "deeper ResNet: no worse test error",
            *MARGIN_DEPTH_56_110,
        ),
    ),
)

FIG7 = Experiment(
    name="fig7",
    title="Standard deviation of layer responses on CIFAR-10 (trained nets)",
    dataset="cifar10",
    paper_dataset="cifar10",
    source="He2015 Fig. 7 (qualitative: residual nets have smaller responses than plain nets)",
    kind="curves",
    layer_responses=True,
    entries=tuple(cifar(f"plain{d}", f"plain-{d}") for d in (20, 56))
    + tuple(
        cifar(f"resnet{d}", f"ResNet-{d}", paper={"top1_err": _TABLE6_PAPER[d]})
        for d in (20, 56, 110)
    ),
    notes="Same runs as fig6 (same entry names): use the same --workdir and nothing is trained "
    "twice. The report measures the std of each 3x3 layer's response after BN, before the addition "
    "and ReLU, on test images, with resnet_jax.tools.analysis.",
)

# Fig. 6's question at the paper's full CIFAR schedule (64k iterations of 128) on shapes10, which
# is rendered where it trains: a GPU machine without TensorFlow or a CIFAR download runs it, its
# runs sharing the GPU (`experiments.run fig6_shapes10 --parallel 4`).
FIG6_SHAPES10 = Experiment(
    name="fig6_shapes10",
    title="The degradation problem at the paper's CIFAR schedule, on shapes10",
    dataset="shapes10",
    paper_dataset="cifar10",
    source="He2015 Fig. 6 and Table 6 (numbers are CIFAR-10's; shapes10 answers the same question)",
    kind="curves",
    entries=tuple(cifar(f"plain{d}", f"plain-{d}", dataset="shapes10") for d in (20, 56))
    + tuple(cifar(f"resnet{d}", f"ResNet-{d}", dataset="shapes10") for d in (20, 56)),
    checks=(
        Check(
            "plain56_shapes10",
            ">",
            "plain20_shapes10",
            "top1_err",
            "deeper plain net: higher error",
        ),
        Check(
            "resnet56_shapes10",
            "<=",
            "resnet20_shapes10",
            "top1_err",
            "deeper ResNet: no worse",
            *MARGIN_DEPTH_20_56,
        ),
    ),
)
