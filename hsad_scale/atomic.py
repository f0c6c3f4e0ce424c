"""Outputs appear whole or not at all: write into a temporary sibling, rename when complete.

While a run writes ``DEST`` it holds an exclusive lock on ``.DEST.lock`` next to it (``flock``:
released by the kernel when the process ends, however it ends), so a second run into the same
destination is refused at once; the destination is checked again just before the final
rename. Temporaries are named ``.DEST.tmp-<pid>-<random>``: a run killed outright (SIGKILL)
cannot remove its own, and the next run into the same destination, holding the lock, knows
that no live run owns them and removes them (one ``[hsad] warning:`` line).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import sys
import uuid
from pathlib import Path

from hsad_scale.errors import InputError, raise_if_interrupted


def check_destination(dest: str | Path, overwrite: bool) -> Path:
    """Refuse an existing ``dest`` unless ``overwrite``, a ``dest`` whose missing parent folders
    cannot be made (a file in the way), and a folder this process cannot write in; missing
    parent folders are made by :func:`atomic_path`."""
    dest = Path(dest)
    if dest.exists() and not overwrite:
        raise InputError(f"{dest} already exists (pass --overwrite to replace it)")
    parent = next((p for p in dest.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"cannot create {dest}: {parent} is not a folder")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {parent} (permission denied)")
    return dest


@contextlib.contextmanager
def atomic_path(dest: str | Path, overwrite: bool = False):
    """Yield a temporary path next to ``dest``; on success it is renamed to ``dest``
    (replacing an old one only when ``overwrite``); on any error, or an interruption, it is
    removed. InputError when another run writes ``dest`` now (its lock is held), or when
    ``dest`` appeared meanwhile without ``overwrite``."""
    dest = check_destination(dest, overwrite)
    made = [p for p in reversed(dest.parents) if not p.exists()]  # missing parents, outermost first
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create {dest.parent}: {exc.strerror}") from None
    done = False
    try:
        with destination_lock(dest):
            check_destination(dest, overwrite)  # again: a run that held the lock may just have finished
            remove_stale_temporaries(dest)
            tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                yield tmp
                raise_if_interrupted()  # a signal whose exception was lost: never publish
                _replace(tmp, dest, overwrite)
                done = True
            finally:
                _remove(tmp)
    finally:
        for folder in [] if done else reversed(made):  # nothing left behind by a failed run
            with contextlib.suppress(OSError):
                folder.rmdir()


@contextlib.contextmanager
def destination_lock(dest: Path):
    """Hold the exclusive lock of ``dest`` (``.DEST.lock`` next to it) for the block; InputError
    at once when another process holds it. The lock file is removed on release."""
    lock_path = dest.parent / f".{dest.name}.lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"cannot write in {dest.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                owner = _read_owner(lock_path)
                raise InputError(f"another hsad run{owner} is writing {dest} now (lock {lock_path.name})") from None
            raise
        try:  # the file may have been removed by the run that held it just before: lock the new one
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield lock_path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # while still locked: a waiting run finds its inode gone and retries
        os.close(fd)


def _read_owner(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}$")


def remove_stale_temporaries(dest: Path) -> list[Path]:
    """Remove the temporaries of ``dest`` left by runs that died (SIGKILL, power loss);
    call with :func:`destination_lock` held (no live run then owns any). Prints one
    ``[hsad] warning:`` line when it removed something; returns what it removed."""
    removed = []
    for path in dest.parent.glob(f".{glob_escape(dest.name)}.*-*"):
        match = _TEMPORARY.match(path.name)
        if match and match["name"] == dest.name and not _alive(match["pid"]):
            _remove(path)
            removed.append(path)
    if removed:
        pids = sorted({m["pid"] for p in removed if (m := _TEMPORARY.match(p.name)) and m["pid"]})
        owners = f" (pid {', '.join(pids)})" if pids else ""
        print(f"[hsad] warning: removed {len(removed)} temporary output(s) of {dest.name} left by an interrupted "
              f"run{owners}: {', '.join(p.name for p in removed)}", file=sys.stderr)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: str | None) -> bool:
    """Whether ``pid`` is a live process other than this one (a temporary without a pid is
    from an older version: never alive, since the caller holds the lock)."""
    if not pid or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _replace(tmp: Path, dest: Path, overwrite: bool = True) -> None:
    if not tmp.exists():
        raise RuntimeError(f"nothing was written to {tmp}")
    if dest.exists() or dest.is_symlink():
        if not overwrite:  # checked again at the last moment: never replace without --overwrite
            raise InputError(f"{dest} appeared while this run was writing it (pass --overwrite to replace it)")
        trash = dest.parent / f".{dest.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
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


def write_file_atomic(dest: str | Path, data: bytes | str, overwrite: bool = False) -> Path:
    """Write ``data`` to the file ``dest`` whole or not at all (see :func:`atomic_path`)."""
    with atomic_path(dest, overwrite) as tmp:
        Path(tmp).write_bytes(_bytes(data))
    return Path(dest)


def replace_file(dest: str | Path, data: bytes | str) -> Path:
    """Replace the file ``dest`` (a record this run owns and updates: ``run.json``, a report,
    a ledger) whole: ``data`` goes into a temporary sibling ``.DEST.tmp-<pid>-<random>`` that
    is then renamed over ``dest`` (``os.replace``), so a reader sees the old or the new file,
    never a part. No lock and no ``--overwrite`` check (callers that need them serialise
    with their own lock, or use :func:`write_file_atomic`); ``str`` is written as UTF-8.
    OSError as raised by the file system; the temporary is removed on any error."""
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_bytes(_bytes(data))
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return dest


def _bytes(data: bytes | str) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else data
