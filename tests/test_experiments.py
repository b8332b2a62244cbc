"""experiments/: definitions, and run.py's planning, skipping, resuming and command lines."""

import dataclasses
import json
import os
import pathlib
import shlex
import stat
import sys
import textwrap

import pytest
from absl import flags
from ml_collections import config_flags

import experiments
from experiments import run
from resnet_jax.models import get_published, get_spec

# ml_collections loads config files with the deprecated importlib load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")

REPO = pathlib.Path(__file__).resolve().parent.parent

# The issue's list: He2015 Tables 2, 3, 4, 6, Figs. 6, 7; He2016; the ablations; the CPU Fig. 6.
REQUIRED = {
    "table2",
    "table3",
    "table4",
    "table6",
    "fig6",
    "fig7",
    "preact_cifar10",
    "preact_cifar100",
    "abl_block",
    "abl_block_cifar",
    "abl_shortcut",
    "abl_shortcut_cifar",
    "abl_variant",
    "abl_variant_cifar",
    "abl_bn_group",
    "abl_bn_group_cifar",
    "abl_zero_init",
    "abl_zero_init_cifar",
    "abl_resnet_d",
    "fig6_cpu",
}


def _all_entries():
    for name in experiments.available_experiments():
        exp = experiments.get_experiment(name)
        for entry in exp.entries:
            yield exp, entry


def test_every_table_of_the_issue_is_defined():
    assert REQUIRED <= set(experiments.available_experiments())


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_dry_run_lists_every_run_of_every_experiment(name, tmp_path, capsys):
    exp = experiments.get_experiment(name)
    assert run.main([name, "--workdir", str(tmp_path), "--dry_run"]) == 0
    out = capsys.readouterr().out
    n = sum(e.seeds for e in exp.entries)
    assert f"{n} runs: 0 done, 0 partial, {n} to do" in out
    for e in exp.entries:
        for seed in range(e.seeds):
            assert f"{tmp_path / e.name / f'seed{seed}'}" in out
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_paper_numbers_agree_with_the_model_registry():
    # Two independent copies of PAPER.md: the experiments' numbers and the registry's published
    # figures. Where both give a number for the same model and protocol they must agree.
    compared = 0
    for exp, e in _all_entries():
        pub = get_published(e.model)
        same_protocol = e.eval_views == "10crop" or exp.dataset == "cifar10"
        if e.model_overrides or not same_protocol or "top1_err" not in e.paper:
            continue
        if pub.top1_error is not None:
            assert e.paper["top1_err"] == pytest.approx(pub.top1_error), (exp.name, e.name)
            compared += 1
    assert compared >= 15


def test_paper_numbers_spot_checks():
    t3 = experiments.get_experiment("table3")
    assert t3.entry("resnet34_c").paper == {"top1_err": 24.19, "top5_err": 7.40}
    t4 = experiments.get_experiment("table4")
    assert t4.entry("resnet152_v1").paper == {"top1_err": 19.38, "top5_err": 4.49}
    assert t4.entry("resnet152_v1").eval_views == "multiscale"
    assert experiments.get_experiment("table6").entry("resnet110").seeds == 5
    c100 = experiments.get_experiment("preact_cifar100")
    assert c100.entry("preact_resnet1001_cifar100").paper["top1_err"] == 22.71
    assert (
        c100.entry("preact_resnet1001_cifar100").config
        == "configs/cifar10.py:preact_resnet1001,cifar100"
    )


def test_same_entry_name_means_same_training_command_everywhere():
    seen = {}
    for exp, e in _all_entries():
        args = run.train_args(e, 0, "W")
        assert seen.setdefault(e.name, (exp.name, args))[1] == args, (
            e.name,
            exp.name,
            seen[e.name][0],
        )


def _parse_config(args):
    """The resolved-on-the-command-line config of `python -m resnet_jax.main ARGS`."""
    argv = ["main"] + [a for a in args if a.startswith("--")]
    fv = flags.FlagValues()
    # sys_argv: the config flag looks for its `--config.*` overrides there (default sys.argv).
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=fv, lock_config=True, sys_argv=argv
    )
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    flags.DEFINE_string("mode", "train", "", flag_values=fv)
    cwd = os.getcwd()
    os.chdir(REPO)  # config paths are relative to the repository root
    try:
        fv(argv)
    finally:
        os.chdir(cwd)
    return fv.config


def test_every_command_parses_with_the_real_config_files_and_model_specs():
    checked = set()
    for exp, e in _all_entries():
        if e.name in checked:
            continue
        checked.add(e.name)
        c = _parse_config(run.eval_args(e, 3, "W"))
        assert c.seed == 3 and c.eval_views == e.eval_views
        assert c.model == e.model
        spec = dataclasses.replace(get_spec(c.model), **c.model_overrides.to_dict())
        assert dict(c.model_overrides) == dict(e.model_overrides)
        assert c.bn_group_size is None or c.batch_size % c.bn_group_size == 0, e.name
        assert spec.family == (
            "cifar" if exp.dataset in ("cifar10", "cifar100", "shapes10") else "imagenet"
        ), e.name
        assert c.dataset == exp.dataset, e.name
    assert len(checked) > 40


def test_print_commands_are_one_runnable_line_per_unfinished_run(tmp_path, capsys):
    assert run.main(["abl_variant_cifar", "--workdir", str(tmp_path), "--print_commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    argv = shlex.split(lines[0])
    assert argv[:3] == ["python", "-m", "resnet_jax.main"]
    assert f"--workdir={tmp_path}/resnet164_v1/seed0" in argv
    assert '--config.model_overrides={"stride_on_3x3":False}' in argv
    # Entries evaluated with another protocol get a second phase after the training.
    assert (
        run.main(
            ["table4", "--workdir", str(tmp_path), "--print_commands", "--only", "resnet50_v1"]
        )
        == 0
    )
    (line,) = capsys.readouterr().out.strip().splitlines()
    train, evaluate = line.split(" && ")
    assert shlex.split(evaluate)[-2:] == ["--mode=eval", "--config.eval_views=multiscale"]
    assert shlex.split(evaluate)[:-2] == shlex.split(train)


def test_status_skips_finished_and_resumes_partial_runs(tmp_path):
    exp = experiments.get_experiment("table4")
    done = tmp_path / "resnet34" / "seed0"
    trained = tmp_path / "resnet34_c" / "seed0"
    started = tmp_path / "resnet50_v1" / "seed0"
    for d in (done, trained, started):
        d.mkdir(parents=True)
        (d / "metrics.jsonl").write_text('{"step": 10, "split": "train", "top1": 0.1}\n')
    for d in (done, trained):
        (d / "summary.json").write_text("{}")
    (done / "eval_multiscale.json").write_text('{"top1": 0.8}')
    runs = {r.entry.name: r for r in run.plan(exp, tmp_path)}
    assert [runs[n].status for n in ("resnet34", "resnet34_c", "resnet50_v1", "resnet101_v1")] == [
        "done",
        "partial",
        "partial",
        "todo",
    ]
    assert runs["resnet34"].phases == []
    assert runs["resnet34_c"].train is None and runs["resnet34_c"].evaluate[-2] == "--mode=eval"
    assert runs["resnet50_v1"].train is not None  # the trainer resumes from its checkpoint


def test_only_and_seeds_select_runs_and_unknown_names_are_errors(tmp_path, capsys):
    exp = experiments.get_experiment("table6")
    runs = run.plan(exp, tmp_path, only=["resnet20", "resnet110"], seeds=3)
    assert [(r.entry.name, r.seed) for r in runs] == [
        ("resnet20", 0),
        ("resnet20", 1),
        ("resnet20", 2),
        ("resnet110", 0),
        ("resnet110", 1),
        ("resnet110", 2),
    ]
    assert run.main(["table66", "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "did you mean table6" in err and "fig6_cpu" in err and "abl_block" in err
    assert run.main(["table6", "--workdir", str(tmp_path), "--only", "resnet21"]) == 2
    assert "resnet1202" in capsys.readouterr().err


FAKE_TRAINER = textwrap.dedent('''\
    #!{python}
    """Stands in for `python -m resnet_jax.main`: writes what the trainer would."""
    import json, os, pathlib, sys
    args = dict(a[2:].split("=", 1) for a in sys.argv[3:])
    wd = pathlib.Path(args["workdir"])
    wd.mkdir(parents=True, exist_ok=True)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(" ".join(sys.argv[3:]) + "\\n")
    if os.environ.get("FAKE_FAIL") == wd.parent.name:
        print("boom"); sys.exit(3)
    if args.get("mode") == "eval":
        (wd / f"eval_{{args['config.eval_views']}}.json").write_text(json.dumps({{"top1": 0.75}}))
    else:
        (wd / "metrics.jsonl").write_text(json.dumps({{"step": 5, "split": "train", "top1": 0.5}}) + "\\n")
        (wd / "summary.json").write_text(json.dumps({{"step": 5, "eval": {{"top1": 0.6}}}}))
''')


def test_execute_trains_evaluates_skips_and_reports_failures(tmp_path, monkeypatch, capsys):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_TRAINER.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.setenv("FAKE_FAIL", "resnet34_c")
    root = tmp_path / "runs"
    args = [
        "table3",
        "--workdir",
        str(root),
        "--only",
        "resnet34,resnet34_c",
        "--python",
        str(fake),
    ]
    assert run.main(args) == 1  # resnet34_c fails
    out = capsys.readouterr().out
    assert "FAILED resnet34_c seed 0 (exit 3" in out and "boom" in out
    assert (root / "resnet34" / "seed0" / "eval_10crop.json").exists()
    assert len(log.read_text().splitlines()) == 3  # train + eval of resnet34, train of resnet34_c
    record = json.loads((root / "resnet34" / "seed0" / run.RUN_RECORD).read_text())
    assert record["entry"] == "resnet34" and "--workdir=WORKDIR" in record["args"]
    assert record["cpus"] == os.cpu_count() and record["host"] and record["started_utc"]

    monkeypatch.setenv("FAKE_FAIL", "")
    assert run.main(args) == 0
    out = capsys.readouterr().out
    assert "skip   resnet34 seed 0: finished" in out and "start  [1/1] resnet34_c" in out
    assert len(log.read_text().splitlines()) == 5


def test_a_workdir_of_a_different_run_is_refused(tmp_path):
    exp = experiments.get_experiment("abl_shortcut_cifar")
    (r,) = run.plan(exp, tmp_path, only=["resnet56_b"])
    r.workdir.mkdir(parents=True)
    other = exp.entry("resnet56_c")
    (r.workdir / run.RUN_RECORD).write_text(
        json.dumps({"args": list(run.train_args(other, 0, "WORKDIR"))})
    )
    with pytest.raises(RuntimeError, match="different command"):
        run._claim_workdir(r, exp)


@pytest.mark.slow
def test_tiny_real_training_run_through_run_and_report(tmp_path, monkeypatch, capsys):
    # A 3-unit ResNet on shapes10 for 4 steps of 8 images, through the real trainer subprocess;
    # then a second `run` skips it and the report reads its numbers, curves and checkpoint.
    from experiments import report

    experiments.available_experiments()  # load the registry before patching it
    entry = experiments.Entry(
        "tiny",
        "tiny ResNet",
        "configs/default.py",
        "resnet20",
        model_overrides={"stage_sizes": (1, 1, 1)},
        series="resnet",
        overrides={
            "batch_size": 8,
            "num_train_steps": 4,
            "log_every_steps": 2,
            "eval_every_steps": 2,
            "checkpoint_every_steps": 2,
            "eval_batch_size": 1000,
        },
    )
    exp = experiments.Experiment(
        "tiny_e2e",
        "tiny",
        "shapes10",
        "cifar10",
        "none",
        entries=(entry,),
        kind="curves",
        layer_responses=True,
    )
    monkeypatch.setitem(experiments._REGISTRY, exp.name, exp)
    root = tmp_path / "runs"
    assert run.main(["tiny_e2e", "--workdir", str(root)]) == 0, capsys.readouterr().out
    assert "done   tiny seed 0" in capsys.readouterr().out
    assert run.main(["tiny_e2e", "--workdir", str(root)]) == 0
    assert "skip   tiny seed 0: finished" in capsys.readouterr().out
    summary = json.loads((root / "tiny" / "seed0" / "summary.json").read_text())
    out = tmp_path / "tiny_e2e.md"
    text = report.make_report(exp, str(root), out)
    row = next(line for line in text.splitlines() if line.startswith("| tiny ResNet"))
    assert f"{100 * (1 - summary['eval']['top1']):.2f} (n=1)" in row
    assert row.rstrip().endswith("| 1 / 0 |")
    assert (tmp_path / "tiny_e2e_curves.png").exists()
    assert (tmp_path / "tiny_e2e_responses.png").exists()  # read back from the run's checkpoint


def test_on_a_cpu_one_run_per_core_each_with_one_xla_thread(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(run, "host_cores", lambda: 2)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert run.cpu_only() and run.default_parallel() == 2
    flags = run.run_env(2, cpu=True)["XLA_FLAGS"].split()
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    assert all(f.startswith("--") for f in flags)  # XLA drops every flag after a non-flag
    assert run.run_env(2, cpu=True)["RESNET_JAX_XLA_DEFAULTS"] == "0"  # XLA's fusions, one thread
    assert "XLA_FLAGS" not in run.run_env(1, cpu=True)  # one run keeps every thread
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in run.run_env(2, cpu=True)
    # On an accelerator the runs share its memory instead.
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert run.run_env(4)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
