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
    assert record["cpus"] == os.cpu_count() and record["host"]
    assert record["started"] <= record["finished"]  # the run's own start and end

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


TINY_FILE = """
from experiments import Entry, Experiment

TINY = Experiment(
    "tiny_e2e",
    "tiny",
    "shapes10",
    "shapes10",
    "",
    entries=(
        Entry(
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
        ),
    ),
    kind="curves",
    layer_responses=True,
)
"""


@pytest.mark.slow
def test_an_experiment_file_anywhere_trains_and_reports_without_registration(tmp_path, capsys):
    # A 3-unit ResNet on shapes10 for 4 steps of 8 images, defined in a file outside the project,
    # through the real trainer subprocess; a second `run` skips it, and the report finds the
    # experiment from the record the run left in ROOT, with no name and no file.
    from experiments import report

    (tmp_path / "my_ablation.py").write_text(TINY_FILE)
    root = tmp_path / "runs"
    argv = [str(tmp_path / "my_ablation.py"), "--workdir", str(root)]
    assert run.main(argv) == 0, capsys.readouterr().out
    assert "done   tiny seed 0" in capsys.readouterr().out
    assert run.main(argv) == 0
    assert "skip   tiny seed 0: finished" in capsys.readouterr().out
    record = json.loads((root / "tiny_e2e.experiment.json").read_text())
    assert record["command"] == shlex.join(["python", "-m", "experiments.run", *argv])
    started = json.loads((root / "tiny" / "seed0" / "run.json").read_text())
    assert started["started"] <= started["finished"]  # when it really ran, not when planned
    summary = json.loads((root / "tiny" / "seed0" / "summary.json").read_text())
    assert report.main(["--workdir", str(root)]) == 0
    text = (root / "tiny_e2e.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| tiny ResNet"))
    assert f"{100 * (1 - summary['eval']['top1']):.2f} (n=1)" in row
    assert row.rstrip().endswith("| 1 / 0 |")
    assert record["command"] in text  # the report's commands are the launch's own
    assert (root / "tiny_e2e_curves.png").exists()
    assert (root / "tiny_e2e_responses.png").exists()  # read back from the run's checkpoint


def test_a_file_names_its_experiment_when_it_defines_several(tmp_path):
    (tmp_path / "two.py").write_text(
        TINY_FILE + "\nimport dataclasses\nOTHER = dataclasses.replace(TINY, name='other')\n"
    )
    with pytest.raises(ValueError, match=r"defines 2 experiments \(tiny_e2e, other\); name one"):
        experiments.resolve(str(tmp_path / "two.py"))
    assert experiments.resolve(f"{tmp_path}/two.py:other").name == "other"
    with pytest.raises(ValueError, match="defines no experiment 'nope'"):
        experiments.resolve(f"{tmp_path}/two.py:nope")
    with pytest.raises(ValueError, match="no experiment file"):
        experiments.resolve(str(tmp_path / "missing.py"))


def test_the_project_experiments_are_the_files_of_defs():
    # Found by listing experiments/defs, not by a list of imports: a new file there is enough.
    names = {
        e.name
        for path in sorted(experiments.DEFS.glob("*.py"))
        if not path.name.startswith("_")
        for e in experiments.load_file(path)
    }
    assert names == set(experiments.project_experiments()) and REQUIRED <= names


def test_a_grid_from_the_command_line_is_an_experiment_of_its_cells(tmp_path, capsys):
    from experiments import report

    argv = [
        "--config",
        "configs/default.py",
        "--grid",
        "model_overrides.shortcut=A,B",
        "--grid",
        "learning_rate=0.05,0.1",
        "--seeds",
        "2",
        "--workdir",
        str(tmp_path / "g"),
        "--config.num_train_steps=300",
        "--config.model_overrides={'stage_sizes': (1, 1, 1)}",
        "--print_commands",
    ]
    assert run.main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8  # 2 x 2 cells, 2 seeds each
    exp = report.find_experiment(None, str(tmp_path / "g"))  # from the record, with no name
    assert exp.name == "g" and exp.dataset == "shapes10"
    assert [e.name for e in exp.entries] == [
        "shortcut=A+learning_rate=0.05",
        "shortcut=A+learning_rate=0.1",
        "shortcut=B+learning_rate=0.05",
        "shortcut=B+learning_rate=0.1",
    ]
    assert exp.baseline_entry.name == "shortcut=A+learning_rate=0.05"
    assert report.varied_keys(exp) == ["learning_rate", "shortcut"]
    cell = exp.entry("shortcut=B+learning_rate=0.1")
    c = _parse_config(run.train_args(cell, 1, "W"))  # the real config file parses the command
    assert (c.learning_rate, c.num_train_steps, c.seed) == (0.1, 300, 1)
    assert c.model_overrides.to_dict() == {"stage_sizes": (1, 1, 1), "shortcut": "B"}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--grid", "learnin_rate=0.1,0.2"], "learnin_rate: no such config key"),
        (["--grid", "model_overrides.blok=a,b"], "'blok' is no model spec field"),
        (["--grid", "learning_rate"], "write KEY=V1,V2"),
        (["--grid", "learning_rate=0.1,0.1"], "a value is repeated"),
    ],
)
def test_a_bad_grid_is_refused_in_one_line(tmp_path, capsys, extra, message):
    argv = ["--config", "configs/default.py", "--workdir", str(tmp_path), "--dry_run", *extra]
    assert run.main(argv) == 2
    assert message in capsys.readouterr().err


def test_grid_values_split_at_top_level_commas_only():
    from experiments import grid

    assert grid.parse_axis("stage_sizes=(1,1,1),(2,2,2)") == (
        "stage_sizes",
        [(1, 1, 1), (2, 2, 2)],
    )
    assert grid.parse_axis("block=basic,se_basic") == ("block", ["basic", "se_basic"])
    assert grid.parse_axis("warmup='a,b',none") == ("warmup", ["a,b", "none"])


def test_on_a_cpu_one_run_per_core_each_with_one_xla_thread(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setattr(run, "host_cores", lambda: 2)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert run.cpu_only() and run.default_parallel() == 2
    flags = run.run_env(2, cpu=True)["XLA_FLAGS"].split()
    assert "--xla_cpu_multi_thread_eigen=false" in flags
    assert all(f.startswith("--") for f in flags)  # XLA drops every flag after a non-flag
    assert run.run_env(2, cpu=True)["RESNET_JAX_XLA_DEFAULTS"] == "0"  # XLA's fusions, one thread
    # ... which the runs get even where this process's own import set the project's option.
    monkeypatch.setattr(run.xla_options, "SET_BY_PROJECT", {"--xla_a": "1"})
    monkeypatch.setenv("XLA_FLAGS", "--xla_mine=2 --xla_a=1")
    flags = run.run_env(2, cpu=True)["XLA_FLAGS"].split()
    assert flags == ["--xla_mine=2", "--xla_cpu_multi_thread_eigen=false"]
    monkeypatch.delenv("XLA_FLAGS")
    assert "XLA_FLAGS" not in run.run_env(1, cpu=True)  # one run keeps every thread
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in run.run_env(2, cpu=True)
    # On an accelerator the runs share its memory instead.
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    assert run.run_env(4)["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.225"
