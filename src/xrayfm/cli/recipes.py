"""YAML recipes for the command line, and the resolved config written next to every run.

A recipe is a YAML mapping whose keys are a command's long options (``batch_size`` or
``batch-size``); it replaces the command's defaults, and options given on the command line
override it. ``--config`` takes a recipe file or the name of a recipe shipped with xrayfm
(:func:`list_recipes`), so ``xrayfm pretrain mim --config eva_x_mim_tiny phantom DATA --steps 50``
runs the paper recipe with one change. Every run writes ``config.yaml`` with the values it
actually used, so a run can be repeated with ``--config RUN/config.yaml``.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from xrayfm.errors import XrayfmError

#: Namespace entries that are plumbing, not settings.
_INTERNAL = {"func", "parser", "config", "verbose", "command", "method"}


def _recipe_dir() -> Path:
    """The folder of the recipes shipped in the package (``xrayfm/configs``)."""
    return Path(str(resources.files("xrayfm") / "configs"))


def list_recipes() -> dict[str, Path]:
    """The recipes shipped with xrayfm.

    Returns:
        Recipe name (file name without ``.yaml``) to its file, sorted by name.
    """
    return {p.stem: p for p in sorted(_recipe_dir().glob("*.yaml"))}


def find_recipe(config: str | Path) -> Path:
    """The file a ``--config`` value means: a recipe file, else the name of a shipped recipe.

    Args:
        config: A path to a YAML file, or a shipped recipe's name (``eva_x_mim_tiny``, with or
            without ``.yaml``).

    Returns:
        The recipe file.

    Raises:
        XrayfmError: Neither a file nor a shipped recipe; the message lists the recipes.
    """
    path = Path(config)
    if path.is_file():
        return path
    shipped = list_recipes()
    name = path.name.removesuffix(".yaml")
    if name in shipped and len(path.parts) == 1:  # a bare name, not a path
        return shipped[name]
    if name in shipped:
        hint = f" The shipped recipe of that name is --config {name}."
    else:
        close = difflib.get_close_matches(name, list(shipped), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise XrayfmError(
        f"config {config} does not exist: give a YAML file or a recipe name ({', '.join(shipped)}).{hint}"
    )


def read_recipe(path: str | Path) -> dict[str, Any]:
    """Read a YAML recipe into a flat mapping of option names (dashes become underscores).

    Args:
        path: The recipe file, or the name of a shipped recipe (see :func:`find_recipe`).

    Returns:
        Option name to value.

    Raises:
        XrayfmError: The file is missing, is not YAML, or is not a mapping.
    """
    path = find_recipe(path)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise XrayfmError(f"config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise XrayfmError(f"config {path}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def _check_value(action: argparse.Action, value: Any, source: Path) -> Any:
    """Validate one recipe value against its option (choices, type, repeatable lists)."""
    if value is None:  # the option's own default (a resolved config records unset options as null)
        return None
    if isinstance(action, argparse._AppendAction):
        if isinstance(value, dict):  # adapter options written as a mapping
            return [f"{k}={v}" for k, v in value.items()]
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise XrayfmError(f"config {source}: {action.dest} must be true or false, got {value!r}")
        return value
    if value is not None and action.type is not None and not isinstance(value, (list, dict)):
        try:
            value = action.type(value if isinstance(value, str) else str(value))
        except (TypeError, ValueError) as exc:
            raise XrayfmError(f"config {source}: {action.dest}={value!r} is invalid ({exc})") from None
    if action.choices is not None and value not in action.choices:
        raise XrayfmError(f"config {source}: {action.dest}={value!r} is not one of {list(action.choices)}")
    return value


def apply_recipe(parser: argparse.ArgumentParser, path: str | Path) -> dict[str, Any]:
    """Make a recipe's values the defaults of ``parser`` (a subcommand's parser).

    Args:
        parser: The chosen subcommand's parser.
        path: The recipe file, or the name of a shipped recipe (see :func:`find_recipe`).

    Returns:
        The checked values.

    Raises:
        XrayfmError: An unknown recipe, a key the command does not have (with close matches), or
            a value its option would reject.
    """
    source = find_recipe(path)
    options = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in _INTERNAL}
    # a resolved config also records the positional arguments and its recipe: the command line
    # gives those, so they are skipped
    recorded = {a.dest for a in parser._actions if not a.option_strings} | {"recipe"}
    values: dict[str, Any] = {}
    for key, value in read_recipe(source).items():
        if key in recorded:
            continue
        if key not in options:
            close = difflib.get_close_matches(key, list(options), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise XrayfmError(f"config {source}: unknown setting {key!r}.{hint}")
        values[key] = _check_value(options[key], value, source)
    parser.set_defaults(**values)
    return values


def resolved_config(args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command ran with, as written to ``config.yaml``.

    Args:
        args: The parsed arguments of the command.

    Returns:
        Setting name to value, plumbing left out; ``recipe`` names the ``--config`` file used.
    """
    out = {k: v for k, v in vars(args).items() if k not in _INTERNAL}
    if getattr(args, "config", None):
        out["recipe"] = str(args.config)
    return out


def write_resolved_config(args: argparse.Namespace, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``out_dir/config.yaml`` (atomically) with the settings of this run.

    Args:
        args: The parsed arguments of the command.
        out_dir: The run folder (created if missing).
        extra: Further settings to record.

    Returns:
        The path written.
    """
    from xrayfm.io.atomic import atomic_write_text  # xrayfm.io loads pydicom: not at every command's start

    data = {**resolved_config(args), **(extra or {})}
    return atomic_write_text(Path(out_dir) / "config.yaml", yaml.safe_dump(_plain(data), sort_keys=False))


def _plain(obj: Any) -> Any:
    """Tuples to lists and paths to strings, so the YAML stays readable by safe_load."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_with_recipe(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; when the chosen subcommand got ``--config``, re-parse over its recipe.

    Args:
        parser: The ``xrayfm`` parser.
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The parsed arguments, recipe values in place of the defaults.

    Raises:
        XrayfmError: The recipe cannot be read or does not fit the command.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        apply_recipe(args.parser, args.config)
        args = parser.parse_args(argv)
    if hasattr(args, "parser"):
        given = given_options(args.parser, argv)
        for typed, other in ALTERNATIVES:
            if typed in given and other not in given and hasattr(args, other):
                setattr(args, other, 0)
    return args


#: Options that set the same thing another way (``--steps`` / ``--epochs``...): where only the
#: first is typed, the second (from a recipe or a default) is switched off (0), so that
#: ``--steps 500`` trains 500 steps though the recipe, or finetune's default, counts epochs.
ALTERNATIVES = (("steps", "epochs"), ("warmup", "warmup_epochs"), ("accumulate", "global_batch"))


def given_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options typed in ``argv`` (``--steps 5``, ``--steps=5``, or an unambiguous
    prefix as argparse accepts), as opposed to those holding a default or a recipe's value.

    Commands use it where two options set one thing (``--steps`` / ``--epochs``): the one typed wins.

    Args:
        parser: The subcommand's parser.
        argv: The command line.

    Returns:
        The ``dest`` of every option of ``parser`` that ``argv`` names.
    """
    dest_of = {s: a.dest for a in parser._actions for s in a.option_strings}
    given = set()
    for token in argv:
        if not token.startswith("--") or token == "--":
            continue
        name = token.split("=", 1)[0]
        matches = [name] if name in dest_of else [s for s in dest_of if s.startswith(name)]
        if len(matches) == 1:
            given.add(dest_of[matches[0]])
    return given


def parse_options(pairs: Sequence[str]) -> dict[str, Any]:
    """Parse ``key=value`` adapter options; values are Python literals or plain strings.

    ``a,b`` (no brackets) becomes a tuple of strings, so ``-o views=PA,AP`` works.

    Args:
        pairs: The ``-o`` values.

    Returns:
        Option name to value.

    Raises:
        XrayfmError: A pair without ``=`` or without a key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise XrayfmError(f"option {pair!r} is not of the form key=value")
        try:
            value: Any = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = tuple(v for v in raw.split(",") if v) if "," in raw else raw
        if isinstance(value, list):
            value = tuple(value)
        out[key.strip()] = value
    return out
