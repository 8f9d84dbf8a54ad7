"""Faithfulness of explanation maps to the model: deletion/insertion curves (RISE) and ROAD, batched for the CPU.

The model returns logits for a normalised input batch ``x`` (N, 3, H, W); ``maps`` (N, H, W) rank its pixels
(higher = more support for ``targets``). The forward passes are where deletion/insertion spend their time: every
perturbed copy of all images and steps goes through the model in large batches under ``torch.inference_mode()``
with channels-last memory, and the points shared by several curves run once. ROAD's time is the sparse linear solve
of its imputation, assembled here in vectorised form; its forward passes are batched the same way.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import nn
from torchvision.transforms.functional import gaussian_blur

#: Deleted pixels become 0 in the normalised input space: the normalisation's mean intensity (ImageNet's channel
#: means in LungLens), a flat grey that adds no structure of its own. Petsiuk et al. delete to black; black is an
#: extreme value for chest images, while zero input is the usual baseline of attribution methods (e.g. Captum's).
DELETION_BASELINE = 0.0

#: ROAD's neighbour weights (Rong et al. 2022; as in pytorch-grad-cam and Quantus): 1/6 for the four direct
#: neighbours, 1/12 for the four diagonal ones.
ROAD_NEIGHBOURS: tuple[tuple[tuple[int, int], float], ...] = (
    ((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
    ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6),
)

#: Standard deviation of the Gaussian noise ROAD adds to imputed pixels (pytorch-grad-cam's and Quantus's default).
ROAD_NOISE = 0.01


def _checked(x: torch.Tensor, maps: np.ndarray, targets: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``maps`` as float32 (N, H, W) and ``targets`` as int64 (N,), checked against ``x`` (N, C, H, W)."""
    m = np.asarray(maps, dtype=np.float32)
    t = np.asarray(targets, dtype=np.int64).reshape(-1)
    if x.ndim != 4 or m.shape != (x.shape[0], *x.shape[2:]):
        raise ValueError(f"maps {m.shape} do not match the inputs {tuple(x.shape)}; give one (H, W) map per image")
    if len(t) != len(m):
        raise ValueError(f"got {len(t)} targets for {len(m)} images; give one class index per image")
    return m, t


def _device(model: nn.Module) -> torch.device:
    """Where the model's parameters are (the CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class _Probabilities:
    """Softmax probability of one class per row, for batches of perturbed copies, in eval mode without autograd."""

    def __init__(self, model: nn.Module):
        self.model, self.device = model, _device(model)

    def __call__(self, xb: torch.Tensor, tb: torch.Tensor) -> torch.Tensor:
        xb = xb.to(self.device).contiguous(memory_format=torch.channels_last)
        p = torch.softmax(self.model(xb).float(), dim=1)
        return p[torch.arange(len(p), device=p.device), tb.to(p.device)].cpu()


def _run(model: nn.Module, fn):
    """Call ``fn()`` with the model in eval mode under inference mode, restoring its training flag."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            return fn()
    finally:
        model.train(was_training)


def pixel_ranks(maps: np.ndarray, seed: int = 0, random: bool = False) -> np.ndarray:
    """Rank (N, H*W) of every pixel when ordered by relevance, most relevant first (rank 0).

    Ties are broken by one fixed seeded pixel order; ``random=True`` ignores the maps and ranks by a seeded
    random order per image (the reference order of the deletion/insertion test).
    """
    n, hw = maps.shape[0], int(np.prod(maps.shape[1:]))
    rng = np.random.default_rng(seed)
    if random:
        order = np.argsort(rng.random((n, hw)), axis=1)
    else:
        perm = rng.permutation(hw)
        order = perm[np.argsort(-maps.reshape(n, hw)[:, perm], axis=1, kind="stable")]
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(hw)[None, :].repeat(n, axis=0), axis=1)
    return ranks


def blurred(x: torch.Tensor) -> torch.Tensor:
    """RISE's insertion start: a heavy Gaussian blur of each channel (sigma = side / 32: 7 px at 224 px, RISE's 5)."""
    sigma = max(x.shape[-2:]) / 32
    k = 2 * int(np.ceil(3 * sigma)) + 1  # +-3 sigma; always smaller than the image, as reflect padding needs
    return gaussian_blur(x, [k, k], [sigma, sigma])


def deletion_insertion(model: nn.Module, x: torch.Tensor, maps: np.ndarray, targets: Sequence[int] | np.ndarray, *,
                       n_steps: int = 32, batch_size: int = 256, seed: int = 0,
                       reference: bool = True) -> dict[str, np.ndarray]:
    """Deletion and insertion curves and areas (Petsiuk et al. 2018, RISE), by the map's order and a random one.

    Deletion sets the most relevant pixels (all channels) to DELETION_BASELINE first; insertion starts from the
    blurred image and puts the most relevant pixels back first. The target's softmax probability is read at
    ``n_steps + 1`` points, round(k/n_steps · H·W) pixels changed for k = 0..n_steps, and the areas are the
    trapezoidal rule over the changed fraction [0, 1]. Low deletion and high insertion areas mean a faithful map.
    Returns per-image arrays: deletion_auc, insertion_auc (N,), deletion_curve, insertion_curve (N, n_steps + 1),
    and with ``reference`` the same for a seeded random pixel order: deletion_random_auc, insertion_random_auc,
    deletion_random_curve, insertion_random_curve. The random-order results depend only on ``x``, ``targets`` and
    ``seed``, not on the maps: several methods on the same images can compute them once.
    """
    m, t = _checked(x, maps, targets)
    n, hw = len(m), int(np.prod(m.shape[1:]))
    if n_steps < 1:
        raise ValueError(f"n_steps must be at least 1, got {n_steps}")
    n_orders = 2 if reference else 1
    ranks = [pixel_ranks(m, seed)] + ([pixel_ranks(m, seed, random=True)] if reference else [])
    ranks_t = torch.from_numpy(np.stack(ranks))  # (orders, N, HW)
    x = x.detach().float().cpu()
    start = torch.stack([torch.full_like(x, DELETION_BASELINE), blurred(x)])  # (2, N, C, H, W): all pixels changed
    # Jobs (curve kind 0 deletion / 1 insertion, order, image, pixels changed). The original, the baseline and the
    # blurred image are shared by all curves of an image and run once; then the inner points of every curve.
    counts = np.round(np.arange(1, n_steps) / n_steps * hw).astype(np.int64)
    ends = [(0, 0, i, c) for c in (0, hw) for i in range(n)] + [(1, 0, i, 0) for i in range(n)]
    inner = [(k, o, i, c) for k in range(2) for o in range(n_orders) for i in range(n) for c in counts]
    kind, order, img, count = (torch.tensor(col, dtype=torch.int64).reshape(-1) for col in zip(*(ends + inner)))
    tt = torch.from_numpy(t)
    prob = _Probabilities(model)

    def evaluate() -> torch.Tensor:
        out = []
        for s in range(0, len(img), batch_size):
            sl = slice(s, s + batch_size)
            k, o, i, c = kind[sl], order[sl], img[sl], count[sl]
            changed = (ranks_t[o, i] < c[:, None]).view(-1, 1, *x.shape[2:])  # the first c pixels of the order
            # deletion: changed pixels take the baseline; insertion: unchanged pixels stay blurred
            xb = torch.where(changed ^ (k == 1).view(-1, 1, 1, 1), start[k, i], x[i])
            out.append(prob(xb, tt[i]))
        return torch.cat(out) if out else torch.zeros(0)

    p = _run(model, evaluate).numpy().astype(np.float64)
    orig, base, blur = p[:n], p[n : 2 * n], p[2 * n : 3 * n]
    curves = np.empty((2, n_orders, n, n_steps + 1))
    curves[:, :, :, 1:-1] = p[3 * n :].reshape(2, n_orders, n, n_steps - 1)
    curves[0, :, :, 0], curves[0, :, :, -1] = orig, base
    curves[1, :, :, 0], curves[1, :, :, -1] = blur, orig
    auc = np.trapezoid(curves, dx=1.0 / n_steps, axis=-1)
    out = {"deletion_auc": auc[0, 0], "insertion_auc": auc[1, 0],
           "deletion_curve": curves[0, 0], "insertion_curve": curves[1, 0]}
    if reference:
        out.update({"deletion_random_auc": auc[0, 1], "insertion_random_auc": auc[1, 1],
                    "deletion_random_curve": curves[0, 1], "insertion_random_curve": curves[1, 1]})
    return out


def noisy_linear_impute(image: np.ndarray, keep: np.ndarray, noise: float = ROAD_NOISE,
                        generator: torch.Generator | None = None) -> np.ndarray:
    """ROAD's noisy linear imputation of one (C, H, W) image: pixels where ``keep`` is False become the weighted
    mean of their eight neighbours (solved jointly as one sparse linear system), plus Gaussian noise of std ``noise``.

    The same system as pytorch-grad-cam's NoisyLinearImputer, assembled in vectorised form instead of element by
    element; with ``noise=0`` the result is the same up to float rounding.
    """
    c, h, w = image.shape
    keep_flat = np.asarray(keep, dtype=bool).reshape(-1)
    img = image.reshape(c, -1).astype(np.float64)
    unknown = np.flatnonzero(~keep_flat)
    if unknown.size == 0:
        return image.copy()
    var = np.full(h * w, -1, dtype=np.int64)
    var[unknown] = np.arange(unknown.size)
    rows, cols, vals = [], [], []
    b = np.zeros((unknown.size, c))
    diag = np.ones(unknown.size)
    yy, xx = unknown // w, unknown % w
    for (dy, dx), weight in ROAD_NEIGHBOURS:
        ny, nx = yy + dy, xx + dx
        valid = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[~valid] -= weight
        eq = np.flatnonzero(valid)
        nb = ny[valid] * w + nx[valid]
        known = keep_flat[nb]
        b[eq[known]] -= weight * img[:, nb[known]].T
        rows.append(eq[~known])
        cols.append(var[nb[~known]])
        vals.append(np.full(int((~known).sum()), weight))
    idx = np.arange(unknown.size)
    rows.append(idx), cols.append(idx), vals.append(-diag)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(unknown.size, unknown.size)).tocsc()
    sol = spsolve(a, b).reshape(unknown.size, c).T
    if noise:
        sol = sol + noise * torch.randn(sol.shape, generator=generator, dtype=torch.float64).numpy()
    out = img.copy()
    out[:, unknown] = sol
    return out.reshape(c, h, w).astype(image.dtype)


def road_keep_masks(cam: np.ndarray, percentile: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixels kept by ROAD's most-relevant-first and least-relevant-first removal at ``percentile``.

    As pytorch-grad-cam: MoRF keeps cam < percentile(cam, p) (removing the top 100 - p %); LeRF keeps
    (1 - cam) < percentile(1 - cam, p) (removing the bottom 100 - p %). Compared in float32 as its tensors are.
    """
    c = torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))
    inv = 1 - c
    morf = c < float(np.percentile(c.numpy(), percentile))
    lerf = inv < float(np.percentile(inv.numpy(), percentile))
    return morf.numpy(), lerf.numpy()


def road(model: nn.Module, x: torch.Tensor, maps: np.ndarray, targets: Sequence[int] | np.ndarray, *,
         percentiles: Sequence[float] = (20, 40, 60, 80), batch_size: int = 256, noise: float = ROAD_NOISE,
         seed: int = 0) -> np.ndarray:
    """ROAD per image (Rong et al. 2022), combined as pytorch-grad-cam's ROADCombined: the mean over ``percentiles``
    of (p(target | least relevant removed) - p(target | most relevant removed)) / 2; higher = more faithful.

    At percentile p each order removes 100 - p % of the pixels (``road_keep_masks``, pytorch-grad-cam's rule).
    Removed pixels are filled by noisy linear imputation (``noisy_linear_impute``), the score is the softmax
    probability of the target class, and all imputed copies go through the model in batches of ``batch_size``.
    ``noise`` is drawn from a torch generator seeded with ``seed``, so results are reproducible.
    """
    m, t = _checked(x, maps, targets)
    n = len(m)
    xs = x.detach().float().cpu().numpy()
    gen = torch.Generator().manual_seed(seed)
    copies = []  # per image: MoRF copies for each percentile, then LeRF copies
    for i in range(n):
        masks = [road_keep_masks(m[i], p) for p in percentiles]
        copies += [noisy_linear_impute(xs[i], keep[0], noise, gen) for keep in masks]
        copies += [noisy_linear_impute(xs[i], keep[1], noise, gen) for keep in masks]
    if n == 0:
        return np.zeros(0)
    stack = torch.from_numpy(np.stack(copies))
    tt = torch.from_numpy(t).repeat_interleave(2 * len(percentiles))
    prob = _Probabilities(model)
    p = _run(model, lambda: torch.cat([prob(stack[s : s + batch_size], tt[s : s + batch_size])
                                       for s in range(0, len(stack), batch_size)]))
    p = p.numpy().astype(np.float64).reshape(n, 2, len(percentiles))
    return (p[:, 1] - p[:, 0]).mean(axis=1) / 2
