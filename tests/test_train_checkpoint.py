"""Checkpointer (Orbax) round trip with the input position, keep-k, and the metrics writers."""

import io
import json
import os

import jax
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.engine import checkpoint, metrics, parallel
from tests.test_steps import TinyNet, _batch


def _state_and_step():
    model, mesh = TinyNet(), parallel.make_mesh()
    schedule = optax.constant_schedule(0.1)
    tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=1e-4)
    state = parallel.create_sharded_train_state(model, tx, jax.random.PRNGKey(1), (8, 8, 3), mesh)
    step = parallel.jit_train_step(model, tx, schedule, mesh, donate=False)
    abstract = parallel.abstract_train_state(model, tx, (8, 8, 3), mesh)
    return state, step, abstract, mesh


def test_checkpoint_restores_state_and_input_position_exactly(tmp_path):
    state, step, abstract, mesh = _state_and_step()
    for i in range(3):
        state, _ = step(state, parallel.host_to_global(_batch(seed=i), mesh))
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=2, keep=2)
    assert ckpt.restore(abstract) is None  # empty workdir: start fresh
    assert not ckpt.save(
        3, state, checkpoint.data_position(3, 0, 16, 1)
    )  # 3 is not a multiple of 2
    assert ckpt.save(3, state, checkpoint.data_position(3, 0, 16, 1), force=True)
    ckpt.close()

    restored, position = checkpoint.Checkpointer(str(tmp_path)).restore(abstract)
    assert position == {"step": 3, "seed": 0, "global_batch_size": 16, "process_count": 1}
    assert int(restored.step) == 3
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding.is_fully_replicated
    # The restored state trains on exactly like the original.
    batch = parallel.host_to_global(_batch(seed=9), mesh)
    (_, m1), (_, m2) = step(state, batch), step(restored, batch)
    np.testing.assert_array_equal(np.asarray(m1["loss"]), np.asarray(m2["loss"]))


def test_checkpointer_saves_every_n_steps_and_keeps_the_newest_k(tmp_path):
    state, _, _, _ = _state_and_step()
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=2, keep=2)
    saved = [s for s in range(1, 8) if ckpt.save(s, state, checkpoint.data_position(s, 0, 16, 1))]
    ckpt.save(7, state, checkpoint.data_position(7, 0, 16, 1), force=True)
    ckpt.close()
    assert saved == [2, 4, 6]
    assert checkpoint.Checkpointer(str(tmp_path)).all_steps() == [6, 7]
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["6", "7"]


def test_metrics_logger_writes_jsonl_and_a_progress_line(tmp_path):
    out = io.StringIO()
    logger = metrics.MetricsLogger(
        str(tmp_path), total_steps=100, global_batch_size=32, tensorboard=False, stream=out
    )
    logger.start(0)
    step_metrics = [
        {
            "loss": np.float32(2.0),
            "top1": np.float32(0.25),
            "top5": np.float32(0.5),
            "learning_rate": np.float32(0.1),
            "grad_norm": np.float32(1.0),
        },
        {
            "loss": np.float32(1.0),
            "top1": np.float32(0.75),
            "top5": np.float32(1.0),
            "learning_rate": np.float32(0.1),
            "grad_norm": np.float32(3.0),
        },
    ]
    m = logger.log_train(10, step_metrics)
    logger.log_eval(
        10, metrics.means_from_sums({"loss": 6.0, "top1": 2.0, "top5": 3.0, "count": 4.0})
    )
    logger.close()
    assert m["loss"] == pytest.approx(1.5) and m["grad_norm"] == pytest.approx(2.0)
    assert m["images_per_sec"] == pytest.approx(32 * m["steps_per_sec"])
    records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["split"] for r in records] == ["train", "eval"]
    assert records[0]["step"] == 10 and records[0]["top1"] == pytest.approx(0.5)
    assert records[1] == {
        "step": 10,
        "split": "eval",
        "loss": 1.5,
        "top1": 0.5,
        "top5": 0.75,
        "count": 4,
    }
    line = out.getvalue().splitlines()[0]
    for part in ("[ 10/100]", "loss 1.5000", "top-1 50.00%", "lr 0.1", "steps/s", "img/s", "ETA"):
        assert part in line
