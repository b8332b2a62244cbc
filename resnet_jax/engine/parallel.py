"""Data parallelism with `jax.jit` over a one-axis device mesh, on one host or many.

The mesh has a single `data` axis over every device of every process. Batches are sharded along it,
the train state is replicated and donated; XLA inserts the gradient all-reduce (and, for BN over the
global batch, the statistics all-reduce) from the shardings alone.
"""

from __future__ import annotations

import collections
import functools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax.engine import steps

DATA_AXIS = "data"


def _cluster_detected() -> bool:
    """True when the environment describes a multi-process job that JAX can configure itself."""
    env = os.environ
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return True
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    # Cloud TPU pods list one hostname per worker; a single TPU VM needs no coordinator.
    return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    heartbeat_timeout_s: int | None = None,
) -> None:
    """Joins a multi-process job; a no-op for a single process.

    With no arguments, JAX auto-detects TPU pods, SLURM and Open MPI when it finds one of them;
    otherwise pass the coordinator `host:port`, the process count and this process's id.
    `heartbeat_timeout_s` bounds how long the others run on after one process died (JAX's
    coordination service then ends them); None keeps JAX's default (100 s).
    Must run before anything touches a device.
    """
    timeout = (
        {}
        if heartbeat_timeout_s is None
        else {"heartbeat_timeout_seconds": int(heartbeat_timeout_s)}
    )
    explicit = [coordinator_address, num_processes, process_id]
    if any(a is not None for a in explicit):
        if any(a is None for a in explicit):
            raise ValueError(
                "initialize_distributed needs coordinator_address, num_processes and "
                f"process_id together, got {explicit}"
            )
        if num_processes == 1:
            return
        jax.distributed.initialize(coordinator_address, num_processes, process_id, **timeout)
    elif _cluster_detected():
        jax.distributed.initialize(**timeout)


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with one `data` axis over `devices` (default: all devices of all processes).

    Auto axes (not Explicit) keep the models sharding-agnostic: XLA propagates the batch sharding
    through reshapes such as the BN groups of `bn_group_size`.
    """
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def describe_devices() -> str:
    """What the run trains on, e.g. '8 devices (NVIDIA H200, gpu)' or '1 device (cpu)'."""
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    n = len(devices)
    backend = jax.default_backend()
    what = ", ".join(kinds) if kinds == [backend] else ", ".join([*kinds, backend])
    return f"{n} device{'s' if n > 1 else ''} ({what})"


def unused_gpu_warning() -> str | None:
    """A warning when `nvidia-smi` lists a GPU but JAX found only CPU devices, else None.

    The usual cause is a CPU-only jaxlib (the default `pip install jax`); training then runs on the
    CPU, tens of times slower, with nothing else to say so.
    """
    if jax.default_backend() != "cpu" or shutil.which("nvidia-smi") is None:
        return None
    try:
        listed = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = [line for line in listed.splitlines() if line.startswith("GPU ")]
    if not gpus:
        return None
    return (
        f"nvidia-smi lists {len(gpus)} GPU(s) but JAX runs on the CPU: this environment has the "
        "CPU-only jaxlib. Install the CUDA build of jax (make train ACCEL=cuda, see README) to train on the GPU."
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the `data` axis; other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """Examples this process feeds per step; raises if the devices cannot share the batch evenly."""
    n = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % n:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by the device "
            f"count {n}; pick a multiple of {n}"
        )
    return global_batch_size // jax.process_count()


def host_to_global(batch: Any, mesh: Mesh, sharding: NamedSharding | None = None) -> Any:
    """Host-local numpy tree (leading axis = this process's examples) -> global sharded jax.Arrays
    on `sharding` (default `batch_sharded`; stacked runs' batches: `stacked.batch_sharding`).

    Arrays already sharded like that (synthetic data, the device path's) pass through untouched.
    """
    sharding = sharding or batch_sharded(mesh)

    def to_global(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(to_global, batch)


def prefetch_to_mesh(
    batches: Iterable[Any], mesh: Mesh, size: int = 2, sharding: NamedSharding | None = None
) -> Iterator[Any]:
    """Yields global batches while the next `size` are already being copied to the devices
    (placed as `host_to_global` places them)."""
    queue = collections.deque()
    it = iter(batches)

    def enqueue(n):
        for batch in it:
            queue.append(host_to_global(batch, mesh, sharding))
            n -= 1
            if n <= 0:
                return

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)


def create_sharded_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    rng: jax.Array,
    image_shape: Sequence[int],
    mesh: Mesh,
    *,
    ema: bool = False,
) -> steps.TrainState:
    """`steps.create_train_state` compiled to place the state replicated on every device."""
    init = jax.jit(
        functools.partial(steps.create_train_state, model, tx, image_shape=image_shape, ema=ema),
        out_shardings=replicated(mesh),
    )
    return init(rng)


def abstract_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: Sequence[int],
    mesh: Mesh,
    *,
    ema: bool = False,
) -> steps.TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state, without computing it."""
    shapes = jax.eval_shape(
        functools.partial(steps.create_train_state, model, tx, image_shape=image_shape, ema=ema),
        jax.random.PRNGKey(0),
    )
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def train_step_fn(
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    *,
    label_smoothing: float = 0.0,
    skip_nonfinite: bool = False,
    finish: steps.FinishFn = None,
    grad_accum_steps: int = 1,
    accum_chunk: int = 1,
    unroll_micro_batches: bool = False,
    ema_decay: float = 0.0,
) -> Callable[[steps.TrainState, Any], tuple[steps.TrainState, dict]]:
    """`steps.train_step` with everything but (state, batch) bound, not yet compiled."""
    return functools.partial(
        steps.train_step,
        model=model,
        tx=tx,
        learning_rate_fn=learning_rate_fn,
        label_smoothing=label_smoothing,
        skip_nonfinite=skip_nonfinite,
        finish=finish,
        grad_accum_steps=grad_accum_steps,
        accum_chunk=accum_chunk,
        unroll_micro_batches=unroll_micro_batches,
        ema_decay=ema_decay,
    )


def micro_batch_options(mesh: Mesh, bn_group_size: int | None = None) -> dict:
    """How `steps.train_step` forms and runs the micro-batches of `grad_accum_steps` on `mesh`:
    chunks of `bn_group_size` rows (one row without BN groups), the same whatever the device
    count; unrolled on CPUs, whose convolutions are slow inside a loop (`steps.micro_batches`,
    `steps._accumulated_gradients`)."""
    return dict(
        accum_chunk=bn_group_size or 1,
        unroll_micro_batches=mesh.devices.flat[0].platform == "cpu",
    )


def jit_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    learning_rate_fn: Callable[[jax.Array], jax.Array],
    mesh: Mesh,
    *,
    label_smoothing: float = 0.0,
    donate: bool = True,
    skip_nonfinite: bool = False,
    finish: steps.FinishFn = None,
    grad_accum_steps: int = 1,
    bn_group_size: int | None = None,
    ema_decay: float = 0.0,
) -> Callable[[steps.TrainState, Any], tuple[steps.TrainState, dict]]:
    """Compiled `train_step(state, batch) -> (state, metrics)`: batch sharded, state replicated.

    With `donate`, the input state's buffers are reused for the output, so never touch a state
    after passing it in. `skip_nonfinite`, `finish`, `grad_accum_steps`, `ema_decay`: see
    `steps.train_step`; `bn_group_size`: the model's, so that its BN groups stay whole in the
    micro-batches (`micro_batch_options`).
    """
    fn = train_step_fn(
        model,
        tx,
        learning_rate_fn,
        label_smoothing=label_smoothing,
        skip_nonfinite=skip_nonfinite,
        finish=finish,
        grad_accum_steps=grad_accum_steps,
        ema_decay=ema_decay,
        **micro_batch_options(mesh, bn_group_size),
    )
    return jax.jit(
        fn,
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


def per_device_sums(fn: Callable[..., dict], mesh: Mesh, in_specs: tuple) -> Callable[..., dict]:
    """Compiled `fn` (-> {name: scalar sum}) run by each device on its own share of the arguments
    (`in_specs`: P() for a replicated one, P(DATA_AXIS) for a batch): {name: [devices]}, device
    i's sum at i, sharded over the mesh; add them up on the host.

    The sums cross no device inside the program, so no device's part waits for another's. On
    CPU devices of one process XLA runs each part on a pool of max(cores, devices) threads and a
    part holds its thread until done: a collective whose partner cannot get a thread (the others
    held by such waits and by a full dispatch queue) aborted evaluations after 40 s
    (`evaluate.MAX_BATCHES_AHEAD`, docs/reliability.md). Gathering the sums on the host costs
    one transfer per evaluation, as the all-reduce's result did.
    """
    local = lambda *args: jax.tree.map(lambda x: x[None], fn(*args))
    return jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=P(DATA_AXIS)),
        in_shardings=tuple(NamedSharding(mesh, spec) for spec in in_specs),
        out_shardings=batch_sharded(mesh),
    )


def jit_eval_step(
    model: nn.Module, mesh: Mesh, finish: steps.FinishFn = None
) -> Callable[[steps.TrainState, Any], dict]:
    """Compiled `eval_step(state, batch) -> metric sums` of the global batch, one per device
    ({name: [devices]}, `per_device_sums`): the state replicated, the batch sharded."""
    return per_device_sums(
        functools.partial(steps.eval_step, model=model, finish=finish),
        mesh,
        (P(), P(DATA_AXIS)),
    )


def jit_predict_step(
    model: nn.Module, mesh: Mesh, finish: steps.FinishFn = None, *, on_variables: bool = False
) -> Callable[[Any, Any], jax.Array]:
    """Compiled `predict_step(state, batch) -> probs [B, K]`, probs sharded like the batch; with
    `on_variables`, `predict_probs(variables, batch)`."""
    fn = steps.predict_probs if on_variables else steps.predict_step
    return jax.jit(
        functools.partial(fn, model=model, finish=finish),
        in_shardings=(replicated(mesh), batch_sharded(mesh)),
        out_shardings=batch_sharded(mesh),
    )
