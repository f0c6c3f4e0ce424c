"""Where inputs and outputs are: local paths made absolute at the entry points, URLs kept.

A task graph runs in other processes (Dask workers, maybe on other machines, each with its
own working directory), so every path that goes into one is absolute or a URL: the entry
points (command line, flows, library jobs, the accessor's openers) pass what the user gave
through :func:`absolute` before anything else.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def is_url(location) -> bool:
    """Whether ``location`` is an fsspec URL (``s3://bucket/key``, ``memory://x``...) rather
    than a local path (``file://`` URLs count as URLs too)."""
    return "://" in str(location)


def absolute(location):
    """``location`` as an absolute local :class:`~pathlib.Path` (``~`` expanded, symbolic
    links kept, relative to the current working directory), or unchanged when it is a URL
    (a ``str``) or None."""
    if location is None:
        return None
    if is_url(location):
        return str(location)
    return Path(os.path.abspath(os.path.expanduser(os.fspath(location))))


def filesystem(url: str):
    """(fsspec filesystem, path in it) of a URL; InputError when no filesystem serves it."""
    import fsspec

    from hsad_scale.errors import InputError

    try:
        return fsspec.core.url_to_fs(str(url))
    except (ValueError, ImportError) as exc:
        raise InputError(f"cannot open {url}: {exc}") from None


def exists(location) -> bool:
    """Whether a local path or a URL (an object, or a prefix holding objects) exists."""
    if not is_url(location):
        return Path(location).exists()
    fs, path = filesystem(location)
    return fs.exists(path)


def is_cube_store(location) -> bool:
    """Whether a local path or a URL is a Zarr store (its root ``zarr.json`` or ``.zgroup``)."""
    if not is_url(location):
        path = Path(location)
        return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())
    fs, path = filesystem(location)
    return fs.exists(f"{path.rstrip('/')}/zarr.json") or fs.exists(f"{path.rstrip('/')}/.zgroup")


def fetch(url: str, folder: Path) -> Path:
    """Copy the object at ``url`` into the local ``folder`` (made); returns the local file."""
    fs, path = filesystem(url)
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / path.rstrip("/").rsplit("/", 1)[-1]
    fs.get(path, str(local))
    return local


def check_destination(dest, overwrite: bool):
    """:func:`hsad_scale.atomic.check_destination` for local paths; for a URL, refuse an
    existing prefix unless ``overwrite`` (returns the URL)."""
    from hsad_scale.atomic import check_destination as check_local
    from hsad_scale.errors import InputError

    if not is_url(dest):
        return check_local(dest, overwrite)
    if exists(dest) and not overwrite:
        raise InputError(f"{dest} already exists (pass --overwrite to replace it)")
    return str(dest).rstrip("/")


#: The object a published run folder on an object store is complete with: written last.
COMPLETE_MARKER = "run.json"


@contextlib.contextmanager
def staged(dest: str, overwrite: bool = False):
    """For an output at the URL ``dest``: yield a local path (in a new temporary folder) to
    write the whole output at; when the block succeeds, upload it under a temporary prefix
    next to ``dest`` (``.NAME.tmp-XXXX/``), then publish it: copy every object to ``dest``
    (an old output there removed first, with ``overwrite``), :data:`COMPLETE_MARKER` last,
    and remove the temporary prefix. Object stores have no atomic rename: an output is
    complete when its marker exists (until then readers see no ``run.json``), and a failed
    block leaves nothing under ``dest``."""
    import shutil
    import tempfile
    import uuid

    dest = check_destination(dest, overwrite)
    fs, final = filesystem(dest)
    final = final.rstrip("/")
    parent, name = final.rsplit("/", 1) if "/" in final else ("", final)
    work = Path(tempfile.mkdtemp(prefix="hsad-stage-"))
    try:
        yield work / name
        tmp = f"{parent}/.{name}.tmp-{uuid.uuid4().hex[:8]}" if parent else f".{name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            fs.put(str(work / name), tmp, recursive=True)
            if fs.exists(final):
                fs.rm(final, recursive=True)
            objects = sorted(p for p in fs.find(tmp) if not p.endswith("/"))
            marker = f"{tmp}/{COMPLETE_MARKER}"
            for path in [p for p in objects if p != marker] + [p for p in objects if p == marker]:
                fs.copy(path, final + path[len(tmp):])
        finally:
            if fs.exists(tmp):
                fs.rm(tmp, recursive=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
