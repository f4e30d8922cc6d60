"""Dataset registry: ``@register_dataset`` and ``build_dataset(name, root, split, **opts)``.

Adapters register a builder ``builder(root: Path, split: str, **opts) -> XrayDataset`` with a
description and the folder layout they expect, so ``xrayfm datasets`` can document them.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import pkgutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xrayfm.data.base import Transform, XrayDataset
from xrayfm.errors import DatasetError, UnknownNameError

Builder = Callable[..., XrayDataset]
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test", "all")


@dataclass(frozen=True)
class DatasetInfo:
    """What ``xrayfm datasets`` shows for one adapter."""

    name: str
    builder: Builder
    description: str
    layout: str
    tasks: tuple[str, ...]

    def options(self) -> dict[str, Any]:
        """Builder keyword options and their defaults."""
        sig = inspect.signature(self.builder)
        return {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in sig.parameters.items()
            if k not in ("root", "split") and p.kind is inspect.Parameter.KEYWORD_ONLY
        }


_REGISTRY: dict[str, DatasetInfo] = {}


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
        **opts: Adapter options (see ``xrayfm datasets NAME``).

    Raises:
        UnknownNameError: Unknown adapter, split or option.
        DatasetError: ``root`` is missing or not in the expected layout.
    """
    info = get_dataset_info(name)
    check_choice("split", split, SPLIT_NAMES)
    allowed = info.options()
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"dataset {name!r} has no option(s) {unknown}; its options are: {', '.join(allowed) or 'none'}"
        )
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{name}: dataset root {root} is not a directory")
    ds = info.builder(root, split, **opts)
    ds.transform = transform
    ds.read_options = dict(read_options or {})
    return ds
