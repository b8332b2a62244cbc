"""evaluate.py's reductions on a toy module: padding ignored, scores averaged over scales."""

import functools

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
    score = jax.jit(steps.metrics_from_probs)
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
