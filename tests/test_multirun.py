"""Seeds as one program: run k of a K-run program trains like the single run of seed k (resumed in
the middle too), writes the same workdir, survives a NaN in another run, and spreads its run axis
over 4 devices."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Small shapes10 (320 train / 100 test examples, 20 steps per epoch) and a 1-block-per-stage
# ResNet, as in tests/test_train_device.py; a low constant rate keeps 12 steps out of the chaotic
# regime where rounding differences grow fast.
_SCRIPT = r"""
import json, os, sys
import jax, numpy as np
root, mode = sys.argv[1], sys.argv[2]
from resnet_jax import config as config_lib
from resnet_jax.data import shapes
from resnet_jax.engine import checkpoint, faults, multirun, parallel, stacked, trainer
shapes.NUM_TRAIN, shapes.NUM_TEST = 320, 100

def config(steps, **kw):
    c = config_lib.default_config()
    c.update(dict(dataset="shapes10", data_dir=root + "/data", model="resnet20", batch_size=16,
                  num_train_steps=steps, learning_rate=0.01, lr_schedule="constant",
                  log_every_steps=1, checkpoint_every_steps=4, eval_batch_size=52, **kw))
    c.model_overrides.stage_sizes = (1, 1, 1)
    return c

def final_state(workdir):  # {path: array} of the newest checkpoint
    rc = config_lib.resolve_config(config(12))
    _, tx = config_lib.build_optimizer(rc)
    abstract = parallel.abstract_train_state(config_lib.build_model(rc), tx, (32, 32, 3),
                                             parallel.make_mesh())
    state, _ = checkpoint.Checkpointer(workdir).restore(abstract)
    return {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(state))}

def run_record(workdir):
    records = [json.loads(l) for l in open(workdir + "/metrics.jsonl")]
    files = sorted(f for f in os.listdir(workdir) if not f.startswith("events.out"))
    return {"train": {r["step"]: r["loss"] for r in records if r["split"] == "train"},
            "train_keys": sorted({k for r in records if r["split"] == "train" for k in r}),
            "eval": [r for r in records if r["split"] == "eval"], "files": files,
            "checkpoints": sorted(os.listdir(workdir + "/checkpoints")),
            "events": any(f.startswith("events.out") for f in os.listdir(workdir)),
            "config": json.load(open(workdir + "/config.json")),
            "summary": json.load(open(workdir + "/summary.json"))
                       if os.path.exists(workdir + "/summary.json") else None}

def compare(a_dir, b_dir):  # bitwise equality; largest relative L2 difference of a weight
    a, b = final_state(a_dir), final_state(b_dir)  # or BN statistic
    rel = [float(np.linalg.norm(a[p].astype(float) - b[p].astype(float))
                 / (np.linalg.norm(a[p].astype(float)) + 1e-12))
           for p in a if p.startswith((".params", ".batch_stats"))]
    return {"bitwise": all(np.array_equal(a[p], b[p]) for p in a), "max_rel": max(rel)}

out = {"devices": jax.device_count()}
if mode == "seeds":
    for s in (0, 1, 2):
        trainer.train_and_evaluate(config(12, seed=s), f"{root}/single/seed{s}")
    multirun.train_and_evaluate_runs(config(5, seeds=(0, 1, 2)), f"{root}/multi")
    multirun.train_and_evaluate_runs(config(12, seeds=(0, 1, 2)), f"{root}/multi")  # resumes at 5
    multirun.train_and_evaluate_runs(config(12, seeds=(0, 1, 2)), f"{root}/one_go")
    out["one_go"] = {s: run_record(f"{root}/one_go/seed{s}") for s in (0, 1, 2)}
    out["resume"] = {s: compare(f"{root}/one_go/seed{s}", f"{root}/multi/seed{s}") for s in (0, 1, 2)}
    out["single"] = {s: run_record(f"{root}/single/seed{s}") for s in (0, 1, 2)}
    out["multi"] = {s: run_record(f"{root}/multi/seed{s}") for s in (0, 1, 2)}
    out["state"] = {s: compare(f"{root}/single/seed{s}", f"{root}/multi/seed{s}") for s in (0, 1, 2)}
    out["runs_json"] = json.load(open(f"{root}/multi/runs.json"))
    try:  # the first run of the program (seed 1) is fed NaN images at step 3
        multirun.train_and_evaluate_runs(config(12, seeds=(1, 2), debug_nan_step=3), f"{root}/nan")
        out["nan_error"] = None
    except faults.NonFiniteError as e:
        out["nan_error"], out["nan_code"] = str(e), e.exit_code
    out["nan"] = {s: run_record(f"{root}/nan/seed{s}") for s in (1, 2)}
    out["nan_state"] = compare(f"{root}/single/seed2", f"{root}/nan/seed2")
else:  # 4 devices: K=4 splits the run axis, K=2 each run's batch
    mesh = parallel.make_mesh()
    out["layouts"] = [stacked.layout(k, mesh) for k in (1, 2, 4, 8)]
    rc = config_lib.resolve_config(config(12))
    model, (_, tx) = config_lib.build_model(rc), config_lib.build_optimizer(rc)
    states = [parallel.create_sharded_train_state(model, tx, jax.random.PRNGKey(s), (32, 32, 3),
                                                  mesh) for s in range(4)]
    leaf = jax.tree.leaves(stacked.stack(states, stacked.state_sharding("runs", mesh)))[0]
    out["shard_shapes"] = sorted({tuple(s.data.shape) for s in leaf.addressable_shards})
    out["leaf_shape"], out["shard_devices"] = list(leaf.shape), len(leaf.addressable_shards)
    for k in (4, 2):
        multirun.train_and_evaluate_runs(config(4, seeds=tuple(range(k))), f"{root}/k{k}")
        out[f"k{k}"] = {s: run_record(f"{root}/k{k}/seed{s}") for s in range(k)}
        out[f"runs_json{k}"] = json.load(open(f"{root}/k{k}/runs.json"))
print(json.dumps(out))
"""


def _run(root, mode, devices):
    env = dict(
        os.environ,
        PYTHONPATH=REPO,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
        "--xla_backend_optimization_level=0",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(root), mode],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def seeds_result(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("multirun"), "seeds", devices=1)


def _losses(record):
    return [record["train"][str(s)] for s in range(1, 13)]


def test_each_run_of_a_resumed_three_run_program_matches_the_single_run_of_its_seed(seeds_result):
    r, out, _ = seeds_result
    assert out.count("resumed from checkpoint step 5") == 3
    assert r["runs_json"]["groups"] == [
        {
            "seeds": [0, 1, 2],
            "start_step": 5,
            "layout": "batch",
            "devices": 1,
            "images_per_sec_all_runs": r["runs_json"]["groups"][0]["images_per_sec_all_runs"],
        }
    ]
    for s in "012":
        single, multi = r["single"][s], r["multi"][s]
        # Resumed at step 5, the program ends bitwise where it ends in one go.
        assert r["resume"][s]["bitwise"]
        # vmap turns the convolutions into grouped ones, which XLA's CPU backend rounds otherwise,
        # and the differences grow step by step. Measured (2026-12-03): losses of steps 1-4 equal
        # to 3e-7 relative, of step 12 to 1.4e-4; every weight and BN statistic within 3.1e-2
        # (relative L2) after 12 steps.
        np.testing.assert_allclose(_losses(multi)[:4], _losses(single)[:4], rtol=1e-5)
        np.testing.assert_allclose(_losses(multi), _losses(single), rtol=2e-3)
        assert r["state"][s]["max_rel"] < 0.1
        (last_single,) = single["eval"]
        last_multi = multi["eval"][-1]
        assert [e["step"] for e in multi["eval"]] == [5, 12]  # the first segment's end, the end
        assert last_multi["count"] == last_single["count"] == 100
        np.testing.assert_allclose(last_multi["loss"], last_single["loss"], rtol=1e-3)
        assert abs(last_multi["top1"] - last_single["top1"]) <= 0.02  # at most 2 of 100 examples


def test_each_run_writes_the_workdir_its_single_run_writes(seeds_result):
    r, _, _ = seeds_result
    for s in "012":
        single, multi = r["single"][s], r["one_go"][s]
        assert r["multi"][s]["checkpoints"] == ["12", "5", "8"]  # the resumed one: 3 kept
        assert multi["files"] == single["files"]  # config.json, metrics.jsonl, summary.json, ...
        assert {"config.json", "metrics.jsonl", "summary.json", "checkpoints"} <= set(
            multi["files"]
        )
        assert multi["events"] and single["events"]
        assert multi["config"] == single["config"]  # seed k, no seeds: a single run's config
        assert multi["config"]["seed"] == int(s) and multi["config"]["seeds"] == []
        assert multi["checkpoints"] == single["checkpoints"] == ["12", "4", "8"]
        assert multi["train_keys"] == single["train_keys"]
        assert sorted(multi["summary"]) == sorted(single["summary"])
        assert (
            multi["summary"]["step"] == 12
            and multi["summary"]["params"] == single["summary"]["params"]
        )


def test_each_runs_final_line_names_its_seed(seeds_result):
    _, out, _ = seeds_result
    finals = [line for line in out.splitlines() if "final test accuracy" in line]
    for s in (0, 1, 2):
        assert any(line.startswith(f"seed {s}: final test accuracy: top-1 ") for line in finals)


def test_a_nan_in_one_run_stops_it_alone_and_leaves_the_others_untouched(seeds_result):
    r, _, err = seeds_result
    assert r["nan_code"] == 65
    assert "1 of 2 runs stopped on a non-finite value: seed 1" in r["nan_error"]
    assert re.search(r"non-finite (loss and )?grad_norm at step 3", r["nan_error"])
    assert "run seed 1" in err and "stopped" in err
    hit, other = r["nan"]["1"], r["nan"]["2"]
    assert hit["summary"] is None and hit["checkpoints"] == []  # nothing non-finite was saved
    assert sorted(hit["train"]) == ["1", "2"]  # logged before the NaN; step 3 never
    # Seed 2 trained all 12 steps beside it, as its single run did (two-run program: same bounds).
    assert other["summary"]["step"] == 12 and other["checkpoints"] == ["12", "4", "8"]
    np.testing.assert_allclose(_losses(other), _losses(r["single"]["2"]), rtol=2e-3)
    assert r["nan_state"]["max_rel"] < 0.1


@pytest.mark.slow  # 4 forced devices in a subprocess: ~30 s
def test_four_devices_split_the_run_axis_when_it_divides(tmp_path):
    r, _, _ = _run(tmp_path, "mesh", devices=4)
    assert r["devices"] == 4
    assert r["layouts"] == ["batch", "batch", "runs", "runs"]
    # One run per device: every device holds a [1, ...] slice of the stacked [4, ...] leaf.
    assert r["shard_devices"] == 4 and r["leaf_shape"][0] == 4
    assert r["shard_shapes"] == [tuple([1, *r["leaf_shape"][1:]])] or r["shard_shapes"] == [
        [1, *r["leaf_shape"][1:]]
    ]
    assert r["runs_json4"]["groups"][0]["layout"] == "runs"
    assert r["runs_json2"]["groups"][0]["layout"] == "batch"
    for s in "01":  # the same seed trains alike whichever axis the devices split
        a = [r["k4"][s]["train"][str(i)] for i in range(1, 5)]
        b = [r["k2"][s]["train"][str(i)] for i in range(1, 5)]
        np.testing.assert_allclose(a, b, rtol=2e-3)
        assert r["k4"][s]["summary"]["step"] == 4


def test_the_experiment_runner_trains_k_seeds_of_an_entry_per_program(tmp_path):
    from experiments import get_experiment
    from experiments import run as runner

    exp = get_experiment("fig6_shapes10")
    runs = runner.plan(exp, tmp_path, only=["resnet20_shapes10"], seeds=3)
    (first, second) = runner.vmap_runs(runs, 2)
    assert [g.seed for g in (first, second)] == [0, 2]
    assert f"--workdir={tmp_path / 'resnet20_shapes10'}" in first.train
    assert "--config.seeds=(0,1)" in first.train and "--config.seeds=(2,)" in second.train
    assert not any(a.startswith("--config.seed=") for a in first.train)
    assert first.train[:2] == runs[0].train[:2] and first.evaluate is None


# --------------------------------------------------------------- adding or dropping seeds on resume


def _tiny(**kw):
    from resnet_jax import config as config_lib

    c = config_lib.default_config()
    c.update(dict(dataset="synthetic", model="resnet20", batch_size=8, num_train_steps=8, **kw))
    c.model_overrides.stage_sizes = (1, 1, 1)
    return c


def _single_run(workdir, seed=0, steps=(4, 8)):
    """A single run's files as the trainer leaves them (checkpoint folders hold no state here:
    every refusal comes before one is read)."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps({"seed": seed, "seeds": []}))
    (workdir / "metrics.jsonl").write_text('{"step": 2, "split": "train", "loss": 2.0}\n')
    (workdir / "events.out.tfevents.1.host").write_text("events")
    (workdir / "eval_center.json").write_text("{}")
    for s in steps:
        (workdir / "checkpoints" / str(s)).mkdir(parents=True)


def test_adding_seeds_to_a_single_runs_workdir_is_refused_naming_the_run_and_the_fixes(tmp_path):
    from resnet_jax.engine import faults, multirun

    _single_run(tmp_path / "run")
    with pytest.raises(faults.ConfigError) as e:
        multirun.train_and_evaluate_runs(_tiny(seeds=(0, 1)), str(tmp_path / "run"))
    assert e.value.exit_code == 78
    assert str(e.value) == (
        f"{tmp_path}/run holds a single run (seed 0, checkpoints 4, 8), and --config.seeds=0,1 "
        f"would train {tmp_path}/run/seed<k> from step 0 beside it and never resume it. To resume "
        "it without --config.seeds, or train the seeds into another --workdir; to continue it as "
        "the run of seed 0, add --config.allow_config_change=True"
    )
    assert sorted(os.listdir(tmp_path / "run")) == [  # nothing moved, nothing started
        "checkpoints",
        "config.json",
        "eval_center.json",
        "events.out.tfevents.1.host",
        "metrics.jsonl",
    ]
    with pytest.raises(faults.ConfigError, match="its seed 0 is not among the seeds"):
        multirun.single_run_as_seed(_tiny(allow_config_change=True), str(tmp_path / "run"), [1, 2])


def test_dropping_seeds_from_a_workdir_of_seed_runs_is_refused_naming_both_ways_on(tmp_path):
    from resnet_jax.engine import faults, trainer

    root = tmp_path / "runs"
    for seed in (0, 1):
        _single_run(root / f"seed{seed}", seed=seed)
    for allow in (False, True):  # a single run beside them would discard them either way
        with pytest.raises(faults.ConfigError) as e:
            trainer.train_and_evaluate(_tiny(allow_config_change=allow), str(root))
        assert str(e.value) == (
            f"{root} holds the runs of seeds 0,1 (in {root}/seed<k>, trained with "
            "--config.seeds), and a run without seeds would start from step 0 beside them. "
            f"Resume them with --config.seeds=0,1, or one alone with --workdir={root}/seed<k>"
        )
    assert not (root / "metrics.jsonl").exists() and not (root / "config.json").exists()


def test_a_seed_beside_seeds_is_refused():
    from resnet_jax.engine import faults, multirun

    with pytest.raises(faults.ConfigError) as e:
        multirun.seeds_of(_tiny(seed=5, seeds=(0, 1)))
    assert str(e.value) == (
        "seed=5 and seeds=(0, 1) both given: seeds sets the seed of every run, and seed must keep "
        "its default 0; drop --config.seed (or add 5 to seeds)"
    )
    assert multirun.seeds_of(_tiny(seeds=(0, 1))) == [0, 1]


def test_with_allow_config_change_a_single_run_continues_as_its_seeds_run(tmp_path, capsys):
    from resnet_jax.engine import multirun

    run = tmp_path / "run"
    _single_run(run)
    (run / "notes.txt").write_text("mine")  # not the trainer's: stays where it is
    # A move cut off half way, as a kill during the last one would leave it: finished first.
    (run / "seed0.moving").mkdir()
    os.replace(run / "eval_center.json", run / "seed0.moving" / "eval_center.json")
    multirun.single_run_as_seed(_tiny(allow_config_change=True), str(run), [0, 1])
    assert sorted(os.listdir(run)) == ["notes.txt", "seed0"]
    assert sorted(os.listdir(run / "seed0")) == [
        "checkpoints",
        "config.json",
        "eval_center.json",
        "events.out.tfevents.1.host",
        "metrics.jsonl",
    ]
    assert sorted(os.listdir(run / "seed0" / "checkpoints")) == ["4", "8"]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"resnet_jax: finishing the move of the single run of {run} into {run}/seed0, cut off "
        "last time"
    ]
    # The uninterrupted move, from the start.
    os.rename(run / "seed0", tmp_path / "again")
    multirun.single_run_as_seed(_tiny(allow_config_change=True), str(tmp_path / "again"), [1, 0])
    assert sorted(os.listdir(tmp_path / "again")) == ["seed0"]
    assert capsys.readouterr().out.splitlines() == [
        f"resnet_jax: continuing the single run of {tmp_path}/again (seed 0, checkpoint 8) as "
        f"the run of seed 0: its files moved to {tmp_path}/again/seed0"
    ]


@pytest.mark.slow  # three tiny trainings through resnet_jax.main
def test_a_single_run_continues_as_seed_0_of_a_seeds_program_from_its_checkpoint(tmp_path):
    from tests.reliability_helpers import run

    workdir, cache = tmp_path / "run", tmp_path / "cache"
    rc, out = run(workdir, "--config.num_train_steps=4", cache_dir=cache)
    assert rc == 0, out
    rc, out = run(workdir, "--config.seeds=0,1", cache_dir=cache)
    assert rc == 78 and "holds a single run (seed 0, checkpoints 4)" in out, out
    rc, out = run(
        workdir, "--config.seeds=0,1", "--config.allow_config_change=True", cache_dir=cache
    )
    assert rc == 0, out
    assert f"its files moved to {workdir}/seed0" in out
    assert out.count("resumed from checkpoint step 4") == 1  # seed 1 has none to resume from
    steps = {
        s: [
            (r["step"], r["split"])
            for r in map(json.loads, open(workdir / f"seed{s}" / "metrics.jsonl"))
        ]
        for s in (0, 1)
    }
    train = [(s, "train") for s in (2, 4, 6, 8, 10, 12)]
    # Seed 0: steps 2 and 4 and the evaluation at 4 from the single run, then the rest once each.
    assert steps[0] == train[:2] + [(4, "eval")] + train[2:] + [(12, "eval")]
    assert steps[1] == train + [(12, "eval")]  # seed 1 trained from step 0
    assert sorted(os.listdir(workdir)) == ["runs.json", "seed0", "seed1"]
