"""evaluate.py's reductions on a toy module: padding ignored, scores averaged over scales, no
collective between CPU devices."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from resnet_jax import optim
from resnet_jax.engine import evaluate, parallel, steps
from tests.test_steps import TinyNet, _batch


@pytest.fixture(scope="module")
def setup():
    model, mesh = TinyNet(), parallel.make_mesh()
    state = parallel.create_sharded_train_state(
        model, optim.make_optimizer(0.1), jax.random.PRNGKey(3), (8, 8, 3), mesh
    )
    return model, mesh, state


def _eval_batches(n_real, batch=8, seed=0):
    """Batches over n_real examples; the last is padded with mask=False rows of garbage."""
    data = _batch(n_real, seed=seed)
    out = []
    for lo in range(0, n_real, batch):
        img, lab = data["image"][lo : lo + batch], data["label"][lo : lo + batch]
        pad = batch - len(lab)
        out.append(
            {
                "image": np.concatenate([img, np.full((pad, 8, 8, 3), 50.0, np.float32)]),
                "label": np.concatenate([lab, np.zeros(pad, np.int32)]),
                "mask": np.arange(batch) < len(lab),
            }
        )
    return data, out


def test_evaluation_means_cover_exactly_the_real_examples(setup):
    model, mesh, state = setup
    data, batches = _eval_batches(13)
    result = evaluate.evaluate_batches(parallel.jit_eval_step(model, mesh), state, batches, mesh)
    probs = jax.jit(functools.partial(steps.predict_step, model=model))(state, data)
    expected_top1 = float(np.mean(np.argmax(probs, -1) == data["label"]))
    expected_loss = float(-np.mean(np.log(probs[np.arange(13), data["label"]])))
    assert result["count"] == 13
    assert result["top1"] == pytest.approx(expected_top1)
    assert result["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_multiscale_averages_probabilities_over_scales(setup):
    model, mesh, state = setup
    _, scale_a = _eval_batches(11, seed=0)
    _, scale_b = _eval_batches(11, seed=0)
    for b in scale_b:  # the "second scale": the same examples at another size (16x16)
        b["image"] = np.repeat(np.repeat(b["image"], 2, axis=1), 2, axis=2)
    predict = parallel.jit_predict_step(model, mesh)
    score = evaluate.score_step(mesh)
    result = evaluate.evaluate_multiscale(predict, score, state, [scale_a, scale_b], mesh)

    probs = [
        np.concatenate([np.asarray(predict(state, b)) for b in s])[:11] for s in (scale_a, scale_b)
    ]
    mean = (probs[0] + probs[1]) / 2
    labels = np.concatenate([b["label"] for b in scale_a])[:11]
    assert result["count"] == 11
    assert result["top1"] == pytest.approx(float(np.mean(mean.argmax(-1) == labels)))
    assert result["loss"] == pytest.approx(
        float(-np.mean(np.log(mean[np.arange(11), labels]))), rel=1e-5
    )
    assert not np.allclose(probs[0], probs[1])  # the two scales really differ


def test_unknown_views_are_rejected(setup):
    from resnet_jax.data import catalog, finish

    model, mesh, _ = setup
    d, plan = catalog.open("synthetic", pool_examples=8), catalog.Plan(batch_size=8)
    with pytest.raises(ValueError, match="center"):
        evaluate.make_evaluator(model, mesh, d, plan, finish=finish.IMAGENET, views="5crop")


# Evaluation on 2 simulated CPU devices, with XLA's CPU client held to 2 threads (PJRT_NPROC: its
# pool gets max(PJRT_NPROC, devices) threads) as on a 2-core machine, over batches already on the
# devices, so that the steps are dispatched faster than they run, far past the 32 XLA queues per
# device. The eval step with collectives (an all-gather and an all-reduce) aborted here after
# 40 s ("Termination timeout for `all gather ...`"), as `--mode=eval` of two seeds did.
_TWO_DEVICES = r"""
import functools, json, re
import jax, numpy as np
from resnet_jax import optim
from resnet_jax.engine import evaluate, parallel, steps
from tests.test_steps import TinyNet
from tests.test_train_evaluate import _eval_batches
model, mesh = TinyNet(), parallel.make_mesh()
state = parallel.create_sharded_train_state(
    model, optim.make_optimizer(0.1), jax.random.PRNGKey(3), (8, 8, 3), mesh)
data, batches = _eval_batches(797)  # 100 batches of 8, the last with 5 real examples
eval_step = parallel.jit_eval_step(model, mesh)
hlo = eval_step.lower(state, parallel.host_to_global(batches[0], mesh)).compile().as_text()
on_mesh = jax.block_until_ready([parallel.host_to_global(b, mesh) for b in batches])
result = evaluate.evaluate_batches(eval_step, state, on_mesh, mesh)  # dispatched as fast as can be
probs = np.asarray(jax.jit(functools.partial(steps.predict_step, model=model))(state, data))
print(json.dumps({
    "devices": jax.device_count(),
    "collectives": sorted(set(re.findall(r"(all-gather|all-reduce|all-to-all|collective-permute)", hlo))),
    "result": result,
    "top1": float(np.mean(probs.argmax(-1) == data["label"])),
    "loss": float(-np.mean(np.log(probs[np.arange(797), data["label"]]))),
}))
"""


def test_evaluation_on_two_cpu_devices_needs_no_collective_and_survives_a_full_queue():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        PYTHONPATH=repo,
        JAX_PLATFORMS="cpu",
        PJRT_NPROC="2",
        XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _TWO_DEVICES],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["devices"] == 2
    assert r["collectives"] == []  # each device sums its own share
    assert r["result"]["count"] == 797
    assert r["result"]["top1"] == pytest.approx(r["top1"])
    assert r["result"]["loss"] == pytest.approx(r["loss"], rel=1e-5)
