"""What a run does when something goes wrong: errors with exit codes, preemption, dead peers.

Every failure the trainer foresees is a `RunError` whose `exit_code` (sysexits.h where one fits)
lets a scheduler tell "rerun me" (75) from "fix something first"; `exit_on_error` prints it as one
line.
See docs/reliability.md for the table of faults, behaviours and the tests that prove them.

Preemption. SIGTERM (the notice schedulers send before eviction) and SIGINT (Ctrl-C) let the steps
already dispatched finish (the trainer keeps at most `MAX_STEPS_AHEAD` of them queued behind the one
running, so a stop waits a bounded time); the trainer then writes a checkpoint and exits with
EXIT_PREEMPTED. Before the first step is done there is nothing new to save: a single process exits
at once, even from inside a compilation. With several processes JAX's coordination service catches
SIGTERM on any one of them and agrees on a step that every process reaches
(`multihost_utils.reached_preemption_sync_point`), so all save the same step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator

from resnet_jax import plugins

# Exit codes. 75 is the only one after which rerunning the same command is the right reaction.
EXIT_NONFINITE = 65  # EX_DATAERR: NaN/Inf loss or gradient under nonfinite_policy='stop'
EXIT_NO_INPUT = 66  # EX_NOINPUT: dataset not prepared, corrupt image, no loadable checkpoint
EXIT_PEER_LOST = 69  # EX_UNAVAILABLE: another process of a multi-process job died
EXIT_IO = 74  # EX_IOERR: workdir not writable, disk too small or full, checkpoint write failed
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: stopped on SIGTERM/SIGINT after a checkpoint; rerun to resume
EXIT_CONFIG = 78  # EX_CONFIG: invalid config, or a workdir holding a run of another config
EXIT_BUG = 1  # an unforeseen error (Python's own code for an uncaught exception): the traceback

# Train steps the loop may dispatch ahead of the one the device is running. JAX dispatches
# asynchronously, and a stop must wait for every queued step before it can save: unbounded, the
# loop ran the whole data prefetch ahead and a SIGTERM waited minutes. Two keep the device fed.
MAX_STEPS_AHEAD = 2


class RunError(Exception):
    """A foreseen failure: the message is meant for the user, `exit_code` for the scheduler."""

    exit_code = 1


class ConfigError(RunError, ValueError):
    exit_code = EXIT_CONFIG


class NonFiniteError(RunError, FloatingPointError):
    exit_code = EXIT_NONFINITE


class CheckpointLoadError(RunError):
    exit_code = EXIT_NO_INPUT


class DiskError(RunError):
    exit_code = EXIT_IO


class CheckpointWriteError(DiskError):
    pass


class PeerLostError(RunError):
    exit_code = EXIT_PEER_LOST


class Preempted(RunError):
    """Not a failure: the run stopped cleanly at `step` with a checkpoint there."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


# Text of the errors a collective or the coordination service raises when another process is gone
# (gloo on CPU: "Connection closed by peer"; NCCL/TPU runtimes and the heartbeat monitor otherwise).
_PEER_MARKERS = (
    "gloo",
    "connection closed by peer",
    "connection reset",
    "heartbeat",
    "coordination service",
    "unavailable:",
    "deadline_exceeded",
    "barrier timed out",
)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (Orbax and tensorstore append pages of detail)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def classify(e: BaseException, process_count: int = 1) -> tuple[int, str] | None:
    """(exit code, one-line message) for a foreseen failure; None for a bug (keep the traceback)."""
    if isinstance(e, RunError):
        return e.exit_code, str(e)
    if isinstance(e, plugins.PluginError):
        return EXIT_CONFIG, str(e)
    from resnet_jax.data import datasets  # plain Python: does not import TensorFlow

    if isinstance(e, (datasets.DatasetNotPreparedError, datasets.CorruptImageError)):
        return EXIT_NO_INPUT, " ".join(str(e).split("\n"))
    if isinstance(e, OSError) and e.errno is not None:
        return EXIT_IO, f"I/O error: {e}"
    if process_count > 1 and any(m in str(e).lower() for m in _PEER_MARKERS):
        return EXIT_PEER_LOST, (
            f"a collective or the coordination service failed ({first_line(e)}); another process "
            "of this job has most likely died: see its log. Restart every process to resume from "
            "the newest checkpoint."
        )
    return None


@contextlib.contextmanager
def exit_on_error(process_count_fn=lambda: 1) -> Iterator[None]:
    """Turns a foreseen failure inside the block into one line on stderr and its exit code.

    With several processes every failure, a bug's too, exits without Python's teardown
    (`os._exit`): JAX's shutdown barrier would wait for peers that are stuck in a collective this
    process left, and they for it, forever (each still answers the heartbeat). Exiting ends the
    heartbeat, so the coordination service stops the others within `heartbeat_timeout_s`.
    """
    try:
        yield
    except Exception as e:
        count = process_count_fn()
        found = classify(e, count)
        if found is None:
            if count == 1:
                raise
            traceback.print_exc()
            code = EXIT_BUG
        else:
            code, message = found
            print(f"resnet_jax: {message}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        if count > 1:
            os._exit(code)
        sys.exit(code)


class PreemptionWatcher:
    """Turns SIGTERM/SIGINT into "stop after this step"; agrees on the step across processes.

    Use as a context manager around everything from start-up to the end of the training loop, and
    call `should_stop(step)` after every step with the number of steps done. Until the first call a
    single process has nothing new to save, and a signal ends it at once (exit 75), also while the
    main thread is inside a compilation: a thread woken by `signal.set_wakeup_fd` does it, since a
    Python signal handler only runs when the main thread returns to Python. A second signal restores
    the default handler and re-delivers the signal, so impatient users can still stop at once
    (without a checkpoint).
    """

    def __init__(self, process_count: int = 1):
        self.multi = process_count > 1
        self.received: str | None = None
        self.stepping = False  # a step is done: from now on a stop saves first
        self._previous: dict[int, object] = {}
        self._wakeup: tuple[int, int] | None = None

    def __enter__(self) -> PreemptionWatcher:
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread
        # With several processes JAX's preemption notifier owns SIGTERM (a Python handler would
        # replace it); SIGINT is forwarded to it as SIGTERM so Ctrl-C takes the same agreed path.
        signals = (signal.SIGINT,) if self.multi else (signal.SIGTERM, signal.SIGINT)
        for sig in signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        if not self.multi:
            read, write = os.pipe()
            os.set_blocking(write, False)
            self._wakeup = (read, signal.set_wakeup_fd(write, warn_on_full_buffer=False))
            threading.Thread(
                target=self._exit_before_first_step, args=(read, write), daemon=True
            ).start()
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._wakeup is not None:
            os.close(signal.set_wakeup_fd(self._wakeup[1]))  # the thread's read returns b""
            self._wakeup = None

    def _exit_before_first_step(self, read: int, write: int) -> None:
        del write  # closed by __exit__
        try:
            while data := os.read(read, 16):
                signums = {s for s in data if s in self._previous}
                if signums and not self.stepping:
                    name = signal.Signals(min(signums)).name
                    print(
                        f"resnet_jax: {name} received before the first step was done: nothing to "
                        "save, exiting now; rerun the same command to start again",
                        file=sys.stderr,
                        flush=True,
                    )
                    sys.stdout.flush()
                    os._exit(EXIT_PREEMPTED)
        finally:
            os.close(read)

    def _handle(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.received is not None:  # second signal: stop now, no checkpoint
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = name
        if not self.stepping and not self.multi:
            return  # the wake-up thread exits
        try:  # the handler may interrupt a write to stderr; the message is a courtesy
            print(
                f"resnet_jax: {name} received; finishing the steps in flight (at most "
                f"{MAX_STEPS_AHEAD + 1}), then writing a checkpoint (send it again to stop at once "
                "without one)",
                file=sys.stderr,
                flush=True,
            )
        except RuntimeError:
            pass
        if self.multi:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier, which tells the other hosts

    def should_stop(self, step: int) -> bool:
        """True at the step where this process (and, with several, every process) should save."""
        self.stepping = True
        if self.multi:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.received = self.received or "SIGTERM"
                return True
            return False
        return self.received is not None

    def stop(self, step: int, save_checkpoint, closers, where: str):
        """Saves the checkpoint of `step`, closes the writers, and raises Preempted, whose message
        says `where` the checkpoint is."""
        save_checkpoint()
        for close in closers:
            close()
        raise Preempted(
            f"preempted by {self.received} after step {step}: {where}; rerun the same command "
            "to resume",
            step,
        )


class FaultHook:
    """Test-only fault injection at exact moments, from $RESNET_JAX_FAULT (unset: does nothing).

    `sigkill_in_save@K`: SIGKILL this process right after checkpoint K's asynchronous write started,
      so the write is cut off half way (tests/test_reliability_kill.py).
    `pause@K`: after step K and its checkpoint are on disk, create $RESNET_JAX_FAULT_GATE.paused and
      wait until $RESNET_JAX_FAULT_GATE.go exists, so a test can fill the disk, send a signal or
      kill a peer at that exact point.
    `bug@K`: raise an unforeseen error (RuntimeError) after step K, as a bug in the loop would.
    `slow_step@MS`: every train step's outputs wait MS milliseconds more on the device, as a step of
      a big model on a slow machine would (tests/test_reliability_stop.py times a stop with it).
    Several actions may be given, separated by commas.
    """

    def __init__(self, spec: str | None = None, gate: str | None = None):
        spec = os.environ.get("RESNET_JAX_FAULT", "") if spec is None else spec
        self.gate = os.environ.get("RESNET_JAX_FAULT_GATE") if gate is None else gate
        self.actions: dict[tuple[str, int], bool] = {}
        for item in filter(None, (s.strip() for s in spec.split(","))):
            action, _, step = item.partition("@")
            if action not in ("sigkill_in_save", "pause", "bug", "slow_step") or not step.isdigit():
                raise ValueError(f"bad RESNET_JAX_FAULT item {item!r}")
            self.actions[(action, int(step))] = True
        if any(a == "pause" for a, _ in self.actions) and not self.gate:
            raise ValueError("RESNET_JAX_FAULT=pause@K needs RESNET_JAX_FAULT_GATE")

    def wrap_step(self, train_step):
        """`train_step`, slowed by `slow_step@MS`; unchanged otherwise. Values stay bit for bit."""
        ms = next((k for action, k in self.actions if action == "slow_step"), None)
        if ms is None:
            return train_step
        import jax
        from jax.experimental import io_callback

        def sleep(x):
            time.sleep(ms / 1000)
            return x

        @jax.jit
        def delay(outputs):
            first = jax.tree.leaves(outputs)[0].ravel()[0]  # runs after the step's outputs exist
            done = io_callback(sleep, jax.ShapeDtypeStruct((), first.dtype), first)
            return jax.lax.optimization_barrier((done, outputs))[1]  # ... and they wait for it

        return lambda state, batch: delay(train_step(state, batch))

    def after_save_started(self, step: int) -> None:
        if self.actions.pop(("sigkill_in_save", step), False):
            os.kill(os.getpid(), signal.SIGKILL)

    def after_step(self, step: int, wait_for_checkpoints) -> None:
        if self.actions.pop(("bug", step), False):
            raise RuntimeError(
                f"RESNET_JAX_FAULT=bug@{step}: an unforeseen error after step {step}"
            )
        if not self.actions.pop(("pause", step), False):
            return
        wait_for_checkpoints()
        with open(f"{self.gate}.paused", "w") as f:
            f.write(str(step))
        while not os.path.exists(f"{self.gate}.go"):
            time.sleep(0.05)
