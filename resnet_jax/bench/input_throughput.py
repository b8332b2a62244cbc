"""Throughput of the host input pipeline alone (read, decode, augment, batch; no model), and of the
JPEG decoder alone on the same crops, the ceiling the pipeline is held to.

`python -m resnet_jax.benchmark --input_pipeline` reports these; so does

  python -m resnet_jax.bench.input_throughput --dataset imagenet2012 --data_dir D --batch_size 128 \
      --augment inception [--num_batches 40] [--vs_decoder] [--json]

Rates are given as wall-clock images/s (and that divided by the cores the process may use), and
as images per CPU-second of the process, which is the honest per-core figure on a machine shared
with other work.

`--vs_decoder` times, in interleaved rounds, the pipeline against three yardsticks on the same
work, each round on the same images:

* decode only (`decode_only_iterator`): the same encoded images and crop windows held in
  memory, mapped with `decode_and_crop_jpeg` and nothing else (the ceiling the pipeline is held to);
* decode + resize (the same, `resize=True`): each decoded crop also resized to the training size,
  rounded to uint8 and batched, the pixel work that any pipeline delivering these crops must do;
* read + decode (`decoder_iterator`): the same records read and parsed in the same order,
  then `decode_and_crop_jpeg` of the same windows.

It reports the median over rounds of each rate and of the pipeline's ratio to each, so load from
other processes shifts them all alike and cancels out of the ratios.

Importing this module imports TensorFlow (through `resnet_jax.data`, with the GPUs hidden from
it), so `python -m resnet_jax.benchmark` imports it only under `--input_pipeline`.
"""

import argparse
import functools
import gc
import json
import os
import resource
import statistics
import time

import numpy as np

from resnet_jax.data import augment as aug
from resnet_jax.data import catalog, datasets, pipeline
from resnet_jax.data._tf import import_tf

tf = import_tf()
_plain = tf.autograph.experimental.do_not_convert  # as the pipeline maps its functions


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cores(num_threads):
    return num_threads or len(os.sched_getaffinity(0))


def _time(it, num_batches, batch_size):
    """(wall seconds, process CPU seconds, last batch) of `num_batches` batches of `it`."""
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
    return time.perf_counter() - t0, _cpu_seconds() - cpu0, batch


def _rates(images, seconds, cpu, cores):
    return {
        "images_per_sec": images / seconds,
        "images_per_sec_per_core": images / seconds / cores,
        "images_per_cpu_sec": images / cpu if cpu > 0 else None,
    }


def measure_input_pipeline(
    dataset,
    data_dir,
    batch_size,
    augment=None,
    num_batches=40,
    *,
    warmup_batches=5,
    image_size=None,
    num_threads=None,
    seed=0,
):
    """Times `num_batches` training batches after `warmup_batches` (which fill buffers and autotune).

    Returns a dict: images_per_sec, images_per_sec_per_core (wall rate / cores), cores,
    images_per_cpu_sec (images per second of process CPU time), batch_size, num_batches, seconds,
    dataset, augment, image_shape, image_dtype.
    """
    d = host_record(dataset, data_dir, image_size)
    it = pipeline.train_iterator(
        d, local_batch_size=batch_size, seed=seed, augment=augment, num_threads=num_threads
    )
    for _ in range(warmup_batches):
        next(it)
    seconds, cpu, batch = _time(it, num_batches, batch_size)
    return {
        "dataset": dataset,
        "augment": augment or d.augments[0],
        "batch_size": batch_size,
        "num_batches": num_batches,
        "image_shape": list(batch["image"].shape[1:]),
        "image_dtype": str(batch["image"].dtype),
        # Unrounded: the rates must agree with `seconds` exactly; printing rounds.
        "seconds": seconds,
        "cores": _cores(num_threads),
        **_rates(num_batches * batch_size, seconds, cpu, _cores(num_threads)),
    }


def host_record(dataset, data_dir, image_size=None):
    """The record of `dataset` read by the host (tf.data) pipeline."""
    return catalog.open(dataset, data_dir=data_dir, image_size=image_size, input_pipeline="host")


def _crop_windows_stream(caller, d, local_batch_size, seed, augment, scale_range):
    """The one-process training stream of the decoder yardsticks (ImageNet only)."""
    if not d.jpeg_crops:
        raise ValueError(f"{d.name} images are not cropped out of JPEGs; {caller} is for ImageNet")
    # The training iterator's own stream and crop draws, so the yardsticks do its very work.
    return pipeline._TrainStream(
        d, local_batch_size, seed, augment=augment, scale_range=scale_range
    )


def decoder_iterator(
    d,
    *,
    local_batch_size,
    seed,
    start_step=0,
    augment=None,
    scale_range=(256, 480),
    num_threads=None,
):
    """The JPEG decoder alone, on the work of `train_iterator` of the record `d` with the same
    arguments: the same
    records read in the same order, each example's training crop window decoded with
    `decode_and_crop_jpeg`, and nothing else (ImageNet only).

    Yields {'pixel': uint8 [b, 3] (one pixel of each decoded crop: TensorFlow would skip a
    decode whose pixels go unused), 'label': int32 [b]}, to time the decoder's own speed against
    the pipeline's (`compare_with_decoder`).
    """
    ts = _crop_windows_stream("decoder_iterator", d, local_batch_size, seed, augment, scale_range)

    def example(image_bytes, seed):
        window, _ = ts.crop_window(image_bytes, seed)
        return {"pixel": aug.decode_jpeg_crop(image_bytes, window)[0, 0]}

    return ts.batches(start_step, local_batch_size, example, num_threads)


def decode_only_iterator(
    d,
    *,
    local_batch_size,
    seed,
    num_batches,
    start_step=0,
    augment=None,
    scale_range=(256, 480),
    num_threads=None,
    resize=False,
):
    """`decode_and_crop_jpeg` and nothing else, on `num_batches` batches of `train_iterator`'s
    work of the record `d` with the same arguments from batch `start_step` on (ImageNet only).

    The encoded images and their training crop windows are read and gathered into memory first
    (untimed), then a dataset of them is mapped with `decode_and_crop_jpeg` alone, with the
    pipeline's parallelism, batching and options: no reading, parsing, window draws or resizing.
    Yields {'pixel': uint8 [b, 3] (one pixel of each decoded crop: TensorFlow would skip a decode
    whose pixels go unused)} `num_batches` times, the yardstick of `compare_with_decoder`.

    With `resize`, each decoded crop is also resized and rounded as the pipeline does it and the
    batches hold them ({'image': uint8 [b, S, S, 3]}): the pixel work that any pipeline delivering
    these crops must do, with nothing around it.
    """
    if num_batches < 1:
        raise ValueError(f"need num_batches >= 1, got {num_batches}")
    ts = _crop_windows_stream(
        "decode_only_iterator", d, local_batch_size, seed, augment, scale_range
    )

    def example(image_bytes, seed):
        return {"bytes": image_bytes, "window": ts.crop_window(image_bytes, seed)[0]}

    work = ts.batches(start_step, local_batch_size, example, num_threads)
    gathered = [next(work) for _ in range(num_batches)]
    del work
    images = np.concatenate([b["bytes"] for b in gathered])
    windows = np.concatenate([b["window"] for b in gathered])
    if resize:
        size = ts.image_size
        decode = lambda b, w: {"image": aug.jpeg_crop_resize(b, w, size)}
    else:
        decode = lambda b, w: {"pixel": aug.decode_jpeg_crop(b, w)[0, 0]}
    ds = (
        tf.data.Dataset.from_tensor_slices((images, windows))
        .map(_plain(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(local_batch_size, drop_remainder=True)
    )
    return pipeline.prefetched(ds, num_threads).as_numpy_iterator()


# The ratios `compare_with_decoder` reports: (printed label, (wall-clock key, per-CPU-second key),
# numerator, denominator).
_RATIOS = (
    ("pipeline / decode only", ("ratio", "cpu_ratio"), "pipeline", "decode_only"),
    (
        "pipeline / decode + resize",
        ("decode_resize_ratio", "decode_resize_cpu_ratio"),
        "pipeline",
        "decode_resize",
    ),
    (
        "pipeline / read + decode",
        ("read_decode_ratio", "read_decode_cpu_ratio"),
        "pipeline",
        "read_decode",
    ),
    (
        "decode + resize / decode only (the most a pipeline that resizes can reach)",
        ("resize_ceiling", "resize_cpu_ceiling"),
        "decode_resize",
        "decode_only",
    ),
)


def compare_with_decoder(
    dataset,
    data_dir,
    batch_size,
    augment=None,
    *,
    rounds=5,
    num_batches=6,
    warmup_batches=2,
    image_size=None,
    num_threads=None,
    seed=0,
):
    """The training pipeline against the JPEG decoder alone on the same work, in `rounds`
    interleaved rounds.

    Round r starts all four at batch r * (warmup_batches + num_batches) of the same stream: a
    fresh `pipeline.train_iterator` ('pipeline'), a fresh `decode_only_iterator`
    ('decode_only': the same images and crop windows gathered into memory beforehand, decoded with
    `decode_and_crop_jpeg`, nothing else), the same with `resize=True` ('decode_resize': each crop
    also resized, rounded and batched) and a fresh `decoder_iterator` ('read_decode': the
    same records read and parsed, each crop window decoded). Each times `num_batches` batches after
    `warmup_batches`; only one of them exists at a time, and the order rotates each round.

    Returns medians over rounds: pipeline_*, decode_only_*, decode_resize_* and read_decode_* rates
    (see `measure_input_pipeline`); `ratio` and `cpu_ratio` (pipeline / decode only, wall-clock and
    per CPU-second, medians of the per-round ratios); `decode_resize_ratio`,
    `decode_resize_cpu_ratio`, `read_decode_ratio` and `read_decode_cpu_ratio` (pipeline / each of
    those); `resize_ceiling` and `resize_cpu_ceiling` (decode + resize / decode only: the ratio a
    pipeline that did nothing else would reach); every round's figures under 'rounds'.
    """
    if rounds < 1 or num_batches < 1 or warmup_batches < 0:
        raise ValueError(
            f"need rounds >= 1, num_batches >= 1, warmup_batches >= 0; got {rounds}, "
            f"{num_batches}, {warmup_batches}"
        )
    cores = _cores(num_threads)
    d = host_record(dataset, data_dir, image_size)
    kwargs = dict(local_batch_size=batch_size, seed=seed, augment=augment, num_threads=num_threads)
    decode_only = functools.partial(decode_only_iterator, num_batches=warmup_batches + num_batches)
    make = {
        "pipeline": pipeline.train_iterator,
        "decode_only": decode_only,
        "decode_resize": functools.partial(decode_only, resize=True),
        "read_decode": decoder_iterator,
    }
    names = list(make)
    rows = []
    for r in range(rounds):
        row = {}
        for name in names[r % len(names) :] + names[: r % len(names)]:
            it = make[name](d, start_step=r * (warmup_batches + num_batches), **kwargs)
            for _ in range(warmup_batches):
                next(it)
            seconds, cpu, _ = _time(it, num_batches, batch_size)
            row[name] = _rates(num_batches * batch_size, seconds, cpu, cores)
            del it
            gc.collect()  # the finished iterator's threads and buffers go before the next one
        rows.append(row)
    out = {
        "dataset": dataset,
        "augment": augment or d.augments[0],
        "batch_size": batch_size,
        "num_batches": num_batches,
        "cores": cores,
        "rounds": rows,
    }
    for name in make:
        for key in ("images_per_sec", "images_per_sec_per_core", "images_per_cpu_sec"):
            out[f"{name}_{key}"] = statistics.median(row[name][key] for row in rows)
    for _, keys, num, den in _RATIOS:
        for key, rate in zip(keys, ("images_per_sec", "images_per_cpu_sec"), strict=True):
            out[key] = statistics.median(row[num][rate] / row[den][rate] for row in rows)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.bench.input_throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", required=True, choices=datasets.DATASETS)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--augment", default=None)
    parser.add_argument("--image_size", type=int, default=None)
    parser.add_argument("--num_batches", type=int, default=40)
    parser.add_argument("--warmup_batches", type=int, default=5)
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument(
        "--vs_decoder", action="store_true", help="interleaved rounds against the decoder alone"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.vs_decoder:
        result = compare_with_decoder(
            args.dataset,
            args.data_dir,
            args.batch_size,
            args.augment,
            rounds=args.rounds,
            num_batches=args.num_batches,
            warmup_batches=args.warmup_batches,
            image_size=args.image_size,
            num_threads=args.num_threads,
        )
        text = format_comparison(result)
    else:
        result = measure_input_pipeline(
            args.dataset,
            args.data_dir,
            args.batch_size,
            args.augment,
            args.num_batches,
            warmup_batches=args.warmup_batches,
            image_size=args.image_size,
            num_threads=args.num_threads,
        )
        text = (
            f"{result['dataset']} train pipeline, augment={result['augment']}, "
            f"{result['image_shape']} {result['image_dtype']}: {result['images_per_sec']:.0f} "
            f"images/s on {result['cores']} cores ({result['images_per_sec_per_core']:.0f}/core "
            f"wall-clock; {result['images_per_cpu_sec']:.0f} per CPU-second)"
        )
    print(json.dumps(result) if args.json else text)


def format_comparison(r):
    """The rates and ratios of `compare_with_decoder`'s result, one line each."""

    def rate(name):
        return (
            f"{r[name + '_images_per_sec_per_core']:.0f} images/s per core "
            f"({r[name + '_images_per_cpu_sec']:.0f} per CPU-second)"
        )

    return (
        f"{r['dataset']} augment={r['augment']}, {len(r['rounds'])} rounds, {r['cores']} cores "
        f"(medians):\n"
        f"  pipeline        {rate('pipeline')}\n"
        f"  decode only     {rate('decode_only')}\n"
        f"  decode + resize {rate('decode_resize')}\n"
        f"  read + decode   {rate('read_decode')}"
    ) + "".join(
        f"\n  {label:26} {r[wall]:.3f} wall-clock, {r[cpu]:.3f} per CPU-second"
        for label, (wall, cpu), _, _ in _RATIOS
    )


if __name__ == "__main__":
    main()
