"""Bad configs and missing data fail in seconds, before any compile, with a message saying what to fix."""

import json
import os
import re
import subprocess
import sys

import pytest

from resnet_jax import config as config_lib
from resnet_jax import models
from resnet_jax.data import datasets
from resnet_jax.engine import faults, trainer, validation
from tests.reliability_helpers import REPO, forbid_compiling, subprocess_env


def _config(**overrides):
    c = config_lib.default_config()
    c.model_overrides = {"stage_sizes": (1, 1, 1), "widths": (4, 8, 16), "stem_width": 4}
    c.batch_size, c.num_train_steps, c.eval_split = 8, 4, "test[:32]"
    for k, v in overrides.items():
        c[k] = v
    return c


@pytest.fixture
def no_compile(monkeypatch):
    forbid_compiling(monkeypatch, "the config was validated")


def test_unknown_model_and_dataset_are_refused_suggesting_close_names_first():
    with pytest.raises(faults.ConfigError) as e:
        validation.check_config(_config(model="resnet21", dataset="cifar11"))
    msg = str(e.value)
    assert msg.startswith("2 problem(s)")
    n = len(models.available_models())
    assert (
        f"model='resnet21' is unknown (did you mean resnet32, resnet20, resnet18?); all {n}" in msg
    )
    assert "python -m resnet_jax.summary --all" in msg and "resnet1001" not in msg  # not all names
    assert (
        "dataset='cifar11' is unknown (did you mean cifar10, cifar100?); "
        "valid: imagenet2012, cifar10, cifar100, shapes10"
    ) in msg
    assert e.value.exit_code == faults.EXIT_CONFIG == 78


def test_zero_and_negative_sizes_rates_and_steps_are_all_reported_at_once():
    c = _config(
        batch_size=0,
        learning_rate=-0.1,
        momentum=1.5,
        num_train_steps=0,
        log_every_steps=0,
        weight_decay=-1e-4,
        keep_checkpoints=0,
    )
    with pytest.raises(faults.ConfigError) as e:
        validation.check_config(c)
    msg = str(e.value)
    assert msg.startswith("7 problem(s)")
    for part in (
        "batch_size must be >= 1, got 0",
        "learning_rate must be > 0, got -0.1",
        "momentum must be in [0, 1), got 1.5",
        "num_train_steps must be > 0, or -1",
        "log_every_steps must be >= 1, got 0",
        "weight_decay must be >= 0",
        "keep_checkpoints must be >= 1 or None, got 0",
    ):
        assert part in msg


def test_an_image_size_the_model_cannot_take_is_refused():
    with pytest.raises(
        faults.ConfigError, match="image_size 16 is too small for resnet50: it downsamples by 32"
    ):
        validation.check_config(_config(model="resnet50", model_overrides={}, image_size=16))
    # 32x32 sets are upsampled inside the step to a larger size, never downsampled.
    c = config_lib.resolve_run(_config(image_size=16))
    with pytest.raises(faults.ConfigError, match="shapes10 images are 32x32; image_size=16"):
        validation.check_resolved(c, device_count=1, process_count=1)


def test_a_batch_the_devices_cannot_share_and_a_split_smaller_than_a_batch_are_refused():
    c = config_lib.resolve_run(_config(batch_size=6, eval_batch_size=8, train_split="train[:5]"))
    with pytest.raises(faults.ConfigError) as e:
        validation.check_resolved(c, device_count=4, process_count=1)
    msg = str(e.value)
    assert "batch_size 6 is not divisible by the device count 4; use a multiple of 4" in msg
    assert "train_split 'train[:5]' of shapes10 has 5 examples, fewer than one batch of 6" in msg
    assert "eval_batch_size" not in msg  # 8 is a multiple of 4


def test_a_schedule_whose_decays_fall_inside_its_warm_up_is_one_line_not_a_traceback():
    c = config_lib.resolve_run(
        _config(num_train_steps=10, lr_schedule="step", lr_decay_steps=(2,), warmup_steps=5)
    )
    with pytest.raises(faults.ConfigError) as e:
        validation.check_resolved(c, device_count=1, process_count=1)
    assert "the learning-rate schedule: lr boundaries [2] fall inside the 5-step warm-up" in str(
        e.value
    )


def test_a_run_that_ends_inside_its_warm_up_is_warned_at_start_and_one_step_past_it_is_not():
    # The default job's 50 warm-up steps at 0.05: a run of 30 never trains at its peak rate.
    warned = config_lib.resolve_run(
        _config(num_train_steps=30, warmup_steps=50, learning_rate=0.05)
    )
    assert warned.notes[-1] == (
        "WARNING: the run ends inside its warm-up (30 steps, warmup_steps 50): the learning rate "
        "never reaches its peak 0.05 (the last step's is 0.029); lengthen "
        "--config.num_train_steps past the warm-up or shorten --config.warmup_steps"
    )
    assert warned.problems == ()  # a warning: the run still starts
    last = config_lib.resolve_run(_config(num_train_steps=50, warmup_steps=50, learning_rate=0.05))
    assert "(the last step's is 0.049)" in last.notes[-1]  # step 50 is the ramp's last
    for fine in (
        dict(num_train_steps=51, warmup_steps=50),  # step 51 trains at the peak
        dict(num_train_steps=30, warmup="until_error", warmup_learning_rate=0.01),
    ):
        notes = config_lib.resolve_run(_config(**fine)).notes
        assert not any("inside its warm-up" in n for n in notes), fine


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"model": "resnet21"}, "model='resnet21' is unknown (did you mean"),
        ({"train_split": "train[:4]"}, "fewer than one batch of 8"),
        # Option-A shortcuts cannot shrink 16 stem channels to 4: found by tracing, not compiling.
        ({"model_overrides": {"widths": (4, 8, 16)}}, "option A cannot reduce channels"),
        ({"normalization": "per_image"}, "normalization='per_image' is not available for shapes10"),
    ],
)
def test_bad_configs_fail_before_anything_is_compiled(tmp_path, no_compile, overrides, expected):
    with pytest.raises(faults.ConfigError, match=re.escape(expected)):
        trainer.train_and_evaluate(_config(**overrides), str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")  # nothing half-started to clean up


def test_resuming_a_run_of_another_config_is_refused_unless_allowed(tmp_path):
    c = config_lib.resolve_config(_config())
    (tmp_path / "config.json").write_text(json.dumps(c.to_dict()))
    longer = config_lib.resolve_config(_config(num_train_steps=8, log_every_steps=1))
    assert validation.check_same_run(str(tmp_path), longer, has_checkpoints=True) == []
    other = config_lib.resolve_config(_config(learning_rate=0.5, batch_size=16))
    with pytest.raises(faults.ConfigError) as e:
        validation.check_same_run(str(tmp_path), other, has_checkpoints=True)
    assert "holds a run of a different config (batch_size: 8 -> 16; " in str(e.value)
    assert "learning_rate: 0.1 -> 0.5" in str(e.value)
    assert "--config.allow_config_change=True" in str(e.value)
    other.allow_config_change = True
    changes = validation.check_same_run(str(tmp_path), other, has_checkpoints=True)
    assert "batch_size: 8 -> 16" in changes and "learning_rate: 0.1 -> 0.5" in changes
    # A run started before a key existed resumes when the key keeps its default, not otherwise.
    old = c.to_dict()
    del old["synthetic_batches"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    defaults = config_lib.default_config().to_dict()
    assert (
        validation.check_same_run(str(tmp_path), c, has_checkpoints=True, defaults=defaults) == []
    )
    with pytest.raises(faults.ConfigError, match=r"synthetic_batches: '<absent>' -> 2"):
        validation.check_same_run(
            str(tmp_path),
            config_lib.resolve_config(_config(synthetic_batches=2)),
            has_checkpoints=True,
            defaults=defaults,
        )
    # Without checkpoints nothing computed would be mixed: a new config simply starts.
    assert (
        validation.check_same_run(
            str(tmp_path),
            config_lib.resolve_config(_config(learning_rate=0.5)),
            has_checkpoints=False,
        )
        == []
    )


def test_a_dataset_that_is_not_prepared_names_the_prepare_command(tmp_path, no_compile):
    with pytest.raises(datasets.DatasetNotPreparedError) as e:
        trainer.train_and_evaluate(
            _config(dataset="cifar10", data_dir=str(tmp_path / "tfds")), str(tmp_path / "run")
        )
    code, message = faults.classify(e.value)
    assert code == faults.EXIT_NO_INPUT == 66
    assert f"python -m resnet_jax.data.prepare cifar10 --data_dir {tmp_path / 'tfds'}" in message
    assert "\n" not in message  # one line on the console


def test_main_prints_one_line_and_exits_78_on_a_bad_config(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "resnet_jax.main",
        "--config=configs/default.py",
        f"--workdir={tmp_path}",
        "--config.model=resnet21",
        "--config.learning_rate=0",
    ]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        env=subprocess_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 78, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("resnet_jax:")]
    assert len(lines) == 1 and "2 problem(s) in the config" in lines[0]
    assert "Traceback" not in done.stderr
