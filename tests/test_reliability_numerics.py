"""NaN/Inf in the loss or gradients: found with its step, never saved, optionally skipped and counted.

The trainer-level runs (a NaN batch injected at step k with `--config.debug_nan_step=k`) are in
tests/test_reliability_kill.py, which shares their subprocess set-up; these work on the step itself.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax import optim
from resnet_jax.engine import faults, numerics, steps
from tests.test_steps import TinyNet, _batch


def _step_fns(lr=0.1):
    model = TinyNet()
    schedule = optax.constant_schedule(lr)
    tx = optim.make_optimizer(schedule, momentum=0.9, weight_decay=1e-4)
    state = steps.create_train_state(model, tx, jax.random.PRNGKey(0), (8, 8, 3))
    make = lambda skip: jax.jit(
        functools.partial(
            steps.train_step, model=model, tx=tx, learning_rate_fn=schedule, skip_nonfinite=skip
        )
    )
    return state, make(False), make(True)


def _nan_batch(seed):
    return numerics.poison_batch({k: jnp.asarray(v) for k, v in _batch(seed=seed).items()})


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_skip_policy_drops_a_nan_update_as_if_the_batch_had_never_come():
    state, _, skipping = _step_fns()
    b0, b2 = _batch(seed=0), _batch(seed=2)
    # The same compiled step without the bad batch (another program may differ in the last bit).
    expected, _ = skipping(skipping(state, b0)[0], b2)

    s1, m1 = skipping(state, b0)
    s_nan, m_nan = skipping(s1, _nan_batch(1))
    assert float(m1["skipped"]) == 0.0 and float(m_nan["skipped"]) == 1.0
    # XLA's relu maps NaN to 0 here, so the loss can stay finite: the gradient norm shows it.
    assert not np.isfinite(float(m_nan["grad_norm"]))
    _assert_same(s_nan, s1)  # every leaf, optimizer count and step included
    s2, _ = skipping(s_nan, b2)
    _assert_same(s2, expected)


def test_without_the_skip_policy_a_nan_batch_poisons_the_state():
    state, plain, _ = _step_fns()
    s, m = plain(state, _nan_batch(1))
    assert "skipped" not in m
    assert not bool(numerics.all_finite(s.params))


def test_stop_policy_names_the_first_non_finite_step_and_the_likely_causes():
    state, plain, _ = _step_fns()
    metrics = []
    for i in range(3):
        state, m = plain(state, _nan_batch(i) if i == 1 else _batch(seed=i))
        metrics.append(m)
    monitor = numerics.NonFiniteMonitor("stop", dtype="bfloat16")
    monitor.last_good_checkpoint = 10
    with pytest.raises(faults.NonFiniteError) as e:
        monitor.check(11, metrics)  # these were steps 11, 12, 13
    msg = str(e.value)
    assert e.value.exit_code == faults.EXIT_NONFINITE == 65
    assert re.match(
        r"non-finite (loss and )?grad_norm at step 12 \(loss=\S+, grad_norm=nan, "
        r"learning_rate=0\.1\)\. Likely causes: ",
        msg,
    ), msg
    for cause in (
        "learning rate is too high",
        "bfloat16 overflow",
        "bad input data",
        "checkpoint 10 (written before it) is the newest and is kept",
        "--config.nonfinite_policy=skip",
    ):
        assert cause in msg
    with pytest.raises(faults.NonFiniteError, match="non-finite train state at step 13"):
        monitor.check_state(13, state)


def test_the_state_check_before_a_save_also_gives_the_fingerprint_in_one_pass():
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "n": jnp.arange(4, dtype=jnp.int32)}
    assert numerics.finite_and_fingerprint(tree) == (True, numerics.fingerprint(tree))
    monitor = numerics.NonFiniteMonitor("stop")
    assert monitor.check_state(5, tree) == numerics.fingerprint(tree)
    bad = dict(tree, w=tree["w"].at[1, 2].set(jnp.inf))
    assert numerics.finite_and_fingerprint(bad)[0] is False
    with pytest.raises(faults.NonFiniteError, match="non-finite train state at step 6"):
        monitor.check_state(6, bad)


def test_skip_policy_monitor_counts_skipped_steps_and_averages_the_others():
    monitor = numerics.NonFiniteMonitor("skip", skipped=2)
    fetched = [
        {"loss": np.float32(1.0), "skipped": np.float32(0)},
        {"loss": np.float32(np.nan), "skipped": np.float32(1)},
        {"loss": np.float32(3.0), "skipped": np.float32(0)},
    ]
    assert len(monitor.check(5, fetched)) == 3
    assert monitor.skipped == 3
    logged = monitor.loggable(fetched)
    assert [float(m["loss"]) for m in logged] == [1.0, 3.0]
    assert [set(m) for m in logged] == [{"loss", "skipped_steps"}] * 2
    assert logged[0]["skipped_steps"] == 3
