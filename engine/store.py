"""The on-disk cache: where it lives, atomic writes, locks and cached artifacts."""
from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import secrets
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from filelock import FileLock

from .errors import StoreError

T = TypeVar("T")
log = logging.getLogger(__name__)

#: errno values that mean "this folder cannot be written" and "the disk is full", with what to do about each.
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_FULL = {errno.ENOSPC, errno.EDQUOT}
#: What a cached artifact that cannot be read raises (truncated, empty, overwritten or not the format).
DAMAGED_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def storage_error(exc: OSError, folder: Path) -> StoreError | None:
    """A one-line StoreError naming ``folder`` and the fix for a read-only or full disk; None for other errors."""
    if exc.errno in _READ_ONLY:
        return StoreError(f"Cannot write to {folder} ({exc.strerror}): make it writable for this user, or set "
                          "LUNGLENS_HOME to a writable folder.")
    if exc.errno in _FULL:
        return StoreError(f"The disk holding {folder} is full: free some space there, or set LUNGLENS_HOME to a "
                          "folder on a disk with room.")
    return None


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Turn a read-only-folder or full-disk OSError raised inside the block into a one-line StoreError."""
    try:
        yield
    except OSError as exc:
        err = storage_error(exc, Path(folder))
        if err is None:
            raise
        raise err from None


def home() -> Path:
    """Root folder of the cache: ``$LUNGLENS_HOME`` or ``~/.cache/lunglens``."""
    root = Path(os.environ.get("LUNGLENS_HOME") or Path.home() / ".cache" / "lunglens").expanduser()
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    return root


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        # os.open with mode 0o666 lets the user's umask decide the permissions (mkstemp would force 0600).
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def read_json(path: Path) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write numpy arrays as one ``.npz`` file, atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class _StoreLock(FileLock):
    """A FileLock whose failure to create its lock file (read-only folder, full disk) is a one-line StoreError."""

    def acquire(self, *args: Any, **kwargs: Any) -> Any:
        """Acquire the lock (see ``filelock.FileLock.acquire``)."""
        with writing(Path(self.lock_file).parent):
            return super().acquire(*args, **kwargs)


def lock(path: Path, timeout: float = -1) -> FileLock:
    """An inter-process lock on ``path`` (a ``.lock`` file beside it)."""
    path = Path(path)
    with writing(path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    return _StoreLock(str(path) + ".lock", timeout=timeout)


def _read_or_none(path: Path, read: Callable[[Path], T]) -> T | None:
    """``read(path)``, or None (after removing it) when the file is missing or damaged, so it is recomputed."""
    if not path.exists():
        return None
    try:
        return read(path)
    except DAMAGED_READ_ERRORS as exc:
        if isinstance(exc, PermissionError):
            raise StoreError(f"Cannot read {path} (permission denied): make the cache folder readable for this "
                             "user, or set LUNGLENS_HOME to a folder of your own.") from None
        log.warning("recomputing %s: the cached file cannot be read (%s)", path, exc)
        with writing(path.parent):
            path.unlink(missing_ok=True)
        return None


def cached_arrays(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays stored at ``path``, computing and storing them first when missing.

    The lock makes two processes asking for the same artifact compute it once. A damaged file (truncated,
    empty, overwritten) is removed and computed again, never served.
    """
    path = Path(path)
    if (found := _read_or_none(path, read_npz)) is not None:
        return found
    with lock(path):
        if (found := _read_or_none(path, read_npz)) is not None:
            return found
        arrays = compute()
        atomic_write_npz(path, **arrays)
        return arrays


def cached_json(path: Path, compute: Callable[[], T]) -> T:
    """Return the JSON stored at ``path``, computing and storing it first when missing (or damaged)."""
    path = Path(path)
    if (found := _read_or_none(path, read_json)) is not None:
        return found
    with lock(path):
        if (found := _read_or_none(path, read_json)) is not None:
            return found
        value = compute()
        atomic_write_json(path, value)
        return value
