"""Top-5 classes of image files under a trained run's newest checkpoint.

    python -m resnet_jax.predict --workdir DIR IMAGE [IMAGE ...]
    python -m resnet_jax.predict --workdir DIR --weights ema IMAGE [IMAGE ...]

IMAGE: the files a folder dataset takes (`folder.EXTENSIONS`: JPEG, PNG, BMP, GIF). Each readable
one gets its top-5 on stdout (every class where there are fewer); each file that cannot be read gets
one line on stderr with the reason, the others are still classified, and the exit code is 66 when
any failed (0 when none did). `--weights ema` takes the run's averaged weights (a run
trained with ema_decay > 0) instead of the trained ones.

The images get the run's evaluation preprocessing: ImageNet-sized runs resize the shorter side to
256 (for 224) and take the centre crop, normalised with the ImageNet mean and std; 32x32 runs
resize the shorter side to 32 and take the centre square, normalised with the dataset's training
statistics, exactly as its test images are (the same uint8 crops and the same jitted finishing
and predict step as evaluation). A folder run's images are read with Pillow and stretched to its
training size, as its prepared copy was. Class names come from the run's config (a folder's class
folders), else the dataset (a number where the dataset is not on this machine).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from resnet_jax import entry

FLAGS = flags.FLAGS
TOP_K = 5


def define_flags() -> None:
    flags.DEFINE_string(
        "workdir", None, "A run directory (config.json and checkpoints/); its newest checkpoint."
    )
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_enum(
        "weights",
        "raw",
        ["raw", "ema"],
        "raw: the trained weights; ema: their moving average (a run with ema_decay > 0).",
    )


def record(c):
    """The dataset record of a run's resolved config (nothing scanned or counted)."""
    from resnet_jax import config as config_lib

    return config_lib.open_data(c, saved=c.to_dict())


def input_crop(c) -> tuple[int, int | None]:
    """(S, R): an image becomes the run's uint8 [S, S, 3] input by resizing its shorter side to R
    and taking the centre square, as the run's test images; R None: stretched to S x S."""
    return record(c).test_crop


def _read(path: str, d, tf) -> np.ndarray:
    """uint8 [S, S, 3]: one image cropped and resized as the run's evaluation batches are."""
    from resnet_jax.data import augment, folder, sources
    from resnet_jax.data.errors import CorruptImageError

    readable = f"{folder.FORMATS} ({', '.join(folder.EXTENSIONS)})"
    if os.path.splitext(path)[1].lower() not in folder.EXTENSIONS:
        raise CorruptImageError(f"not an image file predict reads; it reads {readable}")

    size, side = d.test_crop
    # synthetic data has no source: an image file is read as ImageNet's
    data = (d.source or sources.Tfds).test_image(path, size, side)
    if isinstance(data, np.ndarray):  # already the input (a folder's squared arrays)
        return data
    try:
        return np.asarray(augment.center_eval(tf.constant(data), size, side))
    except Exception as e:  # TensorFlow's decode errors come as several types
        # TensorFlow wraps the decoder's words in op names: keep only the words.
        reason = str(e).split("}}")[-1].split("[Op:")[0].strip()
        if reason.startswith("Unknown image file format"):  # TensorFlow's list is not ours
            reason = f"its bytes are none of {readable}"
        raise CorruptImageError(f"not a readable image ({reason})") from None


def load_images(paths: Sequence[str], c) -> tuple[np.ndarray | None, dict[str, str]]:
    """(uint8 [N, S, S, 3] of the readable images in order, {unreadable path: the reason})."""
    from resnet_jax.data import augment

    d = record(c)  # one record for all the files
    images, problems = [], {}
    for path in paths:
        try:
            images.append(_read(path, d, augment.tf))  # TF decodes JPEG/PNG/GIF/BMP as the pipeline
        except Exception as e:  # a missing file, a directory, a broken image: that file only
            problems[path] = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
    return (np.stack(images) if images else None), problems


def class_names(c) -> list[str] | None:
    """The run's class names: its config's (a folder's class folders), else the dataset's (None
    where the dataset is not on this machine, and for synthetic data's random labels)."""
    d = record(c)
    if c.get("class_names") or d.source is None:
        return c.get("class_names")
    names = d.class_names or d.source.class_names(read=True)
    return list(names) if names else None


def predict(
    workdir: str, paths: Sequence[str], weights: str = "raw"
) -> list[list[tuple[str, float]] | str]:
    """For each image, its top-5 (class name, probability) under the newest checkpoint's
    `weights` (`evaluate.inference_variables`), or the reason it could not be read."""
    import jax

    from resnet_jax import config as config_lib
    from resnet_jax.engine import evaluate, parallel, warm_start

    c = warm_start.run_config(workdir)
    images, problems = load_images(paths, c)  # before the slow restore
    if images is None:
        return [problems[p] for p in paths]
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, variables, _ = evaluate.inference_variables(c, workdir, mesh, weights=weights)
    # The evaluation's own step and finishing (normalisation on the device), on the same crops.
    predict_step = parallel.jit_predict_step(
        model, mesh, config_lib.build_finish(c), on_variables=True
    )
    probs = iter(np.asarray(predict_step(variables, {"image": images})))
    names = class_names(c)
    out = []
    for path in paths:
        if path in problems:
            out.append(problems[path])
            continue
        p = next(probs)
        top = np.argsort(-p, kind="stable")[:TOP_K]
        out.append([(names[k] if names else f"class {k}", float(p[k])) for k in top])
    return out


def main(argv: Sequence[str]) -> None:
    paths = list(argv[1:])
    if not paths:
        raise app.UsageError("give one or more image files after --workdir DIR")
    from resnet_jax.engine import faults

    with faults.exit_on_error():
        results = predict(FLAGS.workdir, paths, FLAGS.weights)
    for path, top in zip(paths, results, strict=True):
        if isinstance(top, str):
            print(f"resnet_jax: {path}: {top}", file=sys.stderr, flush=True)
            continue
        print(path)
        for rank, (name, p) in enumerate(top, 1):
            print(f"  {rank}. {name:<24} {100 * p:6.2f}%", flush=True)
    if any(isinstance(top, str) for top in results):
        raise SystemExit(faults.EXIT_NO_INPUT)


def run() -> None:
    """`python -m resnet_jax.predict`."""
    define_flags()
    entry.run(main)


if __name__ == "__main__":
    run()
