"""Pretrained starts: `--config.init_from=DIR|FILE` in the trainer, and the import / export
commands' run directories (read by `--mode=eval`, written back in PyTorch naming)."""

import json
import os
import shlex
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import config as config_lib
from resnet_jax import pretrained
from resnet_jax.data import synthetic
from resnet_jax.engine import checkpoint, evaluate, faults, parallel, steps, trainer, warm_start
from resnet_jax.models import create_model
from resnet_jax.pretrained import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A torchvision resnet18 built with one unit per stage and narrow widths: same naming, fast compile.
TINY = {"stage_sizes": (1, 1, 1, 1), "widths": (8, 16, 16, 32)}


def tiny_state_dict(num_classes, seed=0):
    """Random weights of the tiny resnet18 in torchvision naming (BN running variances > 0)."""
    model = create_model("resnet18", num_classes=num_classes, **TINY)
    abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    rng = np.random.default_rng(seed)
    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: (
            rng.uniform(0.5, 2.0, s.shape) if p[-1].key == "var" else rng.normal(0, 0.3, s.shape)
        ).astype(np.float32),
        {k: abstract[k] for k in ("params", "batch_stats")},
    )
    return pretrained.to_torch_state_dict("resnet18", variables, overrides=TINY)


def tiny_config(steps, **kw):
    c = config_lib.default_config()
    c.model = "resnet18"
    c.model_overrides = dict(TINY)
    c.dataset = "synthetic"
    c.image_size = 32
    c.num_classes = 10
    c.synthetic_batches = 2
    c.batch_size = 8
    c.num_train_steps = steps
    c.learning_rate = 0.01
    c.lr_schedule = "constant"
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def first_loss(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return next(r["loss"] for r in records if r["split"] == "train" and r["step"] == 1)


def fresh_state(c, seed=1):
    """A random train state of the config's model, built without compiling `init`."""
    rc = config_lib.resolve_config(c)
    _, tx = config_lib.build_optimizer(rc)
    abstract = parallel.abstract_train_state(
        config_lib.build_model(rc), tx, (32, 32, 3), parallel.make_mesh()
    )
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: jax.device_put(
            np.zeros(s.shape, s.dtype)
            if s.dtype != np.float32
            else rng.normal(0, 0.1, s.shape).astype(np.float32),
            s.sharding,
        ),
        abstract,
    )


@pytest.fixture(scope="module")
def weights_1000(tmp_path_factory):
    """An ImageNet-like (1000-class) tiny resnet18 as .safetensors."""
    path = str(tmp_path_factory.mktemp("weights") / "tiny_resnet18.safetensors")
    pretrained.save_state_dict(tiny_state_dict(1000), path)
    return path


def test_init_from_file_takes_every_weight_but_a_head_of_another_class_count(weights_1000, capsys):
    c = tiny_config(1)
    fresh = fresh_state(c)
    state = warm_start.init_from(fresh, weights_1000, "resnet18", TINY)
    imported = pretrained.from_torch_state_dict(
        "resnet18", pretrained.load_state_dict(weights_1000), overrides=TINY
    )
    out = capsys.readouterr().out
    assert "head is re-initialised: params/head/bias (1000,) -> (10,)" in out
    assert "params/head/kernel (32, 1000) -> (32, 10)" in out
    for col in ("params", "batch_stats"):
        got = jax.tree_util.tree_leaves_with_path(jax.device_get(getattr(state, col)))
        for path, leaf in got:
            if path[0].key == "head":
                continue
            want = imported[col]
            for k in path:
                want = want[k.key]
            assert np.array_equal(leaf, want), jax.tree_util.keystr(path)
    assert np.array_equal(
        jax.device_get(state.params["head"]["kernel"]), fresh.params["head"]["kernel"]
    )
    assert int(state.step) == 0
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.array_equal(a, b), state.opt_state, fresh.opt_state)
    )


def test_same_class_count_keeps_the_head(tmp_path, capsys):
    path = str(tmp_path / "w10.npz")
    pretrained.save_state_dict(tiny_state_dict(10, seed=3), path)
    state = warm_start.init_from(fresh_state(tiny_config(1)), path, "resnet18", TINY)
    assert "re-initialised" not in capsys.readouterr().out
    want = pretrained.load_state_dict(path)["fc.weight"].T
    assert np.array_equal(jax.device_get(state.params["head"]["kernel"]), want)


def test_weights_of_another_architecture_are_refused_with_the_key(tmp_path):
    path = str(tmp_path / "w.safetensors")
    pretrained.save_state_dict(tiny_state_dict(10), path)
    with pytest.raises(
        faults.ConfigError,
        match=r"init_from=.*resnet18 \(torchvision naming\): "
        r"missing key 'layer1.1.conv1.weight', expected shape \(8, 8, 3, 3\)",
    ):
        warm_start.init_from(
            fresh_state(tiny_config(1)), path, "resnet18", {**TINY, "stage_sizes": (2, 1, 1, 1)}
        )
    with pytest.raises(faults.ConfigError, match="neither a run directory nor a weights file"):
        warm_start.init_from(
            fresh_state(tiny_config(1)), str(tmp_path / "nope.npz"), "resnet18", TINY
        )


def _restore_or_init(c, workdir, monkeypatch, fresh):
    """The trainer's start: `fresh` stands in for the compiled random init."""
    monkeypatch.setattr(parallel, "create_sharded_train_state", lambda *a, **k: fresh)
    rc = config_lib.resolve_config(c)
    model, (_, tx) = config_lib.build_model(rc), config_lib.build_optimizer(rc)
    mesh = parallel.make_mesh()
    abstract = parallel.abstract_train_state(model, tx, (32, 32, 3), mesh)
    ckpt = checkpoint.Checkpointer(workdir, every_steps=2)
    try:
        return trainer.restore_or_init(rc, model, tx, mesh, ckpt, abstract), model, tx, rc
    finally:
        ckpt.close()


def test_fresh_fine_tune_first_step_starts_from_imported_weights(
    tmp_path, weights_1000, monkeypatch, capsys
):
    fresh = fresh_state(tiny_config(1))
    (scratch, start, _), model, tx, rc = _restore_or_init(
        tiny_config(1), str(tmp_path / "a"), monkeypatch, fresh
    )
    (tuned, _, _), _, _, _ = _restore_or_init(
        tiny_config(1, init_from=weights_1000), str(tmp_path / "b"), monkeypatch, fresh
    )
    assert start == 0 and "head is re-initialised" in capsys.readouterr().out
    assert np.array_equal(tuned.params["head"]["kernel"], fresh.params["head"]["kernel"])
    assert not np.array_equal(
        tuned.params["stem"]["conv1"]["kernel"], scratch.params["stem"]["conv1"]["kernel"]
    )

    step = jax.jit(
        lambda state, batch: steps.train_step(
            state, batch, model=model, tx=tx, learning_rate_fn=lambda _: rc.learning_rate
        )
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(8, 32, 32, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
    }
    loss_scratch = float(step(scratch, batch)[1]["loss"])
    loss_tuned = float(step(tuned, batch)[1]["loss"])
    assert np.isfinite(loss_scratch) and np.isfinite(loss_tuned)
    assert abs(loss_tuned - loss_scratch) > 1e-3 * abs(loss_scratch)


def test_resumed_fine_tune_restores_its_own_checkpoint_and_never_reads_init_from(
    tmp_path, monkeypatch, capsys
):
    workdir = str(tmp_path / "run")
    saved = fresh_state(tiny_config(1), seed=7).replace(step=jnp.asarray(2, jnp.int32))
    ckpt = checkpoint.Checkpointer(workdir, every_steps=2)
    ckpt.save(2, saved, checkpoint.data_position(2, 0, 8, 1), force=True)
    ckpt.close()
    gone = str(tmp_path / "moved_away.safetensors")  # reading it would raise

    (state, start, _), *_ = _restore_or_init(
        tiny_config(3, init_from=gone), workdir, monkeypatch, fresh_state(tiny_config(1))
    )
    assert start == 2 and "init_from" not in capsys.readouterr().out
    assert jax.tree.all(jax.tree.map(np.array_equal, jax.device_get(state), jax.device_get(saved)))


@pytest.mark.slow  # the two tests above cover it piecewise without running the trainer
def test_fine_tune_run_starts_from_the_imported_weights_and_resumes_from_its_own(
    tmp_path, weights_1000, capsys
):
    scratch, tuned = str(tmp_path / "scratch"), str(tmp_path / "tuned")
    trainer.train_and_evaluate(tiny_config(2), scratch)
    trainer.train_and_evaluate(tiny_config(2, init_from=weights_1000), tuned)
    out = capsys.readouterr().out
    assert f"init_from: params and BN statistics from {weights_1000}" in out
    assert "the head is re-initialised" in out
    # Same data, seed and head init: only the imported backbone can change the first loss.
    assert first_loss(tuned) != pytest.approx(first_loss(scratch), rel=1e-3)

    # A resumed fine-tune continues from its own checkpoint 2 and never reads init_from again.
    missing = str(tmp_path / "moved_away.safetensors")
    trainer.train_and_evaluate(tiny_config(3, init_from=missing, allow_config_change=True), tuned)
    out = capsys.readouterr().out
    assert "resumed from checkpoint step 2" in out
    assert "init_from: params" not in out


def test_import_writes_a_run_that_eval_reads_and_export_gives_the_weights_back(
    tmp_path, monkeypatch
):
    sd = tiny_state_dict(10, seed=5)
    weights, workdir = str(tmp_path / "in.safetensors"), str(tmp_path / "run")
    pretrained.save_state_dict(sd, weights)
    c = tiny_config(1)
    # The random init that the weights replace, without compiling `init` (this test's cost).
    fresh = fresh_state(c)
    monkeypatch.setattr(parallel, "create_sharded_train_state", lambda *a, **k: fresh)
    written = cli.import_weights("resnet18", weights, workdir, c)
    assert written.num_classes == 10 and sorted(
        os.listdir(os.path.join(workdir, "checkpoints"))
    ) == ["0"]

    # --mode=eval restores the imported checkpoint with the run's config.
    result = evaluate.evaluate_checkpoint(c, workdir)
    assert result["step"] == 0 and result["count"] == 16
    # Its logits are the weights': the eval loss is the imported model's on the same pool.
    model = create_model("resnet18", num_classes=10, **TINY)
    variables = pretrained.from_torch_state_dict("resnet18", sd, overrides=TINY)
    pool = synthetic.make_batches(
        parallel.batch_sharded(parallel.make_mesh()), 2, 8, 32, 10, seed=c.seed
    )
    images = np.concatenate([np.asarray(synthetic.FINISH(b)) for b in pool])
    labels = np.concatenate([np.asarray(b["label"]) for b in pool])
    logp = jax.nn.log_softmax(jax.jit(model.apply)(variables, images))
    want = -float(np.mean(np.take_along_axis(np.asarray(logp), labels[:, None], 1)))
    assert result["loss"] == pytest.approx(want, rel=1e-5)

    # --config.init_from=DIR takes the run directory's newest checkpoint.
    state = warm_start.init_from(fresh_state(c, seed=2), workdir, "resnet18", TINY)
    got = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    assert jax.tree.all(jax.tree.map(np.array_equal, got, variables))
    with pytest.raises(faults.ConfigError, match="holds a resnet18, the config trains a resnet34"):
        warm_start.init_from(fresh, workdir, "resnet34")

    out = str(tmp_path / "out.safetensors")
    assert cli.export_weights(workdir, out) == ("resnet18", 0)
    back = pretrained.load_state_dict(out)
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert np.array_equal(back[k], v if "num_batches" not in k else np.array(0)), k


def test_import_command_ends_bad_weights_with_one_line(tmp_path):
    weights = str(tmp_path / "w.npz")
    pretrained.save_state_dict({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, weights)
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_jax.pretrained",
            "import",
            "--model=resnet50",
            f"--weights={weights}",
            f"--workdir={tmp_path / 'run'}",
            "--config=configs/default.py",
            "--config.model=resnet50",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == faults.ConfigError.exit_code, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "resnet_jax: resnet50 (torchvision naming): missing key 'fc.weight', expected shape "
        "(num_classes, 2048)"
    )


@pytest.mark.parametrize(
    "examples, steps, warmup, decays",
    [(5_000, 500, 100, (150, 300, 450)), (50_000, 10_000, 500, (3_000, 6_000, 9_000))]
    + [(1_281_167, 20_000, 500, (6_000, 12_000, 18_000))],
)
def test_bit_schedule_follows_the_training_sets_size(examples, steps, warmup, decays):
    assert config_lib.bit_schedule(examples) == (steps, warmup, decays)


@pytest.mark.parametrize("arg", ["cifar10", "cifar100,resnet50d", "shapes10"])
def test_finetune_config_follows_the_bit_schedule_and_resolution(arg):
    from configs import finetune
    from resnet_jax.engine import validation

    c = finetune.get_config(arg)
    validation.check_config(c)
    assert c.init_from is None and c.image_size == 128  # 32x32 images upsampled, as BiT
    c.dataset = "synthetic"  # resolves without the dataset on disk; ImageNet-sized: 20k steps
    r = config_lib.resolve_config(c)
    assert (r.num_train_steps, r.warmup_steps, r.lr_decay_steps) == (
        20_000,
        500,
        (6_000, 12_000, 18_000),
    )
    schedule, _ = config_lib.build_optimizer(r)
    lr = {s: float(schedule(s)) for s in (0, 250, 500, 5999, 6000, 12000, 19999)}
    assert lr[0] == 0.0 and lr[250] == pytest.approx(0.0015) and lr[500] == pytest.approx(0.003)
    assert lr[5999] == pytest.approx(0.003) and lr[6000] == pytest.approx(3e-4)
    assert lr[12000] == pytest.approx(3e-5) and lr[19999] == pytest.approx(3e-6)


def test_finetune_config_refuses_other_datasets_and_a_folder_without_its_path():
    from configs import finetune
    from resnet_jax.data import folder

    with pytest.raises(ValueError, match=r"must be one of \('folder', 'cifar10', 'cifar100'"):
        finetune.get_config("imagenet2012")
    c = finetune.get_config("folder,resnet18")
    assert (c.dataset, c.model, c.image_size) == ("folder:", "resnet18", None)
    with pytest.raises(folder.FolderError, match="give --config.dataset=folder:PATH"):
        config_lib.resolve_config(c)


def test_import_refuses_a_config_of_another_model(tmp_path):
    weights = str(tmp_path / "w.npz")
    pretrained.save_state_dict(tiny_state_dict(10), weights)
    with pytest.raises(
        faults.ConfigError, match="--model=resnet34 but the config builds a resnet18"
    ):
        cli.import_weights("resnet34", weights, str(tmp_path / "run"), tiny_config(1))


def test_import_reads_no_dataset_and_prints_the_exact_evaluation_command(tmp_path):
    weights, workdir, data_dir = tmp_path / "w.npz", tmp_path / "run", tmp_path / "no_imagenet"
    pretrained.save_state_dict(tiny_state_dict(10), str(weights))
    overrides = "--config.model_overrides={'stage_sizes': (1, 1, 1, 1), 'widths': (8, 16, 16, 32)}"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "resnet_jax.pretrained",
            "import",
            "--model=resnet18",
            f"--weights={weights}",
            f"--workdir={workdir}",
            "--config=configs/imagenet.py:resnet18",  # ImageNet is not prepared in data_dir
            f"--config.data_dir={data_dir}",
            overrides,
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1:] == [
        f"imported resnet18 (10 classes) into {workdir}/checkpoints/0; evaluate with: "
        f"python -m resnet_jax.main --config=configs/imagenet.py:resnet18 "
        f"--config.data_dir={data_dir} {shlex.quote(overrides)} --workdir={workdir} --mode=eval (add "
        "--config.eval_views=10crop or multiscale for the paper's protocols); fine-tune from "
        f"it with --config.init_from={workdir}"
    ]
    assert not data_dir.exists()  # nothing was looked for, let alone prepared
    with open(workdir / "config.json") as f:
        written = json.load(f)
    assert (written["dataset"], written["num_classes"], written["image_size"]) == (
        "imagenet2012",
        10,
        224,
    )


def test_export_of_a_net_pytorch_lacks_says_what_export_maps_before_reading_a_checkpoint(tmp_path):
    workdir = tmp_path / "cifar_run"
    workdir.mkdir()
    c = config_lib.default_config()  # resnet20, the `make train` net
    with open(workdir / "config.json", "w") as f:
        json.dump(c.to_dict(), f)
    with pytest.raises(pretrained.WeightsError) as e:
        cli.export_weights(str(workdir), str(tmp_path / "out.safetensors"))
    assert str(e.value) == (
        f"{workdir} holds a resnet20, which PyTorch has no counterpart of: export writes the "
        "ImageNet ResNets torchvision has (resnet18, resnet34, resnet50, resnet101, resnet152, "
        "wide_resnet50_2, wide_resnet101_2, resnext50_32x4d, resnext101_32x8d) in torchvision "
        "naming, and those timm adds (resnet50d, resnet101d) in timm naming (--source=timm writes "
        f"any of them in timm naming). Its checkpoints stay usable here (--config.init_from={workdir})"
    )
