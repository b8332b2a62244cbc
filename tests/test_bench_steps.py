"""The benchmark's model FLOP count against XLA's, the minimal reference step and step comparison."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.bench import build, reference
from resnet_jax.bench import core as bench_core
from resnet_jax.models import create_model, get_spec
from resnet_jax.tools import summary

# --- FLOPs: the model's count, XLA's beside it -------------------------------------------------


def test_model_flops_are_six_per_multiply_add_for_training_and_two_for_evaluation():
    assert bench_core.model_flops(4.09e9, "train") == pytest.approx(2.454e10)
    assert bench_core.model_flops(4.09e9, "eval") == pytest.approx(8.18e9)
    with pytest.raises(ValueError, match=r"mode must be one of \('train', 'eval'\), got 'infer'"):
        bench_core.model_flops(1.0, "infer")


def test_flops_disagreement_warns_only_beyond_ten_percent():
    assert bench_core.flops_disagreement(100.0, 91.0) is None
    assert bench_core.flops_disagreement(100.0, 109.0) is None
    assert bench_core.flops_disagreement(100.0, None) is None
    # What a GPU reports for ResNet-50 training: 4.09e8 FLOP per image against 2.45e10.
    warning = bench_core.flops_disagreement(2.45e10, 4.09e8)
    assert warning.startswith("XLA's cost analysis counts 4.09e+08 FLOP per step, 0.0167x")
    assert "cuDNN" in warning


# XLA counts only the kernel taps that land inside the input, the model's count includes the taps
# on zero padding (as He2015 and torchvision do): on small maps a 3x3 conv loses (3n-2)/3n per
# axis to padding in XLA's count. At 128 px the padding share stays under ~3%, so the two counts
# must agree within a few percent; XLA also counts BN, loss and optimiser work on top.
@pytest.mark.parametrize(
    "name, overrides, size",
    [
        ("resnet20", dict(stage_sizes=(1, 1, 1)), 128),  # basic blocks, option A shortcuts
        pytest.param(
            "resnet50",
            dict(stage_sizes=(1, 1, 1, 1), widths=(32, 64, 128, 256), stem_width=32),
            224,
            marks=pytest.mark.slow,  # 20 s to compile at 224 px: in make test-slow
        ),  # bottleneck blocks, projection shortcuts, 7x7 stem and max pool; the stem needs no
        # input gradient, so a net much narrower than this one (stem a large share) would sit
        # further below 3 x 2 x MACs in XLA's count
    ],
)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_model_flops_agree_with_xla_on_cpu(name, overrides, size, mode):
    b = 2
    built = build.build_step(
        name, batch_size=b, image_size=size, mode=mode, num_classes=10, **overrides
    )
    macs = summary.analyze(create_model(name, num_classes=10, **overrides), 1, size).macs
    assert built.flops_per_step == (6 if mode == "train" else 2) * macs * b
    assert built.flops_xla_source == "compiled"
    assert built.flops_xla == pytest.approx(built.flops_per_step, rel=0.04)
    assert bench_core.flops_disagreement(built.flops_per_step, built.flops_xla) is None


# --- the minimal reference step -----------------------------------------------------------------


def _tiny_spec():
    return get_spec("resnet20").__class__(
        **{
            **get_spec("resnet20").__dict__,
            "stage_sizes": (1, 1, 1),
            "widths": (8, 16, 32),
            "stem_width": 8,
            "num_classes": 10,
        }
    )


def test_minimal_net_has_projection_shortcuts_where_the_shape_changes():
    spec = _tiny_spec()  # option A in the project's net: no shortcut parameters at all
    ours = create_model("resnet20", stage_sizes=(1, 1, 1), widths=(8, 16, 32), stem_width=8)
    x = jnp.zeros((1, 32, 32, 3))
    count = lambda m: sum(
        a.size for a in jax.tree.leaves(jax.eval_shape(m.init, jax.random.key(0), x)["params"])
    )
    ours_params, mini_params = count(ours), count(reference.MinimalResNet(spec))
    # Two 1x1 projections (8->16, 16->32) with BN scale and bias: 8*16 + 16*32 + 2*(16 + 32).
    assert mini_params - ours_params == 8 * 16 + 16 * 32 + 2 * (16 + 32)


@pytest.mark.slow
def test_minimal_step_learns_a_fixed_batch_and_returns_only_the_loss():
    from resnet_jax.engine import steps

    model, tx = reference.MinimalResNet(_tiny_spec()), reference.minimal_optimizer(0.05)
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (32, 32, 3))
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.standard_normal((16, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16), jnp.int32),
    }
    step = jax.jit(
        functools.partial(reference.minimal_train_step, model=model, tx=tx), donate_argnums=0
    )
    losses = []
    for _ in range(15):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert list(metrics) == ["loss"]
    assert int(state.step) == 15
    assert losses[-1] < 0.5 * losses[0]  # 16 random labels memorised


def test_a_step_in_micro_batches_keeps_every_cpu_convolution_in_the_fast_dimension_order():
    """`--grad_accum_steps`: the trainer's step in micro-batches. XLA:CPU gives a convolution the
    dimension order of its fast kernels ([B, H, W, C] by [kh, kw, in, out]) only outside loops,
    so on a CPU the micro-batches are unrolled: no loop, and every convolution in that order."""
    built = build.build_step(
        "resnet20", batch_size=4, image_size=16, stage_sizes=(1, 1, 1), grad_accum_steps=2
    )
    hlo = built.compiled.as_text()
    assert built.grad_accum_steps == 2 and " while(" not in hlo
    assert set(re.findall(r"convolution\(.*?dim_labels=([\w>-]+)", hlo)) == {"b01f_01io->b01f"}
    with pytest.raises(ValueError, match="default train step only"):
        build.build_step("resnet20", kind="bare", batch_size=4, grad_accum_steps=2)


def test_reference_steps_refuse_eval_mode_and_minimal_refuses_bn_groups():
    with pytest.raises(ValueError, match="step 'bare' is a train step"):
        build.build_step("resnet20", kind="bare", batch_size=2, mode="eval")
    with pytest.raises(ValueError, match="step 'minimal' is a train step"):
        build.build_step("resnet20", kind="minimal", batch_size=2, mode="eval")
    with pytest.raises(ValueError, match="drop bn_group_size"):
        build.build_step("resnet20", kind="minimal", batch_size=4, bn_group_size=2)
    with pytest.raises(ValueError, match=r"step must be one of \('default', 'bare', 'minimal'\)"):
        build.build_step("resnet20", kind="lean", batch_size=2)


@pytest.mark.slow
def test_compare_steps_times_both_kinds_in_turn_and_gives_paired_ratios():
    from resnet_jax.bench import cli

    rows = cli.compare_steps(
        "resnet20",
        ["default", "bare", "minimal"],
        batch_size=4,
        rounds=3,
        steps=1,
        warmup=1,
        stage_sizes=(1, 1, 1),
        widths=(8, 16, 32),
        stem_width=8,
    )
    assert [r["step"] for r in rows] == ["default", "bare", "minimal"]
    assert all(r["windows"] == 3 and r["steps"] == 3 for r in rows)
    assert rows[2]["speed_ratio"] == rows[2]["speed_ratio_min"] == 1.0  # itself
    assert all(r["relative_to"] == "minimal" for r in rows)
    assert rows[0]["speed_ratio_min"] <= rows[0]["speed_ratio"] <= rows[0]["speed_ratio_max"]
    # default and bare share the model; the minimal net adds two 1x1 projections (+ FLOPs).
    assert rows[0]["flops_per_step"] == rows[1]["flops_per_step"]
    proj_macs = 16 * 16 * 8 * 16 + 8 * 8 * 16 * 32
    assert rows[2]["flops_per_step"] - rows[0]["flops_per_step"] == 6 * 4 * proj_macs


@pytest.mark.slow
def test_compare_steps_times_micro_batch_counts_in_turn():
    from resnet_jax.bench import cli

    tiny = dict(stage_sizes=(1, 1, 1), widths=(8, 16, 32), stem_width=8)
    rows = cli.compare_steps(
        "resnet20",
        ["default"],
        batch_size=4,
        rounds=2,
        steps=1,
        warmup=1,
        grad_accum_steps=(2, 1),
        **tiny,
    )
    assert [r["grad_accum_steps"] for r in rows] == [2, 1]
    assert all(r["relative_to"] == "default in 1 micro-batch" for r in rows)
    assert rows[1]["speed_ratio"] == 1.0 and rows[0]["speed_ratio"] > 0
    assert "in 2 micro-batches" in cli.format_result(rows[0])
    with pytest.raises(ValueError, match="two or more different steps"):
        cli.compare_steps("resnet20", ["default"], batch_size=4, grad_accum_steps=(2, 2))


# --- what a checkpoint save costs training -------------------------------------------------------


def test_save_stall_times_blocks_with_and_without_a_save_and_each_part_of_the_save(tmp_path):
    from resnet_jax.bench import save_stall
    from resnet_jax.engine import checkpoint

    r = save_stall.measure(
        "resnet20",
        batch_size=4,
        every=2,
        rounds=2,
        workdir=str(tmp_path),
        stage_sizes=(1, 1, 1),
        widths=(8, 16, 32),
        stem_width=8,
    )
    assert (r["every"], r["rounds"], len(r["saves"])) == (2, 2, 2)
    assert len(r["block_s_with_save"]) == len(r["block_s_without"]) == 2
    for p in r["saves"]:
        assert p["held_s"] == pytest.approx(p["check_and_fingerprint_s"] + p["checkpointer_save_s"])
    assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"] and r["ratio"] > 0
    # Saves at steps 2 and 6 (after 2 warm-up steps, blocks of 2 with and without a save).
    assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [2, 6]
    # The state's arrays: params, momentum, BN statistics, step and rng.
    assert r["state_arrays"] > 20 and r["state_mb"] > 0


def test_one_top_k_gives_the_same_top1_and_top5_as_one_top_k_per_k():
    from resnet_jax.engine import steps

    rng = np.random.default_rng(0)
    # Rounded scores make ties, where the order of equal scores decides top-1 and top-5.
    logits = jnp.asarray(np.round(rng.standard_normal((256, 20)), 0), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 20, 256), jnp.int32)

    def per_k(k):
        _, top = jax.lax.top_k(logits, k)
        return jnp.any(top == labels[:, None], axis=-1).astype(jnp.float32)

    top1, top5 = steps.topk_correct(logits, labels, (1, 5))
    np.testing.assert_array_equal(top1, per_k(1))
    np.testing.assert_array_equal(top5, per_k(5))
    assert 0 < float(top1.sum()) < float(top5.sum()) < 256
    # Fewer classes than k: every label is among the top k.
    assert float(steps.topk_correct(logits[:, :3], labels % 3, (5,))[0].sum()) == 256
