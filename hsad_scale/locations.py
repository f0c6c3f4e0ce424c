"""Where inputs and outputs are: local paths made absolute at the entry points, URLs kept.

A task graph runs in other processes (Dask workers, maybe on other machines, each with its
own working directory), so every path that goes into one is absolute or a URL: the entry
points (command line, flows, library jobs, the accessor's openers) pass what the user gave
through :func:`absolute` before anything else.
"""

from __future__ import annotations

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
