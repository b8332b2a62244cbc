"""Running an absl program as a command: `--help` is an answer, not an error.

absl ends `--help` with exit status 1, so a shell script or CI step that asks a command for its
usage would read it as a failure; here it ends with 0, like every other Unix tool.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app

_HELP_FLAGS = ("--help", "-help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def run(main: Callable[[list[str]], object]) -> None:
    """`absl.app.run(main)`, exiting 0 after printing the usage asked for with --help."""
    asked_help = any(a.split("=")[0] in _HELP_FLAGS for a in sys.argv[1:])
    try:
        app.run(main)
    except SystemExit as e:
        if asked_help and e.code == 1:
            raise SystemExit(0) from None
        raise
