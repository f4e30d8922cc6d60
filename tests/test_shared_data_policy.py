"""The ``shared_data`` policy: every test needing ../shared carries the marker; CI fails, never skips.

The policy lives in ``tests/conftest.py``. It is exercised here in a tiny pytest session run in a
subprocess, with a copy of that conftest and ``XRAYFM_SHARED`` pointing to a missing (or a present)
folder, so the real datasets are neither needed nor touched.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
SHARED_FIXTURES = {"shared_datasets", "label_files"}
# Ways a test can reach ../shared without the fixtures; such a test must be marked by hand.
DIRECT_NAMES = {"SHARED"}
DIRECT_STRINGS = ("XRAYFM_SHARED", "../shared", "shared/datasets")

TINY_TESTS = """
import pytest

@pytest.fixture
def sample(shared_datasets):
    return shared_datasets / "x"

def test_fixture(shared_datasets):
    assert shared_datasets.is_dir()

def test_labels(label_files):
    assert label_files.is_dir()

def test_indirect(sample):
    assert sample.name == "x"

@pytest.mark.shared_data
def test_marked_by_hand():
    pass

def test_plain():
    pass
"""
NEEDS_SHARED = {"test_fixture", "test_labels", "test_indirect", "test_marked_by_hand"}


def run_tiny_session(tmp_path: Path, shared: Path, *, ci: str | None, args: tuple[str, ...] = ()) -> dict[str, str]:
    """Run the tiny suite with the real conftest; return ``{test name: outcome}`` (passed/skipped/error/failed)."""
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    (suite / "conftest.py").write_text((TESTS / "conftest.py").read_text(encoding="utf-8"), encoding="utf-8")
    (suite / "test_tiny.py").write_text(TINY_TESTS, encoding="utf-8")
    (suite / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers\nmarkers =\n    shared_data: needs the real datasets\n", encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"CI", "PYTEST_ADDOPTS", "PYTEST_XDIST_WORKER"}}
    env["XRAYFM_SHARED"] = str(shared)
    if ci is not None:
        env["CI"] = ci
    report = tmp_path / "report.xml"
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-q", f"--junitxml={report}"]
    proc = subprocess.run([*cmd, *args, str(suite)], cwd=suite, env=env, capture_output=True, text=True, timeout=120)
    outcomes: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in {"skipped", "error", "failure"}]
        messages = " ".join(child.get("message", "") + (child.text or "") for child in case)
        outcomes[case.get("name", "")] = (kinds[0] if kinds else "passed") + ": " + messages
    outcomes["exit code"] = str(proc.returncode)
    return outcomes


def outcome(result: dict[str, str], name: str) -> str:
    return result[name].split(":", 1)[0]


def test_ci_fails_when_shared_is_missing(tmp_path: Path) -> None:
    result = run_tiny_session(tmp_path, tmp_path / "no-such-folder", ci="true")
    assert result["exit code"] == "1", result
    for name in NEEDS_SHARED:
        assert outcome(result, name) in {"error", "failure"}, result[name]
        assert "real datasets not found" in result[name] and "CI=true" in result[name], result[name]
    assert outcome(result, "test_plain") == "passed"


def test_without_ci_the_same_tests_skip_with_the_reason(tmp_path: Path) -> None:
    result = run_tiny_session(tmp_path, tmp_path / "no-such-folder", ci=None)
    assert result["exit code"] == "0", result
    for name in NEEDS_SHARED:
        assert outcome(result, name) == "skipped", result[name]
        assert "real datasets not found" in result[name] and "XRAYFM_SHARED" in result[name], result[name]
    assert outcome(result, "test_plain") == "passed"


def test_ci_runs_them_when_shared_is_there(tmp_path: Path) -> None:
    (tmp_path / "shared" / "datasets" / "label_files").mkdir(parents=True)
    result = run_tiny_session(tmp_path, tmp_path / "shared", ci="true")
    assert result["exit code"] == "0", result
    assert {outcome(result, name) for name in [*NEEDS_SHARED, "test_plain"]} == {"passed"}


def test_ci_fails_when_only_the_label_files_are_missing(tmp_path: Path) -> None:
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    result = run_tiny_session(tmp_path, tmp_path / "shared", ci="true")
    assert outcome(result, "test_labels") in {"error", "failure"} and "label files not found" in result["test_labels"]
    assert outcome(result, "test_fixture") == "passed"


def test_fixture_users_are_marked_at_collection(tmp_path: Path) -> None:
    """``-m 'not shared_data'`` keeps only the test that needs no real data: the marker was added automatically."""
    result = run_tiny_session(tmp_path, tmp_path / "no-such-folder", ci="true", args=("-m", "not shared_data"))
    assert result["exit code"] == "0", result
    assert set(result) == {"test_plain", "exit code"}


def test_every_collected_test_using_shared_fixtures_carries_the_marker(request: pytest.FixtureRequest) -> None:
    """Checks the items of the current session (the whole suite in a full run)."""
    unmarked = [
        item.nodeid
        for item in request.session.items
        if SHARED_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("shared_data")
    ]
    assert not unmarked, f"tests use ../shared fixtures without the shared_data marker: {unmarked}"


def _marked(decorators: list[ast.expr]) -> bool:
    return any("shared_data" in ast.unparse(d) for d in decorators)


def test_tests_reading_shared_directly_are_marked_by_hand() -> None:
    """A test (or fixture) that reaches ../shared without the fixtures needs an explicit shared_data marker."""
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "conftest.py" or path == Path(__file__).resolve():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_marked = any(
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets)
            and "shared_data" in ast.unparse(node.value)
            for node in tree.body
        )
        for func in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            docstring = func.body[0].value if ast.get_docstring(func) is not None else None  # type: ignore[attr-defined]
            direct = any(
                (isinstance(n, ast.Name) and n.id in DIRECT_NAMES)
                or (
                    isinstance(n, ast.Constant)
                    and n is not docstring
                    and isinstance(n.value, str)
                    and any(s in n.value for s in DIRECT_STRINGS)
                )
                for n in ast.walk(func)
            )
            source = ast.unparse(func)
            # marks given per parameter, or the shared_datasets fixture asked for at run time, count too
            adds_mark = "pytest.mark.shared_data" in source or "getfixturevalue('shared_datasets')" in source
            if direct and not (module_marked or _marked(func.decorator_list) or adds_mark):
                offenders.append(f"{path.relative_to(TESTS)}::{func.name}")
    assert not offenders, f"read ../shared directly but carry no shared_data marker: {offenders}"
