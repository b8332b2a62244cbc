"""`python -m resnet_jax.plot`: training curves of several runs in one PNG."""

import json
import os
import subprocess
import sys

import matplotlib.image
import pytest

from resnet_jax.tools import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(workdir, losses, evals, half_written=False):
    os.makedirs(workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for i, loss in enumerate(losses):
            f.write(json.dumps({"step": 10 * (i + 1), "split": "train", "loss": loss,
                                "top1": 0.1 * i, "top5": 0.5}) + "\n")  # fmt: skip
        for step, top1 in evals:
            f.write(json.dumps({"step": step, "split": "eval", "loss": 1.0, "top1": top1}) + "\n")
        if half_written:
            f.write('{"step": 99, "spl')
    return str(workdir)


def test_series_are_steps_and_loss_or_top1_error_in_percent(tmp_path):
    records = [
        {"step": 10, "split": "train", "loss": 2.3, "top1": 0.1},
        {"step": 20, "split": "eval", "loss": 1.5, "top1": 0.75},
        {"step": 20, "split": "train", "loss": 1.9, "top1": 0.3},
    ]
    assert plot._series(records, "train", "loss") == ([10, 20], [2.3, 1.9])
    assert plot._series(records, "eval", "top1") == ([20], [25.0])


def test_two_runs_one_still_writing_make_one_png(tmp_path):
    a = _run(tmp_path / "resnet20", [2.3, 1.8, 1.2], [(30, 0.6)])
    b = _run(tmp_path / "plain20", [2.3, 2.1, 1.9], [(30, 0.4)], half_written=True)
    out = plot.plot_runs([a, b], str(tmp_path / "both.png"))
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (462, 1210)  # 11 x 4.2 inches at 110 dpi
    assert image.std() > 0.05  # something was drawn


def test_cli_writes_into_the_workdir_and_refuses_a_directory_without_metrics(tmp_path):
    a = _run(tmp_path / "run", [2.3, 1.1], [(20, 0.9)])
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "resnet_jax.plot"]
    ok = subprocess.run([*cmd, a], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (
        ok.stdout.strip() == os.path.join(a, "curves.png")
        and os.path.getsize(os.path.join(a, "curves.png")) > 10_000
    )
    bad = subprocess.run([*cmd, str(tmp_path)], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "has no metrics.jsonl records" in bad.stderr


@pytest.mark.parametrize("records", [[], [{"step": 1}]])
def test_a_workdir_without_records_is_named_in_the_error(tmp_path, records):
    os.makedirs(tmp_path / "w")
    with open(tmp_path / "w" / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    if records:  # records without any curve still plot (empty axes), they are not an error
        assert os.path.exists(plot.plot_runs([str(tmp_path / "w")], str(tmp_path / "x.png")))
    else:
        with pytest.raises(ValueError, match="w has no metrics.jsonl records"):
            plot.plot_runs([str(tmp_path / "w")], str(tmp_path / "x.png"))


def test_curves_are_named_by_entry_and_seed_or_by_label(tmp_path):
    runs = [
        str(tmp_path / "cpu" / e / f"seed{k}") for e in ("resnet20", "resnet56") for k in (0, 1)
    ]
    assert plot.run_labels(runs) == [
        "resnet20/seed0",
        "resnet20/seed1",
        "resnet56/seed0",
        "resnet56/seed1",
    ]
    assert plot.run_labels([str(tmp_path / "a" / "run"), str(tmp_path / "b" / "other")]) == [
        "run",
        "other",
    ]
    assert plot.run_labels([str(tmp_path / "x" / "seed0")]) == ["x/seed0"]  # never a bare seed
    a = _run(tmp_path / "r", [2.3, 1.8], [(20, 0.6)])
    with pytest.raises(ValueError, match="2 labels for 1 workdirs"):
        plot.plot_runs([a], str(tmp_path / "x.png"), ["one", "two"])
    assert os.path.exists(plot.plot_runs([a], str(tmp_path / "x.png"), ["mine"]))
