"""Orbax checkpoints of the train state plus the input position, in WORKDIR/checkpoints.

Each step directory holds two items: `state` (the TrainState arrays) and `data` (JSON: step, seed,
global batch size, process count). The example order of the input pipeline is a pure function of
these, so a restored run resumes on exactly the batch an uninterrupted run would see next.
Orbax writes into a temporary directory and renames it when complete, so a crash mid-save leaves
the previous checkpoints intact; saves are asynchronous (the device-to-host copy is synchronous, so
donating the state right after `save` is safe).
"""
from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from absl import logging


def data_position(step: int, seed: int, global_batch_size: int, process_count: int) -> dict:
    """What the input pipeline needs to continue at `step` (JSON-serialisable)."""
    return {"step": int(step), "seed": int(seed), "global_batch_size": int(global_batch_size),
            "process_count": int(process_count)}


class Checkpointer:
    """Saves every `every_steps` steps (and when forced), keeps the newest `keep`, restores newest.

    Args:
      workdir: run directory; checkpoints go to `workdir/checkpoints/<step>/`.
      every_steps: save interval in steps (0 = only forced saves, e.g. at the end).
      keep: how many checkpoints to keep (None = all).
      async_save: write in a background thread while training continues.
    """

    def __init__(self, workdir: str, *, every_steps: int = 1000, keep: int | None = 3,
                 async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.every_steps = int(every_steps)
        self._last_saved = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            # Saving is decided here (`should_save`), so the manager accepts any step it is given.
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "data"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def should_save(self, step: int) -> bool:
        return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

    def save(self, step: int, state: Any, position: dict, *, force: bool = False) -> bool:
        """Saves `state` as checkpoint `step` if due (or `force`); returns whether it saved."""
        if not (force or self.should_save(step)):
            return False
        if step == self._last_saved or step in self._manager.all_steps():
            return False
        self._last_saved = step
        return self._manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          data=ocp.args.JsonSave(position)),
            force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """(state, position) from checkpoint `step` (default newest), or None when there is none.

        `abstract_state`: a tree of jax.ShapeDtypeStruct with shardings (see
        `parallel.abstract_train_state`); arrays come back placed like it.
        """
        step = self._manager.latest_step() if step is None else step
        if step is None:
            return None
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          data=ocp.args.JsonRestore()))
        logging.info("restored checkpoint %s/%d", self.directory, step)
        return restored["state"], dict(restored["data"])

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
