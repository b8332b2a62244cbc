"""A trained run as a self-contained model for serving: uint8 images in, class probabilities out.

    python -m resnet_jax.export --workdir RUN [--out DIR] [--format stablehlo|savedmodel|both]
        [--weights raw|ema] [--step N] [--platforms cpu,cuda]

DIR (default RUN/export) gets:
  model.jax_export  `jax.export` of the run's prediction: the weights, the run's normalisation (the
                    finish its evaluation applies on the device), the network and the softmax, for
                    uint8 [B, S, S, 3] images with any B; float32 [B, K] out
  model.json        class names, S, how the run crops an image to S x S, the normalisation inside
  serve.py          a reader that needs only jax and flatbuffers: `classify, meta = serve.load(DIR)`
  savedmodel/       with --format savedmodel|both: the same function as a TensorFlow SavedModel
                    (jax2tf), signature `serving_default`: images uint8 -> probabilities

Images go in cropped as the run's test images (model.json's `crop`): the artefact holds what runs
on the device, the crop stays on the host, as in `python -m resnet_jax.predict`. See docs/export.md.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from resnet_jax import entry

FLAGS = flags.FLAGS
FORMATS = ("stablehlo", "savedmodel", "both")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's names
ARTEFACT = "model.jax_export"
SAVEDMODEL = "savedmodel"


def define_flags() -> None:
    from resnet_jax.engine import evaluate

    flags.DEFINE_string("workdir", None, "A run directory (config.json and checkpoints/).")
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_string("out", None, "The folder to write (default: WORKDIR/export).")
    flags.DEFINE_enum("format", "stablehlo", list(FORMATS), "What to write besides model.json.")
    flags.DEFINE_enum(
        "weights", "raw", list(evaluate.WEIGHTS), "The trained weights, or their average (ema)."
    )
    flags.DEFINE_integer("step", None, "The checkpoint step (default: the newest).")
    flags.DEFINE_list(
        "platforms", ["cpu", "cuda"], "Where the artefact may run (cpu, cuda, tpu), one program."
    )


def _crop_words(size: int, side: int | None) -> str:
    if side is None:
        return f"stretch the image to {size}x{size}"
    return f"resize the shorter side to {side}, keep the centre {size}x{size}"


def serving_function(
    workdir: str, weights: str = "raw", step: int | None = None
) -> tuple[Callable, dict]:
    """(probabilities, meta): probabilities(uint8 [B, S, S, 3]) -> float32 [B, K], the run's
    prediction with its weights as constants; meta: what model.json holds."""
    import jax

    from resnet_jax import config as config_lib
    from resnet_jax.engine import evaluate, faults, parallel, steps, warm_start
    from resnet_jax.tools import predict

    c = warm_start.run_config(workdir)
    mesh = parallel.make_mesh(jax.devices()[:1])
    try:
        model, variables, step = evaluate.inference_variables(c, workdir, mesh, step, weights)
    except faults.CheckpointLoadError as e:
        raise faults.CheckpointLoadError(
            f"{e}: nothing to export; train the run first (python -m resnet_jax.main "
            f"--config=... --workdir={workdir})"
        ) from None
    variables = jax.device_get(variables)
    finish = config_lib.build_finish(c)

    def probabilities(images):
        return steps.predict_probs(variables, {"image": images}, model=model, finish=finish)

    size, side = predict.input_crop(c)
    names = predict.class_names(c) or [f"class {k}" for k in range(c.num_classes)]
    meta = {
        "artefact": ARTEFACT,
        "model": c.model,
        "step": step,
        "weights": weights,
        "classes": list(names),
        "image_size": size,
        "resize_shorter_side": side,
        "crop": _crop_words(size, side),
        "input": f"uint8 [B, {size}, {size}, 3], RGB on the 0-255 scale, any B",
        "output": f"float32 [B, {c.num_classes}], softmax probabilities",
        "normalization": {  # applied inside the artefact: (pixel - mean) / std
            "mean": np.asarray(finish.mean).tolist(),
            "std": np.asarray(finish.std).tolist(),
            "resized_to": finish.size,
        },
        "jax_version": jax.__version__,
    }
    return probabilities, meta


def _input_spec(size: int):
    import jax
    import jax.numpy as jnp

    shape = jax.export.symbolic_shape(f"b, {size}, {size}, 3")
    return jax.ShapeDtypeStruct(shape, jnp.uint8)


def write_stablehlo(probabilities: Callable, size: int, out: str, platforms: Sequence[str]):
    """Writes out/model.jax_export and out/serve.py; returns the `jax.export.Exported`."""
    import jax

    exported = jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(
        _input_spec(size)
    )
    with open(os.path.join(out, ARTEFACT), "wb") as f:
        f.write(exported.serialize())
    shutil.copyfile(os.path.join(os.path.dirname(__file__), "serve.py"), f"{out}/serve.py")
    return exported


def write_savedmodel(probabilities: Callable, size: int, out: str, platforms: Sequence[str]):
    """Writes out/savedmodel: `serving_default` maps uint8 'images' [B, S, S, 3] to float32
    'probabilities' [B, K]. Imports TensorFlow (only here)."""
    from resnet_jax.data import _tf

    tf = _tf.import_tf()  # quiet, and kept off the accelerators that JAX owns
    from jax.experimental import jax2tf

    tf_fn = jax2tf.convert(
        probabilities,
        polymorphic_shapes=[f"(b, {size}, {size}, 3)"],
        with_gradient=False,
        native_serialization_platforms=tuple(platforms),
    )
    spec = tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")
    serve = tf.function(lambda images: {"probabilities": tf_fn(images)}, autograph=False)
    module = tf.Module()
    module.serve = serve.get_concrete_function(spec)
    tf.saved_model.save(
        module, os.path.join(out, SAVEDMODEL), signatures={"serving_default": module.serve}
    )


def export(
    workdir: str,
    out: str | None = None,
    fmt: str = "stablehlo",
    weights: str = "raw",
    step: int | None = None,
    platforms: Sequence[str] = ("cpu", "cuda"),
) -> dict:
    """Writes the run's serving artefacts into `out` (default workdir/export); returns meta."""
    from resnet_jax.engine import faults

    if fmt not in FORMATS:
        raise faults.ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
        raise faults.ConfigError(
            f"platforms must be some of {', '.join(PLATFORMS)}, got {','.join(platforms)}"
        )
    probabilities, meta = serving_function(workdir, weights, step)
    out = out or os.path.join(workdir, "export")
    os.makedirs(out, exist_ok=True)
    meta["platforms"] = list(platforms)
    if fmt in ("stablehlo", "both"):
        write_stablehlo(probabilities, meta["image_size"], out, platforms)
    if fmt in ("savedmodel", "both"):
        write_savedmodel(probabilities, meta["image_size"], out, platforms)
    with open(os.path.join(out, "model.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    return meta


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        entry.fail(f"unexpected arguments {' '.join(argv[1:])} (see --help)", entry.EXIT_USAGE)
    from resnet_jax.engine import faults

    out = FLAGS.out or os.path.join(FLAGS.workdir, "export")
    with faults.exit_on_error():
        meta = export(FLAGS.workdir, out, FLAGS.format, FLAGS.weights, FLAGS.step, FLAGS.platforms)
    how = (
        f"; classify with: python {out}/serve.py IMAGES.npy" if FLAGS.format != "savedmodel" else ""
    )
    print(
        f"exported {meta['model']} step {meta['step']} ({meta['weights']} weights) of "
        f"{FLAGS.workdir} to {out} ({FLAGS.format}){how}",
        flush=True,
    )


def run() -> None:
    """`python -m resnet_jax.export`."""
    define_flags()
    entry.run(main)
