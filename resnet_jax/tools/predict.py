"""Top-5 classes of image files under a trained run's newest checkpoint.

    python -m resnet_jax.predict --workdir DIR IMAGE [IMAGE ...]

The images get the run's evaluation preprocessing: ImageNet-sized runs resize the shorter side to
256 (for 224) and take the centre crop, normalised with the ImageNet mean and std; 32x32 runs
resize the shorter side to 32 and take the centre square, normalised with the dataset's training
statistics, exactly as its test images are (the same uint8 crops and the same jitted finishing
and predict step as evaluation). Class names come from the dataset (a number where the
dataset is not on this machine).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import app, flags

from resnet_jax import entry

FLAGS = flags.FLAGS
TOP_K = 5


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A run directory (config.json and checkpoints/).")
    flags.mark_flag_as_required("workdir")


def load_images(paths: Sequence[str], c) -> np.ndarray:
    """uint8 [N, S, S, 3]: the images cropped and resized as the run's evaluation batches are."""
    from resnet_jax.data import augment, datasets

    tf = augment.tf  # TensorFlow decodes every JPEG/PNG/GIF/BMP the pipeline can read
    family = datasets.facts(c.dataset)["family"]
    resize = c.image_size if family == "cifar" else None  # 32x32 sets: no crop margin
    images = []
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        try:
            image = augment.center_eval(tf.constant(data), c.image_size, resize)
        except Exception as e:  # TensorFlow's decode errors come as several types
            # TensorFlow wraps the decoder's words in op names: keep only the words.
            reason = str(e).split("}}")[-1].split("[Op:")[0].strip()
            raise datasets.CorruptImageError(f"{path}: not a readable image ({reason})") from None
        images.append(np.asarray(image))
    return np.stack(images)


def predict(workdir: str, paths: Sequence[str]) -> list[list[tuple[str, float]]]:
    """For each image, its top-5 (class name, probability) under the newest checkpoint."""
    import jax

    from resnet_jax import config as config_lib
    from resnet_jax.data import datasets
    from resnet_jax.engine import evaluate, parallel, warm_start

    c = warm_start.run_config(workdir)
    images = load_images(paths, c)  # an unreadable image is reported before the slow restore
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, state, _ = evaluate.restore_checkpoint(c, workdir, mesh)
    # The evaluation's own step and finishing (normalisation on the device), on the same crops.
    predict_step = parallel.jit_predict_step(model, mesh, config_lib.build_finish(c))
    probs = np.asarray(predict_step(state, {"image": images}))
    names = datasets.class_names(c.dataset, c.data_dir)
    out = []
    for p in probs:
        top = np.argsort(-p, kind="stable")[:TOP_K]
        out.append([(names[k] if names else f"class {k}", float(p[k])) for k in top])
    return out


def main(argv: Sequence[str]) -> None:
    paths = list(argv[1:])
    if not paths:
        raise app.UsageError("give one or more image files after --workdir DIR")
    from resnet_jax.engine import faults

    with faults.exit_on_error():
        for path, top in zip(paths, predict(FLAGS.workdir, paths), strict=True):
            print(path)
            for rank, (name, p) in enumerate(top, 1):
                print(f"  {rank}. {name:<24} {100 * p:6.2f}%")


def run() -> None:
    """`python -m resnet_jax.predict`."""
    define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
