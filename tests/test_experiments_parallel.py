"""`experiments.run --parallel N`: N runs of a table at a time on one host, each process allowed 1/N
of the accelerator's memory."""

import json
import stat
import sys
import textwrap

import pytest

from experiments import run

# Stands in for `python -m resnet_jax.main`: records when it ran and the memory share it was given.
FAKE = textwrap.dedent("""\
    #!{python}
    import json, os, pathlib, sys, time
    args = dict(a[2:].split("=", 1) for a in sys.argv[3:])
    wd = pathlib.Path(args["workdir"])
    start = time.time()
    time.sleep(1.5)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps({{"run": wd.parent.name, "mode": args.get("mode", "train"),
                            "start": start, "end": time.time(),
                            "fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION")}}) + "\\n")
    if args.get("mode") == "eval":
        (wd / f"eval_{{args['config.eval_views']}}.json").write_text("{{}}")
    else:
        (wd / "summary.json").write_text(json.dumps({{"step": 5, "eval": {{"top1": 0.6}}}}))
""")


def _launch(tmp_path, monkeypatch, parallel):
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / f"calls{parallel}.log"
    monkeypatch.setenv("FAKE_LOG", str(log))
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    monkeypatch.setattr(run, "cpu_only", lambda: False)  # as on a GPU host: runs share its memory
    root = tmp_path / f"runs{parallel}"
    argv = ["fig6", "--workdir", str(root), "--only", "plain20,resnet20", "--seeds", "2"]
    assert run.main([*argv, "--python", str(fake), "--parallel", str(parallel)]) == 0
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    return root, calls


def _max_overlap(calls):
    """Most runs in flight at one moment."""
    events = sorted([(c["start"], 1) for c in calls] + [(c["end"], -1) for c in calls])
    level = best = 0
    for _, step in events:
        level += step
        best = max(best, level)
    return best


@pytest.mark.slow
def test_parallel_runs_overlap_share_the_memory_and_finish_every_run(tmp_path, monkeypatch, capsys):
    root, calls = _launch(tmp_path, monkeypatch, parallel=2)
    assert len(calls) == 4 and {c["mode"] for c in calls} == {"train"}  # 2 entries x 2 seeds
    assert _max_overlap(calls) == 2
    assert {c["fraction"] for c in calls} == {"0.450"}
    out = capsys.readouterr().out
    assert "fig6: 4/4 runs finished" in out and out.count("done   ") == 4
    for entry in ("plain20", "resnet20"):
        for seed in (0, 1):
            assert (root / entry / f"seed{seed}" / "summary.json").exists()

    _, calls = _launch(tmp_path, monkeypatch, parallel=1)
    assert len(calls) == 4 and _max_overlap(calls) == 1
    assert {c["fraction"] for c in calls} == {None}  # one run at a time: XLA's own default


def test_parallel_must_be_positive(tmp_path, capsys):
    argv = ["fig6", "--workdir", str(tmp_path), "--parallel", "0"]
    assert run.main(argv) == 2
    assert "--parallel must be >= 1, got 0" in capsys.readouterr().err
