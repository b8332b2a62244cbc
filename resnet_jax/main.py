"""Entry point: `python -m resnet_jax.main --config=configs/X.py[:arg] --workdir=DIR [--mode=eval]`.

Kept short on purpose: the logic lives in importable modules (trainer, evaluate).
"""
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import parallel

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/cifar10.py:resnet56.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, summary.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (resumes) or eval the newest checkpoint.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host without "
                    "TPU/SLURM auto-detection).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator_address).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and TF log every save at INFO; keep the console to ours
        logging.set_verbosity(logging.WARNING)
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
    from resnet_jax import evaluate, trainer  # after initialisation, which must precede device use
    if FLAGS.mode == "eval":
        evaluate.evaluate_checkpoint(FLAGS.config, FLAGS.workdir)
    else:
        trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
