"""Processing new acquisitions from a landing location, without Prefect.

A landing location is a folder or any fsspec URL (``s3://bucket/landing``, ``memory://x``...).
Each acquisition in it (a ``.mat``, GeoTIFF or NetCDF file, an ENVI header with its data
file, or a ``.zarr`` cube store) is identified by the SHA-256 of its content, so a renamed or
re-uploaded copy is not processed twice, and a changed file is. The output location holds a
run folder per acquisition (``<name>-<hash12>/``, as ``hsad detect`` writes it) and
``ledger.json``: the hashes processed (or failed on bad input), written atomically under a
lock after each acquisition; ``.hashes.json`` keeps each file's hash by its size and
modification time, so a pass reads only new or changed files. Bad input is recorded and
skipped on later runs (the same bytes fail the same way); internal errors are retried on the
next run. One failure never stops the other acquisitions.

The ``watch`` flow in ``flows/watch.py`` (``hsad watch``, ``hsad serve``) runs these steps as
tasks; it is the one loop over them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import traceback
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

from hsad_scale import outputs
from hsad_scale.atomic import replace_file
from hsad_scale.errors import InputError
from hsad_scale.names import ENVI_HEADER, SCENE_SUFFIXES, STORE_SUFFIX

LEDGER = "ledger.json"
HASH_BLOCK = 4 << 20


@dataclass(frozen=True)
class Acquisition:
    """One acquisition of a landing location: ``name`` its path relative to the landing
    location, ``members`` the fsspec paths of its files (an ENVI header and its data file,
    every file of a Zarr store), ``url`` the URL of its main file (or store)."""

    name: str
    url: str
    path: str
    members: tuple[str, ...]
    protocol: str

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).name.split(".")[0] or "scene"

    def to_dict(self) -> dict:
        return asdict(self)


def landing_fs(landing: str):
    """(fsspec filesystem, root path) of a landing location; InputError when it is missing."""
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(str(landing))
    except (ValueError, ImportError) as exc:
        raise InputError(f"cannot open landing location {landing}: {exc}") from None
    if not fs.isdir(root):
        raise InputError(f"landing location {landing} is not a folder")
    return fs, root.rstrip("/")


def _protocol(fs) -> str:
    proto = fs.protocol
    return proto[0] if isinstance(proto, (tuple, list)) else proto


def list_acquisitions(landing: str) -> list[Acquisition]:
    """Acquisitions under ``landing`` (recursively), sorted by name. Hidden files and
    folders (``.name``) and files of unknown type are ignored; an ENVI data file is part of
    its header's acquisition; a ``.zarr`` folder is one acquisition."""
    fs, root = landing_fs(landing)
    protocol = _protocol(fs)
    found: dict[str, Acquisition] = {}
    files = sorted(fs.find(root, withdirs=True, detail=True).items())
    stores = [p.rstrip("/") for p, info in files if info["type"] == "directory" and p.rstrip("/").endswith(STORE_SUFFIX)]
    stores = [s for s in stores if not any(s.startswith(o + "/") for o in stores)]  # not nested in another
    plain = {}
    for path, info in files:
        rel = _relative(path, root)
        if not rel or any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue
        if any(path.rstrip("/") == s or path.startswith(s + "/") for s in stores):
            continue
        if info["type"] == "file":
            plain[path] = rel
    for store in stores:
        rel = _relative(store, root)
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue
        members = tuple(sorted(p for p in fs.find(store)))
        found[rel] = Acquisition(rel, _url(fs, store), store, members, protocol)
    headers = {p: rel for p, rel in plain.items() if p.lower().endswith(ENVI_HEADER)}
    used = set()
    for header, rel in headers.items():
        data = _envi_data(header, plain)
        members = tuple(sorted([header, *data]))
        used.update(members)
        # the reader takes the data file (with its sibling header) or the header
        found[rel] = Acquisition(rel, _url(fs, header), header, members, protocol)
    for path, rel in plain.items():
        if path in used or not path.lower().endswith(SCENE_SUFFIXES):
            continue
        found[rel] = Acquisition(rel, _url(fs, path), path, (path,), protocol)
    return [found[k] for k in sorted(found)]


def _relative(path: str, root: str) -> str:
    path = path.rstrip("/")
    return path[len(root):].lstrip("/") if path.startswith(root) else path


def _url(fs, path: str) -> str:
    return path if _protocol(fs) in ("file", "local") else fs.unstrip_protocol(path)


def _envi_data(header: str, files: dict) -> list[str]:
    """Data files of an ENVI header: ``NAME`` or ``NAME.<ext>`` next to ``NAME.hdr``, and
    ``NAME.<ext>`` for a header ``NAME.<ext>.hdr``."""
    base = header[: -len(ENVI_HEADER)]
    out = []
    for path in files:
        if path == header or path.lower().endswith(ENVI_HEADER):
            continue
        if path == base or (path.startswith(base + ".") and "/" not in path[len(base):]):
            out.append(path)
    return out


def content_hash(acq: Acquisition) -> str:
    """SHA-256 of the acquisition's content: the bytes of its file, or of each member file
    (with its path inside the acquisition) in order."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(acq.url)
    digest = hashlib.sha256()
    single = len(acq.members) == 1 and acq.members[0] == acq.path
    base = acq.path.rstrip("/")
    parent = base.rsplit("/", 1)[0] if "/" in base else ""
    for member in acq.members:
        if not single:
            name = member[len(parent):].lstrip("/") if acq.path.endswith(STORE_SUFFIX) else PurePosixPath(member).name
            digest.update(f"\0{name}\0".encode())
        with fs.open(member, "rb") as f:
            while block := f.read(HASH_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def fingerprint(acq: Acquisition) -> list | None:
    """(path, size, modification time) of each member file, from the file system's listing;
    None when the file system gives no modification time (then the content is always hashed)."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(acq.url)
    out = []
    for member in acq.members:
        info = fs.info(member)
        stamp = next((info[k] for k in ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "created")
                      if info.get(k) is not None), None)
        if stamp is None:
            return None
        out.append([member, info.get("size"), str(stamp)])
    return out


class HashCache:
    """``OUT/.hashes.json``: the content hash of each acquisition by its files' fingerprint
    (path, size, modification time), so a watch pass reads only new or changed files."""

    def __init__(self, out):
        self.path = Path(out) / ".hashes.json"

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    def get(self, acq: Acquisition, print_: list | None) -> str | None:
        entry = self._read().get(acq.url)
        return entry["hash"] if entry and print_ is not None and entry.get("fingerprint") == print_ else None

    def put(self, acq: Acquisition, print_: list | None, digest: str) -> None:
        if print_ is None:
            return
        with _lock(self.path.parent, ".hashes.lock"):
            data = self._read()
            data[acq.url] = {"fingerprint": print_, "hash": digest}
            replace_file(self.path, json.dumps(data, indent=2, default=str) + "\n")


def cached_hash(acq: Acquisition, out) -> str:
    """:func:`content_hash`, reused from ``OUT/.hashes.json`` while the files' fingerprint
    is unchanged."""
    cache = HashCache(out)
    print_ = fingerprint(acq)
    digest = cache.get(acq, print_)
    if digest is None:
        digest = content_hash(acq)
        cache.put(acq, print_, digest)
    return digest


@contextlib.contextmanager
def _lock(folder: Path, name: str):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover (Windows): no lock
            pass
        yield


def run_name(acq: Acquisition, digest: str) -> str:
    """Run folder name of an acquisition: its file stem and the first 12 hex digits of its hash."""
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in acq.stem)
    return f"{safe}-{digest[:12]}"


# --------------------------------------------------------------------------------------
# the ledger


class Ledger:
    """``OUT/ledger.json``: ``{"processed": {hash: entry}, "failed": {hash: entry}}``.
    Every update re-reads the file under an exclusive lock and replaces it atomically."""

    def __init__(self, out):
        self.out = Path(out)
        self.path = self.out / LEDGER

    def read(self) -> dict:
        if not self.path.is_file():
            return {"processed": {}, "failed": {}}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"ledger {self.path} is unreadable ({exc}); move it away to reprocess everything") from None
        data.setdefault("processed", {})
        data.setdefault("failed", {})
        return data

    def _locked(self):
        return _lock(self.out, ".ledger.lock")

    def _write(self, data: dict) -> None:
        replace_file(self.path, json.dumps(data, indent=2, default=str) + "\n")

    def record(self, digest: str, entry: dict) -> dict:
        """Record an acquisition's outcome (``entry["status"]``: done or failed)."""
        with self._locked():
            data = self.read()
            done = entry.get("status") == "done"
            data["processed" if done else "failed"][digest] = entry
            if done:
                data["failed"].pop(digest, None)
            self._write(data)
        return entry

    def status(self, digest: str) -> dict | None:
        """The ledger entry of a hash: processed, or failed on bad input (None otherwise)."""
        data = self.read()
        if digest in data["processed"]:
            return data["processed"][digest]
        failed = data["failed"].get(digest)
        if failed and failed.get("error_kind") == "input":
            return failed
        return None


def prepare_output(out) -> Ledger:
    """The output location (created) and its ledger."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output location {out} is not a folder")
    parent = next((p for p in out.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputError(f"cannot create output location {out}: {parent} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    Ledger(out).read()  # an unreadable ledger is an error before any work
    return Ledger(out)


def pending(acquisitions: list[Acquisition], digests: list[str], out) -> tuple[list, list]:
    """Split acquisitions into (to process, skipped): skipped are those whose hash the
    ledger holds (processed, or failed on bad input), duplicates of an earlier one in this
    listing, and those whose run folder already exists (completed before the ledger was
    written; recorded now). Items are ``(acquisition, hash)``; skipped ones carry a row."""
    ledger = Ledger(out)
    todo, skipped, seen = [], [], set()
    for acq, digest in zip(acquisitions, digests):
        entry = ledger.status(digest)
        if entry is None and (Path(out) / run_name(acq, digest) / "run.json").is_file():
            entry = ledger.record(digest, _entry(acq, digest, out, "done", note="run folder found"))
        if entry is not None:
            skipped.append((acq, digest, {**_row(acq, digest), "status": "skipped",
                                          "previous": entry.get("status"), "run": entry.get("run"),
                                          "error": entry.get("error")}))
        elif digest in seen:
            skipped.append((acq, digest, {**_row(acq, digest), "status": "skipped", "previous": "duplicate"}))
        else:
            seen.add(digest)
            todo.append((acq, digest))
    return todo, skipped


def _row(acq: Acquisition, digest: str) -> dict:
    return {"acquisition": acq.name, "url": acq.url, "hash": digest}


def _entry(acq: Acquisition, digest: str, out, status: str, **extra) -> dict:
    return {**_row(acq, digest), "status": status, "run": str(Path(out).resolve() / run_name(acq, digest)),
            "finished": outputs.now(), **extra}


# --------------------------------------------------------------------------------------
# one acquisition


def fetch(acq: Acquisition, out) -> Path:
    """A local path to the acquisition: the file itself on a local file system, else a copy
    in ``OUT/.staging/<name>/`` (remove it with :func:`cleanup`)."""
    if acq.protocol in ("file", "local"):
        return Path(acq.path)
    import fsspec

    fs, _ = fsspec.core.url_to_fs(acq.url)
    staging = Path(out) / ".staging" / uuid.uuid4().hex[:12]
    staging.mkdir(parents=True)
    base = acq.path.rstrip("/")
    if base.endswith(STORE_SUFFIX):
        target = staging / PurePosixPath(base).name
        fs.get(base, str(target), recursive=True)
        return target
    for member in acq.members:
        fs.get(member, str(staging / PurePosixPath(member).name))
    return staging / PurePosixPath(base).name


def cleanup(acq: Acquisition, local: Path | None) -> None:
    """Remove the staged copy made by :func:`fetch` (nothing for local files)."""
    if local is None or acq.protocol in ("file", "local"):
        return
    staging = Path(local).parent
    if staging.parent.name == ".staging":
        shutil.rmtree(staging, ignore_errors=True)


def outcome(acq: Acquisition, digest: str, out, error: BaseException | None = None, seconds: float | None = None) -> dict:
    """The ledger entry of one attempt: done, or failed with the error's one-line message
    and kind (``input``: bad input, skipped from now on; ``internal``: retried next run)."""
    if error is None:
        return _entry(acq, digest, out, "done", seconds=seconds)
    kind = "input" if isinstance(error, InputError) else "internal"
    message = f"{error}" if kind == "input" else f"{type(error).__name__}: {error}"
    return _entry(acq, digest, out, "failed", error=(message.splitlines() or [""])[0], error_kind=kind,
                  seconds=seconds, traceback=None if kind == "input" else traceback.format_exception(error)[-3:])


def record(out, entry: dict) -> dict:
    """Write one outcome into the ledger; returns it."""
    return Ledger(out).record(entry["hash"], entry)


def summary(rows: list[dict]) -> str:
    """One line: how many were processed, failed and skipped."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "failed", "skipped")}
    return f"{counts['done']} processed, {counts['failed']} failed, {counts['skipped']} skipped (seen before)"
