"""Damaged and unwritable checkpoints: the damage is named, the newest good checkpoint is used, a
failed write leaves the earlier ones intact, and nothing ever starts over silently."""

import glob
import os

import jax
import numpy as np
import pytest

from resnet_jax.engine import checkpoint, faults, numerics
from tests.reliability_helpers import fill_disk, tmpfs
from tests.test_train_checkpoint import _state_and_step

# A read that fails inside tensorstore leaves an Orbax callback that fires after its event loop has
# closed; it is noise about the damage each test asserts on, not a second failure.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _position(step):
    return checkpoint.data_position(step, 0, 16, 1)


def _state(i):
    """A state with one array above OCDBT's 1 KiB inline limit: it lands in a data file without a
    checksum of its own (smaller arrays sit in checksummed b-tree nodes)."""
    rng = np.random.default_rng(i)
    return {
        "w": rng.normal(size=(4096,)).astype(np.float32),
        "b": np.full((16,), i, np.float32),
        "step": np.int32(i),
    }


@pytest.fixture
def three_checkpoints(tmp_path):
    """Checkpoints 1, 2, 3 (distinct states) in tmp_path; (workdir, abstract state, states)."""
    from resnet_jax.engine import parallel

    sharding = parallel.replicated(parallel.make_mesh())
    states = {i: _state(i) for i in (1, 2, 3)}
    ckpt = checkpoint.Checkpointer(str(tmp_path), every_steps=1, keep=5)
    for i, state in states.items():
        ckpt.save(i, jax.device_put(state, sharding), _position(i))
    ckpt.close()
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=sharding),
        states[1],
    )
    return str(tmp_path), abstract, states


def parallel_batch(mesh, seed):
    from resnet_jax.engine import parallel
    from tests.test_steps import _batch

    return parallel.host_to_global(_batch(seed=seed), mesh)


def _data_files(workdir, step):
    root = os.path.join(workdir, "checkpoints", str(step), "state")
    return [f for f in glob.glob(os.path.join(root, "**", "d", "*"), recursive=True)]


def truncate(workdir, step):
    """Every array and b-tree file of the checkpoint cut to half (a copy that stopped half way)."""
    for path in _data_files(workdir, step):
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


def flip_one_bit(workdir, step):
    """One flipped bit in the middle of the biggest array file (tensorstore reads it silently)."""
    path = max(
        glob.glob(
            os.path.join(workdir, "checkpoints", str(step), "state", "ocdbt.process_0", "d", "*")
        ),
        key=os.path.getsize,
    )
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x01
    open(path, "wb").write(bytes(data))


def _assert_state_equal(restored, expected):
    for a, b in zip(
        jax.tree.leaves(jax.device_get(restored)), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_a_truncated_newest_checkpoint_is_named_and_the_previous_one_is_used(
    three_checkpoints, capsys
):
    workdir, abstract, states = three_checkpoints
    truncate(workdir, 3)
    ckpt = checkpoint.Checkpointer(workdir)
    state, position = ckpt.restore(abstract)
    assert position["step"] == 2
    _assert_state_equal(state, states[2])
    err = capsys.readouterr().err
    assert f"checkpoint 3 ({workdir}/checkpoints/3) cannot be loaded" in err
    assert "using checkpoint 2" in err
    # Set aside, not deleted: the next save of step 3 must not collide with it.
    assert ckpt.all_steps() == [1, 2]
    assert os.listdir(os.path.join(workdir, "checkpoints.damaged")) == ["3"]


def test_a_silently_flipped_bit_is_caught_by_the_fingerprint(three_checkpoints, capsys):
    workdir, abstract, states = three_checkpoints
    flip_one_bit(workdir, 3)
    flip_one_bit(workdir, 2)
    state, position = checkpoint.Checkpointer(workdir).restore(abstract)
    assert position["step"] == 1 and "fingerprint" not in position
    _assert_state_equal(state, states[1])
    err = capsys.readouterr().err
    for step in (3, 2):
        assert (
            f"checkpoint {step} ({workdir}/checkpoints/{step}) cannot be loaded: its arrays "
            "differ from what was saved (fingerprint mismatch in ['w'])" in err
        )


def test_when_no_checkpoint_loads_the_run_stops_instead_of_starting_over(three_checkpoints):
    workdir, abstract, _ = three_checkpoints
    truncate(workdir, 3)
    flip_one_bit(workdir, 2)
    with open(os.path.join(workdir, "checkpoints", "1", "data", "metadata"), "w") as f:
        f.write("{garbled")  # JSON of the input position
    with pytest.raises(faults.CheckpointLoadError) as e:
        checkpoint.Checkpointer(workdir).restore(abstract)
    msg = str(e.value)
    assert e.value.exit_code == faults.EXIT_NO_INPUT == 66
    assert "none of the 3 checkpoints in" in msg and "--config.restart_from_scratch=True" in msg
    for step in (1, 2, 3):
        assert f"{step}: " in msg
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2", "3"]  # untouched

    # Starting over is an explicit choice; the damaged checkpoints are kept aside, not deleted.
    assert checkpoint.Checkpointer(workdir).restore(abstract, fresh_start_if_damaged=True) is None
    assert os.listdir(os.path.join(workdir, "checkpoints")) == []
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints.damaged"))) == ["1", "2", "3"]


def test_a_checkpoint_write_on_a_full_disk_fails_loudly_and_keeps_the_earlier_ones(tmp_path):
    state, step, abstract, mesh = _state_and_step()
    with tmpfs(tmp_path / "fs", "4m") as fs:
        workdir = os.path.join(fs, "run")
        # Synchronous here: an asynchronous failure leaves Orbax tasks that print pages at exit.
        # The trainer's asynchronous path is tested end to end in test_reliability_kill.py.
        ckpt = checkpoint.Checkpointer(workdir, every_steps=1, keep=3, async_save=False)
        ckpt.save(1, state, _position(1))
        ckpt.wait()
        filler = fill_disk(fs)
        newer, _ = step(state, parallel_batch(mesh, 5))
        with pytest.raises(faults.CheckpointWriteError) as e:
            ckpt.save(2, newer, _position(2))
            ckpt.wait()
        msg = str(e.value)
        assert e.value.exit_code == faults.EXIT_IO == 74
        assert f"writing checkpoint 2 to {workdir}/checkpoints failed" in msg
        assert "No space left on device" in msg and "checkpoint(s) [1] are intact" in msg
        if filler:
            os.remove(filler)
        restored, position = checkpoint.Checkpointer(workdir).restore(abstract)
        assert position["step"] == 1
        _assert_state_equal(restored, jax.device_get(state))


def test_fingerprint_changes_with_any_single_element_and_names_the_array():
    tree = {
        "a": np.arange(1000, dtype=np.float32),
        "b": {"c": np.ones((3, 3), np.float32)},
        "n": np.int32(7),
    }
    reference = numerics.fingerprint(tree)
    assert numerics.fingerprint(jax.tree.map(np.copy, tree)) == reference  # deterministic
    for i in (0, 499, 999):
        changed = jax.tree.map(np.copy, tree)
        changed["a"][i] = np.nextafter(changed["a"][i], np.float32(np.inf))  # one ulp
        assert numerics.fingerprint_mismatch(changed, reference) == ["['a']"]
    assert numerics.fingerprint_mismatch(tree, reference) == []
