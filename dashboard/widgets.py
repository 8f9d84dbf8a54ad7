"""Widgets and guards every page uses: the sidebar (experiment summary, presenter mode), the depth slider, figures
with a PNG export, captions and the empty state."""
from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import engine
from engine.crossval import fold_configs, require_folds

from .exports import png_config
from .state import Selection, publish_selection, selection, size_text
from .url_state import flag, url_widget

#: The Home page's file (the entry script, Home.py, only wires the pages).
HOME = Path(__file__).resolve().parent / "home_page.py"
#: Session-state key (and URL parameter) of the presenter-mode toggle.
PRESENTER = "presenter"
PRESENTER_CSS = Path(__file__).resolve().parents[1] / "assets" / "presenter.css"
#: Plotly's base font size in presenter mode (its default is 12).
PRESENTER_FONT = 16


@st.cache_resource(show_spinner="Loading the dataset…")
def _dataset(data: str, per_class: int, confounder_class: str, confounder_prob: float, skip_bad: bool) -> engine.Dataset:
    return engine.load_dataset(data, per_class=per_class, confounder_class=confounder_class,
                               confounder_prob=confounder_prob, skip_bad=skip_bad)


def dataset(cfg: engine.RunConfig) -> engine.Dataset:
    """The dataset a config reads, loaded once per session."""
    return _dataset(cfg.data, cfg.builtin_per_class, cfg.confounder_class, cfg.confounder_prob, cfg.skip_bad)


@st.cache_resource(max_entries=64)
def _run(run_id: str, finished: float) -> engine.Run:
    # ``finished`` is part of the key so a run trained again after deletion is not served stale.
    return engine.load_run(run_id)


@st.cache_resource(ttl=60, show_spinner=False)
def all_runs() -> list[engine.Run]:
    """Every finished run in the cache, newest first (listed again at most once a minute, or after training)."""
    df = engine.list_runs()
    return [_run(r, f) for r, f in zip(df["run"], df["finished"])] if len(df) else []


@st.cache_resource(show_spinner=False, max_entries=4)
def _images(data_fingerprint: str, size: int, clahe: bool, _run: engine.Run) -> np.ndarray:
    # Keyed by the data and its preprocessing, which every depth of an experiment shares: loaded once for all.
    return _run.images()


def run_images(run: engine.Run) -> np.ndarray:
    """Every preprocessed image of the run's data, in ``run.predictions`` order, loaded once per data and size."""
    return _images(run.meta["data_fingerprint"], run.config.image_size, run.config.clahe, run)


def _cached(cfg: engine.RunConfig, ds: engine.Dataset) -> engine.Run | None:
    run = engine.get_run(cfg, ds)
    return _run(run.id, run.result["finished"]) if run else None


def cached_runs(sel: Selection) -> dict[int, engine.Run | None]:
    """The selection's run per depth (with k folds: fold 0's, the depth's representative), None where not trained."""
    ds = dataset(sel.config)
    return {cfg.depth: _cached(cfg, ds) for cfg in sel.configs() if cfg.fold == 0}


def cached_fold_runs(sel: Selection) -> dict[int, list[engine.Run | None]]:
    """The selection's runs per depth, one per fold in fold order (one with hold-out), None where not trained."""
    ds = dataset(sel.config)
    out: dict[int, list[engine.Run | None]] = {}
    for cfg in sel.configs():
        out.setdefault(cfg.depth, []).append(_cached(cfg, ds))
    return out


def fold_runs_of(run: engine.Run) -> list[engine.Run | None]:
    """Every fold's run of ``run``'s experiment, in fold order; None where a fold is not trained."""
    ds = dataset(run.config)
    return [_cached(cfg, ds) for cfg in fold_configs(run.config)]


def trained_folds(run: engine.Run) -> list[engine.Run] | None:
    """Every fold's run of ``run``'s experiment, or None after a warning naming the missing folds and a link to Home."""
    try:
        return require_folds(fold_runs_of(run))
    except engine.LungLensError as exc:
        st.warning(str(exc))
        st.page_link(str(HOME), label="Go to Home and train the missing folds", icon=":material/play_arrow:")
        return None


def _summary(slot: DeltaGenerator, sel: Selection) -> None:
    """The selection in words, with a link to Home, drawn into ``slot`` (replacing what it held)."""
    c = sel.config
    with slot.container():
        st.markdown("**Current experiment**")
        st.caption(
            f"Data: {sel.data_label}  \nBackbone: {c.backbone} · init: {c.init}  \n"
            f"Depths: {', '.join(map(str, sel.depths))} · {c.epochs} epochs · {size_text(c)}"
            + (f"  \n{c.folds}-fold cross-validation" if c.folds > 1 else "")
        )
        st.page_link(str(HOME), label="Change on Home", icon=":material/tune:")


@cache
def _presenter_css() -> str:
    return PRESENTER_CSS.read_text()


def sidebar() -> Callable[[], None]:
    """Draw the sidebar on every page (the current experiment, the presenter-mode toggle) and write the experiment
    into the URL; call the returned function after the page ran, to redraw both if the page changed the selection."""
    sel = selection()
    publish_selection(sel)
    with st.sidebar:
        slot = st.empty()
        url_widget(st.toggle, "Presenter mode", (False, True), key=PRESENTER, param=PRESENTER, default=False,
                   encode=flag, help="Larger type for a projector; the notes under figures fold into expanders. "
                                     "A link with ?presenter=1 opens in this mode.")
        if presenter():
            st.markdown(f"<style>{_presenter_css()}</style>", unsafe_allow_html=True)
    _summary(slot, sel)

    def refresh() -> None:
        now = selection()
        if now != sel:
            publish_selection(now)
            _summary(slot, now)

    return refresh


def presenter() -> bool:
    """Whether presenter mode is on (sidebar toggle, or ``?presenter=1`` in the link)."""
    return bool(st.session_state.get(PRESENTER, False))


def caption(text: str, label: str = "About this figure") -> None:
    """A note under a figure: ``st.caption``, folded into an expander called ``label`` in presenter mode."""
    if presenter():
        with st.expander(label):
            st.caption(text)
    else:
        st.caption(text)


def figure(fig: go.Figure, name: str, *, key: str, where: DeltaGenerator | None = None, **kwargs: Any) -> Any:
    """``st.plotly_chart`` at full width whose toolbar saves ``<name>.png`` (no zoom / pan buttons); larger type in
    presenter mode. ``where``: the column or container to draw in; returns what ``st.plotly_chart`` returns."""
    if presenter() and fig.layout.font.size is None:
        fig.update_layout(font_size=PRESENTER_FONT)
    return (where or st).plotly_chart(fig, width="stretch", key=key, config=png_config(name), **kwargs)


def require_runs(page: str) -> tuple[Selection, dict[int, engine.Run]]:
    """The selection's trained runs; without any, a helpful empty state and the page stops."""
    sel = selection()
    try:
        runs = {d: r for d, r in cached_runs(sel).items() if r is not None}
    except engine.DamagedRunError as exc:
        st.error(str(exc))
        st.page_link(str(HOME), label="Go to Home to train it again", icon=":material/build:")
        st.stop()
    except engine.LungLensError as exc:
        st.error(f"The selected data cannot be used: {exc}")
        st.stop()
    if not runs:
        st.info(
            f"**{page}** shows trained runs, and none of the selected experiment is trained yet "
            f"({sel.config.backbone} on {sel.data_label}, depths {', '.join(map(str, sel.depths))}). "
            "Train them on Home: it takes a few minutes for the demo on a laptop CPU."
        )
        st.page_link(str(HOME), label="Go to Home and train", icon=":material/play_arrow:")
        st.stop()
    return sel, runs


def depth_slider(runs: dict[int, engine.Run], key: str, label: str = "Fine-tuning depth (trainable conv blocks)") -> int:
    """A slider over the trained depths, kept in the URL as ``depth`` (a depth not trained: the deepest); returns the
    chosen depth."""
    depths = sorted(runs)
    if len(depths) == 1:
        st.caption(f"Fine-tuning depth: {depths[0]} (the only trained depth)")
        return depths[0]
    return url_widget(st.select_slider, label, depths, key=key, param="depth", default=depths[-1], always=True,
                      help="Number of trailing convolutional blocks trained; the classifier head always trains.")


def runs_table(df: pd.DataFrame) -> None:
    """The cached runs with their key test criteria."""
    if df.empty:
        st.caption("No finished runs in the cache yet.")
        return
    # the fold column only when some cached run is a later fold of a cross-validated experiment
    fold = ["fold"] if "fold" in df and (df["fold"] > 0).any() else []
    cols = ["backbone", "depth", *fold, "init", "data", "best_epoch", "acc", "sensitivity", "specificity", "ppv", "npv",
            "auc", "seconds", "run"]
    st.dataframe(df[[c for c in cols if c in df.columns]], hide_index=True, width="stretch",
                 column_config={k: st.column_config.NumberColumn(format="%.3f")
                                for k in ("acc", "sensitivity", "specificity", "ppv", "npv", "auc")}
                 | {"seconds": st.column_config.NumberColumn("train s", format="%.0f")})

