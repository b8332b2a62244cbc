"""Entry point: `python -m resnet_jax.main --config=configs/X.py[:arg] --workdir=DIR [--mode=eval]`.

Kept short on purpose: the logic lives in importable modules (trainer, evaluate).
Foreseen failures end with one line on stderr and an exit code (docs/reliability.md); 75 means
"preempted after a checkpoint: rerun the same command".
"""

from absl import flags, logging
from ml_collections import config_flags

from resnet_jax import entry
from resnet_jax.engine import parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/cifar10.py:resnet56.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, summary.")
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not FLAGS[
        "verbosity"
    ].present:  # Orbax and TF log every save at INFO; keep the console to ours
        logging.set_verbosity(logging.WARNING)
    parallel.initialize_distributed(
        FLAGS.coordinator_address,
        FLAGS.num_processes,
        FLAGS.process_id,
        heartbeat_timeout_s=FLAGS.heartbeat_timeout_s,
    )
    import jax

    from resnet_jax.engine import (  # after initialisation, before device use
        evaluate,
        faults,
        trainer,
    )

    with faults.exit_on_error(jax.process_count):
        if FLAGS.mode == "eval":
            evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
        else:
            trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    entry.run(main)
