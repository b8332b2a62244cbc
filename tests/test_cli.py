"""The command line as a new user meets it: help, and config files that cannot be loaded."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "resnet_jax.main", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_exits_0_and_explains_config_overrides():
    p = _main("--help")
    assert p.returncode == 0, p.stderr
    assert "--config.KEY=VALUE" in p.stdout and "resnet_jax/config.py" in p.stdout
    config_help = p.stdout.split("  --config:")[1].split("  --coordinator_address")[0]
    assert "(required)" in config_help and "default" not in config_help


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
    assert p.returncode == 78, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("resnet_jax: "), p.stderr
    assert says in lines[0]
    assert not (tmp_path / "run").exists()  # nothing was started
