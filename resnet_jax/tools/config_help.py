"""The config on the command line: a bad `--config.KEY=VALUE` explained, and the key listing.

A mistyped key or a value of the wrong type is named with its fix in one line (exit 78), instead of
ml_collections' bare `'batchsize'`. `describe(config)` is what `--show_config` prints: every key,
its value and its meaning, the meanings read from the comments of `config.default_config` so they
have one source.
"""

from __future__ import annotations

import ast
import inspect
import io
import os
import re
import tokenize

from absl import flags
from ml_collections import config_dict, config_flags

from resnet_jax import config as config_lib
from resnet_jax import entry

# Keys that `config.resolve_config` adds: they have no line in `default_config` to comment.
DERIVED = {
    "steps_per_epoch": "derived: training examples // batch_size",
    "num_train_examples": "derived: examples in the training split",
    "peak_learning_rate": "derived: learning_rate after lr_scaling",
    "peak_warmup_learning_rate": "derived: warmup_learning_rate after lr_scaling",
    "class_names": "derived (folder): the class folders' names, sorted; label k is the k-th",
    "dataset_fingerprint": "derived (folder): its files, sizes and times; a resume must match",
    "image_size_rule": "derived (folder): why image_size is what it is",
    "batch_size_rule": "derived: why batch_size is smaller than the recipe's (a small dataset)",
    "length_rule": "derived (folder): why num_train_steps is shorter than the recipe's",
}
_BAD_VALUE = re.compile(r"flag --config\.([\w.]+)=(.*?): ")


def meanings() -> dict[str, str]:
    """{key: its comment in `default_config`}; a comment block right above a key's line counts."""
    source = inspect.getsource(config_lib.default_config)
    comments, alone = {}, set()  # line -> comment text; lines holding only a comment
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if tok.line.strip().startswith("#"):
                alone.add(tok.start[0])
    out = {}
    for node in ast.walk(ast.parse(source)):
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if not (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)):
            continue
        above = node.lineno - 1
        while above in alone:
            above -= 1
        lines = range(above + 1, node.end_lineno + 1)
        out[target.attr] = " ".join(comments[n] for n in lines if n in comments)
    return out


def _value(v) -> str:
    return repr(v.to_dict() if isinstance(v, config_dict.ConfigDict) else v)


def describe(config) -> str:
    """One line per key, sorted: `key = value  # meaning`."""
    notes = {**meanings(), **DERIVED}
    rows = [(f"{k} = {_value(v)}", notes.get(k, "")) for k, v in sorted(config.items())]
    width = max(len(left) for left, _ in rows)
    return "\n".join(f"{left:<{width}}  # {note}" if note else left for left, note in rows)


def show(config) -> str:
    """`--show_config`: the config resolved as a run would use it, or as given (and why) when
    resolving would need data that is not prepared here. Invalid values are a ConfigError."""
    from resnet_jax.engine import validation

    validation.check_config(config)
    d = config_lib.open_data(config)  # nothing read yet: a record counts on first use
    if d.kind in ("folder", "synthetic") or os.path.exists(d.prepared):  # a folder: only scanned
        return describe(config_lib.resolve_config(config))
    return (
        f"{describe(config)}\n# as given: image_size, num_classes and the epoch-derived steps "
        f"come from {config.dataset}, which is not prepared in this data_dir yet"
    )


def _loaded(argv: list[str]):
    """(config, its --config argument) of `argv`, loaded without the overrides that failed."""
    given = [a for a in argv[1:] if a.startswith(("--config=", "-config="))]
    if not given:
        return None, None
    values, only_file = flags.FlagValues(), [argv[0], given[-1]]
    config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=only_file)
    try:
        values(only_file)
        return values.config, given[-1]
    except Exception:  # the file itself is broken: absl's reason says so
        return None, None


def _literal(text: str) -> str:
    """`text` as it would appear inside a dict on the command line: numbers bare, words quoted."""
    try:
        return repr(ast.literal_eval(text)).replace("'", '"')
    except (ValueError, SyntaxError):
        return f'"{text}"'


def _key_problem(config, path: str, value: str, bad_value: bool, show: str) -> str | None:
    """The one line for override `--config.PATH=VALUE`, or None when it is not the culprit."""
    holder, parts = config, path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(holder, config_dict.ConfigDict):
            return None
        if part not in holder:
            where = ".".join(parts[:i])
            if where and not holder.keys():  # an open dict such as model_overrides: set it whole
                return (
                    f"unknown config key {path!r}: {where} is empty, so set it whole, e.g. "
                    f"'--config.{where}={{\"{part}\": {_literal(value)}}}'"
                )
            return (
                f"unknown config key {path!r}{entry.did_you_mean(part, holder.keys())}; "
                f"list the keys with: {show}"
            )
        if i < len(parts) - 1:
            holder = holder[part]
    if not bad_value:
        return None
    want, now = holder.get_type(parts[-1]), holder[parts[-1]]
    hint = f" (e.g. --config.{path}={now})" if now is not None else ""
    return f"config key {path} wants {getattr(want, '__name__', want)}, got {value!r}{hint}"


def explain(error: Exception, argv: list[str]) -> str | None:
    """`entry.run`'s `explain`: an unknown key with close matches, or a value of the wrong type."""
    config, config_arg = _loaded(argv)
    if config is None:
        return None
    show = f"python -m resnet_jax.main {config_arg} --show_config"
    bad = _BAD_VALUE.search(str(error))
    if bad:  # absl: "flag --config.batch_size=abc: invalid literal for int() ..."
        return _key_problem(config, bad.group(1), bad.group(2), True, show)
    for arg in argv[1:]:
        if arg.startswith("--config."):
            path, _, value = arg[len("--config.") :].partition("=")
            found = _key_problem(config, path, value, False, show)
            if found:
                return found
    return None
