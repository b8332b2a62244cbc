"""The paper's recipe as a rule (resnet_jax/recipes.py), the error-gated warm-up, and the CPU-sized
experiments built from them."""

import functools
import importlib.util
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import experiments
from experiments.defs import cpu
from resnet_jax import config as config_lib
from resnet_jax import optim, recipes
from resnet_jax.engine import steps

REPO = pathlib.Path(__file__).resolve().parent.parent


def _cifar_config(arg):
    spec = importlib.util.spec_from_file_location("cifar10_config", REPO / "configs" / "cifar10.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_recipe_at_the_papers_batch_is_the_papers_recipe():
    r = recipes.scaled(recipes.HE2015_CIFAR, "resnet56")
    assert r["batch_size"] == 128 and r["num_train_steps"] == 64_000
    assert r["learning_rate"] == pytest.approx(0.1)
    assert r["lr_decay_steps"] == (32_000, 48_000) and r["lr_decay_factor"] == 0.1
    assert r["weight_decay"] == 1e-4 and r["momentum"] == 0.9 and r["nesterov"] is False
    assert r["warmup_steps"] == 0 and r["warmup"] == "linear"  # no warm-up below 110 layers


def test_resnet110_warms_up_at_001_until_80_percent_error_at_the_papers_batch():
    for model in ("resnet110", "resnet1202"):
        r = recipes.scaled(recipes.HE2015_CIFAR, model)
        assert r["warmup"] == "until_error"
        assert r["warmup_learning_rate"] == pytest.approx(0.01)
        assert r["warmup_until_error"] == 0.8
        assert r["learning_rate"] == pytest.approx(0.1)


def test_recipe_at_batch_32_scales_rates_linearly_and_keeps_the_decay_fractions():
    r = recipes.scaled(recipes.HE2015_CIFAR, "resnet20", batch_size=32, num_steps=2000)
    assert r["learning_rate"] == pytest.approx(0.025)
    assert r["lr_decay_steps"] == (1000, 1500)  # 1/2 and 3/4, as 32k and 48k of 64k
    assert r["weight_decay"] == 1e-4 and r["momentum"] == 0.9
    deep = recipes.scaled(recipes.HE2015_CIFAR, "resnet110", batch_size=32, num_steps=2000)
    assert deep["warmup_learning_rate"] == pytest.approx(0.0025)
    assert deep["learning_rate"] == pytest.approx(0.025)


def test_the_depth_with_model_overrides_decides_the_warm_up():
    # resnet20's spec with 18 units per stage is 110 layers deep: the paper's rule applies.
    r = recipes.scaled(recipes.HE2015_CIFAR, "resnet20", model_overrides={"stage_sizes": (18,) * 3})
    assert r["warmup"] == "until_error"


def test_cifar10_config_is_the_recipe_at_the_papers_batch():
    c = _cifar_config("resnet110")
    c.dataset, c.num_classes, c.image_size = "synthetic", 10, 32  # resolves without CIFAR on disk
    c = config_lib.resolve_config(c)
    assert c.peak_learning_rate == pytest.approx(0.1)
    assert c.peak_warmup_learning_rate == pytest.approx(0.01)
    assert tuple(c.lr_decay_steps) == (32_000, 48_000) and c.num_train_steps == 64_000
    schedule, tx = config_lib.build_optimizer(c)
    opt_state = tx.init({"w": jnp.zeros((2,))})
    assert float(schedule(0)) == pytest.approx(0.1)  # the gate, not the schedule, holds 0.01
    assert float(optim.lr_multiplier(opt_state)) == pytest.approx(0.1)
    c56 = _cifar_config("resnet56")
    assert c56.warmup_steps == 0 and c56.warmup != "until_error"


def _gate_multipliers(errors, window_steps=1.0):
    gate = optim.error_gated_warmup(0.1, 0.8, window_steps)
    update = jax.jit(lambda state, e: gate.update({"w": jnp.ones(())}, state, train_error=e))
    state = gate.init({"w": jnp.zeros(())})
    used = []
    for e in errors:
        updates, state = update(state, jnp.float32(e))
        used.append(float(updates["w"]))
    return used


def test_warm_up_switches_after_the_error_falls_below_80_percent_and_never_back():
    used = _gate_multipliers([0.9, 0.85, 0.81, 0.8, 0.79, 0.95, 0.95])
    # The step that measures 0.79 still trains at the warm-up rate; the next one at the full rate.
    assert used == pytest.approx([0.1, 0.1, 0.1, 0.1, 0.1, 1.0, 1.0])


def test_warm_up_reads_a_moving_average_not_one_lucky_batch():
    # 400 batches at 85% error with one at 50% among them: the average stays above 80%.
    errors = [0.85] * 200 + [0.5] + [0.85] * 199
    assert max(_gate_multipliers(errors, window_steps=80)) == pytest.approx(0.1)
    # Once the error stays at 70%, the average (time constant 80 steps, from 0.85) crosses 0.8
    # after n steps with 0.7 + 0.15 * d**n < 0.8, d = 1 - 1/80: n = 33; step n + 1 uses the full rate.
    used = _gate_multipliers([0.85] * 2000 + [0.7] * 40, window_steps=80)
    first_full = used.index(1.0)
    d = 1 - 1 / 80
    n = next(k for k in range(1, 100) if 0.7 + (0.85 - 0.7) * d**k < 0.8)
    assert first_full == 2000 + n
    assert min(used[first_full:]) == 1.0


class _Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def test_train_step_reports_and_applies_the_warm_up_rate():
    model = _Tiny()
    schedule = optax.constant_schedule(0.1)
    gated = optim.make_optimizer(schedule, gate=optim.error_gated_warmup(0.1, 0.8, 1.0))
    plain = optim.make_optimizer(schedule)
    batch = {
        "image": jnp.asarray(np.random.default_rng(0).normal(size=(8, 2, 2, 3)), jnp.float32),
        "label": jnp.arange(8) % 3,
    }
    rng = jax.random.PRNGKey(0)
    s_gated = steps.create_train_state(model, gated, rng, (2, 2, 3))
    s_plain = steps.create_train_state(model, plain, rng, (2, 2, 3))
    step = lambda tx: jax.jit(
        functools.partial(steps.train_step, model=model, tx=tx, learning_rate_fn=schedule)
    )
    new_gated, m = step(gated)(s_gated, batch)
    new_plain, m_plain = step(plain)(s_plain, batch)
    assert float(m["learning_rate"]) == pytest.approx(0.01)
    assert float(m_plain["learning_rate"]) == pytest.approx(0.1)
    delta = lambda new, old: new.params["Dense_0"]["kernel"] - old.params["Dense_0"]["kernel"]
    np.testing.assert_allclose(
        delta(new_gated, s_gated), 0.1 * delta(new_plain, s_plain), rtol=1e-4, atol=1e-7
    )


CPU_EXPERIMENTS = ("fig6_cpu", "abl_block_cpu", "abl_shortcut_cpu", "preact_cpu")


def test_cpu_experiments_carry_no_per_net_tuning():
    # Every entry's overrides are the one recipe function of its model and its experiment's run
    # length, nothing else; and every key that is not about the model or the deep nets' warm-up is
    # the same for all entries of an experiment.
    per_net = {"model"}
    for name in CPU_EXPERIMENTS:
        exp = experiments.get_experiment(name)
        assert len(exp.entries) >= 2
        steps = cpu.FIG6_STEPS if name == "fig6_cpu" else cpu.NUM_STEPS
        shared = None
        for e in exp.entries:
            assert e.seeds >= 3
            assert dict(e.overrides) == cpu.recipe(e.model, steps, **dict(e.model_overrides))
            rest = {k: v for k, v in e.overrides.items() if k not in per_net}
            shared = shared or rest
            assert rest == shared, e.name
        assert shared["learning_rate"] == pytest.approx(0.1 * cpu.BATCH_SIZE / 128)
        assert shared["lr_decay_steps"] == (steps // 2, 3 * steps // 4)
        assert f"/10 at steps {steps // 2} and {3 * steps // 4} of {steps}," in exp.notes
