"""experiments.report / results: numbers read from synthetic (partial) workdirs."""

import json

import pytest

from experiments import Check, Entry, Experiment, report, results


def _write_run(
    wd, *, train_acc=(), eval_acc=(), final=None, total=100, summary=True, extra_eval=None
):
    """A workdir as the trainer leaves it: config.json, metrics.jsonl, maybe summary.json."""
    wd.mkdir(parents=True)
    (wd / "config.json").write_text(json.dumps({"num_train_steps": total, "model": "x"}))
    lines = [
        json.dumps({"step": 10 * (i + 1), "split": "train", "top1": a, "top5": 1.0, "loss": 1.0})
        for i, a in enumerate(train_acc)
    ]
    lines += [
        json.dumps({"step": 50 * (i + 1), "split": "eval", "top1": a, "top5": 1.0})
        for i, a in enumerate(eval_acc)
    ]
    (wd / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if summary:
        (wd / "summary.json").write_text(
            json.dumps(
                {
                    "step": total,
                    "eval": {"top1": final, "top5": 0.99},
                    "images_per_sec": 100.0,
                    "params": 272_474,
                    "wall_time_s": 120.0,
                }
            )
        )
        (wd / "run.json").write_text(
            json.dumps(
                {
                    "args": [],
                    "host": "hostA",
                    "cpus": 2,
                    "load_avg_1min": 1.5,
                    "started_utc": "2026-11-22 13:00 UTC",
                }
            )
        )
    if extra_eval:
        (wd / "eval_10crop.json").write_text(json.dumps(extra_eval))


SYNTH = Experiment(
    name="synth",
    title="synthetic",
    dataset="shapes10",
    paper_dataset="cifar10",
    source="made up",
    kind="ablation",
    entries=(
        Entry(
            "res",
            "ResNet-20",
            "configs/default.py",
            "resnet20",
            paper={"top1_err": 8.75},
            seeds=3,
            series="resnet",
        ),
        Entry("pln", "plain-20", "configs/default.py", "plain20", seeds=3, series="plain"),
        Entry(
            "r32",
            "ResNet-32 10-crop",
            "configs/default.py",
            "resnet32",
            eval_views="10crop",
            series="resnet",
        ),
    ),
    checks=(
        Check("pln", ">", "res", "top1_err", "plain is worse"),
        Check("r32", "<", "res", "top1_err", "deeper is better"),
    ),
)


@pytest.fixture()
def root(tmp_path):
    r = tmp_path / "runs"
    # res: three finished seeds with test errors 10, 8, 6 %; last-5 training errors 20, 30, 40 %.
    for seed, (final, tr) in enumerate([(0.90, 0.8), (0.92, 0.7), (0.94, 0.6)]):
        _write_run(
            r / "res" / f"seed{seed}",
            train_acc=[0.1] * 3 + [tr] * 5,
            eval_acc=[0.5, 0.6 + 0.01 * seed],
            final=final,
        )
    # pln: seed 0 finished (15 %), seed 1 half-way (step 50 of 100), seed 2 never started.
    _write_run(r / "pln" / "seed0", train_acc=[0.5] * 5, eval_acc=[0.7, 0.85], final=0.85)
    _write_run(r / "pln" / "seed1", train_acc=[0.4] * 5, eval_acc=[0.3], summary=False)
    with open(r / "pln" / "seed1" / "metrics.jsonl", "a") as f:
        f.write('{"step": 60, "split": "tra')  # the trainer is mid-write
    # r32: trained, but its 10-crop evaluation has not run yet.
    _write_run(r / "r32" / "seed0", train_acc=[0.9] * 5, final=0.97)
    return r


def test_mean_std_and_done_missing_counts(root):
    res = {r.entry.name: r for r in results.collect(SYNTH, root)}
    mean, std = res["res"].stat("top1_err")
    assert mean == pytest.approx(8.0) and std == pytest.approx(2.0)  # sample std of 10, 8, 6
    assert res["res"].stat("train_err") == (pytest.approx(30.0), pytest.approx(10.0))
    assert (res["res"].n_done, res["res"].n_missing) == (3, 0)
    assert res["pln"].stat("top1_err") == (pytest.approx(15.0), None)
    assert (res["pln"].n_done, res["pln"].n_missing) == (1, 2)
    assert res["pln"].runs[1].step == 50 and not res["pln"].runs[1].done
    # Trained but not evaluated with its protocol: not done, and the centre-crop number is not used.
    assert (res["r32"].n_done, res["r32"].stat("top1_err")) == (0, (None, None))
    # Curves: mean over the seeds at common steps; partial runs contribute.
    assert res["res"].curve("eval") == [(50, pytest.approx(50.0)), (100, pytest.approx(39.0))]
    assert res["pln"].curve("eval") == [(50, pytest.approx(50.0))]


def test_protocol_result_comes_from_the_eval_file(root):
    (root / "r32" / "seed0" / "eval_10crop.json").write_text(
        json.dumps({"top1": 0.95, "top5": 0.995})
    )
    r32 = results.collect(SYNTH, root)[2]
    assert r32.n_done == 1
    assert r32.stat("top1_err")[0] == pytest.approx(5.0)
    assert r32.stat("top5_err")[0] == pytest.approx(0.5)


def test_checks_are_decided_or_wait_for_runs(root):
    res = results.collect(SYNTH, root)
    d = results.evaluate_check(SYNTH.checks[0], res)
    assert (d.a.mean, d.a.std, d.a.n) == (pytest.approx(15.0), None, 1)
    assert (d.b.mean, d.b.std, d.b.n) == (pytest.approx(8.0), pytest.approx(2.0), 3)
    # One seed on a side: no spread, so no interval, and more seeds are what it needs.
    assert d.verdict == "undecided" and d.interval.lo is None
    assert d.interval.diff == pytest.approx(7.0)
    assert results.evaluate_check(SYNTH.checks[1], res).verdict is None


def _seeded(name, errors):
    entry = Entry(name=name, label=name, config="c.py", model="resnet20")
    runs = [
        results.RunResult(
            seed=i,
            workdir=None,
            done=True,
            step=1,
            total_steps=1,
            final={"top1_err": e},
            train_curve=[],
            eval_curve=[],
            images_per_sec=None,
            params=None,
            wall_time_s=None,
            record={},
        )
        for i, e in enumerate(errors)
    ]
    return results.EntryResult(entry, runs)


def test_a_check_is_shown_undecided_or_contradicted_by_its_interval():
    check = Check("a", "<", "b", "top1_err", "a beats b")
    # Means 10 vs 13, stds 1 and 1 over 3 seeds: se 0.816, Welch df 4, t(0.975, 4) = 2.776,
    # so the interval is -3 +- 2.27 = [-5.27, -0.73]: below 0, shown.
    far = results.evaluate_check(check, [_seeded("a", [9, 10, 11]), _seeded("b", [12, 13, 14])])
    assert far.verdict == "shown"
    assert (far.interval.lo, far.interval.hi) == (
        pytest.approx(-5.267, abs=1e-3),
        pytest.approx(-0.733, abs=1e-3),
    )
    # Means 10 vs 11: [-3.27, +1.27] holds 0: undecided. At this spread the half-width falls
    # below the gap of 1 at 9 seeds per net: t(0.975, 16) * sqrt(2 / 9) = 0.999 (8: 1.072).
    near = results.evaluate_check(check, [_seeded("a", [9, 10, 11]), _seeded("b", [10, 11, 12])])
    assert near.verdict == "undecided" and near.seeds_needed == 9
    # The other way round: a is worse beyond the noise.
    worse = results.evaluate_check(check, [_seeded("a", [12, 13, 14]), _seeded("b", [9, 10, 11])])
    assert worse.verdict == "contradicted"


def test_a_no_worse_claim_is_decided_against_its_margin():
    def check(margin):
        return Check("a", "<=", "b", "top1_err", "a is no worse", margin, "test scale")

    pair = [_seeded("a", [10, 11, 12]), _seeded("b", [9, 10, 11])]  # d = +1, half-width 2.27
    # Within a margin of 4: the interval [-1.27, +3.27] lies below it: non-inferiority shown,
    # although a's mean is the higher one.
    assert results.evaluate_check(check(4.0), pair).verdict == "shown"
    assert results.evaluate_check(check(2.0), pair).verdict == "undecided"
    # Worse by more than the margin, with confidence.
    far = [_seeded("a", [19, 20, 21]), _seeded("b", [9, 10, 11])]
    assert results.evaluate_check(check(2.0), far).verdict == "contradicted"
    with pytest.raises(ValueError, match="needs a margin"):
        Check("a", "<=", "b", "top1_err", "no margin")


def test_markdown_report_and_plots_on_partial_results(root, tmp_path):
    out = tmp_path / "docs" / "synth.md"
    bench = tmp_path / "bench.json"
    bench.write_text(
        json.dumps(
            [
                {"model": "resnet20", "mode": "train", "images_per_sec": 50.0},
                {
                    "model": "resnet20",
                    "mode": "train",
                    "images_per_sec": 80.0,
                    "batch_size": 64,
                    "dtype": "float32",
                    "device": "cpu",
                },
            ]
        )
    )
    text = report.make_report(
        SYNTH,
        str(root),
        out,
        benchmarks=[str(bench)],
        commands=["python -m experiments.run synth --workdir R"],
        notes=["What it shows: nothing."],
    )
    assert "\nWhat it shows: nothing.\n" in text
    assert out.read_text() == text
    # The warning stands beside the one entry with a paper number, not the others.
    assert "WARNING: the paper numbers of `res` come from `cifar10`, ours from `shapes10`" in text
    row = next(line for line in text.splitlines() if line.startswith("| ResNet-20"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    # model | model (the varied key) | eval | paper top-1 | ours top-1 | ours top-5 | ours train |
    # params | GMACs | img/s | runs
    assert cells[0] == "ResNet-20 (`res`) **(best)**"  # the lowest mean top-1 error
    assert cells[1:5] == ["resnet20", "center", "8.75", "8.00 ± 2.00 (n=3)"]
    assert cells[5] == "1.00 ± 0.00 (n=3)"
    assert cells[6] == "30.00 ± 10.00 (n=3)"
    assert cells[7] == "0.27"  # ResNet-20: 0.27M parameters (He2015 Table 6)
    assert cells[8] == "0.041"  # 40.6M multiply-adds from resnet_jax.tools.summary
    assert cells[9] == "80"  # the fastest benchmark row, preferred to the run's own 100 img/s
    assert cells[10] == "3 / 0"
    pln = next(line for line in text.splitlines() if line.startswith("| plain-20"))
    assert "15.00 (n=1)" in pln and "1 / 2 (seed 1 at step 50/100)" in pln
    r32 = next(line for line in text.splitlines() if line.startswith("| ResNet-32"))
    assert "0 / 1 (seed 0 trained, 10crop eval to run)" in r32
    assert "**undecided** — plain is worse" in text and "a side has one seed" in text
    assert "**not yet measurable** (runs missing) — deeper" in text
    assert "## Against the baseline, `res`" in text
    assert "| `pln` | +7.00 | – | undecided |" in text
    assert "Runs finished: 4 of 7" in text
    assert (
        "| `res` seed 2 | 2.0 | 100 | hostA, 2 CPUs, load 1.5 at start | 2026-11-22 13:00 UTC |"
        in text
    )
    assert "Summed wall time of the finished runs: 8.0 min." in text
    # The per-seed values the verdicts came from, beside the report.
    finals = json.loads(out.with_suffix(".json").read_text())
    assert finals["res"]["top1_err"] == {
        "seed0": pytest.approx(10.0),
        "seed1": pytest.approx(8.0),
        "seed2": pytest.approx(6.0),
    }
    for png in ("synth_curves.png", "synth_tradeoffs.png"):
        assert f"]({png})" in text and (out.parent / png).stat().st_size > 10_000


def test_report_cli_on_an_empty_workdir_says_nothing_is_measured(tmp_path, capsys):
    out = tmp_path / "fig6_cpu.md"
    assert report.main(["fig6_cpu", "--workdir", str(tmp_path / "none"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "Runs finished: 0 of 12" in text and "not yet measurable" in text
    assert "![" not in text  # no curves to draw yet
    assert "python -m experiments.run fig6_cpu --workdir" in text
    assert report.main(["fig66", "--workdir", "x"]) == 2
    assert "fig6_cpu" in capsys.readouterr().err


def test_no_warning_without_a_paper_number_or_on_the_paper_dataset():
    entry = Entry("a", "a", "configs/default.py", "resnet20")
    for exp in (
        Experiment("e", "t", "cifar10", "cifar10", "s", entries=(entry,)),
        Experiment("e", "t", "shapes10", "cifar10", "s", entries=(entry,)),
    ):
        assert not any("WARNING" in line for line in report.dataset_banner(exp))


def test_the_runs_section_gives_real_starts_and_the_elapsed_time(tmp_path):
    entry = Entry("a", "a", "configs/default.py", "resnet20", seeds=2)
    exp = Experiment("e", "t", "shapes10", "shapes10", "", entries=(entry,))
    t0 = 1_796_000_000.0  # two runs one after the other, 2 and 3 minutes long
    for seed, (start, end) in enumerate([(t0, t0 + 120), (t0 + 130, t0 + 310)]):
        wd = tmp_path / "a" / f"seed{seed}"
        _write_run(wd, train_acc=[0.9] * 5, final=0.9)
        rec = json.loads((wd / "run.json").read_text())
        (wd / "run.json").write_text(json.dumps({**rec, "started": start, "finished": end}))
    lines = report.runs_section(results.collect(exp, tmp_path))
    assert (
        "| `a` seed 1 | 2.0 | 100 | hostA, 2 CPUs, load 1.5 at start | 2026-11-30 00:55 UTC |"
        in lines
    )
    assert lines[-1] == (
        "Summed wall time of the finished runs: 4.0 min; elapsed from the first start to the last "
        "finish: 5.2 min (2026-11-30 00:53 UTC to 2026-11-30 00:58 UTC)."
    )
