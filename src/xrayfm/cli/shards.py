"""``xrayfm shards build`` and ``xrayfm shards inspect``: pre-resized LitData shards of a dataset pool."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xrayfm.cli.recipes import list_recipes

if TYPE_CHECKING:
    from xrayfm.data.pool_sources import PoolSource

#: Shipped recipes whose name starts with this are pool files (``xrayfm shards build pool_merged520k OUT``).
POOL_RECIPE_PREFIX = "pool_"

#: Unreadable files the summary names one by one; the manifest lists them all.
SKIPPED_SHOWN = 10
#: How a data source is written on the command line (shared by every command that takes a pool).
SOURCE_HELP = (
    "ADAPTER:ROOT, with adapter options after '?' joined by '&' (values as in -o key=value), e.g. "
    "nih_cxr14:/data/nih or 'csv:/data/jsrt?mask_columns=mask&label_columns=()'; the keys weight= "
    "(train-split repeat / subsample factor, default 1) and source= (label) belong to the pool. "
    "Or a YAML pool file (.yaml) with a 'sources' list of {adapter, root, options, weight, source} "
    "and an optional 'exclude_test' list; or the name of a pool shipped with xrayfm (pool_merged520k: EVA-X's "
    "Merged520k)"
)


def shipped_pool(spec: str) -> str:
    """A ``SOURCE`` that names a pool recipe shipped with xrayfm, as the path of its file; other ``SOURCE``s unchanged.

    A file or folder of that name in the working folder wins over the shipped recipe.
    """
    name = spec.removesuffix(".yaml")
    if ":" in spec or Path(spec).exists() or not name.startswith(POOL_RECIPE_PREFIX):
        return spec
    return str(list_recipes().get(name, spec))


def read_pool_args(
    specs: Sequence[str], exclude_test: Sequence[str], data_root: str | None
) -> tuple[list[PoolSource], list[PoolSource]]:
    """The sources and the excluded test sets of ``shards build``; relative roots are joined to ``data_root``.

    Args:
        specs: ``SOURCE`` arguments (``ADAPTER:ROOT``, pool files, shipped pool names).
        exclude_test: ``--exclude-test`` arguments.
        data_root: ``--data-root``: the folder relative roots are in (None: the working folder).

    Returns:
        The sources, and the downstream sets whose test patients are kept out (the pool files' and the options').
    """
    from xrayfm.data.pool_sources import parse_sources

    sources, excluded = parse_sources([shipped_pool(s) for s in specs])
    more, _ = parse_sources(exclude_test)
    if data_root is None:
        return sources, excluded + more
    base = Path(data_root)
    return ([replace(s, root=base / s.root) for s in sources],  # an absolute root stays: base / "/x" is "/x"
            [replace(s, root=base / s.root) for s in excluded + more])  # fmt: skip


def _csv(value: str) -> list[str]:
    return [] if value.strip().lower() in ("", "none") else [v.strip() for v in value.split(",") if v.strip()]


def _size(n: float) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"


def format_shards_summary(s: dict[str, Any]) -> str:
    """Text of an :func:`~xrayfm.data.shards.inspect_shards` summary.

    Args:
        s: The summary.

    Returns:
        The summary as lines of text.
    """
    side = "shorter side" if s["resize"] == "shorter" else "square"
    state = "complete" if s["complete"] else "UNFINISHED (run the same build again to finish it)"
    lines = [f"{s['out']}: {state}; {s['total']} samples at {s['size']} px ({side}), {s['bits']}-bit {s['encoding']}"]
    for split, c in s["counts"].items():
        per = ", ".join(f"{k} {v}" for k, v in c["per_source"].items())
        lines.append(f"  {split}: {c['total']} ({per})")
    lines.append(f"  sources (dedupe {s['dedupe']}):")
    for src in s["sources"]:
        opts = " ".join(f"{k}={v}" for k, v in src["options"].items())
        lines.append(f"    {src['source']}: {src['adapter']} {src['root']} weight {src['weight']:g} {opts}".rstrip())
    for src in s["exclude_test"]:
        lines.append(f"    test patients excluded: {src['adapter']} {src['root']}")
    for t in s["tasks"]:
        lines.append(f"  task {t['name']} ({t['kind']}): {', '.join(t['classes'])}")
    versions = ", ".join(f"{k} {v}" for k, v in s["versions"].items())
    lines.append(f"  chunks: {s['chunks']}, {_size(s['bytes'])}; built with {versions}")
    skipped = s.get("skipped", [])
    if skipped:
        files = f"{len(skipped)} file{'s' if len(skipped) > 1 else ''}"
        lines.append(f"  left out as unreadable: {files} (all in manifest.json, each part's 'skipped')")
        lines += [f"    - {k['error']}" for k in skipped[:SKIPPED_SHOWN]]  # the error names its file
        if len(skipped) > SKIPPED_SHOWN:
            lines.append(f"    ... and {len(skipped) - SKIPPED_SHOWN} more")
    if "verified" in s:
        lines.append(f"  verify: {s['verified']} chunk files checked, {len(s['problems'])} problems")
        lines += [f"    - {p}" for p in s["problems"]]
    return "\n".join(lines)


def cmd_build(args: argparse.Namespace) -> int:
    from xrayfm.data.shards import build_shards, inspect_shards

    sources, excluded = read_pool_args(args.source, args.exclude_test, args.data_root)
    manifest = build_shards(
        sources, args.out, size=args.size, bits=args.bits, resize=args.resize, encoding=args.encoding,
        exclude_test=excluded, dedupe=args.dedupe, splits=_csv(args.splits), targets=_csv(args.targets),
        seed=args.seed, chunk_mb=args.chunk_mb, part_size=args.part_size, skip_unreadable=args.skip_unreadable,
    )  # fmt: skip
    if args.json:
        print(json.dumps(manifest, indent=2, default=str))
    else:
        print(format_shards_summary(inspect_shards(args.out)))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from xrayfm.data.shards import inspect_shards

    summary = inspect_shards(args.out, verify=args.verify)
    print(json.dumps(summary, indent=2, default=str) if args.json else format_shards_summary(summary))
    return 1 if summary.get("problems") else 0


def add_shards_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``shards build`` and ``shards inspect`` on the top-level subparsers.

    Args:
        sub: The ``xrayfm`` subparsers.
    """
    group = sub.add_parser(
        "shards",
        help="pool datasets into pre-resized shards (LitData) and inspect them",
        description="Pool datasets into pre-resized shards that stream fast (LitData format), and inspect them.",
    )
    cmds = group.add_subparsers(dest="shards_command", metavar="SUBCOMMAND", required=True)
    p = cmds.add_parser(
        "build",
        help="write a pool of datasets as pre-resized shards (resumes an interrupted build)",
        description=(
            "Pool one or more datasets (de-duplicated by image id, test patients of --exclude-test sets removed, "
            "per-source weights) and write them, resized, with labels, masks, boxes and metadata, as LitData "
            "shards under OUT/<split>/ with OUT/manifest.json. Rerunning the same command resumes an interrupted "
            "build; an OUT holding another build is refused."
        ),
    )
    p.add_argument("source", nargs="+", metavar="SOURCE", help=SOURCE_HELP)
    p.add_argument("out", metavar="OUT", help="output folder (new, empty, or an earlier run of this build)")
    p.add_argument("--data-root", help="folder the relative roots of SOURCE and --exclude-test are in (default: here)")
    p.add_argument("--size", type=int, default=512, help="shorter side (or side with --resize square), default 512")
    p.add_argument("--bits", type=int, choices=[8, 16], default=8, help="bits per stored pixel (default 8)")
    p.add_argument(
        "--resize", choices=["shorter", "square"], default="shorter",
        help="shorter: shorter side to --size, aspect kept, never enlarged (default); square: --size x --size",
    )  # fmt: skip
    p.add_argument(
        "--encoding", choices=["png", "raw"], default="png", help="png (lossless, compact; default) or raw pixels"
    )
    p.add_argument(
        "--exclude-test", action="append", default=[], metavar="SOURCE",
        help="downstream set (same form as SOURCE) whose test-split patients are kept out of the pool; repeatable",
    )  # fmt: skip
    p.add_argument(
        "--dedupe", choices=["id", "hash", "id+hash", "none"], default="id",
        help="drop duplicate images by image id (default), file content hash, both, or none",
    )  # fmt: skip
    p.add_argument("--splits", default="train,val,test", help="source splits to pool (default train,val,test)")
    p.add_argument(
        "--targets", default="labels,mask,boxes",
        help="targets kept: any of labels,mask,boxes, or none for images only (default all)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the weight subsampling (default 0)")
    p.add_argument("--chunk-mb", type=float, default=64.0, help="target chunk file size in MB (default 64)")
    p.add_argument("--part-size", type=int, default=5000, help="samples per resumable part (default 5000)")
    p.add_argument(
        "--skip-unreadable", action="store_true",
        help="leave out samples whose image or mask cannot be read (damaged, truncated), listing them in the "
             "manifest and the summary, instead of stopping at the first; a rerun tries them again",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(func=cmd_build)

    p = cmds.add_parser(
        "inspect",
        help="summarise a shard folder; --verify checks every chunk's SHA-256",
        description="Summarise a shard folder (counts per split and source, sources, size, bits, tasks, versions).",
    )
    p.add_argument("out", metavar="OUT", help="shard folder")
    p.add_argument("--verify", action="store_true", help="re-hash every chunk file; exit 1 on a mismatch")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)
