"""Atomic writes: a file a later run trusts is written whole or not at all.

Every such file (a cache's ``meta.json``, a folder's ownership marker, a pipeline's ``stage.json`` and
``summary.json``) is written to a temporary file in the same folder, flushed to disk, then moved over the target with
``os.replace`` (atomic on POSIX and Windows within one file system). A kill at any moment leaves the old file or the
new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temporary file beside it + ``os.replace``)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json(path: str | os.PathLike, value) -> None:
    """Write ``value`` as indented JSON to ``path`` atomically (objects JSON cannot hold are written as text)."""
    write_text(path, json.dumps(value, indent=2, default=str) + "\n")
