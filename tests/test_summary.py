"""python -m resnet_jax.summary: per-stage tables, totals, JSON and markdown output."""

import json
import os
import subprocess
import sys

import pytest

from resnet_jax.models import available_models
from resnet_jax.tools import summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "resnet_jax.summary", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_resnet50_stage_rows_have_paper_shapes_and_sum_to_totals():
    st = summary.model_stats("resnet50")
    rows = {r.name: r for r in st.stages}
    assert list(rows) == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]
    assert [rows[k].output_shape for k in rows] == [
        (56, 56, 64),
        (56, 56, 256),
        (28, 28, 512),
        (14, 14, 1024),
        (7, 7, 2048),
        (1000,),
    ]
    assert sum(r.params for r in st.stages) == st.params == 25_557_032
    assert sum(r.macs for r in st.stages) == st.macs
    assert rows["stem"].macs == 112 * 112 * 64 * 7 * 7 * 3  # the stem conv only; pool not counted
    assert rows["head"].macs == 2048 * 1000 and rows["head"].params == 2048 * 1000 + 1000
    table = summary.stage_table(st)
    assert "25,557,032" in table and "4.089G" in table and "[7, 7, 2048]" in table


def test_macs_count_grouped_convs_and_projection_shortcuts():
    # torchvision's published GFLOPS: resnext50_32x4d 4.23, wide_resnet50_2 11.40.
    assert summary.model_stats("resnext50_32x4d").macs / 1e9 == pytest.approx(4.23, rel=0.005)
    assert summary.model_stats("wide_resnet50_2").macs / 1e9 == pytest.approx(11.40, rel=0.005)
    # Option C adds 13 identity-shaped 1x1 projections, each C*C MACs on an HxW map, and
    # H*W*C*C = 12,845,056 at every stage of resnet34 (56*56*64^2 = 28*28*128^2 = ...).
    extra = summary.model_stats("resnet34_c").macs - summary.model_stats("resnet34").macs
    assert extra == 13 * 56 * 56 * 64 * 64 == 166_985_728


def test_resnet20_macs_counted_by_hand():
    # MACs of a conv = output elements x (k*k*C_in); option-A shortcuts cost nothing.
    stem = 32 * 32 * 16 * (9 * 3)
    stage1 = 6 * 32 * 32 * 16 * (9 * 16)
    stage2 = 16 * 16 * 32 * (9 * 16) + 5 * 16 * 16 * 32 * (9 * 32)
    stage3 = 8 * 8 * 64 * (9 * 32) + 5 * 8 * 8 * 64 * (9 * 64)
    st = summary.model_stats("resnet20")
    assert [r.macs for r in st.stages] == [stem, stage1, stage2, stage3, 64 * 10]
    assert st.macs == 40_551_040


def test_cli_json_lists_model_params_macs():
    out = _cli("--model", "resnet20", "--json")
    assert out.returncode == 0, out.stderr
    (obj,) = json.loads(out.stdout)
    assert (obj["model"], obj["params"], obj["macs"]) == ("resnet20", 269_722, 40_551_040)
    assert (obj["family"], obj["input_size"]) == ("cifar", 32)


def test_cli_unknown_model_is_a_usage_error_naming_close_names():
    out = _cli("--model", "resnet_50")
    assert out.returncode != 0
    assert "unknown model 'resnet_50' (did you mean resnet50" in out.stderr


def test_markdown_rows_show_counts_beside_published_figures():
    md = summary.markdown(["resnet50", "resnet20", "resnet50_v1"])
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines() if line.startswith("| ")}
    assert "| 25,557,032 | 25,557,032 | 4.089 | 4.089 (torchvision) |" in rows["resnet50"]
    assert "76.130" in rows["resnet50"]
    assert "| 269,722 | 0.27M | 0.041 |" in rows["resnet20"]
    assert "3.8 (He2015 Table 1) | 22.85 / 6.71" in rows["resnet50_v1"]
    assert "python -m resnet_jax.summary --all --markdown > docs/models.md" in md


@pytest.mark.slow
def test_docs_models_md_is_current():
    with open(os.path.join(ROOT, "docs", "models.md")) as f:
        assert f.read() == summary.markdown(available_models())
