"""Atomic outputs: write under a temporary name beside the target, rename when complete.

A render that fails or is interrupted leaves no file under the final name, and its hidden
``.<name>.partial*`` entry is removed on the way out (a process that is killed may leave one, which
the next attempt replaces). :func:`check_target` refuses, before any work starts, a target that
could not be written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from videogen.errors import ConfigError


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
    try:
        partial.write_text(text)
        commit(partial, target)
    except BaseException:
        discard(partial)
        raise


def _nearest_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_target(target: str | os.PathLike, key: str, kind: Literal["file", "folder"]) -> None:
    """Refuse a ``target`` that cannot be written as a ``kind``, with one :class:`ConfigError` naming ``key``.

    The target must not be an existing entry of the other kind, and its nearest existing ancestor must
    be a folder this process can create entries in (tried with a hidden file that is removed at once,
    since permission bits do not tell for root or for /proc). Nothing else is created.
    """
    text = os.fspath(target)
    if not text.strip():
        raise ConfigError(f"{key}: is empty; give a file or folder to write")
    path = Path(text)
    if path.name in ("", ".", ".."):
        raise ConfigError(f"{key}: {text!r} names no file or folder of its own")
    if kind == "file" and path.is_dir():
        raise ConfigError(f"{key}: {path} is an existing folder; this output is a file, so give a file name")
    if kind == "folder" and path.exists() and not path.is_dir():
        raise ConfigError(f"{key}: {path} is an existing file; this output is a folder")
    ancestor = _nearest_existing(path.parent)
    if not ancestor.is_dir():
        raise ConfigError(f"{key}: {path} cannot be created: {ancestor} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".videogen-probe-", dir=ancestor)
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"{key}: {path} cannot be written: no file can be created in {ancestor} ({reason})") from None
    os.close(handle)
    os.unlink(probe)


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
