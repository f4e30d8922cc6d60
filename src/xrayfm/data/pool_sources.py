"""The sources of a dataset pool, and how they are written: ``ADAPTER:ROOT?key=value&...`` or YAML.

On the command line a source is ``ADAPTER:ROOT`` with optional adapter options after ``?``,
joined by ``&``: ``csv:/data/jsrt?mask_columns=mask&label_columns=()``; values are read as in
``-o key=value``. Two keys belong to the pool, not the adapter: ``weight`` and ``source`` (the
label). A YAML file (``.yaml`` / ``.yml``) can hold the whole pool instead::

    sources:
      - {adapter: nih_cxr14, root: /data/nih, weight: 1}
      - {adapter: csv, root: /data/jsrt, options: {mask_columns: [mask]}, source: jsrt}
    exclude_test:
      - {adapter: csv, root: /data/jsrt, options: {mask_columns: [mask]}}
"""

from __future__ import annotations

import ast
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xrayfm.data.base import XrayDataset
from xrayfm.data.registry import build_dataset
from xrayfm.errors import XrayfmError

#: Keys of a source spec that belong to the pool, not to the adapter.
POOL_KEYS: tuple[str, ...] = ("weight", "source")


@dataclass(frozen=True)
class PoolSource:
    """One dataset of a pool.

    Attributes:
        adapter: Registered adapter name (``xrayfm datasets``).
        root: Dataset root.
        options: Adapter options.
        weight: Train-split resampling factor (see the module docstring).
        label: Name in ``meta["source"]`` and in reports; default: the adapter, or
            ``adapter:<root folder>`` when the adapter occurs more than once in the pool.
    """

    adapter: str
    root: Path
    options: Mapping[str, Any] = field(default_factory=dict)
    weight: float = 1.0
    label: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight > 0):
            raise XrayfmError(f"source {self.adapter}:{self.root}: weight must be a positive number, not {self.weight}")

    def build(self, split: str) -> XrayDataset:
        """The source's ``split``, built by its adapter with its options."""
        return build_dataset(self.adapter, self.root, split, **dict(self.options))

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description (for manifests and reports)."""
        return {"source": self.label, "adapter": self.adapter, "root": str(self.root.resolve()),
                "options": {k: list(v) if isinstance(v, tuple) else v for k, v in self.options.items()},
                "weight": self.weight}  # fmt: skip


def _literal(raw: str) -> Any:
    """A ``key=value`` value as ``-o`` reads it: a Python literal, ``a,b`` a tuple, else the text."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return tuple(v for v in raw.split(",") if v) if "," in raw else raw
    return tuple(value) if isinstance(value, list) else value


def _from_mapping(spec: Mapping[str, Any], where: str) -> PoolSource:
    unknown = sorted(set(spec) - {"adapter", "root", "options", *POOL_KEYS})
    if unknown or "adapter" not in spec or "root" not in spec:
        raise XrayfmError(f"{where}: a source needs adapter and root (optional: options, weight, source); got {spec}")
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(spec.get("options") or {}).items()}
    return PoolSource(str(spec["adapter"]), Path(str(spec["root"])), options, float(spec.get("weight", 1.0)),
                      spec.get("source"))  # fmt: skip


def parse_source(spec: str | Mapping[str, Any]) -> PoolSource:
    """Read one source: ``ADAPTER:ROOT[?key=value&key=value]`` or a mapping (from YAML).

    Args:
        spec: The source as text or as a mapping with ``adapter``, ``root`` and optional
            ``options``, ``weight``, ``source``.

    Returns:
        The source.

    Raises:
        XrayfmError: No ``ADAPTER:`` prefix, an option without ``=``, or a bad weight.
    """
    if isinstance(spec, Mapping):
        return _from_mapping(spec, "pool source")
    adapter, sep, rest = spec.partition(":")
    root, _, query = rest.partition("?")
    if not sep or not adapter or not root:
        raise XrayfmError(f"data source {spec!r} must be ADAPTER:ROOT[?key=value&...], e.g. nih_cxr14:/data/nih")
    options: dict[str, Any] = {}
    for pair in filter(None, query.split("&")):
        key, eq, raw = pair.partition("=")
        if not eq or not key:
            raise XrayfmError(f"data source {spec!r}: option {pair!r} is not key=value")
        options[key.strip()] = _literal(raw)
    pool = {k: options.pop(k) for k in POOL_KEYS if k in options}
    try:
        weight = float(pool.get("weight", 1.0))
    except (TypeError, ValueError):
        raise XrayfmError(f"data source {spec!r}: weight must be a number, not {pool['weight']!r}") from None
    label = pool.get("source")
    return PoolSource(adapter.strip(), Path(root), options, weight, None if label is None else str(label))


def read_pool_file(path: str | Path) -> tuple[list[PoolSource], list[PoolSource]]:
    """Read a YAML pool: ``sources`` (a list of source mappings) and optional ``exclude_test``.

    Args:
        path: The YAML file.

    Returns:
        The sources and the downstream sets whose test patients are excluded.

    Raises:
        XrayfmError: The file cannot be read or does not hold a ``sources`` list.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise XrayfmError(f"pool file {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if isinstance(data, list):
        data = {"sources": data}
    if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
        raise XrayfmError(f"pool file {path}: expected a mapping with a 'sources' list (or a list of sources)")
    excluded = data.get("exclude_test") or []
    return ([_from_mapping(s, str(path)) for s in data["sources"]],
            [_from_mapping(s, str(path)) for s in excluded])  # fmt: skip


def parse_sources(specs: Iterable[str]) -> tuple[list[PoolSource], list[PoolSource]]:
    """Read the ``SOURCE`` / ``--data`` arguments of a command: source specs or YAML pool files.

    Returns:
        The sources, and the downstream sets named by the YAML files' ``exclude_test``.
    """
    sources: list[PoolSource] = []
    excluded: list[PoolSource] = []
    for spec in specs:
        if spec.lower().endswith((".yaml", ".yml")) and ":" not in Path(spec).name:
            more, excl = read_pool_file(spec)
            sources += more
            excluded += excl
        else:
            sources.append(parse_source(spec))
    return sources, excluded
