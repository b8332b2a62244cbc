"""Running an absl program as a command: `--help` is an answer, a bad flag is one line.

`--help` shows the command's own usage and flags with their defaults (absl's global flags stay
under `--helpfull`), also when the command is a thin `python -m` alias of a module elsewhere. absl
ends `--help` with exit status 1, so a script or CI step that asks a command for its usage
would read it as a failure; here it ends with 0, like every other Unix tool. A flag that does not
parse (a config file that is missing, unreadable or broken, or a bad `:arg`) ends with one line
naming the cause and a chosen exit code instead of a chained traceback. Libraries' INFO logs stay
off the console unless `--verbosity` asks for them.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable
from typing import NoReturn

from absl import app, flags, logging

_HELP_FLAGS = ("--help", "-help", "-?", "--helpshort", "--helpfull", "--helpxml")
EXIT_USAGE = 64  # EX_USAGE: the command line itself is wrong


def root_cause(e: BaseException) -> str:
    """The innermost exception of a chain, as one line: what a user can act on."""
    while (e.__cause__ or e.__context__) is not None:
        e = e.__cause__ or e.__context__
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def fail(message: str, code: int) -> NoReturn:
    print(f"resnet_jax: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def did_you_mean(value: str, valid: Iterable[str], n: int = 3) -> str:
    """' (did you mean a, b?)' with the closest valid names, or '' when none is close."""
    close = difflib.get_close_matches(str(value), list(valid), n=n, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _help_describes(module_name: str) -> None:
    """Makes `--help` of an alias module (`resnet_jax.predict`) show its tool's doc and flags.

    absl's `--help` prints `__main__`'s docstring and the flags defined in `__main__`; an alias
    defines none, so without this its help would hold neither the usage nor a single flag.
    """
    main_module, tool = sys.modules["__main__"], sys.modules.get(module_name)
    if tool is None or tool is main_module or flags.FLAGS.get_key_flags_for_module(sys.argv[0]):
        return  # the program itself, or an alias that chose its own flags (pretrained)
    main_module.__doc__ = tool.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(tool):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)


def run(
    main: Callable[[list[str]], object],
    *,
    flag_error_code: int = EXIT_USAGE,
    explain: Callable[[Exception, list[str]], str | None] = lambda e, argv: None,
) -> None:
    """`absl.app.run(main)`: exit 0 after --help; one line and `flag_error_code` on a bad flag.

    `explain(error, argv)`: the one line for a parse error the command understands better than
    absl (None: absl's own reason).
    """
    asked_help = any(a.split("=")[0] in _HELP_FLAGS for a in sys.argv[1:])
    _help_describes(main.__module__)

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except Exception as e:  # flags.Error, or a config file that fails to import
            message = explain(e, argv)
            first = (str(e).splitlines() or [""])[0]
            # A bad value of a plain flag: absl's own line names the flag and the value ("flag
            # --format=onnx: value should be one of ..."); a config file's deeper cause does not.
            if message is None and isinstance(e, flags.IllegalFlagValueError):
                message = f"{first} (see --help)" if root_cause(e) in first else None
            if message is None:
                name = getattr(e, "flag_name", None) or "the command line"
                message = f"cannot parse {name}: {root_cause(e)} (see --help)"
            fail(message, flag_error_code)

    def quiet_main(argv: list[str]) -> object:
        if not flags.FLAGS["verbosity"].present:  # Orbax and TF log every step at INFO
            logging.set_verbosity(logging.WARNING)
        return main(argv)

    try:
        app.run(quiet_main, flags_parser=parse)
    except SystemExit as e:
        if asked_help and e.code == 1:
            raise SystemExit(0) from None
        raise
