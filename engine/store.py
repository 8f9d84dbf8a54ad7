"""The on-disk cache: where it lives, atomic writes, locks and cached artifacts."""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from filelock import FileLock

T = TypeVar("T")


def home() -> Path:
    """Root folder of the cache: ``$LUNGLENS_HOME`` or ``~/.cache/lunglens``."""
    root = Path(os.environ.get("LUNGLENS_HOME") or Path.home() / ".cache" / "lunglens").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of a JSON-serialisable object, independent of key order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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


def lock(path: Path, timeout: float = -1) -> FileLock:
    """An inter-process lock on ``path`` (a ``.lock`` file beside it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout)


def cached_arrays(path: Path, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays stored at ``path``, computing and storing them first when missing.

    The lock makes two processes asking for the same artifact compute it once.
    """
    path = Path(path)
    if path.exists():
        return read_npz(path)
    with lock(path):
        if path.exists():
            return read_npz(path)
        arrays = compute()
        atomic_write_npz(path, **arrays)
        return arrays


def cached_json(path: Path, compute: Callable[[], T]) -> T:
    """Return the JSON stored at ``path``, computing and storing it first when missing."""
    path = Path(path)
    if path.exists():
        return read_json(path)
    with lock(path):
        if path.exists():
            return read_json(path)
        value = compute()
        atomic_write_json(path, value)
        return value
