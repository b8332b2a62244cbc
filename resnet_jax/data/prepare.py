"""Builds a dataset into a tfds data_dir, once, through the dataset's real tfds builder.

  python -m resnet_jax.data.prepare NAME --data_dir D [--manual_dir M]

imagenet2012 needs the two archives from image-net.org in M. cifar10 / cifar100 download
themselves; on an offline machine put the official archive (cifar-10-binary.tar.gz or
cifar-100-binary.tar.gz) in M and tfds uses it after checking its registered checksum. shapes10 is
generated (about half a minute). For cifar10 / cifar100 / shapes10 it also writes the arrays that
the device input path reads (`resnet_jax.data.arrays`). See docs/data.md.
"""

import argparse
import logging
import os
import socket
import sys
import tarfile

from resnet_jax.data import datasets

# Sizes of the official archives, to warn (not fail: subsets and test fixtures are legitimate)
# when a file differs.
_OFFICIAL = {
    "ILSVRC2012_img_train.tar": (147_897_477_120, 1000),
    "ILSVRC2012_img_val.tar": (6_744_924_160, 50_000),
}


class PrepareError(RuntimeError):
    """A dataset cannot be built; the message says what is missing and how to fix it."""


def _check_tar(path, member_ok, what):
    """Raises PrepareError unless `path` is a complete tar whose members satisfy member_ok(name)."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()  # headers only: seeks over the data, quick even for 150 GB
    except (tarfile.TarError, OSError) as e:
        raise PrepareError(
            f"{path} cannot be read as a tar archive ({e}): the download is incomplete "
            "or damaged; download it again."
        ) from None
    if not members:
        raise PrepareError(f"{path} is empty; download it again.")
    end = max(m.offset_data + m.size for m in members)
    if end > os.path.getsize(path):
        raise PrepareError(
            f"{path} is truncated (its last member ends at byte {end:,}, the file has "
            f"{os.path.getsize(path):,}): the download is incomplete or damaged; "
            "download it again."
        )
    bad = [m.name for m in members if not member_ok(m.name)]
    if bad:
        raise PrepareError(f"{path} does not look like {what}: unexpected member(s) {bad[:3]}")
    return len(members)


def check_imagenet_manual_dir(manual_dir):
    """Checks that manual_dir holds complete ILSVRC2012 train and val tars; returns their paths."""
    files = datasets.manual_files("imagenet2012")
    paths = [os.path.join(manual_dir, f) for f in files] if manual_dir else []
    missing = [p for p in paths if not os.path.isfile(p)]
    if not manual_dir or missing:
        raise PrepareError(
            "imagenet2012 is built from the two archives of the ILSVRC2012 challenge, downloaded by "
            "hand from https://image-net.org/download-images (registration needed):\n"
            + "".join(f"  {f}\n" for f in files)
            + (
                f"Missing in --manual_dir {manual_dir}: {', '.join(missing)}"
                if manual_dir
                else "Pass the folder that holds them as --manual_dir."
            )
        )
    checks = {
        files[0]: (lambda n: n.endswith(".tar") and n.startswith("n"), "the per-class train tar"),
        files[1]: (
            lambda n: n.startswith("ILSVRC2012_val_") and n.endswith(".JPEG"),
            "the validation image tar",
        ),
    }
    for path in paths:
        name = os.path.basename(path)
        count = _check_tar(path, *checks[name])
        size, official_count = _OFFICIAL[name]
        if os.path.getsize(path) != size or count != official_count:
            logging.warning(
                "%s has %d members / %d bytes; the official archive has %d / %d. Building "
                "from it anyway.",
                path,
                count,
                os.path.getsize(path),
                official_count,
                size,
            )
    return paths


def prepare(name, data_dir=None, manual_dir=None):
    """Builds `name` into data_dir (no-op when already there); returns the tfds builder."""
    datasets.check_name(name)
    if name == "imagenet2012":
        check_imagenet_manual_dir(manual_dir)
    builder = datasets._tfds_builder(name, data_dir)  # pylint: disable=protected-access
    if builder.is_prepared():
        logging.info("%s is already prepared in %s", name, builder.data_dir)
        return builder
    if not datasets.manual_files(name):  # generated, under a lock shared with the pipeline
        return datasets.get_builder(name, data_dir)
    archive = datasets.manual_files(name)[0]
    # A finished tfds download leaves '<file>.INFO' in data_dir/downloads/<name>/.
    cache = os.path.join(datasets.resolve_data_dir(data_dir), "downloads", name)
    cached = os.path.isdir(cache) and any(f.endswith(".INFO") for f in os.listdir(cache))
    in_manual_dir = manual_dir and os.path.isfile(os.path.join(manual_dir, archive))
    if not (cached or in_manual_dir) and not _reachable(_DOWNLOAD_HOSTS[name]):
        # Fail now: offline, tfds would retry for minutes before giving up.
        raise PrepareError(
            _download_help(name, data_dir, manual_dir, f"cannot reach {_DOWNLOAD_HOSTS[name]}")
        )
    from resnet_jax.data._tf import import_tfds  # pylint: disable=g-import-not-at-top

    tfds = import_tfds()
    config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None
    )
    try:
        builder.download_and_prepare(download_config=config)
    except tfds.download.DownloadError as e:  # offline, or the server refused
        raise PrepareError(_download_help(name, data_dir, manual_dir, e)) from None
    except Exception as e:  # pylint: disable=broad-except
        if type(e).__name__ == "NonMatchingChecksumError":
            raise PrepareError(
                f"{e}\nThe archive in --manual_dir is not the official {archive}; download it again."
            ) from None
        if "requests" in type(e).__module__ or isinstance(e, (ConnectionError, TimeoutError)):
            raise PrepareError(_download_help(name, data_dir, manual_dir, e)) from None
        raise
    return builder


_DOWNLOAD_HOSTS = {"cifar10": "www.cs.toronto.edu", "cifar100": "www.cs.toronto.edu"}


def _reachable(host, timeout=5.0):
    """Whether a TCP connection to host:443 opens within `timeout` seconds."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _download_help(name, data_dir, manual_dir, error):
    archive = datasets.manual_files(name)[0]
    reason = (
        error if isinstance(error, str) else f"{type(error).__name__}: {str(error).splitlines()[0]}"
    )
    return (
        f"could not download {name} ({reason}). "
        f"On a machine without internet, copy the official {archive} into a folder and run\n  "
        f"{datasets.prepare_command(name, data_dir, manual_dir or 'FOLDER')}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m resnet_jax.data.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "name",
        type=_dataset_name,
        help=f"{', '.join(datasets.DATASETS)}, or folder:PATH (a folder of images)",
    )
    parser.add_argument(
        "--image_size",
        type=int,
        default=None,
        help="folder:PATH: the training size to prepare (default: a run from scratch's, the "
        "images' own size up to 224; a fine-tuning run takes BiT-HyperRule's, give it here)",
    )
    parser.add_argument(
        "--holdout_fraction",
        type=float,
        default=None,
        help="folder:PATH without an evaluation folder: the part of each class held out to "
        "evaluate on (default: a run's, 0.2; 0: refuse such a folder)",
    )
    parser.add_argument(
        "--input_pipeline",
        choices=("device", "host"),
        default=None,
        help="folder:PATH: the copy to prepare (default: the one a run uses: device when the "
        "training split fits in device memory, else host)",
    )
    parser.add_argument(
        "--data_dir",
        default=None,
        help="tfds data dir (default $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--manual_dir",
        default=None,
        help="folder with manually downloaded archives (imagenet2012; offline CIFAR)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from resnet_jax.data import catalog, folder, inputs  # pylint: disable=g-import-not-at-top

    if folder.is_folder(args.name):
        holdout = (
            folder.HOLDOUT_FRACTION if args.holdout_fraction is None else args.holdout_fraction
        )
        return _prepare_folder(
            args.name, args.data_dir, args.image_size, args.input_pipeline, holdout
        )
    try:
        builder = prepare(args.name, args.data_dir, args.manual_dir)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    splits = ", ".join(f"{k}: {v.num_examples:,}" for k, v in builder.info.splits.items())
    print(f"{args.name} ready in {builder.data_dir} ({splits})")
    held = catalog.open(args.name, data_dir=args.data_dir)
    if held.input_pipeline == "device":  # a 32x32 set: also the arrays the device path reads
        inputs.prepare(held)
        print(
            f"arrays for input_pipeline='device' in {held.prepared} (copy it to train without "
            "TensorFlow)"
        )
    return 0


def _dataset_name(name):
    if not (name in datasets.DATASETS or name.startswith("folder:")):
        raise argparse.ArgumentTypeError(
            f"{name!r} is not one of {', '.join(datasets.DATASETS)} or folder:PATH"
        )
    return name


def _prepare_folder(name, data_dir, image_size, input_pipeline, holdout):
    """Decodes a folder once into the copy its run reads (the device path's arrays, or the host
    path's JPEG records) at the training size a run from scratch takes (the record's rule); 66
    with one line when it cannot."""
    from resnet_jax.data import catalog, folder, inputs

    try:
        d = catalog.open(
            name,
            data_dir=data_dir,
            image_size=image_size,
            input_pipeline=input_pipeline,
            holdout=holdout,
        )
        print(folder.description(d.source.layout))
        print(d.image_size_rule)
        print(d.input_pipeline_rule)
        inputs.prepare(d)
    except (datasets.DatasetNotPreparedError, datasets.CorruptImageError) as e:
        print(f"resnet_jax: {e}", file=sys.stderr)
        return 66  # as a run's: no input
    print(f"{name} prepared at {d.image_size}x{d.image_size} in {d.prepared}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
