"""Tests of the benchmark's arithmetic (MFU, statistics, FLOP counts, tables) and of its CLI."""

import json
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from resnet_jax.bench import core as bench_core

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- MFU and peaks -----------------------------------------------------------------------------


def test_mfu_of_resnet50_step_from_known_flop_count_and_time():
    # PAPER.md §4: 24.5e9 FLOP per image; 256 images in 0.1 s → 62.72 TFLOP/s.
    flops = 24.5e9 * 256
    assert bench_core.achieved_tflops(flops, 0.1) == pytest.approx(62.72)
    assert bench_core.mfu(flops, 0.1, 989.4) == pytest.approx(62.72 / 989.4)
    # The same step spread over 8 devices is measured against 8 peaks.
    assert bench_core.mfu(flops, 0.1, 989.4, num_devices=8) == pytest.approx(62.72 / 989.4 / 8)


def test_mfu_is_none_without_a_peak_or_flops():
    assert bench_core.mfu(1e12, 1.0, None) is None
    assert bench_core.mfu(None, 1.0, 100.0) is None
    assert bench_core.achieved_tflops(0.0, 1.0) is None


@pytest.mark.parametrize(
    "kind,dtype,peak",
    [
        ("NVIDIA H100 80GB HBM3", "bfloat16", 989.4),
        ("NVIDIA H100 80GB HBM3", "float32", 494.7),
        ("NVIDIA H100 PCIe", "bfloat16", 756.5),
        ("NVIDIA H200", "bfloat16", 989.4),
        ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
        ("NVIDIA L40S", "bfloat16", 362.1),  # must not be taken for an L4
        ("NVIDIA L4", "bfloat16", 121.0),
        ("TPU v4", "float32", None),
        ("cpu", "bfloat16", None),
    ],
)
def test_peak_table_matches_device_kinds(kind, dtype, peak):
    assert bench_core.lookup_peak_tflops(kind, dtype) == peak


# --- statistics --------------------------------------------------------------------------------


def test_percentiles_interpolate_linearly_like_numpy():
    values = [10.0, 1.0, 7.0, 3.0, 2.0, 9.0, 4.0, 8.0, 6.0, 5.0]
    assert bench_core.percentile(values, 50) == pytest.approx(5.5)
    assert bench_core.percentile(values, 90) == pytest.approx(9.1)
    assert bench_core.percentile(values, 0) == 1.0
    assert bench_core.percentile(values, 100) == 10.0
    for q in (10, 25, 33, 75, 99):
        assert bench_core.percentile(values, q) == pytest.approx(np.percentile(values, q))
    with pytest.raises(ValueError):
        bench_core.percentile([], 50)


def test_summary_of_step_times_is_robust_to_one_outlier():
    s = bench_core.summarize([0.10, 0.11, 0.10, 0.12, 0.95])
    assert s["median"] == pytest.approx(0.11)
    assert s["min"] == pytest.approx(0.10)
    assert s["p90"] == pytest.approx(0.12 + 0.6 * (0.95 - 0.12))
    assert s["mean"] == pytest.approx(1.38 / 5)
    assert s["n"] == 5


def test_split_steps_covers_the_requested_steps():
    assert bench_core.split_steps(20, 5) == (5, 4)
    assert bench_core.split_steps(2, 5) == (2, 1)
    assert bench_core.split_steps(7, 3) == (3, 3)
    with pytest.raises(ValueError):
        bench_core.split_steps(0, 5)


# --- timing loop -------------------------------------------------------------------------------


def test_time_step_runs_warmup_then_windows_and_divides_by_steps():
    ticks = iter(
        [
            0.0,
            1.0,  # warm-up
            1.0,
            1.4,  # window 1: 2 steps in 0.4 s
            2.0,
            2.6,  # window 2: 2 steps in 0.6 s
            3.0,
            3.2,
        ]
    )  # window 3: 2 steps in 0.2 s
    calls = []

    def step(carry, batch):
        calls.append(carry)
        return carry + 1, batch

    t = bench_core.time_step(step, 0, "b", steps=6, warmup=2, windows=3, clock=lambda: next(ticks))
    assert t.carry == 8 and calls == list(range(8))  # the carry threads through all 8 calls
    assert t.steps_per_window == 2
    assert t.step_seconds == pytest.approx([0.2, 0.3, 0.1])
    assert t.warmup_seconds == pytest.approx(1.0)
    assert t.stats["median"] == pytest.approx(0.2)


def test_time_step_threads_donated_device_state():
    # With donation the input buffer is dead after each call: the loop must use the returned state.
    step = jax.jit(lambda s, x: (s + x, jnp.sum(s)), donate_argnums=0)
    t = bench_core.time_step(step, jnp.zeros((4,)), jnp.ones((4,)), steps=4, warmup=1, windows=2)
    np.testing.assert_allclose(np.asarray(t.carry), np.full((4,), 5.0))
    assert len(t.step_seconds) == 2 and all(s > 0 for s in t.step_seconds)


def test_time_step_refuses_a_step_that_syncs_with_the_host():
    # A step fed a numpy array (or fetching a value) would copy every step; the guard raises.
    step = jax.jit(lambda s, x: (s + x, None))
    with pytest.raises(Exception, match="[Dd]isallowed"):
        bench_core.time_step(step, jnp.zeros((4,)), np.ones((4,), np.float32), steps=1, warmup=0)
    t = bench_core.time_step(
        step, jnp.zeros((4,)), np.ones((4,), np.float32), steps=1, warmup=0, guard_transfers=False
    )
    np.testing.assert_allclose(np.asarray(t.carry), np.ones((4,)))


# --- XLA cost analysis against analytic counts -------------------------------------------------


class _Dense(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.features, use_bias=False)(x)


def _sgd_step(model, tx):
    def step(state, batch):
        params, opt_state = state

        def loss_fn(p):
            return jnp.mean((model.apply({"params": p}, batch["x"]) - batch["y"]) ** 2)

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

    return step


def test_dense_train_step_flops_are_three_times_the_forward_matmul():
    m, k, n = 64, 512, 512
    model, tx = _Dense(n), optax.sgd(0.1)
    x, y = jnp.ones((m, k)), jnp.zeros((m, n))
    params = model.init(jax.random.key(0), x)["params"]
    state = (params, tx.init(params))
    lowered = jax.jit(_sgd_step(model, tx)).lower(state, {"x": x, "y": y})
    flops, source = bench_core.step_flops(lowered, lowered.compile(), num_devices=1)
    # forward x@W (2mkn) + dL/dW (2mkn); dL/dx is not needed as x is not a parameter. Elementwise
    # loss/optimizer work is O(mn + kn), under 1% here.
    assert source == "compiled"
    assert flops == pytest.approx(2 * 2 * m * k * n, rel=0.02)


def test_dense_forward_and_both_gradients_are_six_mkn():
    # The "3 x forward" rule of PAPER.md §4: forward x@W, input gradient, weight gradient, each
    # 2mkn. tanh keeps the cotangent a real matrix (a plain sum would let XLA turn the gradient
    # matmuls into reductions against a broadcast of ones).
    m, k, n = 64, 512, 512
    f = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w)), argnums=(0, 1)))
    lowered = f.lower(jnp.ones((k, n)), jnp.ones((m, k)))
    flops, _ = bench_core.step_flops(lowered, lowered.compile(), num_devices=1)
    assert flops == pytest.approx(3 * 2 * m * k * n, rel=0.02)


def test_valid_conv_flops_match_the_analytic_count():
    b, h, w, cin, cout, kk = 4, 18, 18, 8, 16, 3
    conv = jax.jit(
        lambda x, k: jax.lax.conv_general_dilated(
            x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )
    lowered = conv.lower(jnp.ones((b, h, w, cin)), jnp.ones((kk, kk, cin, cout)))
    flops, _ = bench_core.step_flops(lowered, lowered.compile(), num_devices=1)
    ho = wo = h - kk + 1
    assert flops == pytest.approx(2 * b * ho * wo * cout * kk * kk * cin, rel=0.01)


def test_sharded_step_flops_count_all_devices():
    # After SPMD partitioning the compiled module is one device's program; step_flops must scale
    # it back to the global step, so 1 and 2 devices agree. Needs its own process for 2 devices.
    script = textwrap.dedent("""
        import jax, jax.numpy as jnp
        from jax.sharding import NamedSharding, PartitionSpec as P
        from resnet_jax.bench import core as bench_core
        step = jax.jit(lambda w, x: w - 0.1 * jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w))
        for n in (1, 2):
            mesh = jax.make_mesh((n,), ("data",), devices=jax.devices()[:n])
            w = jax.device_put(jnp.ones((256, 256)), NamedSharding(mesh, P()))
            x = jax.device_put(jnp.ones((64, 256)), NamedSharding(mesh, P("data")))
            lowered = step.lower(w, x)
            compiled = lowered.compile()
            print(bench_core.step_flops(lowered, compiled, n)[0],
                  compiled.cost_analysis()["flops"])
    """)
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=REPO,
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    (one, one_raw), (two, two_raw) = [tuple(map(float, line.split())) for line in out[:2]]
    assert two_raw == pytest.approx(one_raw / 2, rel=0.05)  # each device does half the work
    assert two == pytest.approx(one, rel=0.05)


class _FakeStage:
    def __init__(self, flops):
        self.flops = flops

    def cost_analysis(self):
        return {"flops": self.flops}


def test_step_flops_falls_back_to_the_lowered_count_when_the_compiled_one_misses_work():
    # e.g. GPU convolutions turned into cuDNN custom calls that the cost model cannot see.
    assert bench_core.step_flops(_FakeStage(100.0), _FakeStage(60.0), 1) == (100.0, "lowered")
    assert bench_core.step_flops(_FakeStage(100.0), _FakeStage(45.0), 2) == (90.0, "compiled")
    assert bench_core.step_flops(_FakeStage(100.0), _FakeStage(0.0), 1) == (100.0, "lowered")
    assert bench_core.step_flops(_FakeStage(0.0), _FakeStage(0.0), 1) == (None, "unavailable")
    # Older jax returned one dict per computation.
    listed = _FakeStage(None)
    listed.cost_analysis = lambda: [{"flops": 30.0}, {"flops": 12.0}]
    assert bench_core.step_flops(listed, listed, 1) == (42.0, "compiled")


def test_compiled_memory_counts_arguments_outputs_and_temporaries():
    lowered = jax.jit(lambda a: a * 2.0).lower(jnp.ones((256, 256), jnp.float32))
    mem = bench_core.compiled_memory_bytes(lowered.compile())
    assert mem >= 2 * 256 * 256 * 4  # one f32 input and one f32 output


def test_peak_memory_is_none_on_cpu():
    assert bench_core.peak_memory_bytes(jax.devices()) is None


# --- tables ------------------------------------------------------------------------------------


def test_sweep_markdown_table_formats_rows_and_errors():
    rows = [
        {
            "model": "resnet50",
            "image_size": 224,
            "batch_size": 128,
            "images_per_sec": 3210.46,
            "step_ms": 39.87,
            "step_ms_min": 39.5,
            "step_ms_p90": 40.21,
            "compile_s": 41.26,
            "tflops": 78.7,
            "mfu": 0.0796,
            "peak_memory_bytes": 3 * 2**30,
        },
        {
            "model": "resnet20",
            "image_size": 32,
            "batch_size": 64,
            "images_per_sec": 12.0,
            "step_ms": 5333.3,
            "step_ms_min": 5000.0,
            "step_ms_p90": 5500.0,
            "compile_s": 3.0,
            "tflops": None,
            "mfu": None,
            "peak_memory_bytes": None,
        },
        {"model": "resnet50", "image_size": 224, "batch_size": 1024, "error": "out of memory"},
    ]
    table = bench_core.markdown_table(rows).split("\n")
    assert table[0] == (
        "| model | px | batch | images/s | step ms (median) | min ms | p90 ms | "
        "compile s | TFLOP/s | MFU | peak mem GiB |"
    )
    assert table[1] == "|---|" + "---:|" * 10
    assert table[2] == (
        "| resnet50 | 224 | 128 | 3,210.5 | 39.87 | 39.50 | 40.21 | 41.3 | 78.7 | 8.0 | 3.00 |"
    )
    assert table[3] == (
        "| resnet20 | 32 | 64 | 12.0 | 5333.30 | 5000.00 | 5500.00 | 3.0 | n/a | n/a | n/a |"
    )
    assert table[4] == "| resnet50 | 224 | 1024 | out of memory |" + "  |" * 7


def test_rates_keep_three_significant_digits_when_small():
    assert bench_core._fmt(3210.46, "rate") == "3,210.5"
    assert bench_core._fmt(0.53412, "rate") == "0.534"
    assert bench_core._fmt(None, "rate") == "n/a"


def test_out_of_memory_errors_are_recognised():
    assert bench_core.is_out_of_memory(
        RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes")
    )
    assert not bench_core.is_out_of_memory(ValueError("bad shape"))


# --- the tool on the project's real model and steps ---------------------------------------------

REQUIRED_KEYS = {
    "images_per_sec",
    "step_ms",
    "compile_s",
    "device",
    "flops_per_step",
    "tflops",
    "mfu",
    "peak_memory_bytes",
    "model",
    "batch_size",
    "dtype",
    "image_size",
    "mode",
}


def test_benchmark_imports_neither_tensorflow_nor_ml_collections():
    # The model benchmark must run on a GPU image that has JAX/flax/optax but neither TensorFlow
    # nor ml_collections (a CUDA machine image lacks both).
    script = (
        "import sys, resnet_jax.bench.cli, resnet_jax.models, resnet_jax.engine.parallel, "
        "resnet_jax.optim, resnet_jax.engine.steps; "
        "print(sorted(m for m in ('tensorflow', 'ml_collections') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=REPO),
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_cli_times_resnet20_train_step_and_emits_json(tmp_path):
    from resnet_jax.tools import summary

    cmd = [
        sys.executable,
        "-m",
        "resnet_jax.bench.cli",
        "--model=resnet20",
        "--batch_size=8",
        "--steps=2",
        "--warmup=1",
        "--windows=2",
        "--json",
        f"--output={tmp_path / 'r.json'},{tmp_path / 'r.txt'}",
    ]
    proc = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout)
    assert json.loads((tmp_path / "r.json").read_text()) == r
    assert (tmp_path / "r.txt").read_text().startswith("resnet20 train batch=8 float32 32px on cpu")
    assert REQUIRED_KEYS <= set(r)
    assert (r["model"], r["mode"], r["batch_size"], r["dtype"], r["image_size"]) == (
        "resnet20",
        "train",
        8,
        "float32",
        32,
    )
    assert r["steps"] == 2 and r["windows"] == 2
    assert r["images_per_sec"] == pytest.approx(8 / (r["step_ms"] / 1e3))
    assert 0 < r["step_ms_min"] <= r["step_ms"] <= r["step_ms_p90"] <= r["step_ms_max"]
    assert r["compile_s"] >= r["lower_s"] > 0
    assert r["device"].startswith("cpu") and r["num_devices"] == 1
    # No peak is known for a CPU, so no MFU; the allocator keeps no statistics there.
    assert r["mfu"] is None and r["peak_memory_bytes"] is None
    assert r["tflops"] == pytest.approx(r["flops_per_step"] / (r["step_ms"] / 1e3) / 1e12)
    # FLOPs from the model: a training step costs 3 x 2 FLOPs x multiply-adds per image. XLA's
    # count sits beside it: it skips padding taps and the stem's input gradient (lower) and counts
    # BN/optimiser work (higher), within 10% here, so no warning.
    macs = summary.model_stats("resnet20").macs
    assert r["flops_per_image"] == 6 * macs and r["flops_source"] == "model"
    assert 0.9 < r["flops_xla"] / r["flops_per_step"] == r["flops_xla_ratio"] < 1.1
    assert r["flops_warning"] is None
    assert r["flops_xla_source"] == "compiled"  # on CPU the compiled module's count is complete
    assert r["flops_per_step_compiled"] == pytest.approx(r["flops_per_step_lowered"], rel=0.05)
    assert r["compiled_memory_bytes"] > 3 * 4 * 0.27e6  # f32 params + momentum + grads at least


def test_eval_mode_with_host_feed_times_the_forward_pass_and_writes_a_profile(tmp_path):
    from resnet_jax.bench import cli as benchmark
    from resnet_jax.models import create_model
    from resnet_jax.tools import summary

    # One unit per stage (a "ResNet-8") through the model overrides keeps the compile short.
    r = benchmark.benchmark(
        "resnet20",
        batch_size=4,
        mode="eval",
        feed="host",
        steps=2,
        warmup=1,
        windows=2,
        peak_tflops=1.0,
        profile_dir=str(tmp_path),
        profile_steps=1,
        stage_sizes=(1, 1, 1),
    )
    assert (r["mode"], r["feed"], r["batch_size"]) == ("eval", "host", 4)
    # Forward only: 2 FLOPs per multiply-add; XLA's count within the padding/BN slack.
    macs = summary.analyze(create_model("resnet20", stage_sizes=(1, 1, 1))).macs
    assert r["flops_per_image"] == 2 * macs
    assert 0.8 < r["flops_xla"] / r["flops_per_step"] < 1.2
    # A peak was given, so MFU is the achieved TFLOP/s over it.
    assert r["mfu"] == pytest.approx(r["tflops"] / 1.0)
    assert list(tmp_path.glob("plugins/profile/*/*.xplane.pb"))  # the jax.profiler trace


def test_host_batches_are_fresh_global_arrays_each_step():
    from resnet_jax.bench import cli as benchmark
    from resnet_jax.engine import parallel

    mesh = parallel.make_mesh()
    it = benchmark.host_batches(mesh, 8, 4, 10, pool=2)
    a, b, c = next(it), next(it), next(it)
    assert a["image"].shape == (8, 4, 4, 3) and a["image"].sharding == parallel.batch_sharded(mesh)
    assert a["image"] is not c["image"]  # a new device array per step, even for a reused pool entry
    np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(c["image"]))
    assert not np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))


def test_sweep_runs_smallest_batch_first_and_stops_at_out_of_memory(monkeypatch):
    from resnet_jax.bench import cli as benchmark

    seen = []

    def fake_benchmark(model_name, *, batch_size, **kwargs):
        seen.append(batch_size)
        if batch_size > 256:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
        return {
            "model": model_name,
            "image_size": 224,
            "batch_size": batch_size,
            "images_per_sec": 10.0 * batch_size,
            "step_ms": 100.0,
            "step_ms_min": 99.0,
            "step_ms_p90": 101.0,
            "compile_s": 5.0,
            "tflops": 1.0,
            "mfu": 0.5,
            "peak_memory_bytes": 2**30,
        }

    monkeypatch.setattr(benchmark, "benchmark", fake_benchmark)
    rows = benchmark.sweep("resnet50", [1024, 128, 512, 256], dtype="bfloat16")
    assert seen == [128, 256, 512]  # 1024 is not tried once 512 ran out of memory
    assert rows[-1] == {
        "model": "resnet50",
        "image_size": 224,
        "batch_size": 512,
        "error": "out of memory",
    }
    table = benchmark.table_with_header(rows).split("\n")
    assert table[4] == (
        "| resnet50 | 224 | 128 | 1,280.0 | 100.00 | 99.00 | 101.00 | 5.0 | 1 | 50.0 | 1.00 |"
    )
    assert table[6].startswith("| resnet50 | 224 | 512 | out of memory |")

    def broken(model_name, *, batch_size, **kwargs):
        raise ValueError("not an OOM")

    monkeypatch.setattr(benchmark, "benchmark", broken)
    with pytest.raises(ValueError):  # real errors are not swallowed as table rows
        benchmark.sweep("resnet50", [128])


def test_input_pipeline_mode_reports_the_input_measurement_and_cores_to_feed(monkeypatch):
    import types

    import resnet_jax.bench
    from resnet_jax.bench import cli as benchmark

    calls = []

    def fake_measure(
        dataset,
        data_dir,
        batch_size,
        augment=None,
        num_batches=40,
        *,
        warmup_batches=5,
        image_size=None,
        num_threads=None,
        seed=0,
    ):
        calls.append((dataset, data_dir, batch_size, augment, num_batches, image_size, num_threads))
        return {
            "images_per_sec": 1234.5,
            "images_per_sec_per_core": 617.25,
            "images_per_cpu_sec": 500.0,
            "cores": 2,
            "batch_size": batch_size,
            "dataset": dataset,
            "augment": augment or "paper",
        }

    def fake_compare(dataset, data_dir, batch_size, augment=None, *, rounds, **kwargs):
        calls.append(("compare", dataset, rounds, kwargs["num_batches"]))
        return {"pipeline_images_per_cpu_sec": 350.0, "ratio": 0.9, "dataset": dataset}

    # Stands in for resnet_jax.bench.input_throughput, whose real run needs a prepared dataset
    # and TF.
    module = types.ModuleType("resnet_jax.bench.input_throughput")
    module.measure_input_pipeline = fake_measure
    module.compare_with_decoder = fake_compare
    module.format_comparison = lambda r: "compared"
    monkeypatch.setitem(sys.modules, "resnet_jax.bench.input_throughput", module)
    monkeypatch.setattr(resnet_jax.bench, "input_throughput", module, raising=False)
    r = benchmark.input_pipeline("imagenet2012", "/data", 256, "inception", 7, 192, 16)
    assert calls == [("imagenet2012", "/data", 256, "inception", 7, 192, 16)]
    assert r["images_per_sec"] == 1234.5 and r["augment"] == "inception"
    assert "cores" in r["device"] and r["date"].endswith("UTC") and "cores_to_feed" not in r
    r = benchmark.input_pipeline("imagenet2012", "/data", 256, feed_target=7000)
    assert r["cores_to_feed"] == pytest.approx(14.0)  # 7000 / 500 images per CPU-second
    text = benchmark.format_input_pipeline(r)
    assert "617.2 per core" in text and "14.0 cores at that rate" in text and "7,000" in text
    r = benchmark.input_pipeline(
        "imagenet2012", None, 8, vs_decoder=True, rounds=3, feed_target=7000
    )
    assert calls[-1] == ("compare", "imagenet2012", 3, 40) and r["cores_to_feed"] == 20.0
    assert benchmark.format_input_pipeline(r).startswith("compared\non host ")
    with pytest.raises(ValueError, match="feed_target must be a positive rate"):
        benchmark.input_pipeline("imagenet2012", None, 8, feed_target=0)


# --- the suite runner behind docs/benchmarks.md --------------------------------------------------


def _fake_python(tmp_path, body):
    # Stands in for `python -m resnet_jax.benchmark ...`: the suite only sees argv, env and stdout.
    path = tmp_path / "fake_python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_suite_entry_saves_result_with_its_command_and_passes_xla_flags(tmp_path, monkeypatch):
    from resnet_jax.bench import suite as bench_suite

    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    fake = _fake_python(
        tmp_path, 'echo "{\\"images_per_sec\\": 100.0, \\"xla_flags\\": \\"$XLA_FLAGS\\"}"'
    )
    e = bench_suite.Entry(
        "r50-nhwc", "resnet50", 256, dtype="bfloat16", xla_flags="--xla_gpu_force_conv_nhwc=true"
    )
    r = bench_suite.run_entry(e, str(tmp_path), fake, timeout_s=30)
    assert r["images_per_sec"] == 100.0
    assert r["xla_flags"] == "--xla_dump_to=/tmp/x --xla_gpu_force_conv_nhwc=true"
    assert r["command"] == (
        "XLA_FLAGS='--xla_gpu_force_conv_nhwc=true' python -m "
        "resnet_jax.benchmark --model=resnet50 --batch_size=256 --mode=train "
        "--dtype=bfloat16 --steps=20 --warmup=3 --windows=5"
    )
    assert bench_suite.load_results([e], str(tmp_path)) == [r]  # saved: a rerun skips it


def test_suite_records_out_of_memory_and_failures_as_rows(tmp_path):
    from resnet_jax.bench import suite as bench_suite

    oom = _fake_python(tmp_path, 'echo "RESOURCE_EXHAUSTED: Out of memory" >&2; exit 1')
    r = bench_suite.run_entry(bench_suite.Entry("big", "resnet152", 4096), str(tmp_path), oom, 30)
    assert r["error"] == "out of memory"
    table = bench_suite.suite_table([r]).split("\n")
    assert table[2] == "| big | resnet152 | | 4096 | | | | out of memory " + "| " * 9 + "|"
    assert table[-1] == (
        "- `big`: `python -m resnet_jax.benchmark --model=resnet152 "
        "--batch_size=4096 --mode=train --dtype=float32 --steps=20 --warmup=3 "
        "--windows=5`"
    )


def test_suites_list_the_issue_rows():
    from resnet_jax.bench import suite as bench_suite

    gpu = {(e.model, e.batch_size, e.mode, e.dtype) for e in bench_suite.GPU_SUITE}
    for depth in (18, 34, 50, 101, 152):
        for b in (128, 256):
            assert (f"resnet{depth}", b, "train", "bfloat16") in gpu
    cpu = {(e.model, e.batch_size, e.mode) for e in bench_suite.CPU_SUITE}
    assert cpu == {
        (m, b, mode)
        for m, b in (("resnet20", 128), ("resnet56", 128), ("resnet50", 8))
        for mode in ("train", "eval")
    }
    for suite in bench_suite.SUITES.values():  # ids name the result files of one output dir
        assert len({e.id for e in suite}) == len(suite)
