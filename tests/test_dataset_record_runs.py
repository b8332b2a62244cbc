"""Runs through the one dataset record: a workdir written before it resumes as if never stopped,
a folder's files are fingerprinted once per split, and seeds as one program train on a folder."""

import json
import os
import shutil

import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.data import catalog, folder, shapes
from resnet_jax.engine import multirun, trainer
from tests.fake_folders import write_shapes_folder

# Written by the trainer before the dataset record existed (shapes10 at 64 train / 32 test
# examples, the tiny net below, 4 steps, a checkpoint at step 4, under the suite's XLA_FLAGS) on an
# Intel CPU, and kept as it was written (its TensorBoard events left out).
BEFORE = os.path.join(os.path.dirname(__file__), "data", "workdir_before_dataset_record")
# Its numbers come from another CPU type, whose vector width sums float32 reductions in another
# order: the same run differs here by 1 ulp (1.0e-7 relative, measured on a 2-core AMD EPYC on
# 2026-12-07). A resume from the wrong place moves them 20 to 2,800 times further than this
# tolerance: the data one step ahead or behind or from step 0, or the weights of a fresh start,
# change the next logged losses by 0.9-2.8% and the final evaluation's loss by 0.02-0.6%. Top-1
# and top-5 are left out: they count argmaxes, which one ulp can flip at a near tie.
ACROSS_CPUS = dict(rtol=1e-5, atol=0)


def _tiny(c, **kw):
    tiny = dict(model="resnet20", batch_size=16, learning_rate=0.01, lr_schedule="constant")
    c.update(dict(tiny, log_every_steps=1, checkpoint_every_steps=2, keep_checkpoints=1, **kw))
    c.model_overrides.stage_sizes = (1, 1, 1)
    c.model_overrides.widths = (4, 8, 16)
    c.model_overrides.stem_width = 4
    return c


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def test_a_workdir_written_before_the_dataset_record_resumes_as_if_never_stopped(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(shapes, "NUM_TRAIN", 64)
    monkeypatch.setattr(shapes, "NUM_TEST", 32)
    data_dir = str(tmp_path / "data")  # data_dir may change on resume: the run is the same
    config = lambda: _tiny(
        config_lib.default_config(),
        dataset="shapes10",
        data_dir=data_dir,
        num_train_steps=6,
        eval_batch_size=32,
    )
    resumed = str(tmp_path / "resumed")
    shutil.copytree(BEFORE, resumed)
    summary = trainer.train_and_evaluate(config(), resumed)
    out = capsys.readouterr().out
    assert "resumed from checkpoint step 4" in out and "config changes" not in out
    one_go = trainer.train_and_evaluate(config(), str(tmp_path / "one_go"))
    assert summary["step"] == one_go["step"] == 6
    before, after, here = _losses(BEFORE), _losses(resumed), _losses(str(tmp_path / "one_go"))
    assert {s: after[s] for s in before} == before  # the old lines kept, bitwise: one file
    assert sorted(before) == [1, 2, 3, 4] and sorted(after) == sorted(here) == [1, 2, 3, 4, 5, 6]
    steps = sorted(here)
    # Steps 1-4 show the old workdir is this run; 5-6 and the evaluation, made here from its
    # weights and data position, show the resume continued from them.
    np.testing.assert_allclose([after[s] for s in steps], [here[s] for s in steps], **ACROSS_CPUS)
    assert summary["eval"]["count"] == one_go["eval"]["count"] == 32
    np.testing.assert_allclose(summary["eval"]["loss"], one_go["eval"]["loss"], **ACROSS_CPUS)


def _folder_config(root, steps, **kw):
    return _tiny(
        config_lib.default_config(),
        dataset=f"folder:{root}/images",
        data_dir=f"{root}/data",
        image_size=32,
        batch_size=8,
        num_train_steps=steps,
        **kw,
    )


@pytest.mark.parametrize("path", ["device", "host"])
def test_a_folders_files_are_stat_once_per_split_through_start_up_and_evaluations(
    tmp_path, monkeypatch, path
):
    write_shapes_folder(f"{tmp_path}/images", 24, 10)  # PNGs: 34 image files
    seen = []
    stat, fingerprint = os.stat, folder.fingerprint

    def counting_stat(p, *a, **kw):
        if str(p).endswith(".png"):
            seen.append(str(p))
        return stat(p, *a, **kw)

    def counting_fingerprint(layout, split):
        seen.append(f"fingerprint {split}")
        return fingerprint(layout, split)

    monkeypatch.setattr(os, "stat", counting_stat)
    monkeypatch.setattr(folder, "fingerprint", counting_fingerprint)
    c = _folder_config(tmp_path, 2, eval_every_steps=1, input_pipeline=path)
    summary = trainer.train_and_evaluate(c, f"{tmp_path}/run")  # evaluates at steps 1 and 2
    assert summary["eval"]["count"] == 10
    assert sorted(s for s in seen if s.startswith("fingerprint")) == [
        "fingerprint test",
        "fingerprint train",
    ]
    files = [s for s in seen if not s.startswith("fingerprint")]
    assert len(files) == 34 and len(set(files)) == 34  # each image file: one stat


def test_two_seeds_on_a_folder_train_evaluate_and_resume_as_one_program(
    tmp_path, capsys, monkeypatch
):
    write_shapes_folder(f"{tmp_path}/images", 24, 10)
    runs = f"{tmp_path}/runs"
    opened, open_ = [], catalog.open
    monkeypatch.setattr(catalog, "open", lambda *a, **kw: opened.append(a) or open_(*a, **kw))
    first = multirun.train_and_evaluate_runs(_folder_config(tmp_path, 2, seeds=(0, 1)), runs)
    assert sorted(first) == [0, 1] and all(s["step"] == 2 for s in first.values())
    assert len(opened) == 1  # one start-up for both runs: the folder opened (and scanned) once
    longer = _folder_config(tmp_path, 4, seeds=(0, 1))
    resumed = multirun.train_and_evaluate_runs(longer, runs)
    out = capsys.readouterr().out
    assert out.count("resumed from checkpoint step 2") == 2
    assert all(s["step"] == 4 and s["eval"]["count"] == 10 for s in resumed.values())
    assert resumed[0]["eval"] != resumed[1]["eval"]  # two seeds, two runs
    for seed in (0, 1):  # each is the single run of its seed, resumable alone
        with open(f"{runs}/seed{seed}/config.json") as f:
            saved = json.load(f)
        assert (saved["seed"], saved["seeds"], saved["image_size"]) == (seed, [], 32)
        assert saved["dataset_fingerprint"].count("sha256") == 2
    shutil.move(f"{tmp_path}/images", f"{tmp_path}/gone")  # evaluated from the prepared copy
    evaluated = multirun.evaluate_runs(longer, runs)
    for seed in (0, 1):
        assert evaluated[seed]["step"] == 4
        np.testing.assert_allclose(
            evaluated[seed]["top1"], resumed[seed]["eval"]["top1"], rtol=0, atol=1e-7
        )
