"""Throughput of the host input pipeline alone (read, decode, augment, batch; no model).

`resnet_jax.bench.cli --input_pipeline` reports this function's result; until then:

  python -m resnet_jax.data.throughput --dataset imagenet2012 --data_dir D --batch_size 128 \
      --augment inception [--num_batches 40] [--json]

Two rates are given: wall-clock images/s (and that divided by the cores the process may use), and
images per CPU-second of the process, which is the honest per-core figure on a machine shared with
other work.
"""

import argparse
import json
import os
import resource
import time

from resnet_jax.data import pipeline


def _cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
    dataset, augment, image_shape.
    """
    it = pipeline.train_iterator(
        dataset,
        data_dir=data_dir,
        local_batch_size=batch_size,
        seed=seed,
        augment=augment,
        image_size=image_size,
        num_threads=num_threads,
    )
    for _ in range(warmup_batches):
        batch = next(it)
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    for _ in range(num_batches):
        batch = next(it)
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    images = num_batches * batch_size
    cores = num_threads or len(os.sched_getaffinity(0))
    return {
        "dataset": dataset,
        "augment": augment
        or pipeline.TRAIN_AUGMENTS[pipeline.datasets.facts(dataset)["family"]][0],
        "batch_size": batch_size,
        "num_batches": num_batches,
        "image_shape": list(batch["image"].shape[1:]),
        # Unrounded: the rates must agree with `seconds` exactly; printing rounds.
        "seconds": seconds,
        "images_per_sec": images / seconds,
        "cores": cores,
        "images_per_sec_per_core": images / seconds / cores,
        "images_per_cpu_sec": images / cpu if cpu > 0 else None,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.data.throughput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--dataset", required=True, choices=pipeline.datasets.DATASETS)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--augment", default=None)
    parser.add_argument("--num_batches", type=int, default=40)
    parser.add_argument("--warmup_batches", type=int, default=5)
    parser.add_argument("--num_threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = measure_input_pipeline(
        args.dataset,
        args.data_dir,
        args.batch_size,
        args.augment,
        args.num_batches,
        warmup_batches=args.warmup_batches,
        num_threads=args.num_threads,
    )
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{result['dataset']} train pipeline, augment={result['augment']}, "
            f"{result['image_shape']}: {result['images_per_sec']:.0f} images/s on {result['cores']} "
            f"cores ({result['images_per_sec_per_core']:.0f}/core wall-clock; "
            f"{result['images_per_cpu_sec']:.0f} per CPU-second)"
        )


if __name__ == "__main__":
    main()
