"""Repository invariants: CI runs the test command README.md gives."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    pytest_runs = [line for line in ci_lines if "pytest" in line and not line.startswith("#") and "echo" not in line]
    assert len(pytest_runs) == 1
    command = pytest_runs[0].split("||")[0].strip()
    readme = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    assert command in readme, f"README.md should give the test command CI runs: {command}"
