"""Run metrics: TensorBoard events (no TensorFlow), `metrics.jsonl`, and a console progress line.

Only process 0 writes. Train metrics stay on device between log steps and are fetched with one
`jax.device_get` per log step, so the loop never waits on the host in between.
"""

from __future__ import annotations

import json
import os
import sys
import time
import types
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging


def mean_of_steps(step_metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Means over steps of per-step scalar metrics (device arrays fetched in one transfer)."""
    fetched = jax.device_get(list(step_metrics))
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def means_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Eval sums {'loss', 'top1', 'top5', 'count'} -> means over real examples, plus `count`.

    Each sum is a scalar or one partial sum per device ([devices]), added up here in float64."""
    sums = {
        k: float(np.sum(np.asarray(v, np.float64))) for k, v in jax.device_get(dict(sums)).items()
    }
    count = sums.pop("count")
    out = {k: v / max(count, 1.0) for k, v in sums.items()}
    out["count"] = int(count)
    return out


def format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


def progress_line(step: int, total: int, m: Mapping[str, float]) -> str:
    """`step/total loss top-1 lr steps/s images/s ETA` for the console."""
    return (
        f"[{step:>{len(str(total))}}/{total}] loss {m['loss']:.4f}  top-1 {100 * m['top1']:.2f}%"
        f"  lr {m['learning_rate']:.4g}  {m['steps_per_sec']:.2f} steps/s"
        f"  {m['images_per_sec']:.0f} img/s  ETA {format_eta((total - step) / m['steps_per_sec'])}"
    )


def accuracy_text(m: Mapping[str, float], num_classes: int | None = None, sep: str = "  ") -> str:
    """`top-1 X%  top-5 Y%` for the console; top-5 is left out where there are at most 5 classes
    (it is 100% there whatever the model; metrics.jsonl and summary.json still hold it)."""
    text = f"top-1 {100 * m['top1']:.2f}%"
    if num_classes is None or num_classes > 5:
        text += f"{sep}top-5 {100 * m['top5']:.2f}%"
    return text


def ema_view(m: Mapping[str, float]) -> dict[str, float]:
    """The averaged weights' metrics (`ema_top1`, ...) under the plain names."""
    return {k[4:]: v for k, v in m.items() if k.startswith("ema_")}


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl, [] if there is none; a truncated last line (the trainer
    mid-flush) is skipped, so a running job can be read."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def write_json(path: str, obj: Any) -> None:
    """Process 0 writes `obj` to `path` whole: other processes may read it at the same moment.

    The JSON goes to a temporary file that then replaces `path`, so a reader sees the old or the
    new content, never half of it (every process reads config.json while process 0 rewrites it).
    """
    if jax.process_index() != 0:
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def record_key(record: Mapping[str, Any]) -> tuple:
    """What makes a metrics.jsonl record one of a kind: its step, split and (`--mode=eval`'s)
    views."""
    return (record.get("step"), record.get("split"), record.get("views"))


def _newest_of_each(records: Sequence[Mapping[str, Any]]) -> list:
    """The last record of each `record_key`, in file order."""
    last = {record_key(r): i for i, r in enumerate(records)}
    return [r for i, r in enumerate(records) if last[record_key(r)] == i]


class JsonlWriter:
    """Writes one JSON object per record, {'step', 'split', <metric>: value, ...}, and keeps one
    record per `record_key` in the file: every reader sees each step once, the newest.

    A run resumed from checkpoint N logs the steps after N again, and the run it resumes may have
    logged some of them before it was killed: `resume_step=N` drops the records after step N
    (`dropped` counts them). A record whose key the file already holds replaces the old one (a
    final evaluation done again, the same checkpoint evaluated again; `superseded` counts those
    a file from an older version of the trainer held when opened). A line cut off by a kill
    is dropped too (`unreadable`: no reader can parse it, and the next record would be appended
    to it). The
    file is then rewritten into a temporary file that replaces it, so a reader sees the old or
    the new file whole.
    """

    def __init__(self, path: str, resume_step: int | None = None):
        self.path = path
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        records = read_metrics(path)
        before = [r for r in records if resume_step is None or r["step"] <= resume_step]
        kept = _newest_of_each(before)
        self.dropped, self.superseded = len(records) - len(before), len(before) - len(kept)
        self.unreadable = len([line for line in text.splitlines() if line.strip()]) - len(records)
        self._keys = {record_key(r) for r in kept}
        self._file = None
        if kept != records or len(records) != len(text.splitlines()) or text[-1:] not in "\n":
            self._rewrite(kept)
        self._file = open(path, "a", encoding="utf-8")

    def _rewrite(self, records: Sequence[Mapping[str, Any]]) -> None:
        if self._file is not None:
            self._file.close()
        tmp = f"{self.path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        if self._file is not None:
            self._file = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        record = {"step": int(step), "split": split}
        record.update(
            {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in metrics.items()}
        )
        key = record_key(record)
        if key in self._keys:
            self._file.flush()
            self._rewrite([r for r in read_metrics(self.path) if record_key(r) != key])
        self._keys.add(key)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class _ScalarEventWriter:
    """TensorBoard scalars through the `tensorboard` package's own event-file writer.

    Unlike tf.summary (clu's SummaryWriter) it needs no TensorFlow, so a run whose input is made on
    the devices imports none. Writes are queued and flushed by a background thread of the writer.
    """

    def __init__(self, logdir: str):
        if "tensorflow" not in sys.modules:
            # tensorboard's file I/O imports TensorFlow when it is installed, unless the module
            # `tensorboard.compat.notf` exists (its build's switch for "use the TF-free stub").
            sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("notf"))
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = EventFileWriter(logdir)

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()]
        self._writer.add_event(
            self._event(wall_time=time.time(), step=int(step), summary=self._summary(value=values))
        )

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams  # the resolved config is in config.json

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def _tensorboard_writer(logdir: str):
    """A TensorBoard scalar writer, or None where the tensorboard package is not installed."""
    try:
        return _ScalarEventWriter(logdir)
    except ImportError as e:
        logging.warning("no TensorBoard events (%s); metrics.jsonl is still written", e)
        return None


class MetricsLogger:
    """Writes train and eval metrics of one run from process 0; the other processes stay quiet.

    Args:
      workdir: run directory (metrics.jsonl and TensorBoard events land there).
      total_steps: for the progress line and ETA.
      global_batch_size: to turn steps/s into images/s.
      tensorboard: write TensorBoard events (needs the tensorboard package, not TensorFlow).
      num_classes: the console's eval lines leave top-5 out where there are at most 5.
      resume_step: the checkpoint step a run resumes from (0 for a fresh start): metrics.jsonl
        keeps no record after it (`JsonlWriter`), and the console says how many it dropped.
    """

    def __init__(
        self,
        workdir: str,
        *,
        total_steps: int,
        global_batch_size: int,
        tensorboard: bool = True,
        stream=None,
        num_classes: int | None = None,
        resume_step: int | None = None,
    ):
        self.total_steps = total_steps
        self.num_classes = num_classes
        self.global_batch_size = global_batch_size
        self.is_main = jax.process_index() == 0
        self.stream = stream or sys.stdout
        self._jsonl = self._tb = None
        if self.is_main:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = JsonlWriter(os.path.join(workdir, "metrics.jsonl"), resume_step)
            dropped = [
                f"{n} {what}"
                for n, what in (
                    (
                        self._jsonl.dropped,
                        f"record(s) after step {resume_step}, logged by the interrupted run "
                        "after its checkpoint (this run logs those steps again)",
                    ),
                    (self._jsonl.superseded, "older copies of records logged twice"),
                    (self._jsonl.unreadable, "line(s) cut off by a kill"),
                )
                if n
            ]
            if dropped:
                print(
                    f"metrics.jsonl: dropped {' and '.join(dropped)}", file=self.stream, flush=True
                )
            self._tb = _tensorboard_writer(workdir) if tensorboard else None
        self._last_time = None
        self._last_step = None

    def start(self, step: int) -> None:
        """Marks the start of timing (call once the first step is compiled, or at resume)."""
        self._last_time, self._last_step = time.perf_counter(), step

    def log_train(self, step: int, step_metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """Averages the device metrics of the steps since the last call; returns what it wrote."""
        m = mean_of_steps(step_metrics)
        now = time.perf_counter()
        if self._last_time is not None and step > self._last_step:
            m["steps_per_sec"] = (step - self._last_step) / max(now - self._last_time, 1e-9)
        else:
            m["steps_per_sec"] = float("nan")
        m["images_per_sec"] = m["steps_per_sec"] * self.global_batch_size
        self._last_time, self._last_step = now, step
        self._write(step, "train", m)
        if self.is_main and np.isfinite(m["steps_per_sec"]):
            print(progress_line(step, self.total_steps, m), file=self.stream, flush=True)
        return m

    def log_eval(self, step: int, metrics: Mapping[str, float], split: str = "eval") -> None:
        self._write(step, split, metrics)
        if self.is_main:
            averaged = (
                f"; averaged weights (EMA): loss {metrics['ema_loss']:.4f}  "
                f"{accuracy_text(ema_view(metrics), self.num_classes)}"
                if "ema_top1" in metrics
                else ""
            )
            print(
                f"[{step}/{self.total_steps}] {split}: loss {metrics['loss']:.4f}  "
                f"{accuracy_text(metrics, self.num_classes)}  "
                f"({metrics.get('count', '?')} examples){averaged}",
                file=self.stream,
                flush=True,
            )

    def _write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
        if not self.is_main:
            return
        self._jsonl.write(step, split, metrics)
        if self._tb is not None:
            self._tb.write_scalars(
                step,
                {
                    f"{split}/{k}": v
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and np.isfinite(v)
                },
            )

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        if self._tb is not None:
            self._tb.write_hparams(dict(hparams))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
