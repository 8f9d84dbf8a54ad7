"""Integrity of stored files: size and SHA-256 recorded when a run completes, checked whenever it is read.

A run's ``result.json`` (written last) holds ``artifacts``: ``{name: {"size": bytes, "sha256": hex}}`` for every
other file of the run. Readers check the size every time (a ``stat``) and the SHA-256 once per process and file
version (path, size, modification time); ``python -m engine runs --verify`` re-hashes everything.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Literal

#: What an unreadable file's problem says: the fix is permissions, not retraining.
UNREADABLE = ("cannot be read by this user (permission denied): ask the cache's owner to make it readable "
              "(chmod -R a+rX), or set LUNGLENS_HOME to a cache of your own")

#: How thoroughly to check: sizes only (listing), hashes once per process (loading), hashes always (``--verify``).
Level = Literal["size", "once", "full"]

_verified: set[tuple[str, int, int, str]] = set()
_verified_lock = threading.Lock()


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: Path) -> dict[str, int | str]:
    """The size and SHA-256 of a file, as stored in a completion record."""
    return {"size": Path(path).stat().st_size, "sha256": sha256_file(path)}


def record_files(folder: Path, names: list[str] | tuple[str, ...]) -> dict[str, dict[str, int | str]]:
    """Records of the named files of ``folder``."""
    return {name: file_record(Path(folder) / name) for name in names}


def file_problem(path: Path, record: dict, level: Level = "once") -> str | None:
    """What is wrong with ``path`` against its ``record`` (missing, wrong size, other content), or None if it matches."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return "is missing"
    except PermissionError:
        return UNREADABLE
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    expected = int(record["size"])
    if st.st_size != expected:
        what = "empty" if st.st_size == 0 else ("truncated" if st.st_size < expected else "longer than written")
        return f"is {st.st_size:,} bytes but {expected:,} were written ({what})"
    if level == "size":
        return None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, str(record["sha256"]))
    if level == "once":
        with _verified_lock:
            if key in _verified:
                return None
    try:
        digest = sha256_file(path)
    except PermissionError:
        return UNREADABLE
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if digest != record["sha256"]:
        return "has other content than was written (its SHA-256 differs: overwritten or corrupted on disk)"
    with _verified_lock:
        _verified.add(key)
    return None


def forget_verified() -> None:
    """Forget which files this process has hashed, so the next check hashes them again."""
    with _verified_lock:
        _verified.clear()

