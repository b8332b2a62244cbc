"""Two `resnet_jax.main` processes on localhost (jax.distributed, gloo): a peer that dies makes the
other stop within a bounded time, and a preemption notice to one makes both save the same step."""

import os
import re
import signal
import socket
import time

import pytest
from fake_archives import session_dir

from resnet_jax.engine import faults
from tests.reliability_helpers import TOTAL, Run, checkpoint_dirs, wait_for_file

HEARTBEAT_S = 10


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pair(tmp_path, cache, fault_for_1=None):
    """Processes 0 and 1 of one job on one workdir; process 1 optionally gets RESNET_JAX_FAULT."""
    port, workdir = _free_port(), tmp_path / "run"
    runs = []
    for i in (0, 1):
        env = (
            {"RESNET_JAX_FAULT": fault_for_1, "RESNET_JAX_FAULT_GATE": tmp_path / "gate"}
            if i == 1 and fault_for_1
            else {}
        )
        runs.append(
            Run(
                workdir,
                cache_dir=cache,
                env=env,
                main_flags=(
                    f"--coordinator_address=127.0.0.1:{port}",
                    "--num_processes=2",
                    f"--process_id={i}",
                    f"--heartbeat_timeout_s={HEARTBEAT_S}",
                ),
            )
        )
    return workdir, runs


def _wait_all(runs, timeout):
    """Exit codes of `runs`; any still running after `timeout` s is stopped with its stack dumped
    (the caller's assertion then shows every process's output, not only the first one's)."""
    end = time.monotonic() + timeout
    for r in runs:
        try:
            r.wait(timeout=max(end - time.monotonic(), 1))
        except AssertionError:
            pass
    return [r.proc.returncode for r in runs]


def _kill_leftovers(runs):
    for r in runs:
        if r.proc.poll() is None:
            r.proc.kill()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return session_dir(tmp_path_factory, "reliability_xla_cache")


@pytest.mark.slow
def test_a_killed_process_makes_the_other_fail_within_the_heartbeat_timeout(tmp_path, cache):
    _, (p0, p1) = _pair(tmp_path, cache, fault_for_1="pause@6")
    try:
        wait_for_file(tmp_path / "gate.paused", p1)
        time.sleep(1)  # process 0 is now waiting for process 1 inside step 7's all-reduce
        p1.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        rc = p0.wait(timeout=HEARTBEAT_S + 60)
        took = time.monotonic() - killed_at
    finally:
        _kill_leftovers((p0, p1))
    assert rc != 0 and took < HEARTBEAT_S + 30, (rc, took, p0.output)
    out = p0.output
    assert (
        "another process of this job has most likely died" in out  # our message, exit 69
        or "another task died" in out
    ), out  # JAX's coordination service, SIGABRT
    if rc == 69:
        assert "Restart every process to resume from the newest checkpoint" in out


@pytest.mark.slow
def test_a_bug_in_one_process_ends_it_with_a_traceback_and_the_other_within_the_heartbeat(
    tmp_path, cache
):
    """Python's normal exit would enter JAX's shutdown barrier and wait there for the peer, which
    waits in the next step's collective for it: both alive, both answering heartbeats, forever."""
    _, (p0, p1) = _pair(tmp_path, cache, fault_for_1="bug@6")
    try:
        rc1 = p1.wait(timeout=240)
        failed_at = time.monotonic()
        rc0 = p0.wait(timeout=HEARTBEAT_S + 60)
        took = time.monotonic() - failed_at
    finally:
        _kill_leftovers((p0, p1))
    assert rc1 == faults.EXIT_BUG, p1.output
    assert "Traceback" in p1.output and "RuntimeError: RESNET_JAX_FAULT=bug@6" in p1.output
    assert rc0 != 0 and took < HEARTBEAT_S + 30, (rc0, took, p0.output)


@pytest.mark.slow
def test_sigterm_to_one_process_makes_both_save_the_same_step_and_exit_75(tmp_path, cache):
    workdir, (p0, p1) = _pair(tmp_path, cache, fault_for_1="pause@5")
    try:
        wait_for_file(tmp_path / "gate.paused", p1)
        p1.kill(signal.SIGTERM)  # only process 1 gets the notice
        # JAX's notifier and agreement run in background threads and take about a second; the
        # six steps left run in a third of one. Holding process 1 meanwhile tests the agreement, not
        # a race against the end of the run (that the run ends normally is right too, then).
        time.sleep(3)
        open(tmp_path / "gate.go", "w").close()
        codes = _wait_all((p0, p1), timeout=300)
    finally:
        _kill_leftovers((p0, p1))
    assert codes == [75, 75], (p0.output, p1.output)
    steps = [
        int(re.search(r"preempted by SIGTERM after step (\d+)", p.output).group(1))
        for p in (p0, p1)
    ]
    assert steps[0] == steps[1] and 5 <= steps[0] < TOTAL
    assert str(steps[0]) in checkpoint_dirs(workdir)
    # Both restart and finish from the agreed step.
    _, (q0, q1) = _pair(tmp_path, cache)
    assert _wait_all((q0, q1), timeout=300) == [0, 0], (q0.output, q1.output)
    assert f"resumed from checkpoint step {steps[0]}" in q0.output
    assert os.path.exists(workdir / "summary.json")
