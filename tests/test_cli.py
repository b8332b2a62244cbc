"""The command line as a new user meets it: help, and config files that cannot be loaded."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(module, *args):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _main(*args):
    return _run("resnet_jax.main", *args)


def _one_line(p, code):
    """The single `resnet_jax: ...` line a failed command printed, after checking its exit code."""
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet_jax: "), p.stderr
    return lines[0]


def test_help_exits_0_and_explains_config_overrides():
    p = _main("--help")
    assert p.returncode == 0, p.stderr
    assert "--config.KEY=VALUE" in p.stdout and "--show_config" in p.stdout
    config_help = p.stdout.split("  --config:")[1].split("  --coordinator_address")[0]
    assert "(required)" in config_help and "default" not in config_help


@pytest.mark.parametrize(
    "module, usage, own_flags",
    [
        ("resnet_jax.predict", "--workdir DIR IMAGE [IMAGE ...]", ["--workdir", "--weights"]),
        ("resnet_jax.export", "--workdir RUN [--out DIR]", ["--workdir", "--format", "--weights"]),
        ("resnet_jax.summary", "--model resnet50", ["--[no]all", "--[no]json", "--model"]),
        ("resnet_jax.plot", "WORKDIR [WORKDIR ...]", ["--out"]),
        ("resnet_jax.benchmark", "--model resnet50", ["--batch_size", "--steps", "--dtype"]),
    ],
)
def test_help_of_every_tool_lists_its_own_usage_and_flags(module, usage, own_flags):
    p = _run(module, "--help")
    assert p.returncode == 0, p.stderr
    assert "the command line of" not in p.stdout  # the alias's own docstring is not the help
    assert usage in p.stdout
    listed = [line.split(":")[0].strip() for line in p.stdout.splitlines() if line[:4] == "  --"]
    assert set(own_flags) <= set(listed), p.stdout
    assert "--verbosity" not in listed  # absl's global flags stay under --helpfull


@pytest.mark.parametrize(
    "override, says",
    [
        (
            "--config.batchsize=64",
            "resnet_jax: unknown config key 'batchsize' (did you mean batch_size, "
            "eval_batch_size?); list the keys with: python -m resnet_jax.main "
            "--config=configs/default.py --show_config",
        ),
        (
            "--config.batch_size=abc",
            "resnet_jax: config key batch_size wants int, got 'abc' (e.g. --config.batch_size=32)",
        ),
        (
            "--config.nesterov=maybe",
            "resnet_jax: config key nesterov wants bool, got 'maybe' (e.g. --config.nesterov=False)",
        ),
        (
            "--config.model_overrides.shortcut=B",
            "resnet_jax: unknown config key 'model_overrides.shortcut': model_overrides is empty, "
            """so set it whole, e.g. '--config.model_overrides={"shortcut": "B"}'""",
        ),
    ],
)
def test_a_bad_override_names_the_key_and_the_fix_in_one_line_exit_78(tmp_path, override, says):
    p = _main("--config=configs/default.py", f"--workdir={tmp_path / 'run'}", override)
    assert _one_line(p, 78) == says
    assert not (tmp_path / "run").exists()


def test_show_config_lists_every_key_resolved_with_its_meaning_and_writes_nothing(tmp_path):
    from resnet_jax import config as config_lib

    p = _main("--config=configs/default.py", "--show_config", "--config.dataset=synthetic")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    keys = [line.split(" = ")[0] for line in lines]
    derived = [
        "num_train_examples",
        "peak_learning_rate",
        "peak_warmup_learning_rate",
        "steps_per_epoch",
    ]
    assert keys == sorted([*config_lib.default_config().keys(), *derived])
    by_key = dict(zip(keys, lines, strict=True))
    assert by_key["batch_size"].split("#")[0].strip() == "batch_size = 32"
    assert by_key["image_size"].split("#")[0].strip() == "image_size = 32"  # resolved
    assert by_key["batch_size"].endswith("# global, over all devices and hosts")
    assert all("  # " in line for line in lines), "every key has a meaning"
    assert os.listdir(tmp_path) == []


def test_a_missing_workdir_is_one_line_and_exit_78():
    p = _main("--config=configs/default.py")
    assert _one_line(p, 78) == "resnet_jax: --workdir is required: the run directory (see --help)"


@pytest.mark.parametrize(
    "config, says",
    [
        ("configs/nonexistent.py", "cannot load --config: [Errno 2] No such file or directory"),
        ("{tmp}", "cannot load --config: [Errno 21] Is a directory"),
        ("{tmp}/broken.py", "invalid syntax (broken.py, line 1)"),
        ("configs/imagenet.py:resnet50,bogus", "unknown ImageNet recipe 'bogus'"),
    ],
)
def test_a_config_file_that_cannot_be_loaded_is_one_line_and_exit_78(tmp_path, config, says):
    (tmp_path / "broken.py").write_text("def get_config(:\n")
    p = _main(f"--config={config.format(tmp=tmp_path)}", f"--workdir={tmp_path / 'run'}")
    assert says in _one_line(p, 78)
    assert not (tmp_path / "run").exists()  # nothing was started
