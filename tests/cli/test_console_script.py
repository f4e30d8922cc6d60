"""The ``xrayfm`` console script's entry point stays light: child processes that re-run the script (the
server's DICOM decode sandbox, started with ``spawn``) do not import PyTorch and the whole command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from xrayfm import __version__
from xrayfm.console import main

ROOT = Path(__file__).resolve().parents[2]


def test_the_installed_console_script_points_at_the_light_entry_point() -> None:
    (script,) = entry_points(group="console_scripts", name="xrayfm")
    assert script.value == "xrayfm.console:main"
    assert 'xrayfm = "xrayfm.console:main"' in (ROOT / "pyproject.toml").read_text()


def test_the_entry_point_runs_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"xrayfm {__version__}"


def test_a_spawned_child_of_the_console_script_does_not_import_torch(tmp_path: Path) -> None:
    """A script written as pip writes the ``xrayfm`` one starts a decode sandbox; its child, which re-runs the
    script as its main module, reports whether PyTorch got imported."""
    script = tmp_path / "xrayfm_script.py"
    script.write_text(
        textwrap.dedent(f"""\
        import sys
        from xrayfm.console import main

        if __name__ == "__main__":
            sys.path.insert(0, {str(Path(__file__).parents[1])!r})
            from sandbox_readers import torch_imported
            from xrayfm.io.sandbox import DecodeSandbox

            sandbox = DecodeSandbox(1, reader=torch_imported)
            try:
                print("child imported torch:", sandbox.read(b""))
            finally:
                sandbox.close()
        """)
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child imported torch: False"
