"""The Layers page's network topology section (Wan et al. sec. 4) in AppTest, on the tiny AlexNet experiment."""
from __future__ import annotations

import numpy as np
import pytest
from apptest_helpers import chart_spec, open_page, plotly_array

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:captum")

KEY = "layers_topology"
#: torchvision AlexNet's conv layers' channels (Krizhevsky et al., torchvision's widths), by hand.
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)


def _drawn(at) -> tuple[int, int, list[str]]:
    """(nodes, edges, tick labels) of the topology figure: an edge is one polyline, closed by a gap (NaN)."""
    spec = chart_spec(at, KEY)
    nodes = next(t for t in spec["data"] if t.get("name") == "channels")
    lines = [t for t in spec["data"] if t.get("mode") == "lines"]
    edges = sum(int(np.isnan(plotly_array(t["x"], float)).sum()) for t in lines)
    return len(plotly_array(nodes["x"], float)), edges, list(spec["layout"]["xaxis"].get("ticktext", []))


def test_topology_section_draws_views_edges_and_blocks(app, trained_selection):
    at = open_page(app, trained_selection, "../pages/layers.py")
    assert any(h.value == "Network topology (Wan et al. §4)" for h in at.subheader)
    nodes, edges, ticks = _drawn(at)
    assert nodes == 5 * 24  # every AlexNet layer is wider than 24 channels
    assert edges == 4 * 12  # 4 pairs of consecutive layers, 12 edges each by default
    assert ticks == [f"conv{b}" for b in range(1, 6)]
    assert any(f"{sum(ALEXNET_CHANNELS) - 5 * 24} hidden" in c.value for c in at.caption)

    at.slider(key="layers_topo_edges").set_value(1).run()
    assert not at.exception and _drawn(at)[1] == 4
    at.multiselect(key="layers_topo_blocks").set_value([1, 2]).run()
    assert not at.exception and _drawn(at)[:2] == (48, 1)  # conv1 -> conv2 only

    at.select_slider(key="layers_depth").set_value(0).run()
    at.radio(key="layers_topo_view").set_value("change").run()
    assert not at.exception and _drawn(at)[1] == 0  # depth 0: nothing trains, nothing changes
    table = next(d for d in at.dataframe if "block 1" in d.value.columns).value
    assert table["depth"].tolist() == [0, 5]
    assert (table.iloc[0, 1:] == "0.00%").all() and not (table.iloc[1, 1:] == "0.00%").any()
