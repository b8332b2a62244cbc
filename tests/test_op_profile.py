"""Where a compiled train step's time goes: every op of the trace lands in a category, and a
ResNet's step shows its convolutions in all three directions, its BN and its optimizer update."""

from __future__ import annotations

from resnet_jax.bench import build, op_profile


def test_resnet_train_step_profile_sorts_ops_into_convolution_directions_and_bn():
    built = build.build_step("resnet20", batch_size=8, image_size=16, stage_sizes=(1, 1, 1))
    ops = op_profile.profile(built.step, built.state, built.batch, built.compiled.as_text(), 2)
    cats = op_profile.by_category(ops)
    for c in ("conv forward", "conv backward-data", "conv backward-filter", "batch norm"):
        assert cats.get(c, 0) > 0, (c, cats)
    assert set(cats) <= set(op_profile.CATEGORIES)
    assert all(op.ms_per_step >= 0 for op in ops)
    # Stem + 3 units of 2 convs: 7 forward convs, each with a kernel gradient.
    filters = [op for op in ops if op.category == "conv backward-filter"]
    assert len(filters) == 7, [op.name for op in filters]
    text = op_profile.table(cats, step_ms=5.0)
    assert "| conv backward-filter |" in text and "| the step (wall, median) | 5.0 |" in text


def test_categorize_reads_conv_direction_from_window_and_metadata():
    hlo = """HloModule m

%fused_computation.1 (p: f32[8,4,4,16], k: f32[3,3,16,16]) -> f32[8,4,4,16] {
  ROOT %c = f32[8,4,4,16]{3,2,1,0} convolution(%p, %k), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/transpose(jvp(ResNet))/stage1_unit1/conv1/conv_general_dilated"}
}

ENTRY %main (a: f32[8,4,4,16], b: f32[3,3,16,16]) -> f32[16,3,3,16] {
  %a = f32[8,4,4,16]{3,2,1,0} parameter(0)
  %b = f32[3,3,16,16]{3,2,1,0} parameter(1)
  %fwd = f32[8,4,4,16]{3,2,1,0} convolution(%a, %b), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(train_step)/jvp(ResNet)/stem/conv1/conv_general_dilated"}
  %ynn_fusion.2 = f32[8,4,4,16]{3,2,1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.1
  %transpose_copy_fusion = f32[16,4,4,8]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_computation.9
  ROOT %convolution.3 = f32[16,3,3,16]{3,2,1,0} convolution(%transpose_copy_fusion, %a), window={size=4x4 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}
"""
    assert op_profile.categorize(hlo) == {
        "fwd": "conv forward",
        "ynn_fusion.2": "conv backward-data",
        "transpose_copy_fusion": "layout copies",
        "convolution.3": "conv backward-filter",
    }


def test_categorize_reads_the_ops_inside_a_loop_body_and_leaves_the_loop_out():
    # A scan's body runs as thunks of its own, each traced under its instruction's name; the
    # loop's event spans them all, so counting it too would count them twice.
    hlo = """HloModule m

%body (t: (s32[], f32[8,4,4,16])) -> (s32[], f32[8,4,4,16]) {
  %t = (s32[], f32[8,4,4,16]{3,2,1,0}) parameter(0)
  %x = f32[8,4,4,16]{3,2,1,0} get-tuple-element(%t), index=1
  %filter = f32[3,3,16,16]{3,2,1,0} convolution(%x, %x), window={size=4x4 pad=1_1x1_1}, dim_labels=f01b_i01o->01bf, metadata={op_name="jit(train_step)/while/body/transpose(jvp(ResNet))/stage1_unit1/conv1/conv_general_dilated"}
  ROOT %out = (s32[], f32[8,4,4,16]{3,2,1,0}) tuple(%i, %x)
}

%cond (t: (s32[], f32[8,4,4,16])) -> pred[] {
  %t = (s32[], f32[8,4,4,16]{3,2,1,0}) parameter(0)
  ROOT %lt = pred[] compare(%i, %k), direction=LT
}

ENTRY %main (a: f32[8,4,4,16]) -> (s32[], f32[8,4,4,16]) {
  %a = f32[8,4,4,16]{3,2,1,0} parameter(0)
  %init = (s32[], f32[8,4,4,16]{3,2,1,0}) tuple(%z, %a)
  ROOT %while.2 = (s32[], f32[8,4,4,16]{3,2,1,0}) while(%init), condition=%cond, body=%body, metadata={op_name="jit(train_step)/while"}
}
"""
    cats = op_profile.categorize(hlo)
    assert cats["filter"] == "conv backward-filter"
    assert "while.2" not in cats and "lt" in cats
