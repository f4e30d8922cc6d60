"""Running the ``xrayfm`` command as a user does, for the end-to-end tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "xrayfm"


def run(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the installed console script (falling back to ``python -m``) with a clean environment."""
    cmd = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "xrayfm.cli"]
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={"CI": "true", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
