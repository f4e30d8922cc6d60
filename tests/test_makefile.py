"""The Makefile's set-up: an interpreter older than the project's floor is refused before a venv is made."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def fresh_make_env() -> dict[str, str]:
    """The environment of a fresh ``make``, not a sub-make of ``make test``."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def test_an_older_python_is_refused_in_one_line_before_the_venv(tmp_path: Path) -> None:
    # an interpreter that reports 3.10 (this one, with its version patched)
    old = tmp_path / "python3.10"
    code = "import sys; sys.version_info = (3, 10, 13); sys.version = '3.10.13'; exec(sys.argv.pop(1))"
    old.write_text(f'#!/bin/sh\n[ "$1" = -c ] || exit 9\nexec {sys.executable} -c "{code}" "$2"\n')
    old.chmod(0o755)
    venv = tmp_path / "venv"
    res = subprocess.run(["make", "--no-print-directory", "install", f"PYTHON={old}", f"VENV={venv}"], cwd=REPO,
                         env=fresh_make_env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode != 0
    assert f"xrayfm needs Python 3.11 or newer; {old} is 3.10.13: run make PYTHON=python3.11" in res.stderr
    assert not venv.exists()


def test_the_floor_in_the_makefile_is_the_packages() -> None:
    floor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor == ">=3.11" and "sys.version_info < (3, 11)" in (REPO / "Makefile").read_text()
