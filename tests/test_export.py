"""`python -m resnet_jax.export`: a run's artefacts, reloaded in a process that cannot import
resnet_jax, classify exactly as the run's own predict does."""

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image

from resnet_jax.data import shapes
from resnet_jax.engine import faults
from resnet_jax.tools import export, predict
from tests import test_predict
from tests.test_cli import _one_line, _run

run = test_predict.run  # its fixture: a 2-step ResNet-8 run of shapes10 and 4 test images as PNGs


def _isolated(args, cwd, timeout=180):
    """Python without the checkout on its path (-I: no PYTHONPATH, no script or working folder)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-I", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def _images(paths):
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])


def _assert_same_as_predict(probs, workdir, paths):
    """probs [N, K] of the images at `paths` give predict's top-5 names and probabilities."""
    want = predict.predict(workdir, paths)
    names = shapes.CLASS_NAMES
    assert probs.shape == (len(paths), len(names))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    for p, top in zip(probs, want, strict=True):
        order = np.argsort(-p, kind="stable")[:5]
        assert [names[k] for k in order] == [name for name, _ in top]
        np.testing.assert_allclose(p[order], [q for _, q in top], rtol=1e-5, atol=1e-7)


def test_the_checkout_is_invisible_to_the_isolated_process(tmp_path):
    p = _isolated(["-c", "import resnet_jax"], tmp_path)
    assert p.returncode == 1 and "No module named 'resnet_jax'" in p.stderr


def test_stablehlo_artefact_reloaded_by_jax_alone_gives_predict_top5_for_any_batch(run, tmp_path):
    workdir, paths, _ = run
    out = tmp_path / "served"
    meta = export.export(workdir, str(out), "stablehlo")  # for cpu and cuda, run here on cpu
    assert sorted(os.listdir(out)) == ["model.jax_export", "model.json", "serve.py"]
    assert (
        meta["platforms"] == ["cpu", "cuda"]
        and meta["step"] == 2
        and meta["image_size"] == 32
        and meta["resize_shorter_side"] == 32
    )
    assert meta["classes"] == list(shapes.CLASS_NAMES)
    np.save(tmp_path / "four.npy", _images(paths))
    np.save(tmp_path / "one.npy", _images(paths[:1])[0])
    # Batches of 4 and 1 through one artefact: the batch dimension is symbolic.
    p = _isolated([str(out / "serve.py"), "--json", "four.npy", "one.npy"], tmp_path)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert [r["image"] for r in got] == [f"four.npy[{i}]" for i in range(4)] + ["one.npy"]
    probs = np.array([r["probs"] for r in got])
    _assert_same_as_predict(probs[:4], workdir, paths)
    np.testing.assert_allclose(probs[4], probs[0], rtol=1e-6)
    # An image file of the run's size goes in as it is: the same answer as its array.
    png = _isolated([str(out / "serve.py"), "--json", paths[1]], tmp_path)
    assert png.returncode == 0, png.stderr
    (from_png,) = json.loads(png.stdout)
    assert [n for n, _ in from_png["top5"]] == [n for n, _ in got[1]["top5"]]
    np.testing.assert_allclose(from_png["probs"], probs[1], rtol=1e-6)


def test_savedmodel_reloaded_by_tensorflow_alone_gives_predict_top5(run, tmp_path):
    workdir, paths, _ = run
    out = tmp_path / "served"
    export.export(workdir, str(out), "savedmodel", platforms=("cpu",))
    np.save(tmp_path / "four.npy", _images(paths))
    reader = (
        "import sys, numpy as np, tensorflow as tf\n"
        "serve = tf.saved_model.load('served/savedmodel').signatures['serving_default']\n"
        "x = np.load('four.npy')\n"
        "np.save('probs.npy', serve(images=tf.constant(x))['probabilities'].numpy())\n"
        "np.save('probs1.npy', serve(images=tf.constant(x[:1]))['probabilities'].numpy())\n"
        "assert 'resnet_jax' not in sys.modules\n"
    )
    p = _isolated(["-c", reader], tmp_path, timeout=300)
    assert p.returncode == 0, p.stderr
    probs = np.load(tmp_path / "probs.npy")
    _assert_same_as_predict(probs, workdir, paths)
    np.testing.assert_allclose(np.load(tmp_path / "probs1.npy")[0], probs[0], rtol=1e-6)


def _cli(*args):
    return _run("resnet_jax.export", *args)


def test_cli_names_the_fix_for_a_workdir_without_a_checkpoint_and_an_unknown_format(run, tmp_path):
    workdir, _, _ = run
    empty = tmp_path / "untrained"
    empty.mkdir()
    (empty / "config.json").write_text(open(f"{workdir}/config.json").read())
    line = _one_line(_cli(f"--workdir={empty}"), faults.EXIT_NO_INPUT)
    assert f"no checkpoint in {empty}/checkpoints: nothing to export; train the run first" in line
    line = _one_line(_cli(f"--workdir={workdir}", "--format=onnx"), 64)
    assert line == (
        "resnet_jax: flag --format=onnx: value should be one of <stablehlo|savedmodel|both> "
        "(see --help)"
    )
    assert not os.path.exists(f"{workdir}/export")


def test_ema_weights_of_a_run_that_keeps_none_are_one_line_and_exit_78(run):
    workdir, _, _ = run
    line = _one_line(_cli(f"--workdir={workdir}", "--weights=ema"), faults.EXIT_CONFIG)
    assert "holds no averaged (EMA) weights" in line and "weights=raw" in line
    assert not os.path.exists(f"{workdir}/export")


def test_a_synthetic_run_exports_with_numbered_classes_and_the_imagenet_style_crop():
    c = ml_collections.ConfigDict({"dataset": "synthetic", "image_size": 64, "num_classes": 3})
    assert predict.input_crop(c) == (64, 73)  # shorter side 64 / 0.875, centre 64x64
    assert predict.class_names(c) is None  # model.json then numbers them: "class 0", ...


# What a server installs (docs/export.md): jax with the packages jax itself requires, flatbuffers,
# and Pillow for image files; a fresh venv of those alone ran serve.py on 2026-12-07.
SERVED = ("jax", "jaxlib", "numpy", "ml_dtypes", "scipy", "opt_einsum", "flatbuffers", "PIL")
# Runs a script as if site-packages held only the packages named in argv[1]: any other is absent.
_ONLY = """
import importlib.machinery, runpy, sys, sysconfig
allowed, script = set(sys.argv[1].split(",")), sys.argv[2]
site = tuple({sysconfig.get_paths()[k] for k in ("purelib", "platlib")})
class OnlyThese:
    def find_spec(self, name, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        where = spec and (spec.origin or next(iter(spec.submodule_search_locations or []), ""))
        if where and where.startswith(site) and name.partition(".")[0] not in allowed:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, OnlyThese())
sys.argv = sys.argv[2:]
runpy.run_path(script, run_name="__main__")
"""


def test_serve_runs_on_jax_flatbuffers_and_pillow_alone_and_names_each_bad_file_in_one_line(
    run, tmp_path
):
    workdir, paths, _ = run
    out = tmp_path / "served"
    export.export(workdir, str(out), "stablehlo", platforms=("cpu",))
    np.save(tmp_path / "one.npy", _images(paths[:1])[0])
    np.save(tmp_path / "floats.npy", _images(paths[:1]).astype(np.float32) / 255)
    (tmp_path / "bad.png").write_bytes(b"not an image")

    def serve(packages, *files):
        args = ["-c", _ONLY, ",".join(packages), str(out / "serve.py"), "--json", *files]
        return _isolated(args, tmp_path)

    p = serve(SERVED, "bad.png", "one.npy", "floats.npy", "gone.png", paths[1])
    assert p.returncode == 66, p.stderr  # as predict: the readable files are still classified
    assert p.stderr.splitlines() == [
        "serve.py: bad.png: not a readable image (its bytes are no image format Pillow reads)",
        "serve.py: floats.npy: holds float32 [1, 32, 32, 3]; the model takes uint8 [32, 32, 3] "
        "or [B, 32, 32, 3], cropped as model.json says",
        "serve.py: gone.png: No such file or directory",
    ]
    got = json.loads(p.stdout)
    assert [r["image"] for r in got] == ["one.npy", paths[1]]
    # The artefact read here by jax gives the same numbers (predict's: the test above).
    exported = jax.export.deserialize(bytearray((out / "model.jax_export").read_bytes()))
    want = np.asarray(exported.call(_images(paths[:2])))
    np.testing.assert_allclose([r["probs"] for r in got], want, rtol=1e-6)
    # jax reads an artefact with flatbuffers, which installing jax does not bring.
    p = serve([m for m in SERVED if m != "flatbuffers"], "one.npy")
    assert (p.returncode, p.stderr.strip()) == (
        1,
        "serve.py: reading model.jax_export needs flatbuffers besides jax (pip install flatbuffers)",
    )
