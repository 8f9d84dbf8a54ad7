"""Helpers the page tests share: open a page in AppTest with a selection, and read a Plotly chart's JSON."""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
from streamlit.testing.v1 import AppTest


def open_page(app: AppTest, sel: Any, page: str, **state: Any) -> AppTest:
    """Run Home, put ``sel`` (and ``state``) in session state, switch to ``page`` and check nothing raised."""
    app.run()
    app.session_state["selection"] = sel  # whatever Home's widgets did to it
    for key, value in state.items():
        app.session_state[key] = value
    app.switch_page(page).run()
    assert not app.exception
    return app


def chart_spec(at: AppTest, key: str) -> dict:
    """The Plotly figure JSON of the chart with ``key``."""
    return json.loads(next(c for c in at.get("plotly_chart") if c.key == key).proto.spec)


def plotly_array(v: Any, dtype: Any = None) -> np.ndarray:
    """A Plotly JSON array, plain or base64-typed (``{"dtype", "bdata", "shape"}``); None becomes NaN for floats."""
    if isinstance(v, dict):
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return a.reshape([int(n) for n in v["shape"].split(",")]) if "shape" in v else a
    return np.array(v, dtype=dtype)


def layer_charts(at: AppTest) -> set[str]:
    """Keys of the Layers page's drawn filter and hidden-layer charts (its topology and surrogate sections have their
    own tests: tests/test_page_topology.py, tests/test_page_surrogate.py)."""
    return {c.key for c in at.get("plotly_chart") if c.key.startswith("layers_") and c.key != "layers_topology"}
