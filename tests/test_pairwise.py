"""Every pair of the documented switches, run end to end: an all-pairs table of tiny runs, each
trained by `python -m resnet_jax.main`, evaluated with `--mode=eval`, the faulted ones stopped by an
injected error after step 3 and resumed. Each run must finish, or be refused with one line.

A switch is one line of SWITCHES: its name, its values (the default first: rows where nothing
is left to cover take it), and the flags and environment a value sets.
"""

import concurrent.futures
import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.fake_folders import write_class_folders
from tests.pairwise import all_pairs, uncovered_pairs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, FAULT_AFTER = 6, 3  # checkpoints every 2 steps: the faulted run resumes from step 2
# A documented refusal: exit 66 (data) or 78 (config), docs/reliability.md, as one line.
REFUSAL_CODES = (66, 78)


def _data(kind):
    """Flags of a data kind and input path; FOLDER is filled in by the fixture."""
    return {
        "synthetic": [
            "--config.dataset=synthetic",
            "--config.synthetic_batches=2",
            "--config.image_size=32",
            "--config.num_classes=10",
        ],
        "shapes10": ["--config.dataset=shapes10", "--config.eval_split=test[:32]"],
        "folder": ["--config.dataset=folder:{folder}", "--config.data_dir={data}"],
        "folder_host": [
            "--config.dataset=folder:{folder}",
            "--config.data_dir={data}",
            "--config.input_pipeline=host",
        ],
    }[kind]


def _warmup(kind):
    return {
        "linear": ["--config.warmup=linear", "--config.warmup_steps=2"],
        "constant": [
            "--config.warmup=constant",
            "--config.warmup_steps=2",
            "--config.warmup_learning_rate=0.01",
        ],
        "until_error": ["--config.warmup=until_error", "--config.warmup_learning_rate=0.01"],
    }[kind]


def _seeds(seeds):
    return [f"--config.seeds={seeds}"] if "," in seeds else [f"--config.seed={seeds}"]


def _key(name):
    return lambda v: [f"--config.{name}={v}"]


# (switch, values with the default first, value -> flags). Model shape switches go into
# model_overrides (`_net`); `devices` and `fault` into the environment (`_env`).
SWITCHES = (
    ("data", ("synthetic", "shapes10", "folder", "folder_host"), _data),
    ("devices", (1, 2, 4), lambda v: []),
    ("seeds", ("0", "1", "0,1"), _seeds),
    ("warmup", ("linear", "constant", "until_error"), _warmup),
    ("model", ("resnet20", "plain20"), _key("model")),
    ("shortcut", ("A", "B"), lambda v: []),
    ("preact", (False, True), lambda v: []),
    ("grad_accum_steps", (1, 2), _key("grad_accum_steps")),
    ("ema_decay", (0.0, 0.9), _key("ema_decay")),
    ("dtype", ("float32", "bfloat16"), _key("dtype")),
    ("bn_group_size", (0, 2), _key("bn_group_size")),
    ("label_smoothing", (0.0, 0.1), _key("label_smoothing")),
    ("optimizer", ("sgd", "lars"), _key("optimizer")),
    ("deterministic", (False, True), _key("deterministic")),
    ("fault", ("none", "bug"), lambda v: []),
)
DOMAINS = [values for _, values, _ in SWITCHES]

COMMON = (
    "--config=configs/default.py",
    f"--config.num_train_steps={STEPS}",
    "--config.batch_size=16",
    "--config.eval_batch_size=16",
    "--config.log_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.keep_checkpoints=2",
)


def _net(row):
    # ResNet-8 at quarter width (one unit per stage): compiled in seconds, as the reliability tests'.
    net = {"stage_sizes": (1, 1, 1), "widths": (4, 8, 16), "stem_width": 4}
    net.update(shortcut=row["shortcut"], preact=row["preact"])
    return f"--config.model_overrides={net}"


def flags_of(row, folder, data):
    out = [*COMMON, _net(row)]
    for name, _, to_flags in SWITCHES:
        out += [f.format(folder=folder, data=data) for f in to_flags(row[name])]
    return out


def _env(row, **extra):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("RESNET_JAX_FAULT", None)
    flags = env.get("XLA_FLAGS", "")
    env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={row['devices']}".strip()
    env.update(extra)
    return env


def _main(args, env):
    p = subprocess.run(
        [sys.executable, "-m", "resnet_jax.main", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return p.returncode, p.stdout, p.stderr


def _refusal(rc, err):
    """The one line of a documented refusal, or None when the run did not end as one."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if rc in REFUSAL_CODES and lines and lines[-1].startswith("resnet_jax: "):
        if "Traceback" not in err:
            return lines[-1]
    return None


def test_the_generator_covers_every_pair_in_few_rows():
    rows = all_pairs(DOMAINS)
    assert uncovered_pairs(DOMAINS, rows) == []
    assert rows == all_pairs(DOMAINS)  # deterministic: the same table on every run
    # The two largest switches (4 data kinds x 3 device counts) need 12 rows at the least.
    assert 12 <= len(rows) <= 16, len(rows)
    assert 3 <= sum(r[-1] == "bug" for r in rows) <= len(rows) // 2
    # Small known cases: 3 binary switches in 4 rows (the optimum), 4 ternary ones in 12.
    assert len(all_pairs([(0, 1)] * 3)) == 4
    three = all_pairs([(0, 1, 2)] * 4)
    assert uncovered_pairs([(0, 1, 2)] * 4, three) == [] and len(three) <= 12
    # A table that misses a pair is caught: drop any row and something is uncovered.
    assert all(uncovered_pairs(DOMAINS, rows[:k] + rows[k + 1 :]) for k in range(len(rows)))


def test_a_switch_is_one_line_of_flags():
    row = dict(zip([n for n, _, _ in SWITCHES], [d[0] for d in DOMAINS], strict=True))
    row.update(data="folder_host", seeds="0,1", warmup="until_error", dtype="bfloat16")
    flags = flags_of(row, "/f", "/d")
    assert "--config.dataset=folder:/f" in flags and "--config.input_pipeline=host" in flags
    assert "--config.seeds=0,1" in flags and "--config.warmup=until_error" in flags
    assert "--config.dtype=bfloat16" in flags and "--config.bn_group_size=0" in flags
    assert _net(row) in flags and "'shortcut': 'A'" in _net(row)
    assert _refusal(78, "resnet_jax: batch_size 16 ...\n") == "resnet_jax: batch_size 16 ..."
    assert _refusal(1, "Traceback ...\nRuntimeError: x\n") is None
    assert _refusal(78, "Traceback (most recent call last):\nresnet_jax: x\n") is None


def _seed_dirs(workdir, row):
    seeds = row["seeds"].split(",")
    return [f"{workdir}/seed{s}" for s in seeds] if len(seeds) > 1 else [workdir]


def _run_row(i, row, root, folder, data):
    """Trains, (stops and resumes,) evaluates one row; returns (report line, failures)."""
    names, failures = [n for n, _, _ in SWITCHES], []
    workdir, t = f"{root}/run{i}", time.perf_counter()
    args = [*flags_of(row, folder, data), f"--workdir={workdir}"]
    fault = {"RESNET_JAX_FAULT": f"bug@{FAULT_AFTER}"} if row["fault"] == "bug" else {}
    rc, out, err = _main(args, _env(row, **fault))
    outcome = []
    if fault and rc == 1 and f"bug@{FAULT_AFTER}: an unforeseen error" in err:
        outcome.append("stopped")
        rc, out, err = _main(args, _env(row))  # resumes from its newest checkpoint
        if rc == 0 and f"resumed from checkpoint step {FAULT_AFTER - 1}" not in out:
            failures.append(f"run {i} {row}: did not resume from step {FAULT_AFTER - 1}")
    refused = _refusal(rc, err)
    if rc == 0:
        for d in _seed_dirs(workdir, row):
            with open(f"{d}/summary.json") as f:
                if json.load(f)["step"] != STEPS:
                    failures.append(f"run {i} {row}: {d} did not train {STEPS} steps")
        rc, out, err = _main([*args, "--mode=eval"], _env(row))
        refused = _refusal(rc, err)
        outcome.append("evaluated" if rc == 0 else "eval refused" if refused else "eval FAIL")
        for d in _seed_dirs(workdir, row) if rc == 0 else []:
            with open(f"{d}/eval_center.json") as f:
                e = json.load(f)
            if not (e["step"] == STEPS and e["count"] > 0 and 0 <= e["top1"] <= 1):
                failures.append(f"run {i} {row}: eval of {d} gave {e}")
    else:
        outcome.append("refused" if refused else "FAIL")
    if rc != 0 and not refused:
        tail = re.sub(r"\s+", " ", err.strip()[-600:])
        failures.append(f"run {i} {row}: exit {rc}: {tail}")
    line = (
        f"{i:2d} {' '.join(outcome):22s} {time.perf_counter() - t:5.0f} s  "
        + " ".join(f"{n}={row[n]}" for n in names)
        + (f"\n     {refused}" if refused else "")
    )
    return line, failures


@pytest.mark.slow
def test_every_pair_of_switches_trains_evaluates_and_resumes(tmp_path):
    folder, data = str(tmp_path / "images"), str(tmp_path / "data")
    classes = dict.fromkeys(("red", "green", "blue"), 16)
    write_class_folders(f"{folder}/train", classes, side=32)
    write_class_folders(f"{folder}/test", dict.fromkeys(classes, 4), side=32, seed=1)
    names = [n for n, _, _ in SWITCHES]
    rows = [dict(zip(names, values, strict=True)) for values in all_pairs(DOMAINS)]
    # Two runs at a time: much of a run is start-up and compilation, one core each.
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        done = list(pool.map(lambda a: _run_row(*a, str(tmp_path), folder, data), enumerate(rows)))
    report = [line for line, _ in done]
    failures = [f for _, fs in done for f in fs]
    print("\n".join(report))
    assert not failures, "\n".join(failures)
    trained = sum("evaluated" in line for line in report)
    assert trained >= len(report) * 2 // 3, "\n".join(report)  # refusals must stay the exception
