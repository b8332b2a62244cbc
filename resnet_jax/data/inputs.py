"""A run's input, whichever path makes it: training batches, evaluation batches and their finish.

The record says which input path reads the dataset (`catalog.Dataset.input_pipeline`): 'device'
holds the whole split on the devices (`device_input`, no TensorFlow), 'host' is the tf.data
pipeline (`pipeline`, TensorFlow imported only then), 'synthetic' makes random batches on the
devices (`synthetic`). The trainer asks here and never branches on the path or the dataset.
Shardings and process numbers come in as arguments: `data` never imports the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from resnet_jax.data import catalog, synthetic


def finish(d: catalog.Dataset, plan: catalog.Plan):
    """The `finish.Finish` that turns this path's uint8 batches into model inputs in the step."""
    if d.input_pipeline == "synthetic":
        return synthetic.FINISH
    if d.input_pipeline == "device":  # statistics stored beside the arrays: no TensorFlow
        from resnet_jax.data import device_input

        return device_input.finish_for(d, normalization=plan.normalization)
    from resnet_jax.data import pipeline  # TensorFlow only on the host data path

    return pipeline.finish_for(d, normalization=plan.normalization)


def prepare(d: catalog.Dataset) -> None:
    """Builds the prepared copy this record's path reads, when it is missing or stale: the device
    path's arrays of both splits, the host path's tfds data (a folder's JPEG records)."""
    if d.input_pipeline == "device":
        from resnet_jax.data import arrays

        for split in (d.train_split, d.eval_split):
            arrays.count(d, split)
    elif d.input_pipeline == "host":
        d.source.builder(d)


def _pool(d, plan, batch_sharding, seed, with_mask=False):
    """Synthetic data's pool of batches, made on the devices from `seed` (`synthetic`)."""
    return synthetic.make_batches(
        batch_sharding,
        plan.synthetic_batches,
        plan.batch_size,
        d.image_size,
        d.num_classes,
        seed=seed,
        with_mask=with_mask,
    )


def train_batches(
    d: catalog.Dataset,
    plan: catalog.Plan,
    *,
    seed: int | Sequence[int],
    start_step: int,
    batch_sharding,
    local_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[dict]:
    """Training batches from `start_step` on: global arrays made on the devices, or host numpy
    batches of `local_batch_size`. A sequence of seeds stacks each run's batch, the single run's
    of that seed, on a leading axis (`batch_sharding` is then the stacked batches')."""
    if d.input_pipeline == "synthetic":
        return synthetic.train_batches(_pool(d, plan, batch_sharding, seed), start_step)
    if d.input_pipeline == "device":  # the whole split on the devices: no TensorFlow
        from resnet_jax.data import device_input

        return device_input.train_batches(
            d,
            batch_sharding=batch_sharding,
            global_batch_size=plan.batch_size,
            seed=seed,
            start_step=start_step,
            split=plan.train_split,
            augment=plan.augment,
        )
    from resnet_jax.data import pipeline  # TensorFlow only on the data path

    def stream(seed):
        return pipeline.train_iterator(
            d,
            local_batch_size=local_batch_size,
            seed=seed,
            start_step=start_step,
            process_index=process_index,
            process_count=process_count,
            augment=plan.augment,
            split=plan.train_split,
        )

    if isinstance(seed, int):
        return stream(seed)
    # Each run reads its own stream, exactly the single run's of its seed.
    return (
        {key: np.stack([b[key] for b in batches]) for key in batches[0]}
        for batches in zip(*map(stream, seed), strict=True)
    )


def eval_batches(
    d: catalog.Dataset,
    plan: catalog.Plan,
    views: str,
    *,
    batch_sharding,
    local_batch_size: int,
    seeds: Sequence[int] = (0,),
    process_index: int = 0,
    process_count: int = 1,
) -> Callable[..., object]:
    """`batches(scale=None, run=0)`: a fresh pass over the evaluation split in `views` (with a
    `scale`, the 'multiscale' views at He2015's test scale `scale`) for the run of `seeds[run]`.
    The device path holds the split once, here; synthetic data scores the run's training pool
    (made again from its seed at each pass); the others' splits do not depend on the run."""
    if d.input_pipeline == "synthetic":
        return lambda scale=None, run=0: _pool(d, plan, batch_sharding, seeds[run], with_mask=True)
    if d.input_pipeline == "device":
        from resnet_jax.data import device_input

        held = device_input.eval_batches(
            d,
            batch_sharding=batch_sharding,
            global_batch_size=plan.eval_batch_size,
            split=plan.eval_split,
            views="center" if views == "multiscale" else views,
        )
        return lambda scale=None, run=0: (
            held if scale is None else held.with_scale(d.test_scale(scale))
        )
    from resnet_jax.data import pipeline  # TensorFlow only on the data path

    def host(scale=None, run=0):
        return pipeline.eval_iterator(
            d,
            local_batch_size=local_batch_size,
            process_index=process_index,
            process_count=process_count,
            split=plan.eval_split,
            views=views if scale is None else "multiscale",
            scale=scale,
        )

    return host
