"""Report an experiment: paper vs ours as a markdown table, plus PNG plots beside it.

  python -m experiments.report NAME --workdir ROOT --out docs/results/NAME.md
                               [--seeds K] [--benchmark FILE ...] [--command TEXT]

Writes NAME.md and, next to it, NAME_curves.png (training / test error, He2015 Figs. 4 and 6
style), NAME_tradeoffs.png (ablations: error vs params, multiply-adds, throughput) and
NAME_responses.png (Fig. 7: per-layer response std). Works on partial results: missing runs are
counted, unfinished runs still contribute curves.
"""

from __future__ import annotations

import argparse
import datetime
import json
import pathlib
import shlex
import sys
from collections.abc import Sequence

import experiments
from experiments import METRICS, Experiment, plots, results
from experiments import run as run_lib
from experiments.results import EntryResult

_METRIC_NAMES = {"top1_err": "top-1 err", "top5_err": "top-5 err", "train_err": "train err"}


def fmt_stat(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.2f}" + (" (n=1)" if n == 1 else "")
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def model_costs(entry: experiments.Entry) -> dict:
    """{'params', 'macs'} of the entry's model at its native input size (traced, not compiled)."""
    from resnet_jax.models import create_model
    from resnet_jax.tools import summary

    stats = summary.analyze(create_model(entry.model, **dict(entry.model_overrides)))
    return {"params": stats.params, "macs": stats.macs}


def read_benchmarks(paths: Sequence[str]) -> dict[str, dict]:
    """model -> the fastest training row of `python -m resnet_jax.benchmark --json` outputs."""
    best: dict[str, dict] = {}
    for path in paths:
        data = json.loads(pathlib.Path(path).read_text())
        for row in data if isinstance(data, list) else [data]:
            if row.get("mode", "train") != "train" or "images_per_sec" not in row:
                continue
            old = best.get(row["model"])
            if old is None or row["images_per_sec"] > old["images_per_sec"]:
                best[row["model"]] = row
    return best


def costs_table(
    exp: Experiment, res: Sequence[EntryResult], bench: dict[str, dict], with_macs: bool = True
) -> dict[str, dict]:
    """entry -> {'params', 'macs', 'images_per_sec', 'throughput_source'}."""
    out = {}
    for r in res:
        c = model_costs(r.entry) if with_macs else {}
        params = r.mean_of("params")
        if params:  # the trained model's own count (e.g. a 100-class head)
            c["params"] = params
        b = bench.get(r.entry.model) if not r.entry.model_overrides else None
        if b:
            c["images_per_sec"] = b["images_per_sec"]
            c["throughput_source"] = (
                f"benchmark: batch {b.get('batch_size')}, {b.get('dtype')}, {b.get('device')}"
            )
        elif r.mean_of("images_per_sec"):
            c["images_per_sec"] = r.mean_of("images_per_sec")
            c["throughput_source"] = "training run (summary.json)"
        out[r.entry.name] = c
    return out


def _status(r: EntryResult) -> str:
    """`done / missing`, plus where the unfinished runs stand."""
    notes = []
    for run in r.runs:
        if run.done:
            continue
        if run_lib.is_trained(run.workdir):
            notes.append(f"seed {run.seed} trained, {r.entry.eval_views} eval to run")
        elif run.step > 0:
            notes.append(f"seed {run.seed} at step {run.step}/{run.total_steps or '?'}")
    return f"{r.n_done} / {r.n_missing}" + (f" ({'; '.join(notes)})" if notes else "")


def table(exp: Experiment, res: Sequence[EntryResult], costs: dict[str, dict]) -> list[str]:
    metrics = [
        m
        for m in METRICS
        if any(m in r.entry.paper for r in res) or any(r.stat(m)[0] is not None for r in res)
    ] or ["top1_err"]
    with_paper = {m for m in metrics if any(m in r.entry.paper for r in res)}
    head = ["model", "eval"]
    for m in metrics:
        head += ([f"paper {_METRIC_NAMES[m]}"] if m in with_paper else []) + [
            f"ours {_METRIC_NAMES[m]}"
        ]
    head += ["params (M)", "GMACs", "img/s", "runs done / missing"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res:
        row = [f"{r.entry.label} (`{r.entry.name}`)", r.entry.eval_views]
        for m in metrics:
            paper = r.entry.paper.get(m)
            if m in with_paper:
                row.append("–" if paper is None else f"{paper:.2f}")
            row.append(fmt_stat(*r.stat(m), r.n_done))
        c = costs.get(r.entry.name, {})
        row += [
            f"{c['params'] / 1e6:.2f}" if c.get("params") else "–",
            f"{c['macs'] / 1e9:.3f}" if c.get("macs") else "–",
            f"{c['images_per_sec']:,.0f}" if c.get("images_per_sec") else "–",
            _status(r),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def checks_section(exp: Experiment, res: Sequence[EntryResult]) -> list[str]:
    if not exp.checks:
        return []
    lines = ["", "## The paper's claims, tested on our means", ""]
    for c in exp.checks:
        v = results.evaluate_check(c, res)
        if v["holds"] is None:
            verdict, nums = "NOT YET MEASURABLE", "runs missing"
        else:
            verdict = "HOLDS" if v["holds"] else "DOES NOT HOLD"
            pm = lambda m, sd: f"{m:.2f}" if sd is None else f"{m:.2f} ± {sd:.2f}"
            nums = f"{pm(v['a'], v['a_std'])} vs {pm(v['b'], v['b_std'])}"
            if v["beyond_noise"] is not None:
                nums += (
                    "; the gap is beyond twice its standard error over seeds"
                    if v["beyond_noise"]
                    else "; the gap is within twice its standard error over seeds"
                )
        lines.append(
            f"- **{verdict}** — {c.claim}: `{c.a}` {c.op} `{c.b}` on "
            f"{_METRIC_NAMES[c.metric]} ({nums})"
        )
    return lines


def dataset_banner(exp: Experiment) -> list[str]:
    lines = [
        f"**Dataset of our numbers: `{exp.dataset}`.** Paper numbers: {exp.source}, "
        f"measured on `{exp.paper_dataset}`."
    ]
    if exp.dataset != exp.paper_dataset:
        lines += [
            "",
            f"> **WARNING: our numbers come from `{exp.dataset}`, NOT the paper's dataset "
            f"(`{exp.paper_dataset}`).** Compare trends (which net is better), never the "
            "values.",
        ]
    return lines


def runs_section(res: Sequence[EntryResult]) -> list[str]:
    """Wall time and machine of every finished run (from summary.json and run.json)."""
    rows = [(r.entry, run) for r in res for run in r.done]
    if not rows:
        return []
    lines = [
        "",
        "## Runs",
        "",
        "| run | wall time (min) | train img/s | machine | started |",
        "|---|---|---|---|---|",
    ]
    for entry, run in rows:
        rec = run.record
        machine = (
            f"{rec['host']}, {rec['cpus']} CPUs, load {rec['load_avg_1min']:.1f} at start"
            if "host" in rec
            else "–"
        )
        wall = f"{run.wall_time_s / 60:.1f}" if run.wall_time_s else "–"
        ips = f"{run.images_per_sec:.0f}" if run.images_per_sec else "–"
        lines.append(
            f"| `{entry.name}` seed {run.seed} | {wall} | {ips} | {machine} | "
            f"{rec.get('started_utc', '–')} |"
        )
    total = sum(run.wall_time_s or 0 for _, run in rows)
    lines += ["", f"Total wall time of the finished runs: {total / 60:.1f} min."]
    return lines


def render(
    exp: Experiment,
    res: Sequence[EntryResult],
    costs: dict[str, dict],
    figures: dict[str, str],
    commands: Sequence[str],
    notes: Sequence[str] = (),
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    n_done = sum(r.n_done for r in res)
    n_all = sum(len(r.runs) for r in res)
    lines = [
        f"# {exp.name}: {exp.title}",
        "",
        *dataset_banner(exp),
        "",
        f"Runs finished: {n_done} of {n_all}. Generated {now}.",
        "",
        "Errors in %, lower is better; ours are mean ± sample std over finished seeds; "
        "train err = mean training-batch error over the last "
        f"{results.TRAIN_ERR_WINDOW} logged steps. `–` = no number.",
        "",
        *table(exp, res, costs),
        *checks_section(exp, res),
    ]
    sources = sorted({c["throughput_source"] for c in costs.values() if "throughput_source" in c})
    if sources:
        lines += ["", "Throughput (img/s) from: " + "; ".join(sources) + "."]
    if exp.notes:
        lines += ["", f"Notes: {exp.notes}"]
    for note in notes:
        lines += ["", note]
    lines += runs_section(res)
    for caption, name in figures.items():
        lines += ["", f"## {caption}", "", f"![{caption}]({name})"]
    if commands:
        lines += ["", "## Commands", "", "```", *commands, "```"]
    return "\n".join(lines) + "\n"


def responses(exp: Experiment, res: Sequence[EntryResult], path: pathlib.Path) -> bool:
    """Fig. 7 from the finished runs' checkpoints (seed 0 of each entry); False when none."""
    from resnet_jax.tools import analysis

    profiles = {}
    for r in res:
        done = r.done
        if done:
            profiles[r.entry.label] = analysis.workdir_response_std(done[0].workdir)
    if not profiles:
        return False
    analysis.plot_profiles(
        f"{exp.name} on {exp.dataset}: std of 3x3 layer responses (after BN)", profiles, path
    )
    return True


def make_report(
    exp: Experiment,
    root: str,
    out: pathlib.Path,
    *,
    seeds: int | None = None,
    benchmarks: Sequence[str] = (),
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
) -> str:
    res = results.collect(exp, root, seeds)
    costs = costs_table(exp, res, read_benchmarks(benchmarks))
    out.parent.mkdir(parents=True, exist_ok=True)
    figures = {}
    curves_png = out.with_name(f"{out.stem}_curves.png")
    if plots.curves(exp, res, curves_png):
        figures["Training curves (dashed: train, bold: test)"] = curves_png.name
    if exp.kind == "ablation":
        png = out.with_name(f"{out.stem}_tradeoffs.png")
        if plots.tradeoffs(exp, res, costs, png):
            figures["Error vs parameters, multiply-adds and throughput"] = png.name
    if exp.layer_responses:
        png = out.with_name(f"{out.stem}_responses.png")
        if responses(exp, res, png):
            figures["Layer responses (He2015 Fig. 7)"] = png.name
    text = render(exp, res, costs, figures, commands, notes)
    out.write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__.split("\n")[0]
    )
    p.add_argument("name")
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", default=None, help="markdown path (default docs/results/NAME.md)")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument(
        "--benchmark",
        action="append",
        default=[],
        help="JSON from `python -m resnet_jax.benchmark --json` (repeatable)",
    )
    p.add_argument(
        "--command",
        action="append",
        default=[],
        help="command line(s) to record in the report (default: the run and report commands)",
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph to add to the report (repeatable), e.g. what the numbers show",
    )
    a = p.parse_args(argv)
    try:
        exp = experiments.get_experiment(a.name)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = pathlib.Path(a.out or f"docs/results/{exp.name}.md")
    seeds = f" --seeds {a.seeds}" if a.seeds is not None else ""
    commands = a.command or [
        f"python -m experiments.run {exp.name} --workdir {a.workdir}{seeds}",
        "python -m experiments.report " + shlex.join(sys.argv[1:] if argv is None else argv),
    ]
    print(
        make_report(
            exp,
            a.workdir,
            out,
            seeds=a.seeds,
            benchmarks=a.benchmark,
            commands=commands,
            notes=a.note,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
