"""XLA options the project sets before JAX starts a backend: fast CPU steps, deterministic GPUs.

XLA reads `XLA_FLAGS` once, when JAX creates its first backend, so these are written into the
environment at `import resnet_jax` (every command, library use and test imports it first), and a
run's own request (`--config.deterministic`) is added before the run touches a device.

A flag the user already put in `XLA_FLAGS` is never changed: to run with XLA's own choice for
one of ours, set that flag yourself (e.g. `XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=
individual_dot`, XLA's default). `RESNET_JAX_XLA_DEFAULTS=0` leaves `XLA_FLAGS` untouched.

Why each CPU option (figures: docs/measurements/cpu.md):
- `--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce` hands convolutions' neighbours,
  elementwise ops and reductions to YNNPACK as fused regions instead of XLA's own loops and
  Eigen: ResNet-20's float32 train step at batch 128 went from 232 to 378 images/s on a 2-core
  Intel Xeon (Sapphire Rapids) and 197 to 271 on a 2-core AMD EPYC. It changes the order of
  float32 additions only; tests/test_xla_options.py holds the default job's loss curve to the
  spread of its seeds under XLA's defaults. It affects CPU programs only: on a GPU machine the
  CPU backend JAX keeps beside the GPUs compiles with it, the GPU programs do not see it.
"""

from __future__ import annotations

import os
import shlex

YNN_FUSION = "--xla_cpu_experimental_ynn_fusion_type"
CPU_DEFAULTS = {YNN_FUSION: "dot,eltwise,reduce"}
# The same option for a vmapped step (several runs as one program), as a per-program compiler
# option (whose values are the enum's names): without `eltwise`, which XLA 0.10's YNNPACK path
# fails to run on the transposed layouts that vmapped convolutions get ("Instruction with
# unsupported layout in YNN fusion", seen with 2 runs on 4 CPU devices).
VMAPPED_CPU = {YNN_FUSION[2:]: "LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
# Deterministic reductions and scatters on GPUs (atomics replaced): bitwise repeatable runs at a
# cost in speed (docs/training.md). No effect on CPUs, whose programs are deterministic already.
DETERMINISTIC = {"--xla_gpu_deterministic_ops": "true"}
OPT_OUT = "RESNET_JAX_XLA_DEFAULTS"


class BackendStartedError(RuntimeError):
    """An XLA option was asked for after JAX created its backends, which read XLA_FLAGS once."""


def _flags() -> list[str]:
    return shlex.split(os.environ.get("XLA_FLAGS", ""))


def _first_unread(flags: list[str]) -> int:
    """Where XLA stops reading XLA_FLAGS: its parser ends at the first entry that is not a
    `--flag`, and every flag after it is dropped without a word (measured with XLA 0.10)."""
    return next((i for i, f in enumerate(flags) if not f.startswith("--")), len(flags))


def unread() -> list[str]:
    """The entries of XLA_FLAGS that XLA never reads (empty when all are flags)."""
    flags = _flags()
    return flags[_first_unread(flags) :]


def user_sets(flag: str) -> bool:
    flags = _flags()
    return any(f == flag or f.startswith(flag + "=") for f in flags[: _first_unread(flags)])


def flags_line(options: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in options.items())


def add(options: dict[str, str]) -> dict[str, str]:
    """Appends each `--flag=value` the environment's XLA_FLAGS does not set yet; returns those
    added (the user's own value of a flag wins)."""
    added = {k: v for k, v in options.items() if not user_sets(k)}
    if added:
        new = [f"{k}={v}" for k, v in added.items()]
        flags = _flags()
        cut = _first_unread(flags)  # ahead of anything XLA would not read
        os.environ["XLA_FLAGS"] = " ".join(
            shlex.join([f]) for f in [*flags[:cut], *new, *flags[cut:]]
        )
    return added


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # a JAX without this module: nothing to check against
        return False
    return bool(xla_bridge.backends_are_initialized())


def set_defaults() -> dict[str, str]:
    """The project's CPU options (unless opted out or JAX already runs); returns what was set."""
    if os.environ.get(OPT_OUT, "1") == "0" or _backends_started():
        return {}
    return add(CPU_DEFAULTS)


def require(options: dict[str, str], why: str) -> dict[str, str]:
    """Adds `options` for a run that needs them; an error if JAX's backends have started, since
    XLA would silently ignore them."""
    missing = {k: v for k, v in options.items() if not user_sets(k)}
    if missing and _backends_started():
        raise BackendStartedError(
            f"{why} needs XLA_FLAGS={flags_line(missing)} before JAX "
            "starts its backends; set it in the environment of the command"
        )
    return add(missing)


# Set at import: `import resnet_jax` runs this before anything of ours can start a backend.
SET_BY_PROJECT = set_defaults()


def user_environ() -> dict[str, str]:
    """This process's environment less the options the project added to its XLA_FLAGS: the
    environment for a child process of ours, which makes its own choice of them (a child told
    RESNET_JAX_XLA_DEFAULTS=0 would otherwise inherit the options it opted out of)."""
    env = dict(os.environ)
    ours = {f"{k}={v}" for k, v in SET_BY_PROJECT.items()}
    flags = [f for f in _flags() if f not in ours]
    env.pop("XLA_FLAGS", None)
    if flags:
        env["XLA_FLAGS"] = " ".join(shlex.join([f]) for f in flags)
    return env


def vmapped_step_options(platform: str) -> dict[str, str] | None:
    """Compiler options for a vmapped train step on `platform`: `VMAPPED_CPU` where the project
    set the CPU fusion option (a value the user chose is left to them), else None."""
    return VMAPPED_CPU if platform == "cpu" and YNN_FUSION in SET_BY_PROJECT else None


def unread_warning() -> str | None:
    """The line a run prints when XLA_FLAGS holds entries that XLA ignores, else None."""
    rest = unread()
    if not rest:
        return None
    return (
        f"warning: XLA ignores XLA_FLAGS from {rest[0]!r} on ({len(rest)} entries): "
        "each entry must be a --flag=value"
    )


def banner() -> str | None:
    """The line a run prints about the CPU options this module set, or None when it set none."""
    if not SET_BY_PROJECT:
        return None
    return (
        f"XLA CPU options set by resnet_jax: {flags_line(SET_BY_PROJECT)} (set the flag in "
        f"XLA_FLAGS to choose another value, or {OPT_OUT}=0 for XLA's defaults)"
    )
