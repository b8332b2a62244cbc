"""docs/extending.md, run as a researcher follows it: its code blocks written to files as the page
names them, its library block executed, its experiment planned with the real config files."""

import contextlib
import io
import json
import pathlib
import re
import shlex

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# ml_collections loads config files with the deprecated importlib load_module.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


def _blocks():
    """The page's python blocks: {file name: code} for those whose first line is `# NAME.py`,
    and the others in order under '' as a list."""
    text = (REPO / "docs" / "extending.md").read_text()
    files, others = {}, []
    for code in re.findall(r"```python\n(.*?)```", text, re.S):
        first = code.splitlines()[0]
        if re.fullmatch(r"# [\w/]+\.py", first):
            files[first[2:]] = code
        else:
            others.append(code)
    return files, others


@pytest.fixture()
def guide(tmp_path, monkeypatch):
    """The page's files in a fresh directory, the working directory of the commands."""
    files, _ = _blocks()
    for name, code in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_guide_has_its_files():
    files, others = _blocks()
    assert set(files) == {"se_block.py", "se_ablation.py", "configs/my_recipe.py"}
    assert len(others) == 1  # the library block


def test_the_se_unit_of_the_guide_builds_every_layout(guide):
    _, (library,) = _blocks()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(library, "docs/extending.md", "exec"), {})

    # Each SE gate adds two dense layers with biases: C*C/4 + C/4 and C/4*C + C parameters.
    def se(widths_and_units):
        return sum(n * (c * c // 2 + c // 4 + c) for c, n in widths_and_units)

    assert out.getvalue().splitlines() == [
        f"resnet20: 269,722 parameters, with SE units {269_722 + se([(16, 3), (32, 3), (64, 3)]):,}",
        f"resnet18: 11,689,512 parameters, with SE units "
        f"{11_689_512 + se([(64, 2), (128, 2), (256, 2), (512, 2)]):,}",
    ]


def test_the_se_ablation_of_the_guide_plans_real_commands(guide, capsys):
    from experiments import report
    from experiments import run as runner
    from tests.test_experiments import _parse_config

    assert runner.main(["se_ablation.py", "--workdir", "runs/se", "--print_commands"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 6  # 2 nets x 3 seeds
    exp = report.find_experiment(None, "runs/se")
    basic, se = exp.entries
    assert [e.name for e in exp.entries] == ["resnet20_cpu", "resnet20_se_cpu"]
    assert dict(se.overrides) == {**basic.overrides, "plugins": (str(guide / "se_block.py"),)}
    argv = shlex.split(commands[-1])  # python -m resnet_jax.main --config=... --workdir=...
    assert argv[4] == f"--workdir={guide}/runs/se/resnet20_se_cpu/seed2"
    c = _parse_config(argv[1:])  # the real config file reads the command line
    assert c.plugins == (str(guide / "se_block.py"),) and c.seed == 2
    assert c.model_overrides.to_dict() == {"block": "se_basic"}
    assert (c.learning_rate, c.lr_decay_steps, c.num_train_steps) == (0.025, (500, 750), 1000)


def test_the_grid_of_the_guide_runs_from_its_directory(guide, capsys):
    from experiments import run as runner

    section = (
        (REPO / "docs" / "extending.md").read_text().split("as a grid over the spec field:")[1]
    )
    command = re.search(r"```\n(.*?)\n```", section, re.S).group(1).splitlines()[0:2]
    argv = shlex.split(" ".join(line.rstrip("\\") for line in command))
    assert argv[:3] == ["python", "-m", "experiments.run"]
    assert runner.main([*argv[3:], "--print_commands"]) == 0
    commands = capsys.readouterr().out.strip().splitlines()
    assert len(commands) == 6  # basic and se_basic, 3 seeds each
    # The runs start in the checkout: the plugin named from here is passed whole.
    assert f"""--config.plugins=("{guide / "se_block.py"}",)""" in shlex.split(commands[-1])
    assert '--config.model_overrides={"block":"se_basic"}' in shlex.split(commands[-1])


def test_the_recipe_config_of_the_guide_scales_he2015_by_rule(guide):
    from experiments import grid

    c = grid.load_config("configs/my_recipe.py:resnet56")
    assert (c.model, c.batch_size, c.num_train_steps) == ("resnet56", 32, 2000)
    assert (c.learning_rate, tuple(c.lr_decay_steps)) == (0.025, (1000, 1500))


@pytest.mark.slow
def test_the_guide_trains_and_reports_its_ablation(guide, capsys):
    # The page's commands, with a smoke-run length: both nets train and are reported.
    from experiments import report
    from experiments import run as runner

    smoke = [
        "--config.num_train_steps=3",
        "--config.batch_size=8",
        "--config.eval_every_steps=0",
        "--config.checkpoint_every_steps=3",
        "--config.eval_batch_size=1000",
    ]
    argv = ["se_ablation.py", "--workdir", "runs/se_smoke", "--seeds", "2", *smoke]
    assert runner.main(argv) == 0, capsys.readouterr().out
    assert report.main(["--workdir", "runs/se_smoke", "--seeds", "2"]) == 0
    text = (guide / "runs" / "se_smoke" / "se_ablation.md").read_text()
    assert "Runs finished: 4 of 4" in text
    assert "— SE units lower the error: `resnet20_se_cpu` < `resnet20_cpu`" in text
    summary = json.loads((guide / "runs/se_smoke/resnet20_se_cpu/seed0/summary.json").read_text())
    assert summary["params"] > 269_722  # the SE net trained, not the basic one
