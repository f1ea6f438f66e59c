"""Atomic outputs: write under a temporary name beside the target, rename when complete.

A killed or failed run then never leaves a half-written file (or folder) that looks finished:
``os.replace`` within one directory is atomic on POSIX and Windows. ``check_output_file`` and
``check_output_folder`` refuse an output location before any work starts, so a bad ``--out`` fails
in a second rather than after the generation or training it was meant to keep.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from erasure.errors import ErasureInputError

#: The longest file name (bytes) on Linux, macOS and Windows filesystems alike.
NAME_MAX = 255
#: What ``atomic_path`` adds to a name for its temporary file (pid up to 7 digits).
_TMP_EXTRA = len("..tmp-") + 7


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    The caller writes a file or a folder at the yielded path. Parent folders are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Same folder as the target so the rename never crosses filesystems; hidden so it is not
    # mistaken for a result while it is being written. The suffix stays last: loaders that tell
    # formats by it (diffusers' from_single_file) can read the file before it is renamed.
    tmp = target.with_name(f".{target.stem}.tmp-{os.getpid()}{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def check_output_file(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output file location that cannot be written, before any work (nothing is left behind).

    Refused: an existing folder or device (``atomic_path`` would replace it), a name too long for its
    temporary twin, and a parent that is not a folder this process can create files in.
    """
    target = Path(path).expanduser()
    _check_name_length(target, flag)
    if target.is_dir():
        raise ErasureInputError(f"{flag} {target}: is a folder; give a file name")
    if target.exists() and not stat.S_ISREG(target.stat().st_mode):
        raise ErasureInputError(f"{flag} {target}: exists and is not a regular file")
    _check_creatable(target.parent, flag, target)
    return target


def check_output_folder(path: str | os.PathLike, flag: str) -> Path:
    """Refuse an output folder location (new or existing) that cannot be written; creates nothing."""
    folder = Path(path).expanduser()
    _check_name_length(folder, flag)
    if folder.exists() and not folder.is_dir():
        raise ErasureInputError(f"{flag} {folder}: exists and is not a folder")
    _check_creatable(folder, flag, folder)
    return folder


def _check_creatable(folder: Path, flag: str, target: Path) -> None:
    """Refuse unless ``folder`` is, or can be made as, a folder this process writes into."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ErasureInputError(f"{flag} {target}: cannot write there ({existing} is a file, not a folder)")
    # os.access is no proof: root passes it on /proc and /sys, where nothing can be created. So
    # create and remove an empty hidden folder there: the one test the filesystem cannot fool.
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".erasure-probe-", dir=existing))
    except OSError as exc:
        raise ErasureInputError(f"{flag} {target}: cannot create files in {existing} ({exc.strerror or exc})") from None


def _check_name_length(target: Path, flag: str) -> None:
    # Checked before anything touches the path: stat() of a too-long name raises instead of answering.
    parts = target.parts
    for i, part in enumerate(parts):
        extra = _TMP_EXTRA if i == len(parts) - 1 else 0  # the last name also gets a temporary twin
        if len(os.fsencode(part)) + extra > NAME_MAX:
            raise ErasureInputError(f"{flag} {target}: name too long ({len(os.fsencode(part))} bytes: {part[:20]}...)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
