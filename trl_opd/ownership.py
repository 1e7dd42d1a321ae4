"""Ownership of folders: the package writes only into folders it created or that carry its marker.

A folder the package creates (a run's ``output_dir``, a pipeline's folder and its stage folders, a teacher cache)
gets a marker file, :data:`MARKER_NAME`, recording what it holds (``kind``) and a fingerprint of what produced it
(:mod:`trl_opd.fingerprint`). The rules, enforced by :func:`claim`:

* a missing or empty folder is created and marked;
* a folder marked with the same kind is handed back with its marker (the caller compares the fingerprint and decides:
  resume, refuse, or replace on ``--overwrite``);
* a folder marked with another kind, or a non-empty folder without a marker, is refused: no flag makes the package
  write into (or delete from) a folder it does not own.

A claimed folder is locked (:func:`lock`) for the life of the process: a second process claiming it is refused.
Deletions go through :func:`remove_owned`, which deletes only entries of a marked folder. :func:`child_dir` keeps a
name from leaving its parent (``..``, ``.``, a path separator, a link out).
"""

from __future__ import annotations

import json
import os
import shutil

from .atomic import write_json


MARKER_NAME = ".trl-opd.json"
MARKER_FORMAT = 1


class OwnershipError(ValueError):
    """A folder the package may not write into (printed as one ``error:`` line by the command line)."""


def marker_path(folder: str | os.PathLike) -> str:
    return os.path.join(os.fspath(folder), MARKER_NAME)


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of ``folder`` (``None`` when it has none). A marker that is not a JSON object is refused."""
    path = marker_path(folder)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as handle:
            marker = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OwnershipError(f"{path} is unreadable ({error}); the folder's owner is unknown. Move the folder away "
                             "(or restore the file) and run again.") from None  # fmt: skip
    if not isinstance(marker, dict) or not isinstance(marker.get("kind"), str):
        raise OwnershipError(f"{path} is not a trl-opd marker (a JSON object with a `kind`); move the folder away.")
    return marker


def write_marker(folder: str | os.PathLike, marker: dict) -> None:
    """Write ``marker`` atomically (also the check that ``folder`` is writable)."""
    try:
        write_json(marker_path(folder), {**marker, "format": MARKER_FORMAT})
    except OSError as error:
        raise OwnershipError(f"cannot write into {os.fspath(folder)} ({error.strerror}); choose a writable folder.") \
            from None  # fmt: skip


def claim(folder: str | os.PathLike, kind: str, what: str, **fields) -> tuple[dict, bool]:
    """Make sure the package may write into ``folder`` as a ``kind`` folder; returns ``(marker, created)``.

    ``created`` is ``True`` when the folder was missing or empty (it is then marked with ``kind`` and ``fields``);
    otherwise the existing marker (same ``kind``) is returned unchanged. ``what`` names the folder's role in errors
    (``"output_dir"``, ``"--output"``).

    Raises:
        OwnershipError: the folder is not empty and carries no marker, or carries another kind's, or is not writable.
    """
    folder = os.fspath(folder)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise OwnershipError(f"{what} {folder} is a file, not a folder; choose a folder.")
    marker = read_marker(folder) if os.path.isdir(folder) else None
    if marker is None:
        entries = [name for name in os.listdir(folder) if name != LOCK_NAME] if os.path.isdir(folder) else []
        if entries:
            shown = ", ".join(sorted(entries)[:4]) + (", ..." if len(entries) > 4 else "")
            raise OwnershipError(
                f"{what} {folder} is not empty ({shown}) and was not created by trl-opd (it has no {MARKER_NAME}): "
                "trl-opd writes only into folders it owns. Choose a new or empty folder."
            )
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as error:
            raise OwnershipError(f"cannot create {what} {folder} ({error.strerror}); choose a writable folder.") \
                from None  # fmt: skip
        marker = {"kind": kind, **fields}
        write_marker(folder, marker)
        lock(folder, what)
        return marker, True
    if marker["kind"] != kind:
        raise OwnershipError(f"{what} {folder} holds a trl-opd {marker['kind']}, not a {kind}; choose another folder.")
    if not os.access(folder, os.W_OK):
        raise OwnershipError(f"{what} {folder} is not writable; fix its permissions or choose another folder.")
    lock(folder, what)
    return marker, False


LOCK_NAME = ".trl-opd.lock"
_HELD: dict[str, object] = {}  # folder -> the open lock file, held until the process exits


def lock(folder: str | os.PathLike, what: str) -> None:
    """Hold an exclusive lock on ``folder`` until this process exits, so that two processes never train into (or
    build) the same folder at once. The operating system releases it when the process dies, so a killed run leaves
    no stale lock. No-op where ``fcntl`` is missing (Windows) and when this process holds the lock already.

    Raises:
        OwnershipError: another process holds the lock (it names that process's id).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    folder = os.path.realpath(os.fspath(folder))
    if folder in _HELD:
        return
    handle = open(os.path.join(folder, LOCK_NAME), "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise OwnershipError(f"{what} {folder} is in use by another trl-opd process (pid {holder}); wait for it to "
                             "finish, or choose another folder.") from None  # fmt: skip
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    _HELD[folder] = handle


def release(folder: str | os.PathLike) -> None:
    """Release the lock :func:`lock` took on ``folder`` (a no-op when this process does not hold it)."""
    handle = _HELD.pop(os.path.realpath(os.fspath(folder)), None)
    if handle is not None:
        handle.close()


def remove_owned(folder: str | os.PathLike, names) -> int:
    """Delete the entries ``names`` of ``folder`` (files or folders), only when ``folder`` carries a marker; returns
    how many were deleted. A name that would leave ``folder`` is refused."""
    folder = os.fspath(folder)
    if read_marker(folder) is None:
        raise OwnershipError(f"refusing to delete from {folder}: it has no {MARKER_NAME}, so trl-opd does not own it.")
    removed = 0
    for name in names:
        path = child_dir(folder, name, "an entry")
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.remove(path)
        else:
            continue
        removed += 1
    return removed


def child_dir(parent: str | os.PathLike, name: str, what: str) -> str:
    """``parent/name``, refusing a ``name`` that is not one plain folder name inside ``parent`` (``.``, ``..``, a path
    separator, an absolute path, or an existing link pointing out of ``parent``)."""
    parent = os.fspath(parent)
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or os.sep in name
        or (os.altsep and os.altsep in name)
        or os.path.isabs(name)
    ):
        raise OwnershipError(f"{what} {name!r} is not a folder name inside {parent}; use letters, digits, _ . - "
                             "(not '.', '..' or a path).")  # fmt: skip
    path = os.path.join(parent, name)
    real_parent, real = os.path.realpath(parent), os.path.realpath(path)
    if os.path.dirname(real) != real_parent:
        raise OwnershipError(f"{what} {name!r}: {path} leads out of {parent} (a link?); remove the link or rename.")
    return path
