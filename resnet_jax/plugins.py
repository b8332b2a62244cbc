"""The user's code a run imports before it builds its model (the config key `plugins`), e.g. a file
that registers a residual unit with `resnet_jax.models.register_block`.

An entry ending in `.py` is a file, relative paths from the current directory; it is imported
under a module name made from its absolute path, so loading it again is a no-op and the classes it
registers stay the same objects. Any other entry is a module name on `sys.path`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterable
from types import ModuleType


class PluginError(ImportError):
    """A plugin that is missing or fails to import; the message names it, in one line."""


def absolute(specs: Iterable[str]) -> tuple[str, ...]:
    """`specs` with files as absolute paths (module names as they are): what a run records, so
    that its evaluation, predictions and exports load the same files from any directory."""
    return tuple(os.path.abspath(s) if s.endswith(".py") else s for s in _entries(specs))


def module_name(path: str) -> str:
    """The module name the plugin file `path` is imported under."""
    full = os.path.abspath(path)
    stem = re.sub(r"\W", "_", os.path.basename(full)[: -len(".py")])
    return f"resnet_jax_plugin_{stem}_{hashlib.sha256(full.encode()).hexdigest()[:12]}"


def load(specs: Iterable[str]) -> list[ModuleType]:
    """Imports each entry of `specs` (files and module names, in order); PluginError names the
    first that is missing or fails."""
    return [_file(s) if s.endswith(".py") else _module(s) for s in _entries(specs)]


def _entries(specs: Iterable[str]) -> tuple[str, ...]:
    # A single path given where a tuple is expected would otherwise be read letter by letter.
    return (specs,) if isinstance(specs, str) else tuple(specs)


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _file(path: str) -> ModuleType:
    full, name = os.path.abspath(path), module_name(path)
    if name in sys.modules:
        return sys.modules[name]
    if not os.path.isfile(full):
        raise PluginError(f"plugin {path!r}: no such file ({full})")
    spec = importlib.util.spec_from_file_location(name, full)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as `import` does: the file may import itself by this name
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise PluginError(f"plugin {path!r} failed to import: {_one_line(e)}") from e
    return module


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except Exception as e:
        # The entry itself (or its package) not found, rather than something it imports.
        if isinstance(e, ModuleNotFoundError) and f"{name}.".startswith(f"{e.name}."):
            why = "no module of that name (a file needs the .py ending)"
            raise PluginError(f"plugin {name!r}: {why}") from e
        raise PluginError(f"plugin {name!r} failed to import: {_one_line(e)}") from e
