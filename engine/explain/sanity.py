"""Sanity check of explanation methods (Adebayo et al. 2018): cascading model-parameter randomisation.

The weights are re-initialised from the classifier head down to block 1, one step at a time and cumulatively, and
each step's maps are compared with the original maps. A method whose maps stay similar once the whole network is
random does not explain the model (Adebayo et al. found this for guided backpropagation and Guided Grad-CAM).
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

#: Fully randomised maps pass when their mean SSIM with the original maps is below this. Identical maps score 1 and
#: maps unrelated to each other score near 0 (two independent smooth random maps: about 0.0-0.3), so the midpoint
#: 0.5 separates "still the same picture" from "a different picture"; methods that ignore the weights (an edge
#: detector, and in Adebayo et al.'s figures guided backpropagation) stay close to 1.
SANITY_SSIM_LIMIT = 0.5

#: ... and when the absolute mean Spearman rank correlation is below this (1: the same ranking, 0: unrelated).
SANITY_SPEARMAN_LIMIT = 0.5

#: An explanation function: (model, inputs (N, 3, H, W), target classes (N,)) -> maps (N, H, W) in [0, 1].
Explain = Callable[[nn.Module, torch.Tensor, np.ndarray], np.ndarray]


def cascade_layers(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """The randomisation steps from the top: ("head", [classifier]), ("block 5", [blocks[4]]) .. ("block 1", ...).

    For a StagedNet (``classifier`` and ``blocks``); any other model steps through its top-level children that
    hold parameters, last first, named by their attribute names.
    """
    blocks, head = getattr(model, "blocks", None), getattr(model, "classifier", None)
    if isinstance(blocks, nn.ModuleList) and isinstance(head, nn.Module):
        return [("head", [head])] + [(f"block {i + 1}", [blocks[i]]) for i in reversed(range(len(blocks)))]
    steps = [(name, [m]) for name, m in model.named_children() if any(True for _ in m.parameters())]
    if not steps:
        raise ValueError("the model has no parameters to randomise; the sanity check needs a trainable model")
    return steps[::-1]


def _reinitialise(modules: Sequence[nn.Module], seed: int) -> None:
    """Re-initialise every parameter under ``modules``: reset_parameters() where a layer has it (its default
    initialisation, drawn from a generator seeded with ``seed``), else a seeded normal draw (std 0.01)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in modules:
            for m in module.modules():
                if callable(getattr(m, "reset_parameters", None)):
                    m.reset_parameters()
                else:
                    for p in m.parameters(recurse=False):
                        with torch.no_grad():
                            p.normal_(0.0, 0.01)


def _is_constant(m: np.ndarray) -> bool:
    """Whether the map has one value everywhere (e.g. all zero)."""
    return bool(m.size == 0 or m.min() == m.max())


def map_similarity(original: np.ndarray, randomised: np.ndarray) -> tuple[float, float]:
    """Spearman rank correlation and SSIM (data_range 1) of two (H, W) maps, never NaN.

    Convention for degenerate maps (Adebayo et al. leave it open): identical maps, constant ones included, score
    (1, 1), since the method's output did not change; a constant map against a different one has rank correlation
    0 (it keeps none of the other's ranking); SSIM is skimage's, which is defined for constant maps.
    """
    a, b = np.asarray(original, dtype=np.float64), np.asarray(randomised, dtype=np.float64)
    if np.array_equal(a, b):
        return 1.0, 1.0
    rho = 0.0 if _is_constant(a) or _is_constant(b) else float(spearmanr(a.ravel(), b.ravel()).statistic)
    return rho, float(structural_similarity(a, b, data_range=1.0))


def _row(step: int, layer: str, original: np.ndarray, maps: np.ndarray) -> dict:
    """One line of the cascade table: mean similarity of ``maps`` to ``original`` over the images."""
    sims = np.array([map_similarity(o, m) for o, m in zip(original, maps)], dtype=np.float64).reshape(-1, 2)
    n = len(sims)
    return {"step": step, "layer": layer,
            "spearman": float(sims[:, 0].mean()) if n else float("nan"),
            "ssim": float(sims[:, 1].mean()) if n else float("nan"),
            "constant_share": float(np.mean([_is_constant(m) for m in maps])) if n else float("nan"),
            "n_images": n}


def cascading_randomisation(model: nn.Module, x: torch.Tensor, targets: Sequence[int] | np.ndarray,
                            explain: Explain, *, seed: int = 0) -> pd.DataFrame:
    """Cascading model-parameter randomisation (Adebayo et al. 2018) of ``explain`` on inputs ``x``.

    Step 0 is the original model (similarity 1 by definition); step k re-initialises the first k entries of
    ``cascade_layers`` (head first), cumulatively, on a deep copy, so the caller's model is never changed.
    Columns: step, layer, spearman and ssim (means over the images of the similarity of each map to its original,
    see ``map_similarity``), constant_share (share of that step's maps that are constant, e.g. all zero), n_images.
    """
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    original = np.asarray(explain(model, x, t), dtype=np.float32)
    if original.shape != (len(x), *x.shape[2:]):
        raise ValueError(f"explain returned maps of shape {original.shape} for inputs {tuple(x.shape)}; "
                         "it must return one (H, W) map per image")
    rows = [_row(0, "original", original, original)]
    work = copy.deepcopy(model)
    for k, (name, modules) in enumerate(cascade_layers(work), start=1):
        _reinitialise(modules, seed + k)
        rows.append(_row(k, name, original, np.asarray(explain(work, x, t), dtype=np.float32)))
    return pd.DataFrame(rows, columns=["step", "layer", "spearman", "ssim", "constant_share", "n_images"])


def sanity_verdict(table: pd.DataFrame) -> dict[str, float | bool]:
    """The verdict from a cascade table: similarity once the whole network is random, and whether it is low enough.

    sanity_pass is True when the fully randomised maps are dissimilar to the originals: mean SSIM below
    SANITY_SSIM_LIMIT and |mean Spearman| below SANITY_SPEARMAN_LIMIT (False when undefined, e.g. no images).
    """
    last = table.loc[table["step"].idxmax()]
    ssim, rho = float(last["ssim"]), float(last["spearman"])
    passed = bool(np.isfinite(ssim) and np.isfinite(rho) and ssim < SANITY_SSIM_LIMIT
                  and abs(rho) < SANITY_SPEARMAN_LIMIT)
    return {"sanity_ssim": ssim, "sanity_spearman": rho, "sanity_pass": passed}
