"""Exports and shareable links: file names, the PNG toolbar, CSV downloads, URL-backed widgets and the experiment
encoded in a link. Also the ``downloads`` fixture the page tests use to read what a CSV button would download."""
from __future__ import annotations

import io
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import pytest
from streamlit.runtime.memory_media_file_storage import MemoryFile, MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest

import engine
from dashboard.exports import png_config, slug
from dashboard.state import Selection, link_params, selection_from_link
from dashboard.url_state import decode, decode_many


class _RecordingStorage(MemoryMediaFileStorage):
    """AppTest's in-memory media storage, also keeping every file it hands out a URL for."""

    files: ClassVar[dict[str, MemoryFile]] = {}

    def get_url(self, file_id: str) -> str:
        url = super().get_url(file_id)
        _RecordingStorage.files[url] = self.get_file(file_id)
        return url


@pytest.fixture()
def downloads(monkeypatch) -> dict[str, MemoryFile]:
    """URL -> file of everything the app under test offers for download (AppTest keeps no media files itself)."""
    monkeypatch.setattr("streamlit.testing.v1.app_test.MemoryMediaFileStorage", _RecordingStorage)
    _RecordingStorage.files = {}
    return _RecordingStorage.files


def download(at: AppTest, key: str, files: dict[str, MemoryFile]) -> MemoryFile:
    """The file behind the download button with ``key``."""
    return files[at.get("download_button")[[b.key for b in at.get("download_button")].index(key)].proto.url]


def csv_table(file: MemoryFile) -> pd.DataFrame:
    """A downloaded CSV as a table."""
    assert file.mimetype == "text/csv"
    return pd.read_csv(io.BytesIO(file.content))


# --- file names and the PNG toolbar ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("Training: Loss (depth 5)", "training-loss-depth-5"),
    ("lunglens-resnet18-depth5-lbp-kpca-rbf-3d", "lunglens-resnet18-depth5-lbp-kpca-rbf-3d"),
    ("  --Already__Slugged--  ", "already-slugged"),
    ("é/ü", "lunglens"),  # nothing left: a neutral stem rather than an empty file name
])
def test_slug(text, expected):
    assert slug(text) == expected


def test_png_config_saves_a_named_png_and_drops_zoom_and_pan():
    config = png_config("Training loss (depth 5)", scale=3)
    assert config["toImageButtonOptions"] == {"format": "png", "filename": "training-loss-depth-5", "scale": 3}
    removed = set(config["modeBarButtonsToRemove"])
    assert {"zoom2d", "pan2d", "zoomIn2d", "zoomOut2d", "autoScale2d", "resetScale2d", "zoom3d", "pan3d"} <= removed
    assert "toImage" not in removed and config["displaylogo"] is False


def _csv_app() -> None:
    import numpy as np  # AppTest runs this function's source on its own: it imports what it uses
    import pandas as pd

    from dashboard.exports import csv_button

    table = pd.DataFrame({"file": ["a,1.png", 'b "2".png', "c.png"], "x": [0.1, np.nan, 1 / 3],
                          "label": ["covid", "normal", "covid"], "n": [1, 2, 3]})
    csv_button(table, "Points (LBP, PCA)", key="points_csv")


def test_csv_button_downloads_the_table(downloads):
    at = AppTest.from_function(_csv_app, default_timeout=30).run()
    assert not at.exception
    file = download(at, "points_csv", downloads)
    assert file.filename == "points-lbp-pca.csv"
    # written by hand: quoting of commas and quotes, NaN as an empty cell, floats exactly
    expected = pd.DataFrame({"file": ["a,1.png", 'b "2".png', "c.png"], "x": [0.1, np.nan, 1 / 3],
                             "label": ["covid", "normal", "covid"], "n": [1, 2, 3]})
    pd.testing.assert_frame_equal(csv_table(file), expected)
    assert file.content.decode().splitlines()[:3] == ["file,x,label,n", '"a,1.png",0.1,covid,1', '"b ""2"".png",,normal,2']


# --- URL-backed widgets ----------------------------------------------------------------------------------------------

def test_decode_falls_back_on_unknown_or_missing_codes():
    assert decode("3", [1, 3, 5], 5) == 3
    assert decode("4", [1, 3, 5], 5) == 5 and decode(None, [1, 3, 5], 5) == 5
    assert decode("1", (False, True), False, encode=lambda b: "1" if b else "0") is True
    assert decode_many("c,a,zzz", ["a", "b", "c"], ["b"]) == ["a", "c"]  # in option order, unknown dropped
    assert decode_many("zzz", ["a", "b"], ["b"]) == ["b"] and decode_many(None, ["a"], []) == []


def _url_app() -> None:
    import streamlit as st

    from dashboard.url_state import flag, url_widget

    url_widget(st.selectbox, "Method", ["pca", "tsne", "kpca"], key="m", param="method", default="pca")
    url_widget(st.multiselect, "Splits", ["train", "val", "test"], key="s", param="splits", default=["train", "test"])
    url_widget(st.toggle, "Grey", (False, True), key="g", param="gray", default=False, encode=flag)
    url_widget(st.number_input, "Seed", range(10), key="n", param="seed", default=0, min_value=0, max_value=9)
    url_widget(st.select_slider, "Depth", [0, 2, 5], key="d", param="depth", default=5, always=True)


def _app(**params: str) -> AppTest:
    at = AppTest.from_function(_url_app, default_timeout=30)
    at.query_params.update(params)
    return at.run()


def test_url_widgets_open_on_the_links_values_and_write_theirs_back():
    at = _app(method="tsne", splits="val,test", gray="1", seed="7", depth="2")
    assert not at.exception
    assert at.selectbox(key="m").value == "tsne" and at.multiselect(key="s").value == ["val", "test"]
    assert at.toggle(key="g").value is True and at.number_input(key="n").value == 7
    assert at.select_slider(key="d").value == 2
    at.selectbox(key="m").set_value("kpca").run()
    at.multiselect(key="s").set_value(["train", "test"]).run()  # back to the default: left out of the link
    at.toggle(key="g").set_value(False).run()
    assert at.query_params == {"method": "kpca", "seed": "7", "depth": "2"}


def test_url_widgets_fall_back_on_stale_values_without_an_error():
    at = _app(method="umap", splits="nope", gray="yes", seed="12", depth="3")
    assert not at.exception and not at.error
    assert at.selectbox(key="m").value == "pca" and at.multiselect(key="s").value == ["train", "test"]
    assert at.toggle(key="g").value is False and at.number_input(key="n").value == 0
    assert at.select_slider(key="d").value == 5
    assert at.query_params == {"depth": "5"}  # the bad values are gone; the depth is always written


# --- the experiment in a link -----------------------------------------------------------------------------------------

def test_link_params_encode_what_differs_from_the_demo():
    demo = engine.preset("demo")
    sel = Selection(demo.config.replace(epochs=2, clahe=True, lr=2.5e-4), (0, 5))
    assert link_params(sel) == {"data": "builtin", "cfg": "clahe:1,lr:0.00025,epochs:2", "depths": "0,5"}
    assert link_params(Selection()) == {"data": "builtin", "cfg": None, "depths": None}


def test_a_link_rebuilds_the_selection(tiny_folder):
    from conftest import TINY_RUN

    for sel in (Selection(engine.RunConfig(**TINY_RUN), (0, 5)),
                Selection(engine.RunConfig(data=str(tiny_folder), backbone="resnet18", folds=3, head_width=None,
                                           weight_decay=0.0), (1, 2, 3)),
                Selection()):
        params = {k: v for k, v in link_params(sel).items() if v is not None}
        assert selection_from_link(params, exposed=False) == (sel, [])
    assert selection_from_link({"depth": "3", "presenter": "1"}, exposed=False) == (None, [])


def test_a_link_with_parts_that_do_not_apply_falls_back_to_the_demo(tiny_folder, monkeypatch):
    monkeypatch.delenv("LUNGLENS_DATA_ROOT", raising=False)
    demo = engine.preset("demo")
    params = {"data": str(tiny_folder), "cfg": "epochs:abc,colour:red,init:/tmp/weights.pt,batch_size:8,seed",
              "depths": "0,9"}
    sel, ignored = selection_from_link(params, exposed=True)  # reachable from the network, no data root: refused
    assert sel == Selection(demo.config.replace(batch_size=8), demo.depths)
    assert ignored == [f"data {tiny_folder}", "epochs:abc", "colour:red", "init:/tmp/weights.pt", "seed",
                       "depths 0,9"]
    monkeypatch.setenv("LUNGLENS_DATA_ROOT", str(Path(tiny_folder).parent))
    sel, ignored = selection_from_link({"data": str(tiny_folder), "cfg": "init:imagenet,backbone:alexnet"}, True)
    assert sel.config.data == str(Path(tiny_folder).resolve()) and sel.config.backbone == "alexnet" and not ignored
    # fields valid one by one but not together: the whole cfg goes
    sel, ignored = selection_from_link({"cfg": "init:xrv-densenet121,backbone:alexnet"}, exposed=False)
    assert sel == Selection() and len(ignored) == 1 and ignored[0].startswith("cfg (init=xrv-densenet121")
