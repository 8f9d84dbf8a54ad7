"""Wan et al. sec. 4's network topology: traced channel maps, strengths, kept edges, bundling, before / after."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import engine
from dashboard.topology_charts import topology_figure
from engine.models.weights import architecture
from engine.topology import block_change, build_topology, bundle_edges, trace_layers


class _Skips(nn.Module):
    """conv1 -> conv2 -> conv3 where conv3 reads a concatenation [conv1's channels, conv2's channels permuted] and
    conv2's input is a shortcut sum; conv4 is grouped (2 groups) on conv3's output."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.conv3 = nn.Conv2d(7, 4, 1)
        self.conv4 = nn.Conv2d(4, 4, 3, padding=1, groups=2)

    def forward(self, x):
        a = torch.relu(self.conv1(x))
        b = torch.relu(self.conv2(a) + a[:, :3])
        c = torch.cat([a, b[:, [2, 0, 1]]], 1)
        return self.conv4(torch.relu(self.conv3(c)))


def _norms(w: torch.Tensor) -> np.ndarray:
    """The L2 norm of each spatial kernel W[j, c], by hand."""
    return np.sqrt((w.detach().double().numpy() ** 2).sum(axis=(2, 3)))


@pytest.fixture(scope="module")
def skips() -> _Skips:
    torch.manual_seed(0)
    return _Skips().eval()


def test_tracing_follows_sums_concatenations_and_permutations(skips):
    traced = trace_layers(skips)
    assert [t.name for t in traced] == ["conv1", "conv2", "conv3", "conv4"]
    np.testing.assert_array_equal(traced[1].source, [0, 1, 2, 3])  # conv1 -> conv2: one to one
    # conv3's input: conv1's 4 channels (not from conv2), then conv2's channels in the order 2, 0, 1
    np.testing.assert_array_equal(traced[2].source, [-1, -1, -1, -1, 2, 0, 1])
    assert traced[2].other_inputs == 4
    np.testing.assert_array_equal(traced[3].source, [0, 1, 2, 3])


def test_edge_strengths_equal_a_hand_computation(skips):
    topo = build_topology(skips, k=8, max_edges=100, bundles=2)
    n2, n3, n4 = _norms(skips.conv2.weight), _norms(skips.conv3.weight), _norms(skips.conv4.weight)
    expected = {0: n2,  # (3 out, 4 in): conv1 channel i is conv2's in-channel i
                1: n3[:, [5, 6, 4]],  # conv2 channel i sits at conv3 in-channel 4 + (its place in [2, 0, 1])
                2: np.zeros((4, 4))}
    for j in range(4):  # grouped: out-channel j reads in-channels of its group (2 per group) only
        g = j // 2
        expected[2][j, 2 * g: 2 * g + 2] = n4[j]
    nodes, edges = topo.nodes, topo.edges
    for pair, matrix in expected.items():
        rows = edges["pair"] == pair
        src_ch, dst_ch = nodes["channel"][edges["src"][rows]], nodes["channel"][edges["dst"][rows]]
        got = np.zeros_like(matrix)
        got[dst_ch, src_ch] = edges["weight"][rows]
        np.testing.assert_allclose(got, matrix, rtol=1e-12)
        assert rows.sum() == np.count_nonzero(matrix)  # a grouped conv has no cross-group edge


def test_kept_edges_are_the_strongest_and_nodes_the_most_important(skips):
    topo = build_topology(skips, k=3, max_edges=4, bundles=2)
    w3 = skips.conv3.weight.detach().double().numpy()
    top3 = np.sort(np.argsort(-np.sqrt((w3.reshape(4, -1) ** 2).sum(1)))[:3])
    np.testing.assert_array_equal(topo.nodes["channel"][topo.nodes["layer"] == 2], top3)
    assert all(layer["hidden"] == layer["channels"] - 3 for layer in topo.layers if layer["channels"] > 3)
    # pair 0: conv1 (4 channels, top 3 kept) -> conv2 (3): the 4 strongest of the 3 x 3 shown connections
    conv1_top = np.sort(np.argsort(-np.sqrt((skips.conv1.weight.detach().double().numpy() ** 2)
                                            .reshape(4, -1).sum(1)))[:3])
    strength = _norms(skips.conv2.weight)[:, conv1_top]
    rows = topo.edges["pair"] == 0
    np.testing.assert_allclose(np.sort(topo.edges["weight"][rows])[::-1], np.sort(strength.ravel())[::-1][:4])
    np.testing.assert_array_equal(topo.edges["rank"][rows], np.arange(4))


def test_bundling_routes_a_cluster_through_one_control_point_and_keeps_the_ends():
    rng = np.random.default_rng(0)
    start = np.stack([np.zeros(30), np.r_[rng.uniform(0.0, 0.2, 15), rng.uniform(0.8, 1.0, 15)]], 1)
    end = np.stack([np.ones(30), np.r_[rng.uniform(0.0, 0.2, 15), rng.uniform(0.8, 1.0, 15)]], 1)
    labels, controls, curves = bundle_edges(start, end, rng.uniform(0.1, 1, 30), n_bundles=2, points=6)
    assert set(labels[:15]) != set(labels[15:]) and len(set(labels[:15])) == 1  # two geometric groups
    np.testing.assert_allclose(curves[:, 0], start)
    np.testing.assert_allclose(curves[:, -1], end)
    np.testing.assert_allclose(curves[:, 5], controls[labels])  # the middle point: the cluster's control point
    assert np.allclose(controls[:, 0], 0.5)


def _check_graph(topo, k: int) -> None:
    """Nodes per layer <= k, edges only between consecutive columns, and a Plotly figure with every node."""
    counts = np.bincount(topo.nodes["layer"], minlength=len(topo.layers))
    assert (counts <= k).all() and (counts == [min(k, layer["channels"]) for layer in topo.layers]).all()
    src_layer, dst_layer = topo.nodes["layer"][topo.edges["src"]], topo.nodes["layer"][topo.edges["dst"]]
    np.testing.assert_array_equal(dst_layer, src_layer + 1)
    assert len(topo.edges["src"]) > 0
    fig = topology_figure(topo.layers, topo.nodes, topo.edges, topo.curves, view=topo.view, n_edges=8,
                          blocks=range(1, 6))
    assert len(fig.data[-1].x) == len(topo.nodes["x"])


@pytest.mark.parametrize("arch,blocks,expected", [
    ("vgg16", None, 13),  # VGG16's 13 conv layers, a plain chain
    ("resnet18", None, 17),  # the stem and 16 residual-branch convs; the 3 shortcut projections are not columns
])
def test_renders_for_untrained_backbones(arch, blocks, expected):
    torch.manual_seed(0)
    model = architecture(arch, 3, "scratch", head_width=16 if arch == "vgg16" else None)
    traced = trace_layers(model, blocks)
    assert len(traced) == expected and not any("downsample" in t.name for t in traced)
    topo = build_topology(model, k=16, max_edges=12, traced=traced)
    _check_graph(topo, 16)
    if arch == "resnet18":  # across a shortcut sum, in-channel i is channel i of the previous conv
        for t in traced[1:]:
            np.testing.assert_array_equal(t.source, np.arange(len(t.source)))


def test_renders_for_dpn_se_and_follows_its_dual_paths():
    torch.manual_seed(0)
    model = architecture("dpn92se", 3, "scratch")
    traced = trace_layers(model, blocks=(1, 2))
    names = [t.name for t in traced]
    assert names[0] == "blocks.0.conv1_1.conv" and not any(".se." in n or "c1x1_w" in n for n in names)
    topo = build_topology(model, k=12, max_edges=10, traced=traced)
    _check_graph(topo, 12)
    # Chen et al.'s dual path: c1x1_c's first num_1x1_c channels are summed into the residual path (the next block's
    # first input channels), its last inc channels are appended to the dense path (the next block's last channels).
    unit = dict(model.named_modules())["blocks.1.conv2_1"]
    r, inc = unit.num_1x1_c, unit.inc
    nxt = traced[names.index("blocks.1.conv2_2.c1x1_a.conv")]
    expected = np.r_[np.arange(r), np.full(len(nxt.source) - r - inc, -1), np.arange(r, r + inc)]
    np.testing.assert_array_equal(nxt.source, expected)


@pytest.fixture(scope="module")
def runs(trained_selection) -> dict[int, engine.Run]:
    return {cfg.depth: engine.get_run(cfg) for cfg in trained_selection.configs()}


def test_alexnet_run_before_after_and_change(runs):
    """The trained AlexNet runs at the page's defaults (24 channels, 48 edges; the page test reuses the cache)."""
    frozen, tuned = runs[0], runs[5]
    before, after = (engine.run_topology(frozen, view) for view in ("before", "after"))
    _check_graph(after, 24)
    assert [layer["label"] for layer in after.layers] == [f"conv{b} (block {b})" for b in range(1, 6)]
    np.testing.assert_array_equal(before.nodes["channel"], after.nodes["channel"])  # the same channels
    np.testing.assert_array_equal(before.edges["weight"], after.edges["weight"])  # depth 0: every block frozen
    assert len(engine.run_topology(frozen, "change").edges["src"]) == 0
    assert not any(layer["trainable"] for layer in after.layers)
    change = engine.run_topology(tuned, "change")
    _check_graph(change, 24)
    assert all(layer["trainable"] for layer in change.layers)
    np.testing.assert_array_equal(engine.run_block_change(frozen), np.zeros(5))
    assert all(c > 0 for c in engine.run_block_change(tuned))


def test_block_change_by_hand():
    torch.manual_seed(0)
    before = architecture("alexnet", 3, "scratch", head_width=16)
    after = architecture("alexnet", 3, "scratch", head_width=16)
    after.load_state_dict(before.state_dict())
    with torch.no_grad():
        after.blocks[4][0].weight.mul_(1.5)  # conv5 in block 5: changes by half its norm
    np.testing.assert_allclose(block_change(before, after), [0, 0, 0, 0, 0.5], atol=1e-12)
