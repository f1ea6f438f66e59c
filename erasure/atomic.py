"""Atomic outputs: write under a temporary name beside the target, rename when complete.

A killed or failed run then never leaves a half-written file (or folder) that looks finished:
``os.replace`` within one directory is atomic on POSIX and Windows.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    The caller writes a file or a folder at the yielded path. Parent folders are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so the rename never crosses filesystems; hidden so it is not
    # mistaken for a result while it is being written.
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
