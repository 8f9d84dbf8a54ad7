"""Wan et al. sec. 4 (future work): the network's topology as a layered graph of channels, its strongest links bundled.

The graph. Columns are the backbone's conv layers along its *main path*, grouped by LungLens's five blocks; nodes are
channels (each layer's ``k`` most important: importance = the L2 norm of the channel's filter, i.e. of all the kernel
weights that make it, ``W[j, :, :, :]``; the rest are counted as hidden); an edge joins channel ``i`` of a layer A to
channel ``j`` of the next layer B with strength ``||W_B[j, c]||_2``, the L2 norm of B's spatial kernel on its
in-channel ``c`` that carries A's channel ``i`` (summed if several do). Only the strongest ``max_edges`` edges between
the shown channels of each pair of consecutive layers are kept, then bundled (``bundle_edges``).

Which in-channel of B carries which channel of A is *measured*, not guessed from channel counts (``trace_layers``):
on a copy of the model whose normalisation layers are identities, with every convolution's output held at its value
on a fixed input (so that no convolution, nor a squeeze-and-excitation gate, mixes channels), A's output channels are
offset by +-delta in bit-coded patterns and the in-channels of every later convolution that move are read off.
Everything left between two convolutions (normalisation, activations, pooling, concatenation, shortcut sums, channel
splits, the held gates' products) acts channel by channel, so each in-channel of B carries at most one channel of A
and the code names it. This covers a plain chain (AlexNet, VGG: in-channel ``i`` is channel ``i``), a grouped or
depthwise convolution (B's out-channel ``j`` reads only its group's in-channels), DenseNet's concatenations (A's
channels are the last of B's inputs, the rest come from earlier layers), ResNet's shortcut sums and DPN's split of
each block's output into a summed (residual) and a concatenated (dense) part. "Consecutive" is defined on the
resulting graph of direct dependences (B reads A's output with no convolution in between): the main path is its
longest chain of the layers ``conv_layers`` lists (it leaves out the 1 x 1 convolutions of squeeze-and-excitation
gates, which act on pooled channel means), so a ResNet's shortcut projections and an Inception block's shorter
parallel branches are not columns; the channels they add to a layer's input are counted in its ``other_inputs``.

Before and after fine-tuning: the same channels (chosen on the trained model) with the initial weights, the trained
ones, or the change ``after - before`` (ranked by its magnitude); at fine-tuning depth d only the last d blocks train,
so the frozen blocks' edges are the same before and after, and absent from the change.
"""
from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn

from .errors import ConfigError, LungLensError
from .layers import layer_choices
from .models.backbones import conv_layers
from .models.names import N_BLOCKS
from .progress import CancelCheck, Progress, scaled, step
from .store import cached_arrays, cached_json, home, stable_hash

if TYPE_CHECKING:
    from .runs import Run

TopologyView = Literal["before", "after", "change"]
TOPOLOGY_VIEWS: tuple[str, ...] = ("before", "after", "change")
#: Defaults: channels shown per layer, edges kept per pair of consecutive layers, bundles per pair.
TOP_CHANNELS = 24
MAX_EDGES = 48
BUNDLES = 6
#: Points sampled on each half of a bundled edge (the curve has 2 * CURVE_POINTS - 1 points).
CURVE_POINTS = 8
#: Input sizes tried for tracing, smallest first (the cost grows with the maps' size): the first the backbone runs at.
#: 3-D backbones: cubes.
PROBE_SIZES = (32, 48, 64, 96, 128, 160, 224, 299)
PROBE_SIZES_3D = (16, 24, 32, 48, 64)
#: Blocks a probe runs through, from the probed conv's own: a conv's output reaches the next conv without another conv
#: in between at most two blocks on (through the identity shortcuts of one block, as a ResNet's stem output reaches
#: layer2), because every block's output passes through at least one of its convolutions or projections.
REACH = 3
#: Part of every cached topology's file name: a change of how it is computed must bump it.
TOPOLOGY_VERSION = 1
#: Horizontal gap (in columns) between two blocks of the drawing.
BLOCK_GAP = 0.6


# ---- tracing which in-channel carries which channel ---------------------------------------------------------------

@dataclass
class TracedLayer:
    """One convolution of the main path and how its input reaches it from the previous one."""

    name: str
    #: For each in-channel of this layer: the previous main-path layer's output channel it carries, or -1.
    source: np.ndarray
    #: In-channels carrying none of the previous layer's channels (from earlier layers, a concatenation or a shortcut).
    other_inputs: int


def _all_convs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d / Conv3d, including those of squeeze-and-excitation gates (which ``conv_layers`` leaves out):
    a probe holds all of them, so that a gate cannot mix channels."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]


def _first_conv(model: nn.Module) -> nn.Module:
    convs = conv_layers(model)
    if not convs:
        raise ConfigError("This model has no convolutional layer, so it has no channel topology.")
    return convs[0][1]


def _probe_input(model: nn.Module, size: int) -> torch.Tensor:
    """A fixed (seeded) random input of ``size`` pixels (a ``size``-cube for a 3-D backbone)."""
    conv = _first_conv(model)
    spatial = (size,) * (3 if isinstance(conv, nn.Conv3d) else 2)
    return torch.randn((1, conv.in_channels, *spatial), generator=torch.Generator().manual_seed(0))


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The conv blocks' output (a StagedNet) or the model's output (any other module)."""
    return model.forward_blocks(x) if hasattr(model, "forward_blocks") else model(x)


def _baseline(model: nn.Module, x: torch.Tensor) -> tuple[list[str], dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                     list[torch.Tensor]]:
    """Every conv's name in execution order, its input and its output on ``x``, and each block's input."""
    order, inputs, outputs, block_inputs = [], {}, {}, []
    handles = [block.register_forward_pre_hook(lambda _m, args: block_inputs.append(args[0].detach()))
               for block in getattr(model, "blocks", [])]
    for name, conv in _all_convs(model):
        def pre(_m, args, name=name):
            order.append(name)
            inputs[name] = args[0].detach().clone()

        def post(_m, _args, out, name=name):
            outputs[name] = out.detach().clone()
        handles += [conv.register_forward_pre_hook(pre), conv.register_forward_hook(post)]
    try:
        with torch.no_grad():
            _features(model, x)
    finally:
        for h in handles:
            h.remove()
    return order, inputs, outputs, block_inputs


def _probe_size(model: nn.Module) -> torch.Tensor:
    """The smallest probe input the model runs at."""
    sizes = PROBE_SIZES_3D if isinstance(_first_conv(model), nn.Conv3d) else PROBE_SIZES
    for size in sizes:
        x = _probe_input(model, size)
        try:
            with torch.no_grad():
                _features(model, x)
            return x
        except (RuntimeError, ConfigError):  # too small for the backbone's unpadded convolutions or poolings
            continue
    raise LungLensError(f"No probe input up to {sizes[-1]} pixels runs through this model.")


def _offsets(n_channels: int, delta: float) -> torch.Tensor:
    """(rows, n_channels) offsets: row 0 none, then +-delta on all channels, then +-delta on the channels whose index
    has bit b set, for each bit b (the bit code that names a channel)."""
    bits = max(1, math.ceil(math.log2(n_channels))) if n_channels > 1 else 0
    idx = torch.arange(n_channels)
    patterns = [torch.ones(n_channels)] + [((idx >> b) & 1).float() for b in range(bits)]
    rows = [torch.zeros(n_channels)] + [s * p for p in patterns for s in (1.0, -1.0)]
    return torch.stack(rows) * delta


def _moved(captured: torch.Tensor) -> np.ndarray:
    """(rows, channels): whether each in-channel differs from row 0 (no offset) in each probe row.

    The offsets are constant over each channel and everything in between acts channel by channel, so a few evenly
    spread positions show whether a channel moved."""
    flat = captured.flatten(2)
    flat = flat[:, :, :: max(1, flat.shape[2] // 16)]
    diff = (flat - flat[:1]).abs().amax(2)
    return (diff > 1e-4 * (1.0 + flat[:1].abs().amax(2))).numpy()


def _decode(moved: np.ndarray, n_source: int) -> np.ndarray:
    """The source channel of each in-channel (-1 when none) from the probe rows of ``_offsets``."""
    present = moved[1] | moved[2]
    bits = [(moved[3 + 2 * b] | moved[4 + 2 * b]).astype(np.int64) << b for b in range((len(moved) - 3) // 2)]
    source = np.sum(bits, axis=0) if bits else np.zeros(moved.shape[1], np.int64)
    return np.where(present & (source < n_source), source, -1).astype(np.int64)


def _probe(model: nn.Module, start: tuple[int, torch.Tensor], outputs: dict[str, torch.Tensor], name: str,
           stop: int = N_BLOCKS, copied: bool = False) -> dict[str, np.ndarray]:
    """Offset conv ``name``'s output by ``_offsets`` with every conv's output held at its baseline; return, for every
    conv whose input moved, the source channel of each of its in-channels.

    ``start``: the block to run from and its baseline input (block 0 and the image for a model without blocks);
    ``stop``: the block (0-based) not to run any more (a model without blocks runs whole). The
    convolutions themselves are not run (their outputs are held), so a probe costs only the cheap layers between.
    Held outputs are expanded views, unless ``copied`` (for a model that writes into a convolution's output in place).
    """
    base = outputs[name]
    offsets = _offsets(base.shape[1], 1e3 * (1.0 + float(base.abs().max())))
    rows = len(offsets)
    moved: dict[str, np.ndarray] = {}

    def held(other: str, inp: torch.Tensor) -> torch.Tensor:
        moved[other] = _moved(inp)
        out = outputs[other].expand(rows, *outputs[other].shape[1:])
        if other == name:
            return out + offsets.view(rows, -1, *([1] * (out.ndim - 2)))
        return out.clone() if copied else out

    convs = _all_convs(model)
    for other, conv in convs:
        conv.forward = lambda inp, other=other: held(other, inp)
    block, x = start
    try:
        with torch.no_grad():
            xs = x.expand(rows, *x.shape[1:])
            if hasattr(model, "forward_blocks"):
                model.forward_blocks(xs, block, min(block + REACH, stop))
            else:
                model(xs)
    finally:
        for _, conv in convs:
            del conv.forward
    return {other: _decode(m, base.shape[1]) for other, m in moved.items() if m[1].any() or m[2].any()}


def _probe_safely(model: nn.Module, start: tuple[int, torch.Tensor], outputs: dict[str, torch.Tensor],
                  name: str, stop: int) -> dict[str, np.ndarray]:
    """``_probe``, again with copied outputs when the model writes into an expanded (shared) one in place."""
    try:
        return _probe(model, start, outputs, name, stop)
    except RuntimeError:
        return _probe(model, start, outputs, name, stop, copied=True)


def _main_path(order: list[str], sources: dict[str, dict[str, np.ndarray]]) -> list[str]:
    """The longest chain of direct dependences among the convs of ``order`` (ties: the later conv)."""
    length: dict[str, int] = {}
    parent: dict[str, str | None] = {}
    for b in order:
        best = max(((length[a], i, a) for i, a in enumerate(order) if a in length and b in sources[a]), default=None)
        length[b], parent[b] = (best[0] + 1, best[2]) if best else (0, None)
    if not order:
        return []
    node: str | None = max(reversed(order), key=length.__getitem__)  # reversed: the later one of a tie
    chain = []
    while node is not None:
        chain.append(node)
        node = parent[node]
    return chain[::-1]


def _neutral(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose normalisation layers are identities (weight 1, bias 0, mean 0, variance
    1): which channel reaches which is then read from the architecture, not hidden by a zero-initialised scale (timm
    starts each residual branch's last batch norm at 0)."""
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.fill_(1.0)
                    m.bias.zero_()
                if getattr(m, "running_mean", None) is not None:
                    m.running_mean.zero_()
                    m.running_var.fill_(1.0)
    return model


def trace_layers(model: nn.Module, blocks: Sequence[int] | None = None, progress: Progress | None = None,
                 cancel: CancelCheck | None = None) -> list[TracedLayer]:
    """The model's main path of convolutions (module docstring), each with the source channel of its in-channels;
    ``blocks`` (1-based): only the convolutions of these blocks (default all)."""
    model = _neutral(model)
    x = _probe_size(model)
    order, inputs, outputs, block_inputs = _baseline(model, x)
    layers = {name for name, _ in conv_layers(model)}
    order = [name for name in order if name in layers and (blocks is None or _block(name) in set(blocks))]
    sources: dict[str, dict[str, np.ndarray]] = {}
    for i, name in enumerate(order):
        step(progress, cancel, i / len(order), f"tracing conv {i + 1} of {len(order)}")
        block = _block(name) - 1 if block_inputs else 0
        sources[name] = _probe_safely(model, (block, block_inputs[block] if block_inputs else x), outputs, name,
                                      max(blocks) if blocks is not None else N_BLOCKS)
    chain = _main_path(order, sources)
    traced = []
    for prev, name in zip([None, *chain[:-1]], chain, strict=True):
        n_in = inputs[name].shape[1]
        source = sources[prev][name] if prev is not None else np.full(n_in, -1, np.int64)
        traced.append(TracedLayer(name, source, int((source < 0).sum()) if prev is not None else 0))
    return traced


# ---- channel importance and connection strength --------------------------------------------------------------------

def _weights(conv: nn.Module) -> np.ndarray:
    return conv.weight.detach().cpu().to(torch.float64).numpy()


def channel_importance(conv: nn.Module) -> np.ndarray:
    """Each output channel's importance: the L2 norm of its filter ``W[j, :, ...]``."""
    w = _weights(conv)
    return np.sqrt((w.reshape(len(w), -1) ** 2).sum(1))


def kernel_norms(conv: nn.Module) -> np.ndarray:
    """(out, in / groups): the L2 norm of each spatial kernel ``W[j, t]``."""
    w = _weights(conv)
    return np.sqrt((w.reshape(*w.shape[:2], -1) ** 2).sum(2))


def connection_strength(conv: nn.Module, source: np.ndarray, n_source: int) -> np.ndarray:
    """(out channels of ``conv``, ``n_source``): the strength of every channel-to-channel connection into ``conv``.

    ``source[c]`` is the previous layer's channel that ``conv``'s in-channel ``c`` carries (-1: none). The strength of
    (j, i) is the sum over in-channels c carrying i of ``||W[j, c]||_2``; with groups, out-channel j reads only the
    in-channels of its group, so the other entries stay 0.
    """
    norms = kernel_norms(conv)
    n_out, per_group = norms.shape
    out_per_group = n_out // (len(source) // per_group)
    strength = np.zeros((n_out, n_source))
    carried = np.flatnonzero(source >= 0)
    for g in range(len(source) // per_group):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        cs = carried[carried // per_group == g]
        np.add.at(strength[rows].T, source[cs], norms[rows][:, cs % per_group].T)
    return strength


def top_channels(importance: np.ndarray, k: int) -> np.ndarray:
    """The indices of the ``k`` most important channels, in channel order."""
    return np.sort(np.argsort(-importance, kind="stable")[:k])


def top_edges(strength: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the ``n`` entries of largest magnitude (nonzero only), strongest first."""
    flat = np.abs(strength).ravel()
    keep = [int(e) for e in np.argsort(-flat, kind="stable")[:n] if flat[e] > 0]
    return np.unravel_index(np.asarray(keep, np.int64), strength.shape)


# ---- geometry-based edge bundling (Cui et al. 2008) ------------------------------------------------------------------

def _bezier(p0: np.ndarray, p1: np.ndarray, points: int) -> np.ndarray:
    """A cubic Bezier from p0 to p1 whose tangents are horizontal at both ends: (n_edges, points, 2)."""
    h = (p1[:, 0] - p0[:, 0])[:, None] / 2
    c0 = p0 + np.hstack([h, np.zeros_like(h)])
    c1 = p1 - np.hstack([h, np.zeros_like(h)])
    t = np.linspace(0, 1, points)[None, :, None]
    return ((1 - t) ** 3 * p0[:, None] + 3 * (1 - t) ** 2 * t * c0[:, None] + 3 * (1 - t) * t ** 2 * c1[:, None]
            + t ** 3 * p1[:, None])


def bundle_edges(start: np.ndarray, end: np.ndarray, weight: np.ndarray, n_bundles: int = BUNDLES,
                 points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bundle the edges between two columns (``start``, ``end``: (n, 2) points) by their geometry.

    As in Cui et al.'s geometry-based bundling, edges of similar geometry are merged at a control point: the edges
    are clustered (k-means, ``n_bundles`` clusters) on their end heights, each cluster's control point sits midway
    between the columns at the ``weight``-weighted mean of its edges' mid heights, and every edge is drawn as two
    smooth curves, from its start to its cluster's control point and on to its end. Returns each edge's cluster,
    the control points (n_bundles, 2) and the curves (n, 2 * points - 1, 2), whose ends are the edges' own.
    """
    start, end = np.asarray(start, float), np.asarray(end, float)
    n = len(start)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2)), np.zeros((0, 2 * points - 1, 2))
    geometry = np.hstack([start[:, 1:], end[:, 1:]])
    distinct = len(np.unique(geometry, axis=0))
    k = max(1, min(n_bundles, distinct))
    labels = (KMeans(k, n_init=4, random_state=0).fit_predict(geometry) if k > 1 else np.zeros(n, np.int64))
    w = np.abs(np.asarray(weight, float)) + 1e-12
    mid_y = (start[:, 1] + end[:, 1]) / 2
    controls = np.array([[(start[labels == b, 0].mean() + end[labels == b, 0].mean()) / 2,
                          np.average(mid_y[labels == b], weights=w[labels == b])] for b in range(k)])
    through = controls[labels]
    curves = np.concatenate([_bezier(start, through, points), _bezier(through, end, points)[:, 1:]], axis=1)
    return labels.astype(np.int64), controls, curves


# ---- the graph ------------------------------------------------------------------------------------------------------

@dataclass
class Topology:
    """A layered channel graph of one model (or of the change between two), with bundled edges.

    ``layers``: one dict per column (name, label, block 1-5, x, channels, shown, hidden, in_channels, groups,
    other_inputs, trainable). ``nodes``: arrays ``layer`` (column), ``channel``, ``importance``, ``x``, ``y``.
    ``edges``: arrays ``pair`` (column of the edge's start), ``src`` and ``dst`` (node rows), ``weight`` (the strength,
    signed for a change), ``rank`` (0 = strongest of its pair), ``bundle``, and ``pair_total`` (the summed strength of
    all connections between the pair's layers, shown or not). ``curves``: (edges, points, 2).
    """

    arch: str
    view: str
    depth: int
    layers: list[dict]
    nodes: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    curves: np.ndarray
    params: dict = field(default_factory=dict)


def _layer_meta(model: nn.Module, traced: list[TracedLayer], k: int, depth: int) -> list[dict]:
    """One dict per column: names, block, position and channel counts."""
    convs, labels = dict(conv_layers(model)), dict(layer_choices(model)) if hasattr(model, "blocks") else {}
    meta, x, last_block = [], 0.0, None
    for t in traced:
        conv = convs[t.name]
        block = _block(t.name)
        if last_block is not None and block != last_block:
            x += BLOCK_GAP
        meta.append({"name": t.name, "label": labels.get(t.name, t.name), "block": block, "x": x,
                     "channels": conv.out_channels, "shown": min(k, conv.out_channels),
                     "hidden": max(0, conv.out_channels - k), "in_channels": conv.in_channels,
                     "groups": conv.groups, "other_inputs": t.other_inputs,
                     "trainable": block > N_BLOCKS - depth})
        x, last_block = x + 1.0, block
    return meta


def _block(name: str) -> int:
    """1-based LungLens block of a StagedNet module name (1 for another model's)."""
    parts = name.split(".")
    return int(parts[1]) + 1 if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else 1


def _strengths(model: nn.Module, traced: list[TracedLayer]) -> list[np.ndarray]:
    """For each consecutive pair: the strength matrix (all out-channels of B, all channels of A)."""
    convs = dict(conv_layers(model))
    return [connection_strength(convs[b.name], b.source, convs[a.name].out_channels)
            for a, b in itertools.pairwise(traced)]


def build_topology(after: nn.Module, before: nn.Module | None = None, view: TopologyView = "after", *,
                   k: int = TOP_CHANNELS, max_edges: int = MAX_EDGES, bundles: int = BUNDLES, depth: int = 0,
                   traced: list[TracedLayer] | None = None, progress: Progress | None = None,
                   cancel: CancelCheck | None = None) -> Topology:
    """The layered channel graph of ``after`` (view "after"), of ``before`` on the same channels ("before"), or of
    ``after - before`` ("change"); see the module docstring. ``depth``: the fine-tuning depth (which blocks train)."""
    if view not in TOPOLOGY_VIEWS:
        raise ConfigError(f"Unknown topology view {view!r}: choose one of {', '.join(TOPOLOGY_VIEWS)}.")
    if view != "after" and before is None:
        raise ConfigError(f"The {view!r} view needs the model before fine-tuning.")
    if k < 1 or max_edges < 1 or bundles < 1:
        raise ConfigError("Channels per layer, edges per pair and bundles must each be at least 1.")
    traced = traced if traced is not None else trace_layers(after, None, scaled(progress, 0.0, 0.8), cancel)
    step(progress, cancel, 0.8, "connection strengths")
    convs_after = dict(conv_layers(after))
    chosen = [top_channels(channel_importance(convs_after[t.name]), k) for t in traced]
    shown = {"after": after, "before": before}.get(view, after)
    convs_shown = dict(conv_layers(shown))
    strengths = _strengths(shown, traced)
    if view == "change":
        strengths = [s_after - s_before for s_after, s_before in
                     zip(strengths, _strengths(before, traced), strict=True)]
    layers = _layer_meta(after, traced, k, depth)
    nodes = _nodes(layers, chosen, [channel_importance(convs_shown[t.name]) for t in traced])
    step(progress, cancel, 0.9, "bundling edges")
    edges, curves = _edges(layers, chosen, strengths, nodes, max_edges, bundles)
    return Topology(str(getattr(after, "arch", type(after).__name__)), view, depth, layers, nodes, edges, curves,
                    {"k": k, "max_edges": max_edges, "bundles": bundles})


def _nodes(layers: list[dict], chosen: list[np.ndarray], importance: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Node arrays: each column's chosen channels spread evenly over [0, 1] in channel order."""
    parts = []
    for col, (meta, channels, imp) in enumerate(zip(layers, chosen, importance, strict=True)):
        y = np.linspace(1, 0, len(channels)) if len(channels) > 1 else np.array([0.5])
        parts.append((np.full(len(channels), col), channels, imp[channels], np.full(len(channels), meta["x"]), y))
    layer, channel, imp, x, y = (np.concatenate(p) for p in zip(*parts, strict=True))
    return {"layer": layer.astype(np.int64), "channel": channel.astype(np.int64), "importance": imp, "x": x, "y": y}


def _edges(layers: list[dict], chosen: list[np.ndarray], strengths: list[np.ndarray], nodes: dict[str, np.ndarray],
           max_edges: int, bundles: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The kept, bundled edges of every consecutive pair."""
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in chosen])])
    cols: dict[str, list[np.ndarray]] = {key: [] for key in ("pair", "src", "dst", "weight", "rank", "bundle",
                                                             "pair_total")}
    curves = []
    for p, strength in enumerate(strengths):
        sub = strength[np.ix_(chosen[p + 1], chosen[p])]
        rows, cols_ = top_edges(sub, max_edges)
        src, dst = offsets[p] + cols_, offsets[p + 1] + rows
        start = np.stack([nodes["x"][src], nodes["y"][src]], 1)
        end = np.stack([nodes["x"][dst], nodes["y"][dst]], 1)
        bundle, _, curve = bundle_edges(start, end, sub[rows, cols_], bundles)
        for key, value in (("pair", np.full(len(rows), p)), ("src", src), ("dst", dst), ("weight", sub[rows, cols_]),
                           ("rank", np.arange(len(rows))), ("bundle", bundle),
                           ("pair_total", np.full(len(rows), np.abs(strength).sum()))):
            cols[key].append(np.asarray(value))
        curves.append(curve)
    if not strengths:
        return {key: np.zeros(0) for key in cols}, np.zeros((0, 2 * CURVE_POINTS - 1, 2))
    edges = {key: np.concatenate(v) for key, v in cols.items()}
    for key in ("pair", "src", "dst", "rank", "bundle"):
        edges[key] = edges[key].astype(np.int64)
    return edges, np.concatenate(curves)


# ---- a run's topology, cached ---------------------------------------------------------------------------------

def architecture_key(model: nn.Module) -> str:
    """What a trace depends on: the architecture's name and every conv's name, shape, stride and groups."""
    return stable_hash([str(getattr(model, "arch", type(model).__name__)),
                        [(n, list(c.weight.shape), list(c.stride), c.groups) for n, c in conv_layers(model)]])


def cached_trace(model: nn.Module, progress: Progress | None = None,
                 cancel: CancelCheck | None = None) -> list[TracedLayer]:
    """``trace_layers`` of every block, cached per architecture (every run of a backbone shares it)."""
    def compute() -> dict[str, np.ndarray]:
        traced = trace_layers(model, None, progress, cancel)
        return {"names": np.array([t.name for t in traced]), "other": np.array([t.other_inputs for t in traced]),
                **{f"source{i}": t.source for i, t in enumerate(traced)}}

    arch = str(getattr(model, "arch", "model"))
    path = home() / "topology" / f"trace-v{TOPOLOGY_VERSION}-{arch}-{architecture_key(model)}.npz"
    found = cached_arrays(path, compute)
    return [TracedLayer(str(n), found[f"source{i}"], int(o))
            for i, (n, o) in enumerate(zip(found["names"], found["other"], strict=True))]


def run_topology(run: Run, view: TopologyView = "after", k: int = TOP_CHANNELS, max_edges: int = MAX_EDGES,
                 bundles: int = BUNDLES, *, progress: Progress | None = None,
                 cancel: CancelCheck | None = None) -> Topology:
    """``build_topology`` of the run's model before / after fine-tuning / the change, cached per run and parameters.

    ``progress(fraction, text)`` hears of the tracing and the bundling; ``cancel()`` returning True stops between
    steps (nothing partial is cached).
    """
    if view not in TOPOLOGY_VIEWS:
        raise ConfigError(f"Unknown topology view {view!r}: choose one of {', '.join(TOPOLOGY_VIEWS)}.")
    stem = f"topology-v{TOPOLOGY_VERSION}-{view}-k{k}-e{max_edges}-b{bundles}"

    def compute() -> dict[str, np.ndarray]:
        step(progress, cancel, 0.0, "loading the model")
        traced = cached_trace(run.load_model(), scaled(progress, 0.05, 0.7), cancel)
        before = run.initial_model() if view != "after" else None
        topo = build_topology(run.load_model(), before, view, k=k, max_edges=max_edges, bundles=bundles,
                              depth=run.config.depth, traced=traced, progress=scaled(progress, 0.7, 1.0),
                              cancel=cancel)
        return {**{f"node_{key}": v for key, v in topo.nodes.items()},
                **{f"edge_{key}": v for key, v in topo.edges.items()}, "curves": topo.curves}

    arrays = cached_arrays(run.artifact(f"{stem}.npz"), compute)
    layers = cached_json(run.artifact(f"topology-v{TOPOLOGY_VERSION}-layers-k{k}.json"),
                         lambda: _layer_meta(run.load_model(), cached_trace(run.load_model()), k, run.config.depth))
    return Topology(run.config.backbone, view, run.config.depth, layers,
                    {key[5:]: v for key, v in arrays.items() if key.startswith("node_")},
                    {key[5:]: v for key, v in arrays.items() if key.startswith("edge_")}, arrays["curves"],
                    {"k": k, "max_edges": max_edges, "bundles": bundles})


def block_change(before: nn.Module, after: nn.Module) -> list[float]:
    """Per block (1-5): ``||W_after - W_before|| / ||W_before||`` over all its convolutions' weights (0: unchanged)."""
    changed, norm = np.zeros(N_BLOCKS), np.zeros(N_BLOCKS)
    old = dict(_all_convs(before))
    for name, conv in _all_convs(after):
        b = _block(name) - 1
        changed[b] += float(((_weights(conv) - _weights(old[name])) ** 2).sum())
        norm[b] += float((_weights(old[name]) ** 2).sum())
    return [float(np.sqrt(c / n)) if n > 0 else 0.0 for c, n in zip(changed, norm, strict=True)]


def run_block_change(run: Run) -> list[float]:
    """``block_change`` of the run's model before and after fine-tuning (cached)."""
    return cached_json(run.artifact("topology-block-change.json"),
                       lambda: block_change(run.initial_model(), run.load_model()))
