r"""What a checkpoint save costs training: the trainer's save path timed part by part, in one process.

    python -m resnet_jax.bench.save_stall --model resnet50 --image_size 32 --batch_size 8 \
        --every 20 --rounds 4 [--json]

The train step is the trainer's (`bench.build`, step 'default'); a save is what the trainer's
`save` does: `NonFiniteMonitor.check_state` (finite check and fingerprint in one compiled
pass), then `Checkpointer.save` (device-to-host copy and Orbax's set-up;
the write itself runs in a background thread). Each round times two blocks of `--every` steps,
one after the other: one with a save at its start (its background write overlaps that block's
steps, and whatever is left of it is waited for at the block's end) and one without. The ratio
of their times, per round, is training images/s with a save every `--every` steps over images/s
without saves; a noisy neighbour slows both blocks of a round alike.

Units: seconds; `ratio` is a fraction (1.0 = saves cost nothing).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import jax
from absl import flags

from resnet_jax import entry
from resnet_jax.bench import build
from resnet_jax.bench import core as bench_core


def _run_block(built, state, steps: int) -> tuple[Any, list]:
    metrics = []
    for _ in range(steps):
        state, m = built.step(state, built.batch)
        metrics.append(m)
    return state, metrics


def measure(
    model_name: str,
    *,
    batch_size: int,
    every: int,
    rounds: int,
    image_size: int | None = None,
    dtype: str = "float32",
    workdir: str | None = None,
    warm_up: bool = True,
    **model_overrides,
) -> dict[str, Any]:
    """Times saves of the trainer's state and blocks of steps with and without them (see above).

    `warm_up=False` leaves the state check uncompiled until the first save, as the trainer did
    before it compiled the check ahead of training: the first round then shows that cost.
    """
    from resnet_jax.engine import checkpoint, numerics

    if every < 1 or rounds < 1:
        raise ValueError(f"every and rounds must be >= 1, got {every}, {rounds}")
    built = build.build_step(
        model_name, batch_size=batch_size, image_size=image_size, dtype=dtype, **model_overrides
    )
    state = built.state
    t = time.perf_counter()
    if warm_up:
        numerics.warm_up(state)  # as the trainer does before its first step
    warm_up_s = time.perf_counter() - t
    ckpt = checkpoint.Checkpointer(workdir or tempfile.mkdtemp(), every_steps=every, keep=2)
    monitor = numerics.NonFiniteMonitor("stop")
    state, _ = _run_block(built, state, 2)  # warm-up steps
    jax.block_until_ready(state)
    done, parts, with_save, without = 2, [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        t0 = time.perf_counter()
        finite_fp = monitor.check_state(done, state)
        t1 = time.perf_counter()
        ckpt.save(
            done,
            state,
            checkpoint.data_position(done, 0, batch_size, 1),
            force=True,
            fingerprint=finite_fp,
        )
        t2 = time.perf_counter()
        state, metrics = _run_block(built, state, every)
        jax.block_until_ready((state, metrics))
        t3 = time.perf_counter()
        ckpt.wait()
        end = time.perf_counter()
        parts.append(
            {
                "check_and_fingerprint_s": t1 - t0,
                "checkpointer_save_s": t2 - t1,
                "held_s": t2 - t0,
                "write_left_after_block_s": end - t3,
            }
        )
        with_save.append(end - start)
        done += every
        start = time.perf_counter()
        state, metrics = _run_block(built, state, every)
        jax.block_until_ready((state, metrics))
        without.append(time.perf_counter() - start)
        done += every
    ckpt.close()
    ratios = [b / a for a, b in zip(with_save, without, strict=True)]
    state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    return {
        "model": model_name,
        "batch_size": batch_size,
        "image_size": built.image_size,
        "every": every,
        "rounds": rounds,
        "state_mb": state_bytes / 1e6,
        "state_arrays": len(jax.tree.leaves(state)),
        "warm_up_compile_s": warm_up_s,
        "saves": parts,
        "held_s_median": bench_core.percentile([p["held_s"] for p in parts], 50),
        "block_s_with_save": with_save,
        "block_s_without": without,
        "ratio": bench_core.percentile(ratios, 50),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "device": bench_core.describe_devices(built.devices),
        "host_load": bench_core.host_load(),
    }


FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string("model", "resnet50", "Registered model name.")
    flags.DEFINE_integer("batch_size", 8, "Global batch size.")
    flags.DEFINE_integer("image_size", None, "Input side in pixels; default: the model's.")
    flags.DEFINE_integer("every", 20, "Steps per block: a save every this many steps.")
    flags.DEFINE_integer("rounds", 4, "Pairs of blocks (with a save, without) to time.")
    flags.DEFINE_string("dtype", "float32", "Compute dtype.")
    flags.DEFINE_string("workdir", None, "Where the checkpoints go (default: a temporary dir).")
    flags.DEFINE_bool(
        "warm_up", True, "Compile the state check before training (as the trainer does)."
    )
    flags.DEFINE_bool("json", False, "Print JSON.")


def main(argv: Sequence[str]) -> None:
    del argv
    r = measure(
        FLAGS.model,
        batch_size=FLAGS.batch_size,
        every=FLAGS.every,
        rounds=FLAGS.rounds,
        image_size=FLAGS.image_size,
        dtype=FLAGS.dtype,
        workdir=FLAGS.workdir,
        warm_up=FLAGS.warm_up,
    )
    if FLAGS.json:
        print(json.dumps(r, indent=1))
        return
    print(
        f"{r['model']} {r['image_size']}px batch {r['batch_size']} on {r['device']} "
        f"(load {r['host_load']}): state {r['state_mb']:.0f} MB in {r['state_arrays']} arrays; "
        f"check compiled before training in {r['warm_up_compile_s']:.1f} s; saves held the loop "
        f"{', '.join(format(p['held_s'], '.3f') for p in r['saves'])} s; images/s with a save every {r['every']} "
        f"steps / without: {r['ratio']:.3f} (rounds {r['ratio_min']:.3f}-{r['ratio_max']:.3f})"
    )


def run() -> None:
    """`python -m resnet_jax.bench.save_stall`."""
    _define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
