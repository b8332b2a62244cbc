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
import time
from collections.abc import Sequence

import experiments
from experiments import METRICS, Experiment, grid, plots, results, stats
from experiments import run as run_lib
from experiments.results import EntryResult

_METRIC_NAMES = {"top1_err": "top-1 err", "top5_err": "top-5 err", "train_err": "train err"}
MAX_VARIED_COLUMNS = 6  # beyond this the table is wider than a page; the commands list the rest


def fmt_stat(mean: float | None, std: float | None, n: int) -> str:
    if mean is None:
        return "–"
    if std is None:
        return f"{mean:.2f}" + (" (n=1)" if n == 1 else "")
    return f"{mean:.2f} ± {std:.2f} (n={n})"


def model_costs(entry: experiments.Entry) -> dict:
    """{'params', 'macs'} of the entry's model at its native input size (traced, not compiled)."""
    from resnet_jax import plugins
    from resnet_jax.models import create_model
    from resnet_jax.tools import summary

    plugins.load(entry.overrides.get("plugins", ()))  # a unit of the user's, as the runs had it
    counted = summary.analyze(create_model(entry.model, **dict(entry.model_overrides)))
    return {"params": counted.params, "macs": counted.macs}


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


def varied_keys(exp: Experiment) -> list[str]:
    """The config keys and model spec fields whose values differ between the entries (a grid's
    axes; `model` where the nets differ), in the order they first appear."""
    cells = [cell_values(e) for e in exp.entries]
    keys = list(dict.fromkeys(k for c in cells for k in c))
    return [k for k in keys if len({grid.format_value(c.get(k, "–")) for c in cells}) > 1]


def cell_values(entry: experiments.Entry) -> dict:
    return {"model": entry.model, **entry.overrides, **entry.model_overrides}


def best_entry(res: Sequence[EntryResult], metric: str = "top1_err") -> str | None:
    """The entry of the lowest mean `metric` over its finished seeds (None before any finish)."""
    means = [(r.stat(metric)[0], r.entry.name) for r in res if r.stat(metric)[0] is not None]
    return min(means)[1] if len(means) > 1 else None


def table(exp: Experiment, res: Sequence[EntryResult], costs: dict[str, dict]) -> list[str]:
    metrics = [
        m
        for m in METRICS
        if any(m in r.entry.paper for r in res) or any(r.stat(m)[0] is not None for r in res)
    ] or ["top1_err"]
    with_paper = {m for m in metrics if any(m in r.entry.paper for r in res)}
    varied = varied_keys(exp)[:MAX_VARIED_COLUMNS]
    best = best_entry(res)
    head = ["entry", *varied, "eval"]
    for m in metrics:
        head += ([f"paper {_METRIC_NAMES[m]}"] if m in with_paper else []) + [
            f"ours {_METRIC_NAMES[m]}"
        ]
    head += ["params (M)", "GMACs", "img/s", "runs done / missing"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res:
        mark = " **(best)**" if r.entry.name == best else ""
        cell = cell_values(r.entry)
        name = f"`{r.entry.name}`"
        row = [(name if r.entry.label == r.entry.name else f"{r.entry.label} ({name})") + mark]
        row += [grid.format_value(cell[k]) if k in cell else "–" for k in varied]
        row.append(r.entry.eval_views)
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
    if best:
        lines += ["", "(best): the lowest mean top-1 error; whether it is decided: below."]
    return lines


def _seeds(sample: stats.Sample) -> str:
    sd = "" if sample.std is None else f" ± {sample.std:.2f}"
    return f"{sample.mean:.2f}{sd} (n={sample.n})"


def _undecided_note(d: results.Decision) -> str:
    if d.verdict != stats.UNDECIDED:
        return ""
    if d.a.n < 2 or d.b.n < 2:
        return "; a side has one seed: run at least 2 per net for an interval"
    if d.seeds_needed is None:
        return "; the observed difference sits at the boundary: more seeds alone will not decide it"
    return (
        f"; about {d.seeds_needed} seeds per net would decide it if the means and spreads stay "
        "as observed"
    )


def claim_line(c: experiments.Check, d: results.Decision) -> str:
    what = f"`{c.a}` {c.op} `{c.b}` on {_METRIC_NAMES[c.metric]}"
    if d.verdict is None:
        return f"- **not yet measurable** (runs missing) — {c.claim}: {what}"
    margin = f"; margin {c.margin:.2f} points ({c.margin_source})" if c.margin is not None else ""
    return (
        f"- **{d.verdict}** — {c.claim}: {what}: {_seeds(d.a)} vs {_seeds(d.b)}, difference "
        f"{stats.describe(d.interval)}{margin}{_undecided_note(d)}"
    )


def checks_section(exp: Experiment, res: Sequence[EntryResult]) -> list[str]:
    if not exp.checks:
        return []
    lines = [
        "",
        "## The claims, decided over seeds",
        "",
        f"Difference = mean(a) - mean(b) in percentage points of error, with its {stats.METHOD} "
        "(experiments/stats.py). `<` / `>`: shown when the interval excludes 0 on the claimed "
        "side, contradicted when it excludes 0 on the other; `<=` (no worse): shown when it lies "
        "below the margin, contradicted when above it; otherwise undecided.",
        "",
    ]
    return lines + [claim_line(c, results.evaluate_check(c, res)) for c in exp.checks]


def baseline_section(exp: Experiment, res: Sequence[EntryResult]) -> list[str]:
    """Every other entry against the baseline on top-1 error: a two-sided comparison."""
    base = next(r for r in res if r.entry.name == exp.baseline_entry.name)
    others = [r for r in res if r is not base]
    if not others:
        return []
    lines = [
        "",
        f"## Against the baseline, `{base.entry.name}`",
        "",
        f"Top-1 error difference (entry - baseline) with its {stats.METHOD}; lower is better.",
        "",
        "| entry | difference (points) | 95% interval | verdict | seeds per net to decide |",
        "|---|---|---|---|---|",
    ]
    for r in others:
        d = results.decide(r.sample("top1_err"), base.sample("top1_err"), "<")
        if d.verdict is None:
            lines.append(f"| `{r.entry.name}` | – | – | runs missing | – |")
            continue
        ci = d.interval
        word = {
            stats.SHOWN: "lower error: shown",
            stats.CONTRADICTED: "higher error: shown",
            stats.UNDECIDED: "undecided",
        }[d.verdict]
        interval = "–" if ci.lo is None else f"[{ci.lo:+.2f}, {ci.hi:+.2f}]"
        needed = "–"
        if d.verdict == stats.UNDECIDED:
            needed = str(d.seeds_needed) if d.seeds_needed else "more seeds alone will not"
        lines.append(f"| `{r.entry.name}` | {ci.diff:+.2f} | {interval} | {word} | {needed} |")
    return lines


def dataset_banner(exp: Experiment) -> list[str]:
    """What the numbers were measured on; the warning stands beside paper numbers only."""
    lines = [f"**Dataset of our numbers: `{exp.dataset}`.**"]
    with_paper = [e.name for e in exp.entries if e.paper]
    if exp.source:
        lines[0] += f" Source of the claims: {exp.source}, on `{exp.paper_dataset}`."
    if with_paper and exp.dataset != exp.paper_dataset:
        lines += [
            "",
            f"> **WARNING: the paper numbers of {', '.join(f'`{n}`' for n in with_paper)} come "
            f"from `{exp.paper_dataset}`, ours from `{exp.dataset}`.** Compare trends (which net "
            "is better), never the values.",
        ]
    return lines


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def runs_section(res: Sequence[EntryResult]) -> list[str]:
    """Wall time, machine and real start of every finished run (summary.json, run.json), and the
    experiment's elapsed time beside the summed time of its runs."""
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
        started = _utc(rec["started"]) if "started" in rec else rec.get("started_utc", "–")
        lines.append(f"| `{entry.name}` seed {run.seed} | {wall} | {ips} | {machine} | {started} |")
    total = sum(run.wall_time_s or 0 for _, run in rows)
    line = f"Summed wall time of the finished runs: {total / 60:.1f} min"
    spans = [run.record for _, run in rows if "started" in run.record and "finished" in run.record]
    if len(spans) == len(rows):
        first = min(s["started"] for s in spans)
        last = max(s["finished"] for s in spans)
        line += (
            f"; elapsed from the first start to the last finish: {(last - first) / 60:.1f} min "
            f"({_utc(first)} to {_utc(last)})"
        )
    return lines + ["", line + "."]


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
        *baseline_section(exp, res),
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
    out.with_suffix(".json").write_text(json.dumps(finals(res), indent=1) + "\n")
    return text


def finals(res: Sequence[EntryResult]) -> dict:
    """entry -> metric -> the finished seeds' final values: what the verdicts were computed from,
    kept beside the report so that they can be re-decided without the workdirs."""
    return {
        r.entry.name: {m: dict(zip(_seed_ids(r, m), r.values(m), strict=True)) for m in METRICS}
        for r in res
    }


def _seed_ids(r: EntryResult, metric: str) -> list[str]:
    return [f"seed{run.seed}" for run in r.done if metric in run.final]


def find_experiment(name: str | None, root: str) -> Experiment:
    """NAME (the project's, or one whose record `experiments.run` left in ROOT), PATH.py[:NAME],
    or, with no name, the one experiment recorded in ROOT."""
    recorded = run_lib.recorded_experiments(root)
    if name is None:
        if len(recorded) == 1:
            return next(iter(recorded.values()))
        raise ValueError(
            f"{root} holds {len(recorded)} experiment records "
            f"({', '.join(sorted(recorded)) or 'none'}): name one"
        )
    if name in recorded:
        return recorded[name]
    return experiments.resolve(name)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m experiments.report", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "name",
        nargs="?",
        default=None,
        help="experiment name, PATH.py[:NAME], or nothing for the one launched into --workdir",
    )
    p.add_argument("--workdir", required=True)
    p.add_argument(
        "--out",
        default=None,
        help="markdown path (default ROOT/NAME.md for an experiment "
        "recorded in ROOT, else docs/results/NAME.md)",
    )
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
        exp = find_experiment(a.name, a.workdir)
    except (ValueError, ImportError) as e:  # ImportError: a file of yours that fails
        print(f"error: {e}", file=sys.stderr)
        return 2
    project = exp.name in experiments.project_experiments()
    default_out = f"docs/results/{exp.name}.md" if project else f"{a.workdir}/{exp.name}.md"
    out = pathlib.Path(a.out or default_out)
    seeds = f" --seeds {a.seeds}" if a.seeds is not None else ""
    launched = run_lib.launch_command(a.workdir, exp.name)
    commands = a.command or [
        launched or f"python -m experiments.run {exp.name} --workdir {a.workdir}{seeds}",
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
