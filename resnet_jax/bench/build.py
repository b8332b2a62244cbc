"""Builds one compiled step for the benchmark: the trainer's own, or the minimal reference.

`build_step` returns everything the timing needs (the executable, its first state and batch) and
what the report needs (compile time, the FLOPs of one step counted from the model and by XLA).

Step kinds:
  default  what a training run compiles: the model and optimizer of the trainer's default config
           (`config.build_model` / `build_optimizer`), `parallel.jit_train_step` (or the eval step).
  bare     the project's model with `reference.minimal_train_step` (no weight decay, no metric but
           the loss): default / bare is what the step's extras cost (train mode only).
  minimal  `reference.MinimalResNet` of the same spec with `reference.minimal_train_step`: the
           yardstick a lean step is held to; bare / minimal is what the model's choices cost.

FLOPs convention: the model's forward multiply-adds (every conv and dense layer, at the step's
input size; `tools.summary.analyze`) times 2 FLOPs, times 3 for a training step (forward, gradient
with respect to the activations, gradient with respect to the weights). XLA's own count of the
compiled step is kept beside it: on GPU it misses the convolutions handed to cuDNN.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from resnet_jax.bench import core as bench_core
from resnet_jax.data import synthetic  # JAX only: no TensorFlow

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MODES = ("train", "eval")
STEP_KINDS = ("default", "bare", "minimal")


@dataclasses.dataclass
class BuiltStep:
    """A compiled step ready to time: `carry, out = step(carry, batch)` (eval returns carry as is)."""

    kind: str
    mode: str
    dtype: str
    batch_size: int
    grad_accum_steps: int
    step: Any
    state: Any
    batch: Any
    mesh: Any
    image_size: int
    num_classes: int
    lower_s: float
    compile_s: float
    compiled: Any
    flops_per_step: float  # the model's count (see the module docstring)
    flops_xla: float | None  # XLA's cost analysis of the step; None where the backend gives none
    flops_xla_source: str  # 'compiled', 'lowered' or 'unavailable' (see bench_core.step_flops)
    flops_per_step_compiled: float | None
    flops_per_step_lowered: float | None

    @property
    def devices(self) -> list[Any]:
        return list(self.mesh.devices.flat)


def model_flops_per_step(model: Any, batch_size: int, image_size: int, mode: str) -> float:
    """FLOPs of one global step from the model's multiply-adds: (3 if train else 1) x 2 x MACs."""
    from resnet_jax.tools.summary import analyze  # same floor; traced with eval_shape, no compile

    macs_per_image = analyze(model, batch_size=1, image_size=image_size).macs
    return bench_core.model_flops(macs_per_image * batch_size, mode)


def _default_parts(model_name, *, batch_size, dtype, image_size, model_overrides):
    """(model, optimizer schedule, optimizer, image_size, num_classes) of the trainer's config."""
    import ml_collections

    from resnet_jax import config as config_lib
    from resnet_jax.models import get_spec

    spec = get_spec(model_name)
    # The trainer's own model and optimizer, built from its default config as `dataset=synthetic`
    # would: the timed step is the one a default training run compiles. The schedule's values do
    # not change the step's cost.
    c = config_lib.default_config()
    c.update(
        dict(
            model=model_name,
            dataset=synthetic.NAME,
            dtype=dtype,
            batch_size=batch_size,
            image_size=image_size or spec.input_size,
            num_classes=model_overrides.pop("num_classes", None) or spec.num_classes,
            bn_group_size=model_overrides.pop("bn_group_size", None),
            num_train_steps=1000,
            lr_schedule="cosine",
        )
    )
    c.model_overrides = ml_collections.ConfigDict(model_overrides)
    c = config_lib.resolve_config(c)
    return (*config_lib.build(c), c.image_size, c.num_classes)


def build_step(
    model_name: str,
    *,
    kind: str = "default",
    batch_size: int,
    dtype: str = "float32",
    image_size: int | None = None,
    mode: str = "train",
    devices: Sequence[Any] | None = None,
    grad_accum_steps: int = 1,
    **model_overrides,
) -> BuiltStep:
    """Builds, lowers and compiles (ahead of time) one step; see the module docstring for kinds.

    `batch_size` is global (split over `devices`, default all); `model_overrides` go to
    `create_model` (e.g. bn_group_size=32, stage_sizes=(1, 1, 1)). `grad_accum_steps`: the
    default train step takes the batch as that many micro-batches, as the trainer does.
    """
    from resnet_jax.engine import parallel

    if kind not in STEP_KINDS:
        raise ValueError(f"step must be one of {STEP_KINDS}, got {kind!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if kind != "default" and mode != "train":
        raise ValueError(f"step {kind!r} is a train step; time the eval step with step 'default'")
    if kind == "minimal" and model_overrides.get("bn_group_size"):
        raise ValueError("step 'minimal' normalises over the whole batch; drop bn_group_size")
    if grad_accum_steps > 1 and (kind, mode) != ("default", "train"):
        raise ValueError("grad_accum_steps applies to the default train step only")
    model, lr, tx, image_size, num_classes = _default_parts(
        model_name,
        batch_size=batch_size,
        dtype=dtype,
        image_size=image_size,
        model_overrides=dict(model_overrides),
    )
    mesh = parallel.make_mesh(devices)
    parallel.local_batch_size(batch_size, mesh)  # raises unless the devices share it evenly
    if kind != "default":
        from resnet_jax.bench import reference

        if kind == "minimal":
            spec = dataclasses.replace(model.spec, num_classes=num_classes)
            model = reference.MinimalResNet(spec, dtype=DTYPES[dtype])
        tx = reference.minimal_optimizer()
        jitted = jax.jit(
            functools.partial(
                reference.minimal_train_step, model=model, tx=tx, finish=synthetic.FINISH
            ),
            in_shardings=(parallel.replicated(mesh), parallel.batch_sharded(mesh)),
            out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
            donate_argnums=(0,),
        )
    elif mode == "train":
        jitted = parallel.jit_train_step(
            model,
            tx,
            lr,
            mesh,
            finish=synthetic.FINISH,
            grad_accum_steps=grad_accum_steps,
            bn_group_size=model_overrides.get("bn_group_size"),
        )
    else:
        jitted = parallel.jit_eval_step(model, mesh, synthetic.FINISH)
    # A raw uint32 key, as the trainer passes (TrainState.rng is uint32 [2]).
    state = parallel.create_sharded_train_state(
        model, tx, jax.random.PRNGKey(0), (image_size, image_size, 3), mesh
    )
    # Exactly the trainer's inputs: uint8 images finished inside the step (normalisation, and for
    # training the mirror and lighting draws of ImageNet's 'paper' batches); eval batches add a mask.
    (batch,) = synthetic.make_batches(
        parallel.batch_sharded(mesh),
        1,
        batch_size,
        image_size,
        num_classes,
        with_mask=mode == "eval",
    )
    jax.block_until_ready((state, batch))

    # Ahead-of-time lower + compile, so compile time is measured apart from the first step and the
    # timed loop calls the very executable that was analysed. It keeps jit's donation of the state.
    start = time.perf_counter()
    lowered = jitted.lower(state, batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    step = compiled if mode == "train" else (lambda s, b: (s, compiled(s, b)))

    n = mesh.devices.size
    flops_xla, xla_source = bench_core.step_flops(lowered, compiled, n)
    flops_compiled, flops_lowered = bench_core.step_flops_both(lowered, compiled, n)
    return BuiltStep(
        kind=kind,
        mode=mode,
        dtype=dtype,
        batch_size=batch_size,
        grad_accum_steps=grad_accum_steps,
        step=step,
        state=state,
        batch=batch,
        mesh=mesh,
        image_size=image_size,
        num_classes=num_classes,
        lower_s=lower_s,
        compile_s=compile_s,
        compiled=compiled,
        flops_per_step=model_flops_per_step(model, batch_size, image_size, mode),
        flops_xla=flops_xla,
        flops_xla_source=xla_source,
        flops_per_step_compiled=flops_compiled,
        flops_per_step_lowered=flops_lowered,
    )
