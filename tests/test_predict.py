"""`python -m resnet_jax.predict`: image files classified exactly as the run's test images are."""

import importlib.util
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from resnet_jax.data import arrays, catalog, device_input, shapes
from resnet_jax.engine import evaluate, parallel, trainer, warm_start
from resnet_jax.tools import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step ResNet-8 run of the default job (shapes10), and 4 of its test images as PNGs."""
    spec = importlib.util.spec_from_file_location("d", os.path.join(REPO, "configs", "default.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config()
    c.model_overrides = {"stage_sizes": (1, 1, 1), "widths": (8, 16, 32), "stem_width": 8}
    c.batch_size, c.num_train_steps, c.eval_split = 16, 2, "test[:16]"
    c.eval_batch_size, c.checkpoint_every_steps, c.log_every_steps = 16, 2, 1
    root = tmp_path_factory.mktemp("predict")
    workdir = str(root / "run")
    trainer.train_and_evaluate(c, workdir)
    return workdir, shapes10_pngs(root, 4), c


def shapes10_pngs(root, n: int) -> list[str]:
    """The first `n` shapes10 test images as PNG files in `root`."""
    test = arrays.load(catalog.open("shapes10", input_pipeline="device"), "test")
    paths = [str(root / f"test{i}.png") for i in range(n)]
    for path, image in zip(paths, test.images, strict=False):
        Image.fromarray(image).save(path)
    return paths


def test_predictions_equal_the_evaluation_path_on_the_same_test_images(run):
    workdir, paths, c = run
    got = predict.predict(workdir, paths)
    # The same images through the trainer's own evaluation input (device path) and the model.
    rc = warm_start.run_config(workdir)
    mesh = parallel.make_mesh(jax.devices()[:1])
    model, state, step = evaluate.restore_checkpoint(rc, workdir, mesh)
    assert step == 2
    held = catalog.open("shapes10", input_pipeline="device")
    batch = next(iter(device_input.eval_batches(
        held, batch_sharding=parallel.batch_sharded(mesh), global_batch_size=16,
        split="test[:16]",
    )))  # fmt: skip
    finish = device_input.finish_for(held)
    logits = model.apply(
        {"params": state.params, "batch_stats": state.batch_stats}, finish(batch), train=False
    )
    want = np.asarray(jax.nn.softmax(logits))[:4]
    names = shapes.CLASS_NAMES
    for top, p in zip(got, want, strict=True):
        assert len(top) == 5
        order = np.argsort(-p, kind="stable")[:5]
        assert [name for name, _ in top] == [names[k] for k in order]
        np.testing.assert_allclose([q for _, q in top], p[order], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_cli_prints_top5_of_good_files_one_line_per_bad_one_and_exit_66_if_any_failed(
    run, tmp_path
):
    workdir, paths, _ = run
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # TensorFlow must be quiet without being told
    cmd = [sys.executable, "-m", "resnet_jax.predict", f"--workdir={workdir}"]
    ok = subprocess.run([*cmd, paths[0]], env=env, capture_output=True, text=True, timeout=180)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0] == paths[0] and len(lines) == 6
    percents = [float(line.rsplit(None, 1)[1].rstrip("%")) for line in lines[1:]]
    assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.01
    assert ok.stderr == ""
    broken, missing = tmp_path / "broken.png", tmp_path / "missing.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    mixed = [str(broken), paths[0], str(missing), paths[1]]
    bad = subprocess.run([*cmd, *mixed], env=env, capture_output=True, text=True, timeout=180)
    assert bad.returncode == 66, bad.stderr
    assert bad.stderr.splitlines() == [
        f"resnet_jax: {broken}: not a readable image (Invalid PNG. Failed to initialize decoder.)",
        f"resnet_jax: {missing}: No such file or directory",
    ]
    out = bad.stdout.splitlines()
    assert len(out) == 12 and out[0] == paths[0] and out[6] == paths[1]
    assert out[:6] == lines  # the good file's answer does not depend on its neighbours
