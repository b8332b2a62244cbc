"""K train states of one net as one program: the run axis, its sharding, the vmapped step.

Runs that share a model and a recipe have train states of the same shapes. Stacked on a leading
run axis ([K, ...] on every leaf) they train in one jitted step, `jax.vmap`ped over that axis, so
each kernel launch does the work of K runs: small nets, which leave an accelerator waiting on
launches, then fill it. Every run keeps its own parameters, optimizer state, BN statistics and
RNG, and nothing crosses the run axis (vmap keeps every reduction, BN's included, inside a run),
so a NaN in one run cannot reach another.

Across devices, two layouts (`layout`):
  runs   K a multiple of the device count n: the run axis is split over the mesh's `data` axis.
         Each device trains K / n runs whole; the step needs no communication between devices.
  batch  otherwise: each run's batch is split over the devices as a single run's is (gradients
         and BN statistics all-reduced) and the stacked state is replicated.
`runs` is chosen whenever it applies: it moves no gradients between devices, where `batch` must
all-reduce every run's gradients at every step, and with one device the two are the same program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import xla_options
from resnet_jax.engine import parallel, steps

RUNS, BATCH = "runs", "batch"


def layout(num_runs: int, mesh: Mesh) -> str:
    """'runs' when the run axis divides over the mesh's devices (and there are several), else
    'batch' (see the module docstring)."""
    n = mesh.devices.size
    return RUNS if n > 1 and num_runs % n == 0 else BATCH


def state_sharding(how: str, mesh: Mesh) -> NamedSharding:
    """Where the stacked state [K, ...] lives: split on the run axis, or replicated."""
    return NamedSharding(mesh, P(parallel.DATA_AXIS) if how == RUNS else P())


def batch_sharding(how: str, mesh: Mesh) -> NamedSharding:
    """Where the stacked batches [K, B, ...] live: split on the run axis, or on each run's batch."""
    return NamedSharding(
        mesh, P(parallel.DATA_AXIS) if how == RUNS else P(None, parallel.DATA_AXIS)
    )


@functools.cache
def _stacker(sharding: NamedSharding):
    return jax.jit(
        lambda states: jax.tree.map(lambda *leaves: jnp.stack(leaves), *states),
        out_shardings=sharding,
    )


def stack(states: Sequence[Any], sharding: NamedSharding) -> Any:
    """K trees of equal structure and shapes -> one tree of [K, ...] leaves placed on `sharding`."""
    return _stacker(sharding)(tuple(states))


@functools.cache
def _unstacker(num_runs: int, sharding: NamedSharding):
    return jax.jit(
        lambda tree: [jax.tree.map(lambda x, k=k: x[k], tree) for k in range(num_runs)],
        out_shardings=sharding,
    )


def unstack(tree: Any, num_runs: int, mesh: Mesh) -> list[Any]:
    """The K single-run trees of a stacked one, each replicated on the mesh like a single run's
    state (what its checkpoint and evaluator expect). One compiled program for all K."""
    return _unstacker(num_runs, parallel.replicated(mesh))(tree)


def jit_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    mesh: Mesh,
    how: str,
    **step_options: Any,
) -> Callable[[steps.TrainState, Any], tuple[steps.TrainState, dict]]:
    """Compiled `(stacked state, stacked batch) -> (stacked state, metrics [K])`: run k's slice is
    `steps.train_step` of run k's state and batch. The state is donated; `how` from `layout`;
    `step_options`: `label_smoothing`, `skip_nonfinite`, `finish`, `grad_accum_steps`,
    `ema_decay` of `steps.train_step`, `bn_group_size` of `parallel.jit_train_step`. A run's
    micro-batches are those of its single run (`parallel.micro_batch_options`)."""
    group = step_options.pop("bn_group_size", None)
    fn = jax.vmap(
        parallel.train_step_fn(
            model,
            tx,
            learning_rate_fn,
            **parallel.micro_batch_options(mesh, group),
            **step_options,
        )
    )
    states = state_sharding(how, mesh)
    return jax.jit(
        fn,
        in_shardings=(states, batch_sharding(how, mesh)),
        out_shardings=(states, parallel.replicated(mesh)),
        donate_argnums=(0,),
        compiler_options=xla_options.vmapped_step_options(mesh.devices.flat[0].platform),
    )


def poison_run(batch: dict, run: int) -> dict:
    """The stacked batch with NaN images in run `run` only (the `debug_nan_step` test hook)."""
    image = batch["image"].astype(jnp.float32)
    return dict(batch, image=image.at[run].set(jnp.nan))


def run_params(state):
    """One run's params (shapes only) of a stacked state: what its parameter count is read from."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), state.params)
