"""Which folders a dashboard reachable from the network may read: only those under a configured data root."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import DataError

#: Environment variable naming the folder under which a network-exposed dashboard may read datasets.
DATA_ROOT_ENV = "LUNGLENS_DATA_ROOT"
#: Server addresses that only this machine can reach.
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})


def is_exposed(address: str | None) -> bool:
    """Whether a server bound to ``address`` can be reached from other machines (unset or empty: every interface)."""
    return (address or "").strip().strip("[]") not in LOCAL_ADDRESSES


def data_root() -> Path | None:
    """The folder named by ``$LUNGLENS_DATA_ROOT`` (resolved), or None when it is unset."""
    text = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(text).expanduser().resolve() if text else None


def allowed_folder(path: str, exposed: bool) -> str:
    """``path`` when the dashboard may read it; exposed, it must lie under ``$LUNGLENS_DATA_ROOT`` (DataError if not)."""
    if not exposed:
        return path
    root = data_root()
    if root is None:
        raise DataError(f"This dashboard is reachable from the network, so folders typed here are refused; set "
                        f"{DATA_ROOT_ENV} to the folder that holds the datasets it may read, and restart it")
    target = Path(path).expanduser().resolve()
    if target != root and root not in target.parents:
        raise DataError(f"{path} is outside {root} ({DATA_ROOT_ENV}); this dashboard is reachable from the network "
                        "and reads datasets only from under that folder")
    return str(target)
