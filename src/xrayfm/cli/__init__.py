"""The ``xrayfm`` command line: a thin layer over the library functions.

Every subcommand calls one public function. Errors the toolkit anticipates (XrayfmError) are
printed as one line and exit with status 2; anything else is a bug, reported as one line with
status 1 (``-v`` logs its traceback). One module per command group registers its subcommands:
:mod:`~xrayfm.cli.data`, :mod:`~xrayfm.cli.demo`, :mod:`~xrayfm.cli.pretrain`,
:mod:`~xrayfm.cli.finetune`, :mod:`~xrayfm.cli.anatomy` (``evaluate anatomy``), :mod:`~xrayfm.cli.compare`,
:mod:`~xrayfm.cli.explain`, :mod:`~xrayfm.cli.deploy` and :mod:`~xrayfm.cli.shards`; the
options several share are in :mod:`~xrayfm.cli.args`, YAML recipes in :mod:`~xrayfm.cli.recipes`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from xrayfm import __version__
from xrayfm.cli.anatomy import add_evaluate_anatomy_command, merge_command_words
from xrayfm.cli.compare import add_compare_command
from xrayfm.cli.data import add_data_commands
from xrayfm.cli.demo import add_demo_command
from xrayfm.cli.deploy import add_deploy_commands
from xrayfm.cli.explain import add_explain_commands
from xrayfm.cli.finetune import add_finetune_commands
from xrayfm.cli.pretrain import add_pretrain_commands
from xrayfm.cli.recipes import parse_with_recipe
from xrayfm.cli.shards import add_shards_commands
from xrayfm.errors import XrayfmError, data_worker_death, own_message
from xrayfm.progress import PROGRESS_LOGGER

__all__ = ["build_parser", "main"]

log = logging.getLogger("xrayfm")
_PROGRESS_HANDLER = "xrayfm-cli-progress"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``xrayfm`` command.

    Returns:
        The parser, with every subcommand registered.
    """
    parser = argparse.ArgumentParser(
        prog="xrayfm",
        description="Toolkit for X-ray foundation models: read X-rays safely, use public datasets, "
        "generate synthetic phantoms, pretrain EVA-X, fine-tune, evaluate, explain, serve and export.",
        epilog="Run 'xrayfm COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"xrayfm {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_data_commands(sub)
    add_demo_command(sub)
    add_pretrain_commands(sub)
    add_finetune_commands(sub)
    add_evaluate_anatomy_command(sub)
    add_compare_command(sub)
    add_explain_commands(sub)
    add_deploy_commands(sub)
    add_shards_commands(sub)
    return parser


def _configure_logging(verbose: bool) -> None:
    """Warnings (with ``-v`` debug messages too) on stderr; progress lines on stderr in any case.

    Progress (the :data:`~xrayfm.progress.PROGRESS_LOGGER` records: a line every ``--log-every``
    training steps where no bar is shown, one per sweep run) is printed bare, without ``-v``. It
    does not propagate to the root handler, so ``-v`` does not print it twice; a handler an
    earlier call installed (tests call :func:`main` repeatedly) is replaced, so it writes to the
    ``sys.stderr`` of this call.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    progress_log = logging.getLogger(PROGRESS_LOGGER)
    for old in [h for h in progress_log.handlers if h.get_name() == _PROGRESS_HANDLER]:
        progress_log.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_PROGRESS_HANDLER)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress_log.addHandler(handler)
    progress_log.setLevel(logging.INFO)
    progress_log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xrayfm`` console script.

    Args:
        argv: Command-line arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: the command's own (0 on success), 2 for an error the toolkit names
        (:class:`~xrayfm.errors.XrayfmError`), 1 for an unexpected one, 130 when interrupted
        (128 + the signal after a training run saved its checkpoint on SIGINT / SIGTERM).
    """
    verbose = False
    try:
        args = parse_with_recipe(build_parser(), merge_command_words(sys.argv[1:] if argv is None else argv))
        verbose = args.verbose
        _configure_logging(verbose)
        return int(args.func(args))
    except XrayfmError as exc:
        signum = getattr(exc, "signum", None)  # TrainingInterrupted: saved, then stopped by a signal
        print(f"xrayfm: {'error: ' if signum is None else ''}{own_message(exc)}", file=sys.stderr)
        return 2 if signum is None else 128 + signum
    except KeyboardInterrupt:
        print("xrayfm: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug, not a user mistake: one line, the traceback only on request
        if verbose:
            log.exception("internal error")
        died = data_worker_death(exc)
        if died is not None:  # not a bug: most likely a damaged file or too little memory
            print(f"xrayfm: error: {died}", file=sys.stderr)
            return 1
        first = next(iter(own_message(exc).strip().splitlines()), "")
        hint = "" if verbose else " (run with -v for the traceback)"
        print(f"xrayfm: internal error: {type(exc).__name__}: {first}{hint}", file=sys.stderr)
        return 1
