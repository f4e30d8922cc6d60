"""Dataset registry: ``@register_dataset`` and ``build_dataset(name, root, split, **opts)``.

Adapters register a builder ``builder(root: Path, split: str, **opts) -> XrayDataset`` with a
description and the folder layout they expect, so ``xrayfm datasets`` can document them.
Options every adapter accepts (:data:`SHARED_OPTIONS`) are handled here, not by the builders:
``allow_outside_root`` (default False) lets label files name image and mask files that resolve
outside the dataset root, which are refused otherwise.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import numbers
import os
import pkgutil
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrayfm.data.base import Transform, XrayDataset
from xrayfm.data.tables import check_inside_root
from xrayfm.errors import DatasetError, UnknownNameError

Builder = Callable[..., XrayDataset]
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test", "all")


@dataclass(frozen=True)
class SharedOption:
    """An option every adapter accepts; :func:`build_dataset` applies it, not the builder."""

    default: Any
    kind: type
    help: str


#: Options valid for every adapter (``-o key=value`` on the CLI, keywords in Python).
SHARED_OPTIONS: dict[str, SharedOption] = {
    "allow_outside_root": SharedOption(
        False,
        bool,
        "use image and mask files that label files name outside ROOT (../.., absolute paths, symlinks "
        "leading out); refused by default",
    ),
}


@dataclass(frozen=True)
class DatasetInfo:
    """What ``xrayfm datasets`` shows for one adapter."""

    name: str
    builder: Builder
    description: str
    layout: str
    tasks: tuple[str, ...]

    def options(self) -> dict[str, Any]:
        """Builder keyword options and their defaults, then the :data:`SHARED_OPTIONS`."""
        sig = inspect.signature(self.builder)
        own = {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in sig.parameters.items()
            if k not in ("root", "split") and p.kind is inspect.Parameter.KEYWORD_ONLY
        }
        return {**own, **{k: o.default for k, o in SHARED_OPTIONS.items()}}

    def coerce_options(self, opts: dict[str, Any]) -> dict[str, Any]:
        """Fit option values to the builder's annotations, as ``-o key=value`` cannot type them.

        A single value given to a tuple option becomes a one-element tuple (``-o
        mask_columns=mask`` is ``("mask",)``, not its letters); bool, int and float options are
        checked; numbers given to a string option become strings (a column named ``2017``).

        Args:
            opts: Option name to value (names already checked against :meth:`options`).

        Returns:
            The options with coerced values.

        Raises:
            DatasetError: A value does not fit its option's type; the message names the option
                and the type expected.
        """
        hints = {**typing.get_type_hints(self.builder), **{k: o.kind for k, o in SHARED_OPTIONS.items()}}
        return {k: _coerce(self.name, k, v, hints.get(k, Any)) for k, v in opts.items()}


_REGISTRY: dict[str, DatasetInfo] = {}

#: Option types checked and converted by :meth:`DatasetInfo.coerce_options`, as messages name them.
_SCALARS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_PLURALS: dict[type, str] = {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}


def _union_members(hint: Any) -> tuple[Any, ...]:
    """The members of a union annotation (``str | None`` -> ``(str, NoneType)``), else ``(hint,)``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is_tuple(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple


def _scalar(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` (bool, int, float or str); ValueError when it is not one."""
    if isinstance(value, bool) or kind is bool:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is bool and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"  # -o flag=true (Python's True is parsed already)
    elif isinstance(value, numbers.Integral) and kind in (int, float, str):
        return kind(int(value))  # str: a column named 2017, parsed as a number
    elif isinstance(value, numbers.Real) and kind in (float, str):
        return kind(float(value))
    elif isinstance(value, (str, os.PathLike)) and kind is str:
        return str(value)
    raise ValueError(value)


def _item_kinds(hint: Any, n: int) -> tuple[type | None, ...] | None:
    """Types of the ``n`` items of a tuple annotation (None: unchecked); None when ``n`` does not fit."""
    args = typing.get_args(hint)
    if not args:
        return (None,) * n
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0] if args[0] in _SCALARS else None,) * n
    if len(args) != n:
        return None
    return tuple(a if a in _SCALARS else None for a in args)


def _describe(members: tuple[Any, ...]) -> str:
    """What an annotation accepts, in words: ``an integer or None``."""
    words = []
    for m in members:
        args = typing.get_args(m)
        if m in _SCALARS:
            words.append(_SCALARS[m])
        elif m is type(None):
            words.append("None")
        elif len(args) == 2 and args[1] is Ellipsis and args[0] in _PLURALS:
            words.append(f"a comma-separated list of {_PLURALS[args[0]]}")
        elif args and args[-1] is not Ellipsis:
            words.append(f"{len(args)} comma-separated values")
        else:
            words.append("a comma-separated list")
    return " or ".join(words)


def _coerce(dataset: str, key: str, value: Any, hint: Any) -> Any:
    """Fit one option value to its annotation (see :meth:`DatasetInfo.coerce_options`)."""
    members = _union_members(hint)
    if value is None and type(None) in members:
        return None
    if any(m not in _SCALARS and m is not type(None) and not _is_tuple(m) for m in members):
        return value  # a mapping, a sequence, Any: the builder checks it
    if not isinstance(value, (tuple, list)):
        for kind in (m for m in members if m in _SCALARS):
            try:
                return _scalar(value, kind)
            except ValueError:
                continue
    items = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for m in members:
        kinds = _item_kinds(m, len(items)) if _is_tuple(m) else None
        if kinds is None:
            continue
        try:
            return tuple(v if k is None else _scalar(v, k) for v, k in zip(items, kinds))
        except ValueError:
            continue
    raise DatasetError(f"dataset {dataset!r}: option {key}={value!r} must be {_describe(members)}")


def register_dataset(
    name: str, *, description: str, layout: str, tasks: tuple[str, ...]
) -> Callable[[Builder], Builder]:
    """Register an adapter builder under ``name``.

    Args:
        name: Registry key (lower-case, underscores).
        description: One line for listings.
        layout: The folder layout and label files the adapter reads (shown to users).
        tasks: Task kinds its samples can carry.
    """

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].builder is not fn:
            raise ValueError(f"dataset {name!r} registered twice")
        _REGISTRY[name] = DatasetInfo(name, fn, description, inspect.cleandoc(layout), tasks)
        return fn

    return deco


def check_choice(what: str, value: Any, choices: Collection[str]) -> None:
    """Reject an option value that is not one of ``choices``.

    Args:
        what: The option as the message names it (``"split"``, ``"masks mode"``).
        value: The value given.
        choices: The accepted values (a mapping's keys for a mapping).

    Raises:
        UnknownNameError: ``value`` is not in ``choices``; the message lists them.
    """
    if value not in choices:
        raise UnknownNameError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def _load_adapters() -> None:
    """Import every module of :mod:`xrayfm.data.datasets`; each registers its adapters."""
    from xrayfm.data import datasets

    for mod in pkgutil.iter_modules(datasets.__path__):
        importlib.import_module(f"{datasets.__name__}.{mod.name}")


def list_datasets() -> list[DatasetInfo]:
    """All registered adapters, sorted by name."""
    _load_adapters()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_dataset_info(name: str) -> DatasetInfo:
    """Look up an adapter, suggesting close names on a typo.

    Raises:
        UnknownNameError: No adapter of that name.
    """
    _load_adapters()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownNameError(f"unknown dataset {name!r}.{hint} Available: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_dataset(
    name: str,
    root: str | Path,
    split: str = "train",
    *,
    transform: Transform | None = None,
    read_options: dict[str, Any] | None = None,
    **opts: Any,
) -> XrayDataset:
    """Build a registered dataset.

    Args:
        name: Adapter name (see ``xrayfm datasets``).
        root: Dataset root directory in the adapter's published layout.
        split: ``train``, ``val``, ``test`` or ``all``.
        transform: Callable applied to each Sample.
        read_options: Passed to :func:`xrayfm.io.read_xray` (limits, intensity, voi).
        **opts: Adapter options (see ``xrayfm datasets NAME``), and ``allow_outside_root``
            (default False): accept image and mask files that resolve outside ``root``.

    Raises:
        UnknownNameError: Unknown adapter, split or option.
        DatasetError: An option value of the wrong type, ``root`` is missing or not in the
            expected layout, or (unless ``allow_outside_root``) a label file names an image or
            mask that resolves outside ``root`` (``..``, an absolute path, a symlink leading out).
    """
    info = get_dataset_info(name)
    check_choice("split", split, SPLIT_NAMES)
    allowed = info.options()
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"dataset {name!r} has no option(s) {unknown}; its options are: {', '.join(allowed) or 'none'}"
        )
    opts = info.coerce_options(opts)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset root {root} is not a directory")
    allow_outside_root = opts.pop("allow_outside_root", False)
    ds = info.builder(root, split, **opts)
    if not allow_outside_root:
        check_inside_root(ds.records, root, name, extra_roots=ds.extra_roots)
    ds.transform = transform
    ds.read_options = dict(read_options or {})
    return ds
