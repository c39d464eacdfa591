"""Atomic outputs: write under a temporary name beside the target, rename when complete.

A render that fails or is interrupted leaves no file under the final name; at most a hidden
``.<name>.partial*`` entry that the next attempt replaces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.partial{target.suffix}")


def discard(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def commit(partial: Path, target: Path) -> None:
    """Move ``partial`` to ``target``, replacing an existing file or folder."""
    if target.is_dir() and not partial.is_dir():
        raise IsADirectoryError(f"{target} is a folder; cannot replace it with a file")
    if target.is_dir():
        old = target.with_name(f".{target.name}.old")
        discard(old)
        os.replace(target, old)
        os.replace(partial, target)
        discard(old)
    else:
        os.replace(partial, target)


def write_text_atomic(target: Path, text: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = partial_path(target)
    partial.write_text(text)
    commit(partial, target)


@contextmanager
def atomic_folder(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; it replaces ``target`` when the block ends.

    If the block raises, the staging folder is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        commit(staging, target)
    finally:
        discard(staging)
