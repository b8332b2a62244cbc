"""Top-5 classes of image files under a trained run's newest checkpoint.

    python -m resnet_jax.predict --workdir DIR IMAGE [IMAGE ...]

The images get the run's evaluation preprocessing: ImageNet-sized runs resize the shorter side to
256 (for 224) and take the centre crop, normalised with the ImageNet mean and std; 32x32 runs
resize the shorter side to 32 and take the centre square, normalised with the dataset's training
statistics, exactly as its test images are. Class names come from the dataset (a number where the
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


def model_inputs(paths: Sequence[str], c) -> np.ndarray:
    """float32 [N, S, S, 3]: the images as the run's evaluation feeds them to the model."""
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
        images.append(np.asarray(image, np.float32))
    batch = np.stack(images)
    if family != "cifar":
        return np.asarray(augment.normalize_imagenet(batch), np.float32)
    from resnet_jax.data import arrays, normalize, stats

    normalization = datasets.normalization_of(c.dataset, c.normalization)
    mean, std = stats.mean_and_std(arrays.load_stats(c.dataset, c.data_dir), normalization)
    return np.asarray(normalize.normalize(batch, mean, std))


def predict(workdir: str, paths: Sequence[str]) -> list[list[tuple[str, float]]]:
    """For each image, its top-5 (class name, probability) under the newest checkpoint."""
    import jax

    from resnet_jax.data import datasets
    from resnet_jax.engine import evaluate, parallel, warm_start

    c = warm_start.run_config(workdir)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, state, _ = evaluate.restore_checkpoint(c, workdir, mesh)
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats},
        model_inputs(paths, c),
        train=False,
    )
    probs = np.asarray(jax.nn.softmax(logits.astype(np.float32)))
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
