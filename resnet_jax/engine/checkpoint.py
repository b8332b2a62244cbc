"""Orbax checkpoints of the train state plus the input position, in WORKDIR/checkpoints.

Each step directory holds two items: `state` (the TrainState arrays) and `data` (JSON: step, seed,
global batch size, process count). The example order of the input pipeline is a pure function of
these, so a restored run resumes on exactly the batch an uninterrupted run would see next.
Orbax writes into a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact; saves are asynchronous (the device-to-host copy is synchronous, so
donating the state right after `save` is safe).

Damage. Each checkpoint's `data` item also holds a fingerprint of every array (`numerics`), checked
on restore: tensorstore notices truncated files but not a flipped bit. A checkpoint that cannot be
loaded is named on stderr and moved to `checkpoints.damaged/` (so its step can be written again),
and the next older one is tried; when none loads, `CheckpointLoadError` stops the run rather than
start over, unless asked to. A failed write raises `CheckpointWriteError` naming the intact ones.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from resnet_jax.engine import faults, numerics


def data_position(step: int, seed: int, global_batch_size: int, process_count: int) -> dict:
    """What the input pipeline needs to continue at `step` (JSON-serialisable)."""
    return {
        "step": int(step),
        "seed": int(seed),
        "global_batch_size": int(global_batch_size),
        "process_count": int(process_count),
    }


def _like_stored(abstract: Any, stored: dict) -> tuple[Any, Any]:
    """(what to ask Orbax for, a function of its answer -> the state) for a checkpoint whose state
    has the top-level tree `stored`, given the state the caller expects (`abstract`).

    The average of the weights (`TrainState.ema`) comes back as the checkpoint holds it, whatever
    the caller expects (the trainer starts or drops it as its config says): None where it was off,
    the shapes of the params and BN statistics where it was on, and None from a checkpoint written
    before the field existed, whose other fields are read on their own (Orbax wants the tree on
    disk exactly).
    """
    if not hasattr(abstract, "ema"):
        return abstract, lambda state: state
    if "ema" not in stored:
        fields = {name: getattr(abstract, name) for name in stored}
        return fields, lambda fields: abstract.replace(**fields, ema=None)
    if stored["ema"] is None:
        return abstract.replace(ema=None), lambda state: state
    weights = {"params": abstract.params, "batch_stats": abstract.batch_stats}
    return abstract.replace(ema=weights), lambda state: state


class _Manager(ocp.CheckpointManager):
    """Orbax's manager without its own calls to JAX's multi-host preemption sync point.

    JAX agrees on the step to save at from the step each host last passed to
    `reached_preemption_sync_point`, so it must be called once per step with rising steps; the
    trainer does that (`faults.PreemptionWatcher.should_stop`). Orbax calls it as well, from `save`
    and from its finalize thread with the step of an older checkpoint, which can report a step
    behind the host's real one: the hosts then agree on a step that one of them has already
    passed, it trains on alone, and both hang at the next checkpoint's barrier. Saving is decided by
    `Checkpointer` (Orbax only ever gets force=True), so Orbax needs no answer of its own.
    """

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the newest `keep`, restores newest.

    Args:
      workdir: run directory; checkpoints go to `workdir/checkpoints/<step>/`.
      every_steps: save interval in steps (0 = only forced saves, e.g. at the end).
      keep: how many checkpoints to keep (None = all).
      async_save: write in a background thread while training continues.
    """

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int = 1000,
        keep: int | None = 3,
        async_save: bool = True,
    ):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.every_steps = int(every_steps)
        self._last_saved = None
        self._writing = None  # step of the newest save handed to Orbax; its errors surface later
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # Saving is decided here (`should_save`), so the manager accepts any step it is given.
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        # Handlers named up front, so that a fresh manager can read a checkpoint's tree before
        # restoring it (`_like_stored`).
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}
        self._manager = _Manager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

    def save(
        self,
        step: int,
        state: Any,
        position: dict,
        *,
        force: bool = False,
        fingerprint: list[int] | None = None,
    ) -> bool:
        """Saves `state` as checkpoint `step` if due (or `force`); returns whether it saved.

        `fingerprint`: `numerics.fingerprint(state)` when the caller has it already (the trainer's
        finite check computes it in the same pass); computed here otherwise.
        """
        if not (force or self.should_save(step)):
            return False
        if step == self._last_saved or step in self._manager.all_steps():
            return False
        self._last_saved = step
        if fingerprint is None:
            fingerprint = numerics.fingerprint(state)
        data = dict(position, fingerprint=fingerprint)
        # Orbax waits for the previous asynchronous write before starting one; waiting here first
        # tells which step a failure belongs to.
        self.wait()
        try:
            saved = self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data)
                ),
                force=True,
            )
        except Exception as e:
            raise self._write_error(step, e) from e
        self._writing = step
        return saved

    def _write_error(self, step: int, e: Exception) -> faults.CheckpointWriteError:
        # Complete checkpoints are the directories named by a step (writes go to *-tmp first).
        on_disk = os.listdir(self.directory) if os.path.isdir(self.directory) else []
        intact = sorted(int(d) for d in on_disk if d.isdigit() and int(d) != step)
        then = (
            f"a rerun resumes from checkpoint {intact[-1]}"
            if intact
            else "there is no earlier checkpoint"
        )
        return faults.CheckpointWriteError(
            f"writing checkpoint {step} to {self.directory} failed ({faults.first_line(e)}); "
            f"checkpoint(s) {intact} are intact and {then}"
        )

    def _restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        stored = self._manager.item_metadata(step)["state"].tree
        item, rebuild = _like_stored(abstract_state, stored)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(item), data=ocp.args.JsonRestore()
            ),
        )
        state = rebuild(restored["state"])
        position = dict(restored["data"])
        expected = position.pop("fingerprint", None)  # absent in checkpoints from before it existed
        if expected is not None:
            differ = numerics.fingerprint_mismatch(state, expected)
            if differ:
                more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
                raise ValueError(
                    "its arrays differ from what was saved (fingerprint mismatch in "
                    f"{', '.join(differ[:3])}{more})"
                )
        return state, position

    def restore(
        self, abstract_state: Any, step: int | None = None, *, fresh_start_if_damaged: bool = False
    ) -> tuple[Any, dict] | None:
        """(state, position) from checkpoint `step` (default: the newest that loads), or None.

        `abstract_state`: a tree of jax.ShapeDtypeStruct with shardings (see
        `parallel.abstract_train_state`); arrays come back placed like it. Checkpoints that fail to
        load are reported and set aside; if none loads, raises `faults.CheckpointLoadError`, or with
        `fresh_start_if_damaged` sets them all aside and returns None.
        """
        candidates = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        damaged = []
        for s in candidates:
            try:
                state, position = self._restore_step(s, abstract_state)
            except Exception as e:
                reason = faults.first_line(e)
                print(
                    f"resnet_jax: checkpoint {s} ({self.directory}/{s}) cannot be loaded: {reason}",
                    file=sys.stderr,
                    flush=True,
                )
                damaged.append((s, reason))
                continue
            if damaged:
                print(
                    f"resnet_jax: using checkpoint {s}; the damaged one(s) go to "
                    f"{self.directory}.damaged",
                    file=sys.stderr,
                    flush=True,
                )
                self._set_aside([d for d, _ in damaged])
            logging.info("restored checkpoint %s/%d", self.directory, s)
            return state, position
        if not damaged:
            return None
        if step is not None or not fresh_start_if_damaged:
            listing = "; ".join(f"{s}: {reason}" for s, reason in damaged)
            raise faults.CheckpointLoadError(
                f"none of the {len(damaged)} checkpoints in {self.directory} can be loaded "
                f"({listing}). Nothing was trained. Restore them from a backup, or start over with "
                f"--config.restart_from_scratch=True (they are then moved to "
                f"{self.directory}.damaged)"
            )
        self._set_aside([d for d, _ in damaged])
        print(
            f"resnet_jax: restart_from_scratch: no checkpoint loads; moved {len(damaged)} to "
            f"{self.directory}.damaged and starting at step 0",
            file=sys.stderr,
            flush=True,
        )
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Moves checkpoint directories to `checkpoints.damaged/` (process 0; all then re-list)."""
        if jax.process_index() == 0:
            target = self.directory + ".damaged"
            os.makedirs(target, exist_ok=True)
            for s in steps:
                dst = os.path.join(target, str(s))
                if os.path.exists(dst):
                    dst += f".{time.strftime('%Y%m%d-%H%M%S')}"
                os.rename(os.path.join(self.directory, str(s)), dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"resnet_jax_set_aside_{'_'.join(map(str, steps))}")
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk; raises CheckpointWriteError."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(self._writing, e) from e
        self._writing = None

    def close(self) -> None:
        self.wait()
        self._manager.close()
