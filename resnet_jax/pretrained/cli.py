"""The `python -m resnet_jax.pretrained import|export|compare` commands (usage in `__main__.py`).

`import_weights` and `export_weights` are the commands as functions, for scripts and tests. The
engine is imported inside them, so `--help` and `compare` do not load Orbax.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys

from absl import flags
from ml_collections import config_flags

from resnet_jax import config as config_lib
from resnet_jax import entry
from resnet_jax import weights as weights_lib

FLAGS = flags.FLAGS
COMMANDS = ("import", "export", "compare")
# What export can write, said before it tries (the CIFAR nets have no PyTorch counterpart).
_TIMM_ONLY = [m for m in weights_lib.MAPPED["timm"] if m not in weights_lib.MAPPED["torchvision"]]
_MAPS = (
    f"the ImageNet ResNets torchvision has ({', '.join(weights_lib.MAPPED['torchvision'])}) in "
    f"torchvision naming, and those timm adds ({', '.join(_TIMM_ONLY)}) in timm naming "
    "(--source=timm writes any of them in timm naming)"
)
flags.DEFINE_enum(
    "source",
    None,
    list(weights_lib.SOURCES),
    "Key naming (default: torchvision where it has the model).",
)
flags.DEFINE_string("model", None, "import: the model, e.g. resnet50.")
flags.DEFINE_string(
    "weights", None, "import: .safetensors, .npz, or .pth/.pt where torch is installed."
)
flags.DEFINE_string("workdir", None, "The run directory import writes and export reads.")
flags.DEFINE_string(
    "out",
    None,
    f"export: the file to write, .safetensors or .npz; export maps {_MAPS}. compare: a JSON of "
    "the results.",
)
flags.DEFINE_integer("step", None, "export: the checkpoint step (default: the newest).")
flags.DEFINE_list("models", None, "compare: models to check (default: every mapped one).")
flags.DEFINE_integer("batch", 8, "compare: images per forward pass.")
flags.DEFINE_integer("image_size", 224, "compare: input height and width.")
flags.DEFINE_string("device", "cuda", "compare: torch device (cuda, cpu).")
config_flags.DEFINE_config_file(
    "config",
    None,
    "import: the config to evaluate or fine-tune with, e.g. configs/imagenet.py:resnet50 (its "
    "dataset need not be prepared: import reads only the weights).",
)


def _resolved_without_data(config, num_classes: int):
    """`config_lib.resolve_config` without reading the dataset: a train state's shapes depend only
    on the model, the class count, the image size and the optimizer, so the config is resolved as
    synthetic data shaped like the model's own (the same epoch length as ImageNet or CIFAR)."""
    from resnet_jax.data import synthetic

    probe = config.copy_and_resolve_references()
    with probe.unlocked():
        probe.dataset, probe.num_classes = synthetic.NAME, num_classes
    c = config_lib.resolve_config(probe)
    c.dataset = config.dataset
    return c


def import_weights(model_name: str, weights: str, workdir: str, config, source: str | None = None):
    """Writes `workdir/checkpoints/0` and `workdir/config.json` from a weights file.

    Reads no dataset. Returns the resolved config written (num_classes set from the weights).
    """
    import jax

    from resnet_jax.engine import checkpoint, faults, metrics, parallel, warm_start

    source = source or weights_lib.default_source(model_name)
    weights_lib.check_mapped(model_name, source)
    if config.model != model_name:  # `--mode=eval` with this config would build another model
        raise faults.ConfigError(
            f"--model={model_name} but the config builds a {config.model}: pass the config you "
            f"will evaluate this {model_name} with (e.g. configs/imagenet.py:{model_name})"
        )
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
        raise faults.ConfigError(f"{ckpt_dir} is not empty: import into a new --workdir")
    variables = weights_lib.from_torch_state_dict(
        model_name,
        weights_lib.load_state_dict(weights),
        source=source,
        overrides=config.model_overrides.to_dict(),
    )
    c = _resolved_without_data(config, int(variables["params"]["head"]["bias"].shape[0]))
    model, _, tx = config_lib.build(c)
    mesh = parallel.make_mesh()
    fresh = parallel.create_sharded_train_state(
        model, tx, jax.random.PRNGKey(c.seed), (c.image_size, c.image_size, 3), mesh
    )
    state = warm_start.apply_variables(fresh, variables, f"{weights} ({source} naming)")
    ckpt = checkpoint.Checkpointer(workdir, every_steps=0, keep=None)
    position = checkpoint.data_position(0, c.seed, c.batch_size, jax.process_count())
    ckpt.save(0, state, position, force=True)
    ckpt.close()
    metrics.write_json(os.path.join(workdir, "config.json"), c.to_dict())
    return c


def export_weights(workdir: str, out: str, source: str | None = None, step: int | None = None):
    """Writes checkpoint `step` (default: newest) of `workdir` to `out`; returns (model, step)."""
    from resnet_jax.engine import warm_start

    c = warm_start.run_config(workdir)
    if not any(c.model in weights_lib.MAPPED[s] for s in weights_lib.SOURCES):
        raise weights_lib.WeightsError(
            f"{workdir} holds a {c.model}, which PyTorch has no counterpart of: export writes "
            f"{_MAPS}. Its checkpoints stay usable here (--config.init_from={workdir})"
        )
    source = source or weights_lib.default_source(c.model)
    weights_lib.check_mapped(c.model, source)
    variables, step, _ = warm_start.restore_variables(workdir, step)
    state_dict = weights_lib.to_torch_state_dict(
        c.model,
        variables,
        source=source,
        num_batches_tracked=step,
        overrides=c.model_overrides.to_dict(),
    )
    weights_lib.save_state_dict(state_dict, out)
    return c.model, step


@contextlib.contextmanager
def _as_config_error(config_error):
    """Bad weights or a missing file end in one line and the config-error exit code."""
    try:
        yield
    except (weights_lib.WeightsError, FileNotFoundError) as e:
        raise config_error(str(e)) from None


def _config_flags() -> str:
    """The --config and --config.KEY=VALUE flags of this command, as a shell would take them."""
    given = [a for a in sys.argv[1:] if a.startswith(("--config=", "--config."))]
    return " ".join(shlex.quote(a) for a in given)


def _import() -> None:
    c = import_weights(FLAGS.model, FLAGS.weights, FLAGS.workdir, FLAGS.config, FLAGS.source)
    print(
        f"imported {c.model} ({c.num_classes} classes) into {FLAGS.workdir}/checkpoints/0; "
        f"evaluate with: python -m resnet_jax.main {_config_flags()} --workdir={FLAGS.workdir} "
        f"--mode=eval (add --config.eval_views=10crop or multiscale for the paper's protocols); "
        f"fine-tune from it with --config.init_from={FLAGS.workdir}",
        flush=True,
    )


def _export() -> None:
    model, step = export_weights(FLAGS.workdir, FLAGS.out, FLAGS.source, FLAGS.step)
    print(f"exported {model} checkpoint {step} of {FLAGS.workdir} to {FLAGS.out}", flush=True)


def _compare(config_error) -> None:
    import importlib.util
    import json

    from resnet_jax.weights import compare

    missing = [m for m in ("torch", "torchvision", "timm") if importlib.util.find_spec(m) is None]
    if missing:
        raise config_error(
            f"compare runs the PyTorch modules and needs {', '.join(missing)}: run it where "
            "torch, torchvision and timm are installed (pip install torch torchvision timm)"
        )
    pairs = compare.all_models()
    if FLAGS.models:
        pairs = [(m, FLAGS.source or weights_lib.default_source(m)) for m in FLAGS.models]
    print("| model | naming | import max abs | import max rel | export max abs | export max rel |")
    print("|---|---|---:|---:|---:|---:|")
    rows = []
    for name, source in pairs:
        r = compare.compare_model(
            name, source, batch=FLAGS.batch, image_size=FLAGS.image_size, device=FLAGS.device
        )
        rows.append(r)
        i, e = r["import"], r["export"]
        print(
            f"| {name} | {source} | {i['max_abs']:.2e} | {i['max_rel']:.2e} | "
            f"{e['max_abs']:.2e} | {e['max_rel']:.2e} |",
            flush=True,
        )
    if FLAGS.out:
        with open(FLAGS.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


_NEEDS = {"import": ("model", "weights", "workdir", "config"), "export": ("workdir", "out")}


def main(argv):
    from resnet_jax.engine import faults

    commands = argv[1:]
    if len(commands) != 1 or commands[0] not in COMMANDS:
        raise SystemExit(
            f"usage: python -m resnet_jax.pretrained {'|'.join(COMMANDS)} --flags (--help lists "
            f"them); got {' '.join(commands) or 'no command'}"
        )
    command = commands[0]
    missing = [f"--{n}" for n in _NEEDS.get(command, ()) if getattr(FLAGS, n) is None]
    with faults.exit_on_error(lambda: 1), _as_config_error(faults.ConfigError):
        if missing:
            raise faults.ConfigError(f"{command} needs {', '.join(missing)}")
        if command == "import":
            _import()
        elif command == "export":
            _export()
        else:
            _compare(faults.ConfigError)


def run() -> None:
    entry.run(main)
