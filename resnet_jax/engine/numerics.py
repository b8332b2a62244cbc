"""Non-finite values: detection in and after the train step, the skip policy; array fingerprints.

Two policies (`config.nonfinite_policy`):
  stop  the trainer finds the first step whose loss or gradient norm is NaN/Inf when it fetches the
        step metrics (every log step and before every checkpoint), and stops with `NonFiniteError`
        naming that step; the non-finite state is never saved, so the newest checkpoint stays good.
  skip  `guard_update` runs inside the jitted step: an update whose loss or gradients are not
        finite is dropped (the whole state, optimizer count included, stays as it was; the batch is
        consumed), and the step's `skipped` metric is 1.

`fingerprint` gives each array of a state a 32-bit checksum computed on the device. Orbax
(tensorstore) notices truncated files, but a flipped bit inside a data chunk restores silently as a
wrong number; the fingerprint stored next to each checkpoint catches that on restore.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from resnet_jax.engine.faults import NonFiniteError

POLICIES = ("stop", "skip")


def all_finite(tree: Any) -> jax.Array:
    """bool []: every floating-point element of `tree` is finite."""
    flags = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def guard_update(finite: jax.Array, new_state: Any, old_state: Any) -> Any:
    """`new_state` where `finite`, else `old_state`, leaf by leaf (inside jit: no host sync).

    A select rather than `lax.cond`: both states already exist, and a select keeps the step one
    straight-line program that XLA can fuse and that donation can update in place.
    """
    return jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, old_state)


def poison_batch(batch: Mapping[str, jax.Array]) -> dict:
    """The batch with NaN images: what a corrupt input file or a bad normalisation would feed in."""
    return dict(batch, image=batch["image"] * jnp.nan)


# ------------------------------------------------------------------------------------- host side


def _is_finite(value: Any) -> bool:
    return math.isfinite(float(value))


class NonFiniteMonitor:
    """Checks fetched per-step metrics; raises (stop) or counts skipped steps (skip).

    Args:
      policy: 'stop' or 'skip'.
      dtype: the compute dtype, named in the error (bf16 overflow is a likely cause).
      skipped: skipped steps counted before this run segment (restored from the checkpoint).
    """

    def __init__(self, policy: str = "stop", *, dtype: str = "float32", skipped: int = 0):
        if policy not in POLICIES:
            raise ValueError(f"nonfinite_policy must be one of {POLICIES}, got {policy!r}")
        self.policy, self.dtype, self.skipped = policy, dtype, int(skipped)
        self.last_good_checkpoint: int | None = None

    def check(self, first_step: int, step_metrics: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Fetches the metrics of steps first_step, first_step + 1, ... (one transfer); checks them.

        Under 'stop' raises NonFiniteError at the first step whose loss or grad_norm is not finite;
        under 'skip' counts the steps the train step skipped. Returns the fetched metrics.
        """
        fetched = [
            {k: np.asarray(v) for k, v in m.items()} for m in jax.device_get(list(step_metrics))
        ]
        if self.policy == "skip":
            self.skipped += sum(int(float(m.get("skipped", 0.0))) for m in fetched)
            return fetched
        for i, m in enumerate(fetched):
            bad = [k for k in ("loss", "grad_norm") if k in m and not _is_finite(m[k])]
            if bad:
                raise NonFiniteError(self._message(first_step + i, m, bad))
        return fetched

    def loggable(self, fetched: Sequence[Mapping[str, Any]]) -> list[dict]:
        """The checked metrics to average for a log line.

        Under 'skip' the skipped steps (NaN loss) are left out, unless all of the interval was
        skipped, and every record carries the running total `skipped_steps` instead of `skipped`.
        """
        if self.policy != "skip":
            return list(fetched)
        kept = [m for m in fetched if not float(m.get("skipped", 0.0))] or list(fetched)
        return [
            {**{k: v for k, v in m.items() if k != "skipped"}, "skipped_steps": self.skipped}
            for m in kept
        ]

    def check_state(self, step: int, state: Any) -> list[int]:
        """Refuses to let a state with a NaN/Inf anywhere become a checkpoint.

        Returns the state's `fingerprint`, computed in the same pass over the arrays, for the
        checkpoint to store.
        """
        finite, fingerprints = finite_and_fingerprint(state)
        if not finite:
            raise NonFiniteError(self._message(step, {}, ["train state"]))
        return fingerprints

    def _message(self, step: int, m: Mapping[str, Any], bad: Sequence[str]) -> str:
        values = ", ".join(
            f"{k}={float(m[k]):.4g}" for k in ("loss", "grad_norm", "learning_rate") if k in m
        )
        if self.last_good_checkpoint is None:
            kept = "no checkpoint was written yet; rerun after a fix"
        else:
            kept = (
                f"checkpoint {self.last_good_checkpoint} (written before it) is the newest and "
                "is kept; rerun to resume from it after a fix (with "
                "--config.allow_config_change=True if the fix changes the config)"
            )
        causes = [
            "the learning rate is too high for this batch size and schedule (lower "
            "--config.learning_rate or lengthen the warm-up)",
            "bad input data (a corrupt image or a NaN in the batch)",
        ]
        if self.dtype in ("bfloat16", "float16"):
            causes.insert(
                1,
                f"{self.dtype} overflow in the forward or backward pass (try "
                "--config.dtype=float32)",
            )
        return (
            f"non-finite {' and '.join(bad)} at step {step}"
            + (f" ({values})" if values else "")
            + f". Likely causes: {'; '.join(causes)}. The non-finite state was not saved: "
            + f"{kept}, or set --config.nonfinite_policy=skip to drop such updates."
        )


# ------------------------------------------------------------------------------------ fingerprints


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
    """uint32 sum of bits[i] * (2i + 1), wrapping: exact in any reduction order, so a restored array
    gives the same value on any device, and any single changed element changes it (odd factors are
    invertible mod 2**32)."""
    x = jnp.ravel(x)
    if x.dtype == jnp.bool_ or jnp.dtype(x.dtype).itemsize == 1:
        bits = x.astype(jnp.uint32)
    elif jnp.dtype(x.dtype).itemsize == 2:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    elif jnp.dtype(x.dtype).itemsize == 4:
        bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
    else:  # 64-bit: fold the two halves
        halves = jax.lax.bitcast_convert_type(x, jnp.uint32)
        bits = halves[..., 0] ^ (halves[..., 1] * jnp.uint32(0x9E3779B1))
    odd = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(bits * odd, dtype=jnp.uint32)


@jax.jit
def _fingerprints(tree: Any) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros((0,), jnp.uint32)
    return jnp.stack([_leaf_fingerprint(x) for x in leaves])


def fingerprint(tree: Any) -> list[int]:
    """One 32-bit checksum per leaf of `tree` (jax.tree.leaves order), as JSON-ready ints."""
    return [int(v) for v in np.asarray(jax.device_get(_fingerprints(tree)))]


@jax.jit
def _finite_and_fingerprints(tree: Any) -> tuple[jax.Array, jax.Array]:
    return all_finite(tree), _fingerprints(tree)


def finite_and_fingerprint(tree: Any) -> tuple[bool, list[int]]:
    """(every float element is finite, `fingerprint(tree)`): one compiled pass, one transfer.

    What a checkpoint save needs before it starts. The first call for a tree structure compiles
    (seconds for a ResNet-50 state on a GPU): `warm_up` does that before training starts.
    """
    finite, fingerprints = jax.device_get(_finite_and_fingerprints(tree))
    return bool(finite), [int(v) for v in np.asarray(fingerprints)]


def warm_up(tree: Any) -> None:
    """Compiles `finite_and_fingerprint` for this tree's structure, so a save does not."""
    jax.block_until_ready(_finite_and_fingerprints(tree))


def fingerprint_mismatch(tree: Any, expected: Sequence[int]) -> list[str]:
    """Paths of the leaves whose checksum differs from `expected` (empty: the tree is intact)."""
    got = fingerprint(tree)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]
    if len(got) != len(expected):
        return [f"<{len(expected)} arrays recorded, {len(got)} restored>"]
    return [p for p, a, b in zip(paths, got, expected, strict=True) if int(a) != int(b)]
