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


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


def test_a_resumed_run_keeps_one_metrics_record_per_step_the_newest(tmp_path):
    path = tmp_path / "metrics.jsonl"
    # An interrupted run: train steps 2-8 and an eval at 4, checkpoint 4, killed mid-write.
    killed = [{"step": s, "split": "train", "loss": 10.0 - s} for s in (2, 4, 6, 8)]
    killed.insert(2, {"step": 4, "split": "eval", "loss": 7.0, "views": "center"})
    path.write_text("".join(json.dumps(r) + "\n" for r in killed) + '{"step": 10, "spl')
    out = io.StringIO()
    logger = metrics.MetricsLogger(
        str(tmp_path),
        total_steps=8,
        global_batch_size=4,
        tensorboard=False,
        stream=out,
        resume_step=4,
    )
    # The steps after the checkpoint are gone, and so is the cut-off line.
    assert [json.loads(line) for line in _lines(path)] == killed[:3]
    assert out.getvalue() == (
        "metrics.jsonl: dropped 2 record(s) after step 4, logged by the interrupted run after "
        "its checkpoint (this run logs those steps again) and 1 line(s) cut off by a kill\n"
    )
    writer = logger._jsonl
    writer.write(6, "train", {"loss": 3.5})
    writer.write(4, "eval", {"loss": 6.0, "views": "center"})  # the same evaluation again
    writer.write(4, "eval", {"loss": 5.0, "views": "10crop"})  # another one
    logger.close()
    records = metrics.read_metrics(path)
    assert [(r["step"], r["split"], r.get("views"), r["loss"]) for r in records] == [
        (2, "train", None, 8.0),
        (4, "train", None, 6.0),
        (6, "train", None, 3.5),
        (4, "eval", "center", 6.0),
        (4, "eval", "10crop", 5.0),
    ]
    assert len(_lines(path)) == 5 and not list(tmp_path.glob("metrics.jsonl.tmp*"))


def test_a_fresh_writer_leaves_a_well_formed_file_alone(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "split": "train", "loss": 1.0}\n')
    before = os.stat(path).st_ino
    writer = metrics.JsonlWriter(str(path), resume_step=2)
    writer.write(3, "train", {"loss": 0.5})
    writer.close()
    assert (writer.dropped, writer.superseded, writer.unreadable) == (0, 0, 0)
    assert os.stat(path).st_ino == before  # appended to, not rewritten
    assert [r["step"] for r in metrics.read_metrics(path)] == [2, 3]
