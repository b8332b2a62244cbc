"""An unwritable or too small workdir is found before training starts (tests run as root, where chmod
stops nothing: an immutable directory and a size-limited tmpfs are the real faults)."""

import os

import pytest

from resnet_jax import config as config_lib
from resnet_jax.engine import faults, parallel, trainer, validation
from tests.reliability_helpers import forbid_compiling, immutable, tmpfs


@pytest.fixture
def no_compile(monkeypatch):
    forbid_compiling(monkeypatch, "the workdir was checked")


def _config():
    c = config_lib.default_config()  # ResNet-20: 2.2 MB of params + momentum per checkpoint
    c.num_train_steps, c.batch_size, c.keep_checkpoints, c.checkpoint_every_steps = 4, 8, 3, 1
    return c


def test_a_read_only_workdir_is_refused_before_training(tmp_path, no_compile):
    parent = tmp_path / "ro"
    parent.mkdir()
    with immutable(parent):
        with pytest.raises(faults.DiskError) as e:
            trainer.train_and_evaluate(_config(), str(parent / "run"))
    msg = str(e.value)
    assert e.value.exit_code == faults.EXIT_IO == 74
    assert f"workdir {parent / 'run'} is not writable" in msg and "Operation not permitted" in msg
    assert "nothing was trained" in msg


def test_an_existing_workdir_that_became_read_only_is_refused(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    with immutable(workdir / "checkpoints"):
        with pytest.raises(faults.DiskError, match="is not writable"):
            validation.check_workdir(str(workdir), checkpoint_size=1, checkpoints_on_disk=1)


@pytest.mark.parametrize("below", ["", "run"])
def test_a_workdir_that_is_a_file_is_named_as_such_with_exit_78(tmp_path, below):
    (tmp_path / "afile").write_text("")
    workdir = os.path.join(tmp_path / "afile", below) if below else str(tmp_path / "afile")
    with pytest.raises(faults.ConfigError) as e:
        validation.check_workdir(workdir, checkpoint_size=1, checkpoints_on_disk=1)
    assert faults.classify(e.value) == (
        78,
        f"workdir {workdir} is not a directory ({tmp_path / 'afile'} is a file); nothing was "
        "trained. Choose another --workdir",
    )


def test_a_disk_too_small_for_the_kept_checkpoints_is_refused_before_training(tmp_path, no_compile):
    with tmpfs(tmp_path / "fs", "16m") as fs:
        with pytest.raises(faults.DiskError) as e:
            trainer.train_and_evaluate(_config(), os.path.join(fs, "run"))
        msg = str(e.value)
        # 5 saves keeping 3: Orbax holds 4 at once while writing the 4th; 4 x 2.06 + 32 MiB.
        assert (
            "has 16.0 MiB free, but 4 checkpoints of 2.1 MiB (plus metrics) need about "
            "40.3 MiB" in msg
        )
        assert "lower --config.keep_checkpoints" in msg


def test_checkpoint_size_estimate_counts_params_and_optimizer_state():
    c = config_lib.resolve_config(_config())
    model = config_lib.build_model(c)
    _, tx = config_lib.build_optimizer(c)
    abstract = parallel.abstract_train_state(model, tx, (32, 32, 3), parallel.make_mesh())
    params, bn_stats = 269_722, 1_376  # ResNet-20 with 10 classes (He2015: 0.27M)
    size = validation.checkpoint_bytes(abstract)
    # float32 params + momentum + BN mean/var, plus a few scalars (step, rng key, optax count).
    assert 0 <= size - 4 * (2 * params + bn_stats) < 64


def test_a_json_write_cut_off_half_way_leaves_the_previous_file_whole(tmp_path, monkeypatch):
    """config.json and summary.json are read by every process while process 0 rewrites them."""
    import json

    from resnet_jax.engine import metrics

    path = str(tmp_path / "config.json")
    metrics.write_json(path, {"model": "resnet20", "seed": 0})
    real_dump = json.dump

    def dump_then_fail(obj, f, **kwargs):
        f.write(json.dumps(obj, **kwargs)[:5])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", dump_then_fail)
    with pytest.raises(OSError, match="No space left"):
        metrics.write_json(path, {"model": "resnet56", "seed": 1})
    monkeypatch.setattr(json, "dump", real_dump)
    with open(path) as f:
        assert json.load(f) == {"model": "resnet20", "seed": 0}
    assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind
