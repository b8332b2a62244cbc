"""Real `resnet_jax.main` runs killed, preempted, fed a NaN or given damaged checkpoints.

Every run is the same tiny training (tests/reliability_helpers.py: ResNet-8 at quarter width, 12
steps of 8 shapes10 images, checkpoints at 4, 8, 12); an uninterrupted run of it is the reference,
and an interrupted run must end with the reference's final train state bit for bit (CPU).
"""

import json
import os
import re
import shutil
import signal
import time

import numpy as np
import pytest
from fake_archives import exclusive, session_dir

from resnet_jax.engine import faults
from tests.reliability_helpers import (
    TOTAL,
    Run,
    assert_bitwise_equal,
    checkpoint_dirs,
    copy_workdir,
    fill_disk,
    run,
    saved_state,
    tmpfs,
    wait_for_file,
)
from tests.test_reliability_checkpoint import flip_one_bit, truncate


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return session_dir(tmp_path_factory, "reliability_xla_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache):
    """Workdir of the uninterrupted run (made once per session; tests copy it, never change it)."""
    root = session_dir(tmp_path_factory, "reliability_reference")
    workdir = root / "run"
    with exclusive(root / "lock"):
        if not (workdir / "summary.json").exists():
            shutil.rmtree(workdir, ignore_errors=True)
            rc, out = run(workdir, cache_dir=cache)
            assert rc == 0, out
    assert checkpoint_dirs(workdir) == ["12", "4", "8"]
    return str(workdir)


def _resume_and_compare(workdir, reference, cache, resumed_from, logged_before_stop=True):
    """`logged_before_stop=False`: the stopped run was told to log nothing, so its records are
    the uninterrupted run's after the step it resumed from."""
    rc, out = run(workdir, cache_dir=cache)
    assert rc == 0, out
    if resumed_from is None:
        assert "resumed from checkpoint" not in out
    else:
        assert f"resumed from checkpoint step {resumed_from}" in out
    assert_bitwise_equal(saved_state(workdir, TOTAL), saved_state(reference, TOTAL))
    assert not [d for d in checkpoint_dirs(workdir) if not d.isdigit()]  # no partial writes left
    with (
        open(os.path.join(reference, "summary.json")) as a,
        open(os.path.join(workdir, "summary.json")) as b,
    ):
        assert json.load(a)["eval"] == json.load(b)["eval"]
    # One metrics.jsonl record per step and split, as the uninterrupted run's: none logged twice.
    mine, theirs = (_metrics(d) for d in (workdir, reference))
    if not logged_before_stop:
        theirs = [r for r in theirs if r["step"] > resumed_from]
    assert [(r["step"], r["split"]) for r in mine] == [(r["step"], r["split"]) for r in theirs]
    assert [r["loss"] for r in mine] == [r["loss"] for r in theirs]
    return out


def _metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_sigkill_during_a_checkpoint_write_resumes_from_the_last_complete_one_bitwise(
    tmp_path, cache, reference
):
    workdir = tmp_path / "run"
    r = Run(workdir, cache_dir=cache, env={"RESNET_JAX_FAULT": "sigkill_in_save@8"})
    assert r.wait() == -signal.SIGKILL, r.output
    dirs = checkpoint_dirs(workdir)
    assert "4" in dirs and "8" not in dirs
    assert [d for d in dirs if d.startswith("8.orbax-checkpoint-tmp")]  # the write was cut off
    _resume_and_compare(workdir, reference, cache, resumed_from=4)


def _pause_then(tmp_path, cache, step, action):
    """Runs until `step` and its checkpoint are done, applies `action(run)`, then lets it go on."""
    workdir, gate = tmp_path / "run", tmp_path / "gate"
    r = Run(
        workdir,
        cache_dir=cache,
        env={"RESNET_JAX_FAULT": f"pause@{step}", "RESNET_JAX_FAULT_GATE": gate},
    )
    wait_for_file(f"{gate}.paused", r)
    action(r)
    open(f"{gate}.go", "w").close()
    return workdir, r


def test_sigterm_finishes_the_step_checkpoints_exits_75_and_the_rerun_continues_bitwise(
    tmp_path, cache, reference
):
    workdir, r = _pause_then(tmp_path, cache, 6, lambda r: r.kill(signal.SIGTERM))
    assert r.wait() == faults.EXIT_PREEMPTED == 75, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("resnet_jax: preempted")]
    assert lines == [
        f"resnet_jax: preempted by SIGTERM after step 6: checkpoint 6 is in "
        f"{workdir}/checkpoints; rerun the same command to resume"
    ]
    assert "6" in checkpoint_dirs(workdir) and "Traceback" not in r.output
    _resume_and_compare(workdir, reference, cache, resumed_from=6)


def _wait_for_line(r, text, timeout=240):
    """Waits until the run's console has a line containing `text`."""
    end = time.monotonic() + timeout
    while not any(text in line for line in r.output.splitlines()):
        assert r.proc.poll() is None, f"run ended before {text!r}:\n{r.output}"
        assert time.monotonic() < end, f"no {text!r} within {timeout} s:\n{r.output}"
        time.sleep(0.02)


def _stop(r):
    """(exit code, seconds from SIGTERM to the process's end)."""
    t = time.monotonic()
    r.kill(signal.SIGTERM)
    code = r.wait()
    return code, time.monotonic() - t


SLOW_STEP_S = 1.5


@pytest.mark.slow
def test_sigterm_with_slow_steps_queued_waits_only_for_the_steps_in_flight_and_resumes_bitwise(
    tmp_path, cache, reference
):
    workdir, gate = tmp_path / "run", tmp_path / "gate"
    fault = f"slow_step@{SLOW_STEP_S * 1000:.0f},pause@2"
    # No log line or checkpoint before the end: nothing but the bound stops the loop running ahead.
    quiet = (f"--config.log_every_steps={TOTAL}", f"--config.checkpoint_every_steps={TOTAL}")
    r = Run(
        workdir,
        *quiet,
        cache_dir=cache,
        env={"RESNET_JAX_FAULT": fault, "RESNET_JAX_FAULT_GATE": gate},
    )
    wait_for_file(f"{gate}.paused", r)
    open(f"{gate}.go", "w").close()
    time.sleep(0.5)  # the loop dispatches what it may
    code, took = _stop(r)
    assert code == faults.EXIT_PREEMPTED, r.output
    step = int(re.search(r"preempted by SIGTERM after step (\d+):", r.output)[1])
    in_flight = faults.MAX_STEPS_AHEAD + 1
    assert 3 <= step <= 2 + in_flight, r.output
    # The queued steps and the checkpoint, not the 10 steps left (15 s) an unbounded queue held.
    assert took < in_flight * SLOW_STEP_S + 3, (took, r.output)
    assert str(step) in checkpoint_dirs(workdir)
    _resume_and_compare(workdir, reference, cache, resumed_from=step, logged_before_stop=False)


def test_sigterm_before_the_first_step_exits_at_once_saying_there_is_nothing_to_save(
    tmp_path, cache
):
    workdir = tmp_path / "run"
    r = Run(workdir, cache_dir=cache)
    _wait_for_line(r, f"{TOTAL} steps of 8 images")  # the banner: compiling comes next
    code, took = _stop(r)
    assert code == faults.EXIT_PREEMPTED == 75, r.output
    ours = [line for line in r.output.splitlines() if line.startswith("resnet_jax:")]
    assert ours == [
        "resnet_jax: SIGTERM received before the first step was done: nothing to save, exiting "
        "now; rerun the same command to start again"
    ], r.output
    assert took < 2.0, took
    assert not [d for d in checkpoint_dirs(workdir) if d.isdigit()]


@pytest.mark.slow
def test_damaged_newest_checkpoints_are_named_and_the_run_resumes_from_the_good_one_bitwise(
    tmp_path, cache, reference
):
    workdir = copy_workdir(reference, tmp_path / "run")
    truncate(workdir, 12)
    flip_one_bit(workdir, 8)
    out = _resume_and_compare(workdir, reference, cache, resumed_from=4)
    assert f"checkpoint 12 ({workdir}/checkpoints/12) cannot be loaded" in out
    # Which file the bit lands in varies (array data: fingerprint; b-tree node: its checksum);
    # test_reliability_checkpoint.py pins the fingerprint case down.
    assert f"checkpoint 8 ({workdir}/checkpoints/8) cannot be loaded: " in out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints.damaged"))) == ["12", "8"]


@pytest.mark.slow
def test_a_nan_at_step_7_stops_the_run_with_exit_65_and_the_good_checkpoint_stays(tmp_path, cache):
    workdir = tmp_path / "run"
    rc, out = run(workdir, "--config.debug_nan_step=7", cache_dir=cache)
    assert rc == faults.EXIT_NONFINITE == 65, out
    lines = [line for line in out.splitlines() if line.startswith("resnet_jax: non-finite")]
    # The NaN images reach the loss as zeros through XLA's relu: the gradient shows them.
    assert len(lines) == 1 and re.match(
        r"resnet_jax: non-finite (loss and )?grad_norm at step 7 \(loss=\S+, grad_norm=nan",
        lines[0],
    )
    assert "checkpoint 4 (written before it) is the newest and is kept" in lines[0]
    assert checkpoint_dirs(workdir) == ["4"]  # the step-8 save never happened
    assert all(
        np.isfinite(x).all()
        for x in saved_state(workdir, 4).values()
        if np.issubdtype(x.dtype, np.floating)
    )


@pytest.mark.slow
def test_skip_policy_drops_the_nan_update_counts_it_and_finishes(tmp_path, cache):
    workdir = tmp_path / "run"
    rc, out = run(
        workdir, "--config.debug_nan_step=7", "--config.nonfinite_policy=skip", cache_dir=cache
    )
    assert rc == 0, out
    state = saved_state(workdir, TOTAL)
    assert int(state["['step']"]) == TOTAL - 1  # one update of 12 was dropped
    assert all(np.isfinite(x).all() for x in state.values() if np.issubdtype(x.dtype, np.floating))
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    skipped = {r["step"]: r["skipped_steps"] for r in records if r["split"] == "train"}
    assert skipped == {2: 0, 4: 0, 6: 0, 8: 1, 10: 1, 12: 1}
    assert all(np.isfinite(r["loss"]) for r in records)
    assert json.load(open(workdir / "summary.json"))["skipped_steps"] == 1


def test_a_workdir_whose_checkpoints_all_fail_stops_with_exit_66(tmp_path, cache, reference):
    workdir = copy_workdir(reference, tmp_path / "run")
    for step in (4, 8, 12):
        truncate(workdir, step)
    rc, out = run(workdir, cache_dir=cache)
    assert rc == faults.EXIT_NO_INPUT == 66, out
    assert "none of the 3 checkpoints" in out and "--config.restart_from_scratch=True" in out
    assert "resumed from" not in out and "[ 2/12]" not in out  # nothing trained from scratch


# ------------------------------------------------------------------------------- slow: the matrix


@pytest.mark.slow
@pytest.mark.parametrize(
    "step, resumed_from",
    [
        (2, None),  # before the first checkpoint: the rerun starts from step 0
        (6, 4),  # between checkpoints
        (8, 8),  # right after a checkpoint was completed
        (12, 12),  # after the last checkpoint, before the final evaluation
    ],
)
def test_sigkill_at_several_moments_resumes_bitwise(tmp_path, cache, reference, step, resumed_from):
    workdir, r = _pause_then(tmp_path, cache, step, lambda r: r.kill(signal.SIGKILL))
    assert r.wait() == -signal.SIGKILL
    _resume_and_compare(workdir, reference, cache, resumed_from)


@pytest.mark.slow
def test_sigkill_after_a_logged_step_leaves_one_metrics_record_per_step_after_the_rerun(
    tmp_path, cache, reference
):
    # Killed after step 6 (logged at 2, 4, 6; checkpoint 4): the rerun resumes from 4 and logs
    # step 6 again, which metrics.jsonl, plots and reports then held twice.
    workdir, r = _pause_then(tmp_path, cache, 6, lambda r: r.kill(signal.SIGKILL))
    assert r.wait() == -signal.SIGKILL
    assert [(x["step"], x["split"]) for x in _metrics(workdir)] == [
        (2, "train"),
        (4, "train"),
        (6, "train"),
    ]
    out = _resume_and_compare(workdir, reference, cache, resumed_from=4)
    assert (
        "metrics.jsonl: dropped 1 record(s) after step 4, logged by the interrupted run after its "
        "checkpoint (this run logs those steps again)"
    ) in out
    steps = [x["step"] for x in _metrics(workdir) if x["split"] == "train"]
    assert steps == [2, 4, 6, 8, 10, 12]


@pytest.mark.slow
def test_sigkill_during_the_first_checkpoint_write_restarts_from_step_0_bitwise(
    tmp_path, cache, reference
):
    workdir = tmp_path / "run"
    r = Run(workdir, cache_dir=cache, env={"RESNET_JAX_FAULT": "sigkill_in_save@4"})
    assert r.wait() == -signal.SIGKILL
    assert [d for d in checkpoint_dirs(workdir) if d.startswith("4.orbax-checkpoint-tmp")]
    _resume_and_compare(workdir, reference, cache, resumed_from=None)


@pytest.mark.slow
def test_sigint_behaves_like_sigterm(tmp_path, cache, reference):
    workdir, r = _pause_then(tmp_path, cache, 10, lambda r: r.kill(signal.SIGINT))
    assert r.wait() == 75, r.output
    assert "preempted by SIGINT after step 10" in r.output
    _resume_and_compare(workdir, reference, cache, resumed_from=10)


@pytest.mark.slow
def test_restart_from_scratch_sets_damaged_checkpoints_aside_and_trains_from_step_0(
    tmp_path, cache, reference
):
    workdir = copy_workdir(reference, tmp_path / "run")
    for step in (4, 8, 12):
        truncate(workdir, step)
    rc, out = run(workdir, "--config.restart_from_scratch=True", cache_dir=cache)
    assert rc == 0, out
    assert "restart_from_scratch" in out and "resumed from" not in out
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints.damaged"))) == ["12", "4", "8"]
    assert_bitwise_equal(saved_state(workdir, TOTAL), saved_state(reference, TOTAL))


@pytest.mark.slow
def test_a_disk_filling_up_mid_run_stops_with_exit_74_and_the_rerun_resumes_bitwise(
    tmp_path, cache, reference
):
    gate = tmp_path / "gate"
    with tmpfs(tmp_path / "fs", "40m") as fs:  # passes the start-up check (32 MiB + 4 checkpoints)
        workdir = os.path.join(fs, "run")
        r = Run(
            workdir,
            cache_dir=cache,
            log=str(tmp_path / "run.log"),
            env={"RESNET_JAX_FAULT": "pause@4", "RESNET_JAX_FAULT_GATE": gate},
        )
        wait_for_file(f"{gate}.paused", r)
        filler = fill_disk(fs)
        open(f"{gate}.go", "w").close()
        assert r.wait() == faults.EXIT_IO == 74, r.output
        # Whichever write comes first fails (metrics at step 6 or checkpoint 8): one line, no trace.
        lines = [line for line in r.output.splitlines() if line.startswith("resnet_jax:")]
        assert len(lines) == 1 and "No space left on device" in lines[0], r.output
        assert checkpoint_dirs(workdir)[:1] == ["4"]
        if filler:
            os.remove(filler)
        _resume_and_compare(workdir, reference, cache, resumed_from=4)


@pytest.mark.slow
def test_sigterm_checkpoints_every_run_of_a_seeds_program_and_the_rerun_continues_bitwise(
    tmp_path, cache
):
    seeds = "--config.seeds=0,1"
    rc, out = run(tmp_path / "ref", seeds, cache_dir=cache)
    assert rc == 0, out
    workdir, gate = tmp_path / "run", tmp_path / "gate"
    r = Run(
        workdir,
        seeds,
        cache_dir=cache,
        env={"RESNET_JAX_FAULT": "pause@6", "RESNET_JAX_FAULT_GATE": gate},
    )
    wait_for_file(f"{gate}.paused", r)
    r.kill(signal.SIGTERM)
    open(f"{gate}.go", "w").close()
    assert r.wait() == faults.EXIT_PREEMPTED, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("resnet_jax: preempted")]
    assert lines == [
        "resnet_jax: preempted by SIGTERM after step 6: every run has checkpoint 6 in its "
        "workdir; rerun the same command to resume"
    ]
    for seed in (0, 1):
        assert "6" in checkpoint_dirs(workdir / f"seed{seed}")
    rc, out = run(workdir, seeds, cache_dir=cache)
    assert rc == 0, out
    for seed in (0, 1):
        assert_bitwise_equal(
            saved_state(workdir / f"seed{seed}", TOTAL),
            saved_state(tmp_path / "ref" / f"seed{seed}", TOTAL),
        )
