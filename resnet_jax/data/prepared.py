"""Prepared data built once from its source: checked on every use, rebuilt when missing, damaged or
stale, under a lock so that concurrent processes build it once and never see half of it.

Both prepared copies of a folder (the device path's arrays, the host path's JPEG records) and the
arrays of the 32x32 datasets go through `once`; a copy that does not match its source is reported
on stderr and rebuilt, never used.
"""

import contextlib
import fcntl
import hashlib
import os
import sys

FOLDER = "resnet_jax_arrays"  # under data_dir, beside the tfds datasets


def folder_dir(root, data_dir, image_size):
    """DATA_DIR/resnet_jax_arrays/folders/<name>-<digest of its absolute path>/<image_size>: where
    the copies of the folder at `root` prepared at one training size live (`data_dir` resolved:
    `datasets.resolve_data_dir`)."""
    tag = f"{os.path.basename(root)}-{hashlib.sha256(root.encode()).hexdigest()[:12]}"
    return os.path.join(data_dir, FOLDER, "folders", tag, str(int(image_size)))


def _first_missing(path):
    """The outermost folder on `path` that does not exist yet (None when `path` exists)."""
    missing = None
    while path and not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def _remove_empty(top):
    """Removes `top` and the folders under it that hold no file, deepest first."""
    for folder_path, _, _ in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):  # not empty: something was written there
            os.rmdir(folder_path)


@contextlib.contextmanager
def _locked(target):
    created = _first_missing(os.path.dirname(target))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # A hidden file beside the target: removing it after use would race with a process waiting.
    lock_path = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # other processes wait, then find it built
        try:
            yield
        except BaseException:
            # A failed build (a corrupt image) leaves no empty prepared folder behind: only its
            # lock, which a process waiting on it still holds open, and the folders made for it.
            if created is not None:
                with contextlib.suppress(OSError):
                    os.remove(lock_path)
                _remove_empty(created)
            raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def once(target, check, build, *, cannot_build=None):
    """The prepared data at `target`, built first when `check` finds a problem with it.

    check() -> (data, None) when it is sound and current, else (None, what is wrong: 'missing',
    'stale: ...'); build() writes it (atomically) and returns the data; cannot_build(problem)
    raises when the source is not here to build from.
    """
    data, problem = check()
    if data is not None:
        return data
    if problem != "missing":
        print(
            f"resnet_jax: {target} is {problem}; rebuilding it from the source",
            file=sys.stderr,
            flush=True,
        )
    if cannot_build is not None:
        cannot_build(problem)
    with _locked(target):
        data, _ = check()  # another process may have built it while this one waited
        if data is None:
            data = build()
    return data
