"""Marked copies stay identical to their source (diffusers' ``# Copied from`` convention).

Where code is kept twice on purpose, the copy carries a comment line right above its ``def`` or
``class`` (or its decorators)::

    # Copied from erasure.diffusion.cfg
    # Copied from erasure.training.tail_mean with tail_mean->last_tenth_mean

naming the original by its import path; ``with A->B, C->D`` lists the renames the copy makes. The
test reads every marked copy in the repository's source folders and compares it, comment lines and
trailing spaces aside, with the original's source after the renames.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import textwrap
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("erasure", "pipelines", "metrics", "app", "bench", "tests")
MARKER = re.compile(r"^(?P<indent>[ \t]*)# Copied from (?P<source>[\w.]+)(?: with (?P<renames>.+))?\s*$")


def resolve(path: str):
    """The object at a dotted import path (the longest importable module, then attributes)."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(f"cannot import {path}")


def _normalised(code: str) -> str:
    """The code from its ``def``/``class`` line on (decorators aside), dedented, without blank lines,
    comment lines and trailing spaces."""
    lines = [line.rstrip() for line in textwrap.dedent(code).splitlines()
             if line.strip() and not line.strip().startswith("#")]
    while lines and lines[0].lstrip().startswith("@"):
        lines.pop(0)
    return "\n".join(textwrap.dedent("\n".join(lines)).splitlines())


def marked_copies(text: str) -> list[tuple[int, str, list[tuple[str, str]], str]]:
    """(line number, source path, renames, the copy's code) of every marker in ``text``."""
    lines = text.splitlines()
    out = []
    for number, line in enumerate(lines):
        match = MARKER.match(line)
        if not match:
            continue
        indent = len(match["indent"].expandtabs())
        start = number + 1
        while start < len(lines) and lines[start].strip().startswith(("#", "@")):
            start += 1
        end = start + 1
        while end < len(lines):  # the block: until a non-blank line at or left of the marker's indentation
            body = lines[end]
            if body.strip() and len(body) - len(body.lstrip()) <= indent:
                break
            end += 1
        renames = []
        for pair in (match["renames"] or "").split(","):
            if "->" in pair:
                old, new = pair.split("->", 1)
                renames.append((old.strip(), new.strip()))
        out.append((number + 1, match["source"], renames, "\n".join(lines[number + 1:end])))
    return out


def check_copy(source: str, renames: list[tuple[str, str]], copy: str) -> str | None:
    """None when ``copy`` is the source's code with ``renames`` applied, else what differs."""
    original = inspect.getsource(resolve(source))
    for old, new in renames:
        original = original.replace(old, new)
    expected, actual = _normalised(original), _normalised(copy)
    if expected == actual:
        return None
    import difflib

    return "\n".join(difflib.unified_diff(expected.splitlines(), actual.splitlines(), source, "copy", lineterm=""))


def repository_copies() -> list[tuple[str, str, list[tuple[str, str]], str]]:
    """(where, source path, renames, code) of every marked copy in the repository's source folders."""
    out = []
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            for line, source, renames, code in marked_copies(path.read_text(encoding="utf-8")):
                out.append((f"{path.relative_to(ROOT)}:{line}", source, renames, code))
    return out


def test_marked_copies_equal_their_source():
    problems = []
    for where, source, renames, code in repository_copies():
        try:
            problem = check_copy(source, renames, code)
        except (ImportError, AttributeError, OSError, TypeError) as exc:
            problem = f"cannot read the source: {exc}"
        if problem is not None:
            problems.append(f"{where}: copy of {source} differs\n{problem}")
    assert not problems, "\n\n".join(problems)


def test_the_check_finds_copies_and_their_changes(tmp_path, monkeypatch):
    (tmp_path / "copies_original.py").write_text(textwrap.dedent('''
        def scaled(x, factor=2):
            """Doubled by default."""
            return x * factor


        class Box:
            def area(self, side):
                return side * side
    '''))
    copy = textwrap.dedent('''
        import functools


        # Copied from copies_original.scaled
        def scaled(x, factor=2):
            """Doubled by default."""
            # a comment of the copy's own
            return x * factor


        class Other:
            # Copied from copies_original.Box.area with side->edge
            @functools.lru_cache
            def area(self, edge):
                return edge * edge

            def more(self):
                return 1


        # Copied from copies_original.scaled
        def scaled_badly(x, factor=3):
            """Doubled by default."""
            return x * factor
    ''')
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("copies_original", None)
    found = marked_copies(copy)
    assert [(source, renames) for _, source, renames, _ in found] == [
        ("copies_original.scaled", []), ("copies_original.Box.area", [("side", "edge")]), ("copies_original.scaled", [])]
    assert "def more" not in found[1][3]  # the block ends where the copied method does
    assert check_copy(*found[0][1:]) is None and check_copy(*found[1][1:]) is None
    problem = check_copy(*found[2][1:])
    assert problem is not None and "factor=3" in problem
