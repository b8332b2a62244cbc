"""A run's input, whichever path makes it: training batches, evaluation batches and their finish.

The record says which input path reads the dataset (`catalog.Dataset.input_pipeline`): 'device'
holds the whole split on the devices (`device_input`, no TensorFlow), 'host' is the tf.data
pipeline (`pipeline`, TensorFlow imported only then), 'synthetic' makes random batches on the
devices (`synthetic`). The path is chosen once (`_PATHS`); each path object answers the four
calls below, and the trainer never branches on the path or the dataset. Shardings and process
numbers come in as arguments: `data` never imports the engine.

`train_batches` gives the batches from `start_step` on (global arrays made on the devices, or host
numpy batches of `local_batch_size`); a sequence of seeds stacks each run's batch, the single
run's of that seed, on a leading axis (`batch_sharding` is then the stacked batches').
`eval_batches` gives `batches(scale=None, run=0)`: a fresh pass over the evaluation split in
`views` (with a `scale`, the 'multiscale' views at He2015's test scale) for the run `seeds[run]`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from resnet_jax.data import catalog, synthetic


class _Synthetic:
    """Random batches made on the devices; evaluation scores a run's training pool (made again
    from its seed at each pass)."""

    def finish(self, d, plan):
        return synthetic.FINISH

    def prepare(self, d):
        pass

    def train_batches(self, d, plan, *, seed, start_step, batch_sharding, **host):
        return synthetic.train_batches(self._pool(d, plan, batch_sharding, seed), start_step)

    def eval_batches(self, d, plan, views, *, batch_sharding, seeds, **host):
        return lambda scale=None, run=0: self._pool(d, plan, batch_sharding, seeds[run], True)

    @staticmethod
    def _pool(d, plan, batch_sharding, seed, with_mask=False):
        return synthetic.make_batches(
            batch_sharding,
            plan.synthetic_batches,
            plan.batch_size,
            d.image_size,
            d.num_classes,
            seed=seed,
            with_mask=with_mask,
        )


class _Device:
    """The whole split held on the devices (`device_input`): no TensorFlow."""

    def finish(self, d, plan):
        from resnet_jax.data import device_input  # statistics stored beside the arrays

        return device_input.finish_for(d, normalization=plan.normalization)

    def prepare(self, d):
        from resnet_jax.data import arrays

        for split in (d.train_split, d.eval_split):
            arrays.count(d, split)

    def train_batches(self, d, plan, *, seed, start_step, batch_sharding, **host):
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

    def eval_batches(self, d, plan, views, *, batch_sharding, seeds, **host):
        from resnet_jax.data import device_input  # the split held once, here

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


class _Host:
    """The tf.data pipeline (`pipeline`): TensorFlow imported only here."""

    def finish(self, d, plan):
        from resnet_jax.data import pipeline

        return pipeline.finish_for(d, normalization=plan.normalization)

    def prepare(self, d):
        d.source.builder(d)

    def train_batches(self, d, plan, *, seed, start_step, batch_sharding, **host):
        from resnet_jax.data import pipeline

        def stream(seed):
            return pipeline.train_iterator(
                d,
                seed=seed,
                start_step=start_step,
                augment=plan.augment,
                split=plan.train_split,
                **host,
            )

        if isinstance(seed, int):
            return stream(seed)
        # Each run reads its own stream, exactly the single run's of its seed.
        return (
            {key: np.stack([b[key] for b in batches]) for key in batches[0]}
            for batches in zip(*map(stream, seed), strict=True)
        )

    def eval_batches(self, d, plan, views, *, batch_sharding, seeds, **host):
        from resnet_jax.data import pipeline

        return lambda scale=None, run=0: pipeline.eval_iterator(
            d,
            split=plan.eval_split,
            views=views if scale is None else "multiscale",
            scale=scale,
            **host,
        )


_PATHS = {"synthetic": _Synthetic(), "device": _Device(), "host": _Host()}


def finish(d: catalog.Dataset, plan: catalog.Plan):
    """The `finish.Finish` that turns this path's uint8 batches into model inputs in the step."""
    return _PATHS[d.input_pipeline].finish(d, plan)


def prepare(d: catalog.Dataset) -> None:
    """Builds the prepared copy this record's path reads, when it is missing or stale: the device
    path's arrays of both splits, the host path's tfds data (a folder's JPEG records)."""
    _PATHS[d.input_pipeline].prepare(d)


def train_batches(d: catalog.Dataset, plan: catalog.Plan, **how) -> Iterator[dict]:
    """Training batches (the module docstring): `how` is seed, start_step, batch_sharding,
    local_batch_size, process_index, process_count."""
    return _PATHS[d.input_pipeline].train_batches(d, plan, **how)


def eval_batches(d: catalog.Dataset, plan: catalog.Plan, views: str, **how) -> Callable:
    """`batches(scale=None, run=0)` (the module docstring): `how` is batch_sharding, seeds,
    local_batch_size, process_index, process_count."""
    return _PATHS[d.input_pipeline].eval_batches(d, plan, views, **how)
