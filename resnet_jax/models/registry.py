"""Named architectures -> specs, with the figures published for them (PAPER.md).

Names follow the papers: `resnetN` is option B with the stride on the 3x3 ("v1.5", as
torchvision); `_v1` puts a bottleneck's stride on its first 1x1 (He2015 exactly); `_a`/`_c`
select shortcut options A/C; `plainN` has no shortcuts. CIFAR nets (32x32 input, 10 classes)
use option A as He2015 Sec. 4.2.
"""

from __future__ import annotations

import dataclasses

from resnet_jax import entry
from resnet_jax.models.resnet import ResNetSpec

# Stage sizes per depth (He2015 Table 1; ResNet-200 from He2016).
IMAGENET_STAGES = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}


@dataclasses.dataclass(frozen=True)
class Published:
    """Figures published for a model. Errors are percentages (lower is better).

    params: exact trainable count (torchvision). params_m: the paper's rounded count in millions,
    as printed. macs: forward multiply-adds per image at the native input size.
    top1_error/top5_error: ImageNet val 10-crop (He2015 Tables 2-3) or CIFAR-10 test error.
    ref_top1: top-1 accuracy % of torchvision's weights (single 224 crop).
    single_crop_error / multiscale_error: (top-1, top-5) % of the original models, single 224
    centre crop and He2015 Table 4 (single model, multi-scale).
    """

    params: int | None = None
    params_m: str | None = None
    macs: float | None = None
    macs_source: str = ""
    top1_error: float | None = None
    top5_error: float | None = None
    cifar100_error: float | None = None
    error_source: str = ""
    ref_top1: float | None = None
    single_crop_error: tuple[float, float] | None = None
    multiscale_error: tuple[float, float] | None = None


def _imagenet(name, depth, **kw):
    block = "bottleneck" if depth >= 50 else "basic"
    return ResNetSpec(
        name=name, family="imagenet", stage_sizes=IMAGENET_STAGES[depth], block=block, **kw
    )


def _cifar(name, n, **kw):
    kw = {"shortcut": "A", **kw}
    return ResNetSpec(
        name=name,
        family="cifar",
        stage_sizes=(n, n, n),
        widths=(16, 32, 64),
        strides=(1, 2, 2),
        stem="cifar",
        stem_width=16,
        num_classes=10,
        input_size=32,
        **kw,
    )


def _build():
    specs, pub = {}, {}

    def add(spec, published=None):
        specs[spec.name] = spec
        if published is not None:
            pub[spec.name] = published

    tv = "torchvision"
    t1 = "He2015 Table 1"
    t23 = "He2015 Tables 2-3, 10-crop"
    tv_params = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
    tv_macs = {18: 1.814e9, 34: 3.664e9, 50: 4.089e9, 101: 7.801e9, 152: 11.514e9}
    tv_top1 = {18: 69.758, 34: 73.314, 50: 76.130, 101: 77.374, 152: 78.312}
    paper_macs = {18: 1.8e9, 34: 3.6e9, 50: 3.8e9, 101: 7.6e9, 152: 11.3e9}
    # Option-B errors of He2015 Table 3; the bottleneck ones belong to the _v1 (paper) nets.
    paper_b = {34: (24.52, 7.46), 50: (22.85, 6.71), 101: (21.75, 6.05), 152: (21.43, 5.71)}
    single = {50: (24.7, 7.8), 101: (23.6, 7.1), 152: (23.0, 6.7)}
    multiscale = {34: (21.84, 5.71), 50: (20.74, 5.25), 101: (19.87, 4.60), 152: (19.38, 4.49)}

    for d in (18, 34, 50, 101, 152, 200):
        err = paper_b.get(d) if d == 34 else None
        # Basic units have no 1x1 to move the stride to, so 18/34 are also the paper's nets.
        macs, src = (tv_macs[d], tv) if d in tv_macs else (None, "")
        add(
            _imagenet(f"resnet{d}", d),
            Published(
                params=tv_params.get(d),
                macs=macs,
                macs_source=src,
                ref_top1=tv_top1.get(d),
                top1_error=err and err[0],
                top5_error=err and err[1],
                error_source=t23 if err else "",
                multiscale_error=multiscale.get(d) if d == 34 else None,
            ),
        )
    for d in (50, 101, 152):
        add(
            _imagenet(f"resnet{d}_v1", d, stride_on_3x3=False),
            Published(
                macs=paper_macs[d],
                macs_source=t1,
                top1_error=paper_b[d][0],
                top5_error=paper_b[d][1],
                error_source=t23,
                single_crop_error=single[d],
                multiscale_error=multiscale[d],
            ),
        )
    add(
        _imagenet("resnet18_a", 18, shortcut="A"),
        Published(macs=paper_macs[18], macs_source=t1, top1_error=27.88, error_source=t23),
    )
    add(
        _imagenet("resnet34_a", 34, shortcut="A"),
        Published(
            macs=paper_macs[34], macs_source=t1, top1_error=25.03, top5_error=7.76, error_source=t23
        ),
    )
    add(
        _imagenet("resnet34_c", 34, shortcut="C"),
        Published(
            top1_error=24.19, top5_error=7.40, error_source=t23, multiscale_error=(21.53, 5.60)
        ),
    )
    add(
        _imagenet("plain18", 18, plain=True),
        Published(macs=paper_macs[18], macs_source=t1, top1_error=27.94, error_source=t23),
    )
    add(
        _imagenet("plain34", 34, plain=True),
        Published(
            macs=paper_macs[34],
            macs_source=t1,
            top1_error=28.54,
            top5_error=10.02,
            error_source=t23,
        ),
    )

    t6 = "He2015 Table 6, CIFAR-10 test"
    table6 = {
        20: ("0.27", 8.75),
        32: ("0.46", 7.51),
        44: ("0.66", 7.17),
        56: ("0.85", 6.97),
        110: ("1.7", 6.43),
        1202: ("19.4", 7.93),
    }
    for depth, (pm, err) in table6.items():
        add(
            _cifar(f"resnet{depth}", (depth - 2) // 6),
            Published(params_m=pm, top1_error=err, error_source=t6),
        )
    for depth in (20, 32, 44, 56, 110):
        add(_cifar(f"plain{depth}", (depth - 2) // 6, plain=True))

    he16 = "He2016, CIFAR-10 / CIFAR-100 test"
    he16_err = {
        ("resnet", 164): (5.93, 25.16),
        ("preact_resnet", 164): (5.46, 24.33),
        ("resnet", 1001): (7.61, 27.82),
        ("preact_resnet", 1001): (4.92, 22.71),
    }
    for prefix in ("resnet", "preact_resnet"):
        for depth in (164, 1001):
            c10, c100 = he16_err[(prefix, depth)]
            # Bottleneck units: 16 -> 64 channels in the first unit needs a projection, so option B.
            add(
                _cifar(
                    f"{prefix}{depth}",
                    (depth - 2) // 9,
                    block="bottleneck",
                    shortcut="B",
                    preact=prefix == "preact_resnet",
                ),
                Published(top1_error=c10, cifar100_error=c100, error_source=he16),
            )
    add(_cifar("preact_resnet110", 18, preact=True))
    for d in (18, 34, 50, 101, 152, 200):
        add(_imagenet(f"preact_resnet{d}", d, preact=True))

    add(_imagenet("resnet50d", 50, stem="deep", shortcut="D"))
    add(_imagenet("resnet101d", 101, stem="deep", shortcut="D"))
    # Wide ResNet (Zagoruyko & Komodakis): pre-activation basic units, depth 6n+4, widths x k,
    # 1x1 projections where the shape changes.
    add(_cifar("wrn16_8", 2, preact=True, shortcut="B", width_multiplier=8))
    add(
        _cifar("wrn28_10", 4, preact=True, shortcut="B", width_multiplier=10),
        Published(top1_error=4.00, error_source="Zagoruyko & Komodakis 2016, CIFAR-10 test"),
    )
    add(_imagenet("wide_resnet50_2", 50, width_multiplier=2), Published(params=68_883_240))
    add(
        _imagenet("resnext50_32x4d", 50, groups=32, width_per_group=4), Published(params=25_028_904)
    )
    add(_imagenet("wide_resnet101_2", 101, width_multiplier=2), Published(params=126_886_696))
    add(
        _imagenet("resnext101_32x8d", 101, groups=32, width_per_group=8),
        Published(params=88_791_336),
    )
    return specs, pub


_SPECS, _PUBLISHED = _build()


def available_models() -> list[str]:
    """All registered names, in registry order (paper ImageNet nets, CIFAR nets, variants)."""
    return list(_SPECS)


def _check_name(name: str) -> None:
    if name not in _SPECS:
        raise ValueError(
            f"unknown model {name!r}{entry.did_you_mean(name, _SPECS)}; all {len(_SPECS)} "
            "registered names: python -m resnet_jax.summary --all"
        )


def get_spec(name: str) -> ResNetSpec:
    """The registered spec of `name`; ValueError naming the closest names when unknown."""
    _check_name(name)
    return _SPECS[name]


def get_published(name: str) -> Published:
    """Published figures for `name` (all None where nothing was published)."""
    _check_name(name)
    return _PUBLISHED.get(name, Published())
