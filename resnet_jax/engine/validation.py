"""Checks that run before anything is compiled: the config, the data it names, the workdir and disk.

A typo should cost seconds, not the minutes of a ResNet compile or the hours of a run that dies at
its first checkpoint. Every check raises `faults.ConfigError` (exit 78) or `faults.DiskError` (74)
with a message that says what to change; `check_config` reports all its problems at once.

Resuming. A workdir that already holds checkpoints belongs to the run whose resolved config is in
WORKDIR/config.json. Resuming it with a different config is refused unless
`--config.allow_config_change=True`, except for the keys in `RESUMABLE_KEYS`, which change how long
or how visibly a run goes on but not what it computes up to now (extend `num_train_steps`, log more
often, keep fewer checkpoints, evaluate with other views).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from resnet_jax import config as config_lib
from resnet_jax import entry, plugins
from resnet_jax.engine.faults import ConfigError, DiskError

RESUMABLE_KEYS = frozenset(
    {
        "num_train_steps",
        "num_epochs",
        "log_every_steps",
        "eval_every_steps",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "prefetch_batches",
        "profile",
        "profile_start_step",
        "profile_steps",
        "eval_batch_size",
        "eval_views",
        "eval_scales",
        "data_dir",
        "allow_config_change",
        "restart_from_scratch",
        "nonfinite_policy",
        "dataset_fingerprint",  # compared on its own, and never allowed to change
        "debug_nan_step",
        "deterministic",  # the same arithmetic, only its order on GPUs fixed
    }
)
# Written next to checkpoints besides the arrays (metrics, events, config): room to spare for them.
_OVERHEAD_BYTES = 32 << 20


def _problems(c) -> list[str]:
    from resnet_jax import models, optim
    from resnet_jax.data import catalog
    from resnet_jax.engine import numerics

    out = []

    def need(ok, msg):
        if not ok:
            out.append(msg)

    def positive(key, allow_none=False, minimum=1):
        v = c.get(key)
        need(
            (allow_none and v is None)
            or (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= minimum),
            f"{key} must be >= {minimum}{' or None' if allow_none else ''}, got {v!r}",
        )

    def choice(key, allowed, default=None, listing=None):
        v = c.get(key, default)
        valid = listing or f"valid: {', '.join(map(str, allowed))}"
        need(
            v in allowed,
            f"{key}={v!r} is unknown{entry.did_you_mean(v, map(str, allowed))}; {valid}",
        )

    choice(
        "model",
        models.available_models(),
        listing=f"all {len(models.available_models())}: python -m resnet_jax.summary --all",
    )
    data = catalog.name_problem(c.dataset, c.get("input_pipeline"))
    need(
        data != "unknown",
        f"dataset={c.dataset!r} is unknown{entry.did_you_mean(c.dataset, catalog.NAMES)}; "
        f"valid: {', '.join(catalog.NAMES)}, or folder:PATH (a folder of images)",
    )
    need(data in (None, "unknown"), data)
    choice("dtype", ("float32", "bfloat16", "float16"))
    choice("optimizer", optim.OPTIMIZERS)
    choice("lr_schedule", optim.SCHEDULES)
    choice("warmup", optim.WARMUPS)
    choice("weight_decay_on", optim.DECAY_TARGETS)
    choice("lr_scaling", ("none", "linear"))
    choice("eval_views", config_lib.EVAL_VIEWS)
    choice("nonfinite_policy", numerics.POLICIES, "stop")
    holdout = c.get("holdout_fraction", 0.0)
    need(
        isinstance(holdout, (int, float)) and 0 <= holdout < 1,
        f"holdout_fraction must be in [0, 1) (0: no held-out split), got {holdout!r}",
    )
    need(
        0 <= c.get("ema_decay", 0.0) < 1,
        f"ema_decay must be in [0, 1) (0: off), got {c.get('ema_decay')!r}",
    )
    for key in (
        "batch_size",
        "grad_accum_steps",
        "log_every_steps",
        "prefetch_batches",
        "synthetic_batches",
    ):
        positive(key)
    for key in ("eval_batch_size", "image_size", "keep_checkpoints"):
        positive(key, allow_none=True)
    positive("bn_group_size", allow_none=True, minimum=0)  # None or 0: BN over the global batch
    positive("num_classes", allow_none=True, minimum=2)
    for key in (
        "eval_every_steps",
        "checkpoint_every_steps",
        "warmup_steps",
        "warmup_epochs",
        "weight_decay",
        "warmup_learning_rate",
        "end_learning_rate",
        "label_smoothing",
    ):
        positive(key, minimum=0)
    need(c.learning_rate > 0, f"learning_rate must be > 0, got {c.learning_rate!r}")
    need(
        0 < c.lr_decay_factor <= 1, f"lr_decay_factor must be in (0, 1], got {c.lr_decay_factor!r}"
    )
    need(0 <= c.momentum < 1, f"momentum must be in [0, 1), got {c.momentum!r}")
    need(c.label_smoothing < 1, f"label_smoothing must be < 1, got {c.label_smoothing!r}")
    need(
        c.num_train_steps > 0 or c.num_train_steps == -1,
        f"num_train_steps must be > 0, or -1 to use num_epochs; got {c.num_train_steps!r}",
    )
    need(
        c.num_train_steps > 0 or c.num_epochs > 0,
        f"num_epochs must be > 0 when num_train_steps is -1, got {c.num_epochs!r}",
    )
    need(
        all(int(s) >= 0 for s in c.lr_decay_steps) and all(e >= 0 for e in c.lr_decay_epochs),
        f"lr decay steps/epochs must be >= 0, got {c.lr_decay_steps!r} / {c.lr_decay_epochs!r}",
    )
    return out


def _has_checkpoints(workdir: str | None) -> bool:
    """Whether `workdir` holds a checkpoint (Orbax names each step's folder by its number)."""
    folder = os.path.join(workdir, "checkpoints") if workdir else None
    return bool(folder and os.path.isdir(folder) and any(d.isdigit() for d in os.listdir(folder)))


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of the checkpoints in WORKDIR/checkpoints, oldest first ([] where none)."""
    folder = os.path.join(workdir, "checkpoints")
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(int(d) for d in names if d.isdigit())


def seed_runs(workdir: str) -> list[int]:
    """The seeds whose runs of `--config.seeds` `workdir` holds: its `seed<k>` folders with a
    checkpoint (the layout of `multirun.run_workdir`)."""
    names = os.listdir(workdir) if os.path.isdir(workdir) else []
    return sorted(
        int(n[4:])
        for n in names
        if n.startswith("seed") and n[4:].isdigit() and _has_checkpoints(os.path.join(workdir, n))
    )


def check_config(config, workdir: str | None = None) -> None:
    """Names, choices and ranges of an unresolved config; one ConfigError listing every problem.

    A missing init_from comes first, before any data is read, unless `workdir` holds checkpoints
    (a resumed run never reads it again)."""
    problems = _problems(config)
    if config.get("init_from") and not _has_checkpoints(workdir):
        from resnet_jax.engine import warm_start

        missing = warm_start.missing_source(config.init_from)
        problems = ([missing] if missing else []) + problems
    if config.model in _model_names():
        plugins.load(config.get("plugins", ()))  # they may register a block the model names
        problems += _model_problems(config)
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the config: " + "; ".join(problems))


def _model_names() -> list[str]:
    from resnet_jax import models

    return models.available_models()


def _model_problems(c) -> list[str]:
    from resnet_jax import models

    try:
        model = models.create_model(
            c.model,
            num_classes=c.num_classes,
            bn_group_size=c.bn_group_size or None,  # 0: the global batch, as config.build_model
            **c.model_overrides.to_dict(),
        )
    except (ValueError, TypeError) as e:
        return [f"model {c.model!r} with overrides {c.model_overrides.to_dict()}: {e}"]
    smallest = model.spec.min_input_size()
    if c.image_size is not None and c.image_size < smallest:
        return [
            f"image_size {c.image_size} is too small for {c.model}: it downsamples by "
            f"{smallest}, so inputs must be at least {smallest}x{smallest}"
        ]
    return []


def check_resolved(run, *, device_count: int, process_count: int) -> None:
    """Checks that need the dataset and devices: batch split, image size, splits, data options
    (`run`: a `config.Run`; the record answers, nothing is read or built)."""
    c = run.c
    problems = []
    for key in ("batch_size", "eval_batch_size"):
        if c[key] % device_count:
            problems.append(
                f"{key} {c[key]} is not divisible by the device count {device_count}; "
                f"use a multiple of {device_count}"
            )
    k = c.get("grad_accum_steps", 1)
    micro = c.batch_size // k
    if k > 1 and (c.batch_size % k or micro % device_count):
        problems.append(
            f"batch_size {c.batch_size} does not split into grad_accum_steps={k} micro-batches "
            f"that each divide over the device count {device_count}; use a batch_size that is a "
            f"multiple of {k * device_count}"
        )
    per_device = micro // device_count
    if c.bn_group_size and per_device % c.bn_group_size:
        what = "micro-batch" if k > 1 else "batch"
        problems.append(
            f"bn_group_size {c.bn_group_size} does not divide the per-device {what} "
            f"{per_device}: a BN group would straddle two devices"
        )
    problems += list(run.data.problems) + _plan_problems(run.data, run.plan, process_count)
    problems += run.problems
    if problems:
        raise ConfigError(
            f"{len(problems)} problem(s) with the data or devices: " + "; ".join(problems)
        )


def _plan_problems(d, plan, process_count: int) -> list[str]:
    """What in the run's plan the dataset's record cannot give: options its input path lacks,
    splits it does not have or that hold less than a batch per process (its counts answer)."""
    problems = []
    for key, value, allowed in (
        ("augment", plan.augment, d.augments),
        ("normalization", plan.normalization, d.normalizations),
    ):
        if value is not None and allowed and value not in allowed:
            problems.append(
                f"{key}={value!r} is not available for {d.name} on the {d.input_pipeline} input "
                f"path; choose from {allowed}"
            )
    for key, split, batch in (
        ("train_split", plan.train_split or d.train_split, plan.batch_size),
        ("eval_split", plan.eval_split or d.eval_split, 1),
    ):
        try:
            n = d.count(split)
        except ValueError as e:
            problems.append(f"{key}: {e}")
            continue
        if n // process_count < max(batch // process_count, 1):
            problems.append(
                f"{key} {split!r} of {d.name} has {n} examples, fewer than one "
                f"{'batch of ' + str(batch) if batch > 1 else 'example'} per process "
                f"({process_count} process(es))"
                + (f"; set --config.batch_size to at most {n}" if batch > 1 else "")
            )
    return problems


def abstract_state(fn: Callable[[], Any], c) -> Any:
    """`fn()` (an eval_shape of the train state: traced, not compiled), its errors as ConfigError.

    This is where a model that cannot take the image size or its overrides fails, in a second.
    """
    try:
        return fn()
    except (ValueError, TypeError) as e:
        raise ConfigError(
            f"model {c.model} cannot be built for {c.image_size}x{c.image_size} "
            f"inputs with overrides {c.model_overrides.to_dict()}: "
            f"{str(e).strip().splitlines()[0]}"
        ) from e


def checkpoint_bytes(abstract: Any) -> int:
    """Bytes of one checkpoint of a state with these shapes (Orbax stores arrays uncompressed)."""
    return int(
        sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(abstract))
    )


def _json_view(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def config_changes(old: dict, new: dict, defaults: dict | None = None) -> list[str]:
    """'key: old -> new' for every key outside RESUMABLE_KEYS whose value differs.

    A key that `old` lacks but `defaults` has, set to its default in `new`, is no change: the run
    was started before the key existed, and a new key's default keeps the old behaviour.
    """
    old, new = _json_view(old), _json_view(new)
    defaults = _json_view(defaults or {})
    keys = sorted((set(old) | set(new)) - RESUMABLE_KEYS)
    return [
        f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}"
        for k in keys
        if old.get(k, "<absent>") != new.get(k, "<absent>")
        and not (k not in old and k in defaults and new.get(k) == defaults[k])
    ]


def check_same_run(
    workdir: str, c, *, has_checkpoints: bool, defaults: dict | None = None
) -> list[str]:
    """Refuses to resume a run of another config; returns the allowed changes it found.

    Only a workdir with checkpoints is checked: without one nothing computed so far would be mixed.
    `defaults`: the trainer's default config (see `config_changes`). A workdir holding the runs of
    `--config.seeds` (in `seed<k>` folders) is refused to a single run, even with
    allow_config_change: it would start from step 0 beside them, and each of them already is a
    single run that `--workdir=WORKDIR/seed<k>` resumes.
    """
    seeds = [] if has_checkpoints else seed_runs(workdir)
    if seeds:
        listed = ",".join(map(str, seeds))
        raise ConfigError(
            f"{workdir} holds the runs of seeds {listed} (in {workdir}/seed<k>, trained with "
            "--config.seeds), and a run without seeds would start from step 0 beside them. "
            f"Resume them with --config.seeds={listed}, or one alone with "
            f"--workdir={workdir}/seed<k>"
        )
    path = os.path.join(workdir, "config.json")
    if not (has_checkpoints and os.path.exists(path)):
        return []
    with open(path, encoding="utf-8") as f:
        old = json.load(f)
    if old.get("dataset_fingerprint") != c.get("dataset_fingerprint"):
        # Even with allow_config_change, as a changed seed: the examples behind every step differ.
        raise ConfigError(
            f"{workdir} holds a run trained on other images ({old.get('dataset_fingerprint')}); "
            f"{c.dataset} is now {c.get('dataset_fingerprint')}. A folder's files must not change "
            "during a run: restore them, or train into another --workdir"
        )
    changes = config_changes(old, c.to_dict(), defaults)
    if changes and not c.get("allow_config_change", False):
        raise ConfigError(
            f"{workdir} holds a run of a different config ({'; '.join(changes)}). Use another "
            "--workdir, or resume with these changes on purpose with "
            "--config.allow_config_change=True"
        )
    if c.lr_schedule == "cosine" and old.get("num_train_steps") != c.num_train_steps:
        changes.append(
            f"num_train_steps: {old.get('num_train_steps')} -> {c.num_train_steps} "
            "(the cosine schedule stretches: the learning rate from here on differs "
            "from the original run's)"
        )
    return changes


def check_workdir(workdir: str, *, checkpoint_size: int, checkpoints_on_disk: int) -> None:
    """The workdir exists, can be written, and has room for `checkpoints_on_disk` checkpoints.

    Orbax writes a new checkpoint before deleting the oldest, so a run keeping k needs k + 1.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
    except (FileExistsError, NotADirectoryError):  # a file where a folder must be
        in_the_way = os.path.abspath(workdir)
        while not os.path.exists(in_the_way):
            in_the_way = os.path.dirname(in_the_way)
        raise ConfigError(
            f"workdir {workdir} is not a directory ({in_the_way} is a file); nothing was "
            "trained. Choose another --workdir"
        ) from None
    except OSError:
        pass  # reported below with the write probe's reason
    try:
        os.makedirs(os.path.join(workdir, "checkpoints"), exist_ok=True)
        for d in (workdir, os.path.join(workdir, "checkpoints")):
            with tempfile.NamedTemporaryFile(dir=d, prefix=".write_probe_") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        raise DiskError(
            f"workdir {workdir} is not writable ({e}); nothing was trained. Fix the "
            "permissions or mount, or choose another --workdir"
        ) from e
    need = checkpoints_on_disk * checkpoint_size + _OVERHEAD_BYTES
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise DiskError(
            f"workdir {workdir} has {free / 2**20:.1f} MiB free, but {checkpoints_on_disk} "
            f"checkpoints of {checkpoint_size / 2**20:.1f} MiB (plus metrics) need about "
            f"{need / 2**20:.1f} MiB; free space, lower --config.keep_checkpoints, or choose "
            "another --workdir"
        )
