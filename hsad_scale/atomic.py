"""Outputs appear whole or not at all: write into a temporary sibling, rename when complete."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from hsad_scale.errors import InputError


def check_destination(dest: str | Path, overwrite: bool) -> Path:
    """Refuse an existing ``dest`` unless ``overwrite``."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists (pass --overwrite to replace it)")
    if not dest.parent.exists():
        raise InputError(f"parent folder of {dest} does not exist")
    return dest


@contextlib.contextmanager
def atomic_path(dest: str | Path, overwrite: bool = False):
    """Yield a temporary path next to ``dest``; on success it is renamed to ``dest``
    (replacing an old one only when ``overwrite``); on any error it is removed."""
    dest = check_destination(dest, overwrite)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        _replace(tmp, dest)
    finally:
        _remove(tmp)


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
