"""Engine version (part of every run's cache key) and the code version stored with each run."""
from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

#: Bump when a change alters what a run computes, so old cached results are not reused.
ENGINE_VERSION = "0.1.0"


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The git commit of the checkout (when there is one) and a hash of the engine's source files."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(here.rglob("*.py")):
        digest.update(path.relative_to(here).as_posix().encode())
        digest.update(path.read_bytes())
    out = {"engine": ENGINE_VERSION, "source_sha256": digest.hexdigest()[:16]}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_commit"] = sha.stdout.strip()
            out["git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass  # no git here (an installed copy): the source hash above still identifies the code
    return out
