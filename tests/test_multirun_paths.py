"""Seeds as one program off the device input path: on the host (tf.data) path and on synthetic
data, run k of a two-run program trains, evaluates and resumes as the single run of seed k."""

import json
import os

import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax.engine import multirun, trainer
from tests.fake_folders import write_shapes_folder
from tests.test_dataset_record_runs import _folder_config, _tiny


def _host_folder(root):
    write_shapes_folder(f"{root}/images", 24, 10)  # host: the folder's JPEG records, with augment
    return lambda steps, **kw: _folder_config(
        root, steps, input_pipeline="host", augment="inception", eval_batch_size=8, **kw
    )


def _synthetic(root):
    return lambda steps, **kw: _tiny(
        config_lib.default_config(),
        dataset="synthetic",
        num_classes=10,
        image_size=32,
        batch_size=8,
        eval_batch_size=8,
        synthetic_batches=3,
        num_train_steps=steps,
        **kw,
    )


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = {r["step"]: r["loss"] for r in records if r["split"] == "train"}
    return [train[s] for s in sorted(train)], [r for r in records if r["split"] == "eval"]


@pytest.mark.parametrize("make", [_host_folder, _synthetic], ids=["host", "synthetic"])
def test_each_run_of_a_resumed_two_seed_program_is_the_single_run_of_its_seed(
    tmp_path, capsys, make
):
    config = make(tmp_path)
    for seed in (0, 1):
        trainer.train_and_evaluate(config(4, seed=seed), f"{tmp_path}/single/seed{seed}")
    multirun.train_and_evaluate_runs(config(2, seeds=(0, 1)), f"{tmp_path}/multi")
    resumed = multirun.train_and_evaluate_runs(config(4, seeds=(0, 1)), f"{tmp_path}/multi")
    assert capsys.readouterr().out.count("resumed from checkpoint step 2") == 2
    assert sorted(resumed) == [0, 1] and all(s["step"] == 4 for s in resumed.values())
    losses = {}
    for seed in (0, 1):
        single, single_eval = _records(f"{tmp_path}/single/seed{seed}")
        multi, multi_eval = _records(f"{tmp_path}/multi/seed{seed}")
        assert len(single) == len(multi) == 4
        # The same batches in the same order, before and after the resume: only vmap's rounding
        # (grouped convolutions) separates the run from its single run.
        np.testing.assert_allclose(multi, single, rtol=1e-4)
        assert [e["step"] for e in multi_eval] == [2, 4]
        assert multi_eval[-1]["count"] == single_eval[-1]["count"]
        np.testing.assert_allclose(multi_eval[-1]["loss"], single_eval[-1]["loss"], rtol=1e-3)
        losses[seed] = multi
    assert losses[0] != losses[1]  # two seeds, two streams
