"""Train or evaluate a ResNet from a config file.

    python -m resnet_jax.main --config=configs/X.py[:ARG] --workdir=DIR [--mode=eval]
        [--config.KEY=VALUE ...]

    python -m resnet_jax.main --config=configs/X.py[:ARG] --show_config [--config.KEY=VALUE ...]

Any key of the config can be overridden on the command line, e.g. `--config.batch_size=256
'--config.model_overrides={"shortcut": "B"}'`; `--show_config` lists every key with its value and
meaning, resolved as the run would use it, and changes nothing. The run resumes from DIR when it
holds a checkpoint.
Foreseen failures end with one line on stderr and an exit code (docs/reliability.md); 75 means
"preempted after a checkpoint: rerun the same command".

Kept short on purpose: the logic lives in importable modules (resnet_jax.engine).
"""

from absl import flags
from ml_collections import config_flags

from resnet_jax import entry, xla_options
from resnet_jax.engine import faults, parallel
from resnet_jax.tools import config_help

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file with an optional argument, e.g. configs/cifar10.py:resnet56 (required). "
    "Override any key with --config.KEY=VALUE; --show_config lists the keys.",
    lock_config=True,
)
# A required flag has no default worth printing; absl would show "(default: 'None')".
FLAGS["config"].default_as_str = None
flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, summary (required unless --show_config)."
)
flags.DEFINE_bool(
    "show_config",
    False,
    "Print every config key with its value (resolved as the run would use it) and meaning, then "
    "exit; trains and writes nothing.",
)
flags.DEFINE_enum(
    "mode", "train", ["train", "eval"], "train (resumes) or eval the newest checkpoint."
)
flags.DEFINE_string(
    "coordinator_address",
    None,
    "host:port of process 0 (multi-host without TPU/SLURM auto-detection).",
)
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator_address).")
flags.DEFINE_integer(
    "heartbeat_timeout_s",
    None,
    "Multi-process: a process silent this long is "
    "taken for dead and the others stop (None: JAX's default, 100 s).",
)
flags.mark_flag_as_required("config")


def _config():
    """The parsed --config; a file that is missing, unreadable or broken is a ConfigError."""
    try:
        config = FLAGS.config
        config.keys()  # ml_collections reports a failed load only when the config is first read
        return config
    except Exception as e:  # whatever the config file raised while loading
        raise faults.ConfigError(f"cannot load --config: {entry.root_cause(e)}") from None


def main(argv):
    del argv
    with faults.exit_on_error():
        config = _config()
        if FLAGS.show_config:
            print(config_help.show(config))
            return
        if FLAGS.workdir is None:
            raise faults.ConfigError("--workdir is required: the run directory (see --help)")
        if config.get("deterministic"):  # XLA reads its flags when the backends start, below
            try:
                xla_options.require(xla_options.DETERMINISTIC, "--config.deterministic=True")
            except xla_options.BackendStartedError as e:
                raise faults.ConfigError(str(e)) from None
    parallel.initialize_distributed(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
    )
    import jax

    # After initialisation, before device use.
    from resnet_jax.engine import evaluate, multirun, trainer

    with faults.exit_on_error(jax.process_count):
        if config.seeds:  # one workdir per seed, their steps as one program
            run = (
                multirun.evaluate_runs if FLAGS.mode == "eval" else multirun.train_and_evaluate_runs
            )
        else:
            run = (
                evaluate.evaluate_checkpoint if FLAGS.mode == "eval" else trainer.train_and_evaluate
            )
        run(config, FLAGS.workdir)


if __name__ == "__main__":
    entry.run(main, flag_error_code=faults.EXIT_CONFIG, explain=config_help.explain)
