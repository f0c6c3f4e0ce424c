"""Outputs appear whole or not at all: write into a temporary sibling, rename when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from hsad_scale.errors import InputError


def check_destination(dest: str | Path, overwrite: bool) -> Path:
    """Refuse an existing ``dest`` unless ``overwrite``, and a ``dest`` whose missing parent
    folders cannot be made (a file in the way); missing ones are made by :func:`atomic_path`."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists (pass --overwrite to replace it)")
    parent = next((p for p in dest.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"cannot create {dest}: {parent} is not a folder")
    return dest


@contextlib.contextmanager
def atomic_path(dest: str | Path, overwrite: bool = False):
    """Yield a temporary path next to ``dest``; on success it is renamed to ``dest``
    (replacing an old one only when ``overwrite``); on any error it is removed."""
    dest = check_destination(dest, overwrite)
    made = [p for p in reversed(dest.parents) if not p.exists()]  # missing parents, outermost first
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    done = False
    try:
        yield tmp
        _replace(tmp, dest)
        done = True
    finally:
        _remove(tmp)
        for folder in [] if done else reversed(made):  # nothing left behind by a failed run
            with contextlib.suppress(OSError):
                folder.rmdir()


def _replace(tmp: Path, dest: Path) -> None:
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to {tmp}")
    if dest.exists():
        trash = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dest, trash)
        os.rename(tmp, dest)
        _remove(trash)
    else:
        os.rename(tmp, dest)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
