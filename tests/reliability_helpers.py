"""Shared by tests/test_reliability_*.py: a tiny training run as a real `resnet_jax.main` subprocess
(so it can be SIGKILLed, SIGTERMed or starved of disk), reading its checkpoints, and real faults on
the filesystem (a size-limited tmpfs, an immutable directory).

Subprocesses share a persistent XLA compilation cache: every run compiles the same programs, and
compiling them once instead of per run keeps the suite within its time budget (a cached executable
is the same program, so bitwise comparisons are unaffected).
"""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest


def forbid_compiling(monkeypatch, before: str) -> None:
    """Makes creating the train state or jitting the step (a run's first compiles) fail the test."""
    from resnet_jax.engine import parallel

    def forbidden(*args, **kwargs):
        raise AssertionError(f"compiled before {before}")

    monkeypatch.setattr(parallel, "create_sharded_train_state", forbidden)
    monkeypatch.setattr(parallel, "jit_train_step", forbidden)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 12  # steps of the tiny run; checkpoints every 4 -> 4, 8, 12
TINY_FLAGS = (
    "--config=configs/default.py",
    f"--config.num_train_steps={TOTAL}",
    "--config.batch_size=8",
    "--config.eval_batch_size=32",
    "--config.eval_split=test[:32]",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=4",
    "--config.keep_checkpoints=3",
    "--config.lr_schedule=step",
    "--config.lr_decay_steps=(6,)",
    "--config.warmup_steps=2",
    # ResNet-8 at quarter width: a few KB of parameters, compiled in seconds.
    "--config.model_overrides={'stage_sizes': (1, 1, 1), 'widths': (4, 8, 16), 'stem_width': 4}",
)


def subprocess_env(cache_dir, **extra):
    env = dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        PYTHONFAULTHANDLER="1",
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    env.pop("RESNET_JAX_FAULT", None)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Run:
    """One `python -m resnet_jax.main` process writing its console to `log`."""

    def __init__(self, workdir, *flags, cache_dir, env=None, main_flags=(), log=None):
        self.workdir = str(workdir)
        self.log = log or f"{workdir}.{time.monotonic_ns()}.log"
        cmd = [
            sys.executable,
            "-m",
            "resnet_jax.main",
            *TINY_FLAGS,
            f"--workdir={workdir}",
            *main_flags,
            *flags,
        ]
        self._log_file = open(self.log, "w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=subprocess_env(cache_dir, **(env or {})),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout=300):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack first
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            raise AssertionError(f"run did not end within {timeout} s:\n{self.output}") from None
        self._log_file.close()
        return self.proc.returncode

    @property
    def output(self):
        with open(self.log) as f:
            return f.read()

    def kill(self, sig=signal.SIGKILL):
        self.proc.send_signal(sig)


def run(workdir, *flags, cache_dir, env=None, timeout=300):
    """(exit code, console output) of a finished run."""
    r = Run(workdir, *flags, cache_dir=cache_dir, env=env)
    return r.wait(timeout), r.output


def wait_for_file(path, run_, timeout=240):
    """Waits until `path` exists; fails early if the run ended first."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if run_.proc.poll() is not None:
            raise AssertionError(
                f"run ended (rc {run_.proc.returncode}) before {path} appeared:\n{run_.output}"
            )
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s:\n{run_.output}")
        time.sleep(0.05)


def saved_state(workdir, step):
    """{array path: numpy array} of checkpoint `step`'s train state, read straight from disk."""
    import jax
    import orbax.checkpoint as ocp

    path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step), "state")
    tree = ocp.StandardCheckpointer().restore(path)
    return {
        jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)
    }


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys() and len(a) > 20
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def checkpoint_dirs(workdir):
    d = os.path.join(workdir, "checkpoints")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


@contextlib.contextmanager
def tmpfs(path, size):
    """A real filesystem of `size` (e.g. '40m') mounted at `path`; skips where mount is denied."""
    os.makedirs(path, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    try:
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill_disk(directory):
    """Writes a file into `directory` until the filesystem refuses with ENOSPC; returns its path
    (None if the filesystem was already too full to create it)."""
    filler = os.path.join(directory, "filler")
    try:
        with open(filler, "wb") as f:
            while True:
                f.write(b"\0" * (1 << 16))
                f.flush()
    except OSError as e:
        assert e.errno == 28, e  # ENOSPC
    return filler if os.path.exists(filler) else None


@contextlib.contextmanager
def immutable(path):
    """`chattr +i`: even root cannot create files in `path` (chmod does not stop root)."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"chattr +i is not available here ({done.stderr.strip()})")
    try:
        probe = os.path.join(path, ".probe")
        try:
            open(probe, "w").close()
        except OSError:
            pass
        else:
            os.remove(probe)
            pytest.skip("chattr +i does not stop writes on this filesystem")
        yield str(path)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def copy_workdir(src, dst):
    shutil.copytree(src, dst)
    return str(dst)
