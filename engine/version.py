"""Engine version (part of every run's cache key) and the code version stored with each run."""
from __future__ import annotations

import ast
import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

#: Bump when a change alters what a run computes, so old cached results are not reused.
ENGINE_VERSION = "0.1.0"
#: The engine sources that determine a run's results (data reading and splits, models and weights, training,
#: configuration, criteria); their hash is part of every run's key (``training_code_hash``).
TRAINING_SOURCES = ("data", "models", "config.py", "training.py", "pretrain.py", "metrics.py", "attention.py",
                    "sampling.py", "ensemble.py", "guidance.py")


def _normalised_source(path: Path) -> str:
    """The module's syntax tree without docstrings: comments, docstrings and formatting do not change it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree, include_attributes=False)


@lru_cache(maxsize=1)
def training_code_hash() -> str:
    """16 hex digits identifying the code in ``TRAINING_SOURCES`` (edits to comments or docstrings keep it)."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for name in TRAINING_SOURCES:
        files = sorted((here / name).rglob("*.py")) if (here / name).is_dir() else [here / name]
        for path in files:
            digest.update(path.relative_to(here).as_posix().encode())
            digest.update(_normalised_source(path).encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def code_version() -> dict[str, str]:
    """The git commit of the checkout (when there is one) and a hash of the engine's source files."""
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(here.rglob("*.py")):
        digest.update(path.relative_to(here).as_posix().encode())
        digest.update(path.read_bytes())
    out = {"engine": ENGINE_VERSION, "source_sha256": digest.hexdigest()[:16], "training_code": training_code_hash()}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode == 0:
            out["git_commit"] = sha.stdout.strip()
            out["git_dirty"] = str(bool(dirty.stdout.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        pass  # no git here (an installed copy): the source hash above still identifies the code
    return out
