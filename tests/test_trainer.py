"""The training loop on shapes10: exact resumption, workdir outputs, and the shortened default run."""

import glob
import importlib.util
import json
import os
import re

import jax
import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax import xla_options
from resnet_jax.engine import checkpoint, parallel, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name, arg=None):
    """configs/<name>.py:get_config(arg), as `--config=configs/<name>.py[:arg]` loads it."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)


def tiny_config(steps):
    """The default config shrunk: ResNet-8 (one unit per stage) at half width, 16-image batches."""
    c = load_config("default")
    c.model_overrides = {"stage_sizes": (1, 1, 1), "widths": (8, 16, 32), "stem_width": 8}
    c.batch_size = 16
    c.num_train_steps = steps
    c.lr_schedule = (
        "step"  # unlike cosine, independent of num_train_steps: resuming longer is exact
    )
    c.lr_decay_steps = (4,)
    c.warmup_steps = 2
    c.log_every_steps = 2
    c.checkpoint_every_steps = 2
    c.eval_split = "test[:40]"
    c.eval_batch_size = 16  # 40 examples -> 3 batches, the last with 8 padding rows
    return c


def final_state(workdir, c):
    """The newest checkpoint of `workdir`, restored like the trainer does."""
    rc = config_lib.resolve_config(c)
    _, tx = config_lib.build_optimizer(rc)
    abstract = parallel.abstract_train_state(
        config_lib.build_model(rc), tx, (32, 32, 3), parallel.make_mesh()
    )
    state, position = checkpoint.Checkpointer(workdir).restore(abstract)
    return jax.device_get(state), position


def printed_lines(capsys) -> list[str]:
    """What the runs printed, less the line naming the project's XLA CPU options (CPUs only)."""
    return [line for line in capsys.readouterr().out.splitlines() if line != xla_options.banner()]


@pytest.mark.slow
def test_stopping_at_n_and_resuming_to_2n_is_bitwise_equal_to_2n_in_one_go(tmp_path, capsys):
    one_go, resumed = str(tmp_path / "one_go"), str(tmp_path / "resumed")
    c = tiny_config(6)
    c.profile, c.profile_start_step, c.profile_steps = True, 2, 2  # tracing changes no number
    trainer.train_and_evaluate(c, one_go)
    trainer.train_and_evaluate(tiny_config(3), resumed)
    summary = trainer.train_and_evaluate(tiny_config(6), resumed)
    out = printed_lines(capsys)
    resumed_at = out.index("resumed from checkpoint step 3")
    assert out[resumed_at - 1].startswith(
        "resnet20 on shapes10: 6 steps of 16 images"
    )  # header first

    a, pos_a = final_state(one_go, tiny_config(6))
    b, pos_b = final_state(resumed, tiny_config(6))
    assert pos_a == pos_b == {"step": 6, "seed": 0, "global_batch_size": 16, "process_count": 1}
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b) > 20
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert summary["step"] == 6 and summary["eval"]["count"] == 40
    check_workdir(one_go, a)

    # Rerunning the finished run reports it with its own time and writes nothing (config.json is
    # rewritten with the invocation's config, here without profiling).
    def outputs():
        names = [f for f in os.listdir(one_go) if "." in f and f != "config.json"]
        return {f: open(os.path.join(one_go, f), "rb").read() for f in names}

    before = outputs()
    again = trainer.train_and_evaluate(tiny_config(6), one_go)
    out = printed_lines(capsys)
    assert out[0].startswith("resnet20 on shapes10: 6 steps") and len(out) == 3, out
    assert out[1] == "resumed from checkpoint step 6"
    assert re.fullmatch(
        r"already finished at step 6: top-1 \d+\.\d\d%, top-5 \d+\.\d\d% \(from summary.json; "
        r"it trained in \d+ s\); nothing to do \(\d+ s\)",
        out[2],
    ), out[2]
    assert outputs() == before  # no metrics line, no events file, the same summary.json
    assert again == json.loads(before["summary.json"])

    # The input order depends on the global batch: resuming with another one is refused.
    c = tiny_config(8)
    c.batch_size = 32
    with pytest.raises(ValueError, match=r"of a different config \(batch_size: 16 -> 32"):
        trainer.train_and_evaluate(c, resumed)


def check_workdir(workdir, state):
    """config.json, metrics.jsonl, TensorBoard events, checkpoints/ and summary.json of a 6-step run."""
    files = set(os.listdir(workdir))
    assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    config = json.load(open(os.path.join(workdir, "config.json")))
    assert (config["num_classes"], config["image_size"], config["steps_per_epoch"]) == (
        10,
        32,
        2500,
    )
    assert config["lr_decay_steps"] == [4] and config["peak_learning_rate"] == 0.05
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [(r["step"], r["split"]) for r in records] == [
        (2, "train"),
        (4, "train"),
        (6, "train"),
        (6, "eval"),
    ]
    train = records[0]
    assert {
        "loss",
        "top1",
        "top5",
        "learning_rate",
        "grad_norm",
        "steps_per_sec",
        "images_per_sec",
    } <= set(train)
    assert train["learning_rate"] == pytest.approx((0.0 + 0.025) / 2)  # warm-up steps 0 and 1
    assert records[1]["learning_rate"] == pytest.approx(0.05)  # steps 2 and 3
    assert records[2]["learning_rate"] == pytest.approx(0.005)  # /10 from step 4 on
    assert 0 <= records[3]["top1"] <= records[3]["top5"] <= 1 and records[3]["count"] == 40
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "6"]  # keep 2
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert summary["eval"] == {k: records[3][k] for k in ("loss", "top1", "top5", "count")}
    assert summary["step"] == 6 and summary["model"] == "resnet20"
    assert summary["params"] == sum(x.size for x in jax.tree.leaves(state.params))
    assert summary["images_per_sec"] > 0 and summary["wall_time_s"] > 0
    # Three rates, each saying what it covers: steps alone; steps and the saves at steps 2 and 4
    # (the loop waits for them); every step of the run over the whole wall time (compilation too).
    assert summary["checkpoint_time_s"] > 0 and summary["eval_time_s"] > 0  # the final one
    assert (
        summary["images_per_sec"]
        > summary["images_per_sec_with_checkpoints"]
        > summary["images_per_sec_wall"]
        > 0
    )
    assert summary["images_per_sec_wall"] == pytest.approx(
        6 * 16 / summary["wall_time_s"], rel=0.05
    )
    assert "excluding compilation, evaluation" in summary["images_per_sec_covers"]
    traces = glob.glob(os.path.join(workdir, "profile", "**", "*.xplane.pb"), recursive=True)
    assert len(traces) == 1 and os.path.getsize(traces[0]) > 0


@pytest.mark.slow
def test_shortened_default_run_learns_far_above_chance(tmp_path):
    c = load_config("default")
    c.num_train_steps = 800  # the loss leaves its ln(10) plateau after ~400 steps
    c.eval_split = "test[:2000]"
    summary = trainer.train_and_evaluate(c, str(tmp_path))
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < train[0]["loss"] - 0.5
    assert summary["eval"]["count"] == 2000
    assert summary["eval"]["top1"] > 0.25  # chance is 0.1; measured 0.334 (2026-11-22)
