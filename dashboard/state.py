"""The user's choice of data and experiment, kept in session state so every page shows the same runs."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import streamlit as st

import engine

KEY = "selection"
#: Real datasets shipped beside the repository for integration tests and demos, when present.
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class Selection:
    """Data source, base run config (its ``folds``: 1 = hold-out, k > 1 = k-fold) and the fine-tuning depths."""

    config: engine.RunConfig = field(default_factory=lambda: engine.preset("demo").config)
    depths: tuple[int, ...] = field(default_factory=lambda: engine.preset("demo").depths)

    @property
    def folds(self) -> int:
        """Cross-validation folds of the experiment (1 = hold-out)."""
        return self.config.folds

    def configs(self) -> list[engine.RunConfig]:
        """One run config per selected depth and fold, depth by depth (fold 0 first)."""
        return engine.sweep_configs(self.config, self.depths, folds=self.config.folds)

    def with_config(self, **changes) -> Selection:
        """A copy with some config fields changed."""
        return replace(self, config=self.config.replace(**changes))

    @property
    def data_label(self) -> str:
        """Short name of the data source for captions."""
        return "built-in phantoms" if self.config.data == "builtin" else Path(self.config.data).name


def initial_selection() -> Selection:
    """The demo preset, or the experiment in the JSON file named by ``$LUNGLENS_SELECTION``.

    The file holds ``{"config": {...RunConfig fields...}, "depths": [0, 5]}``, so the dashboard can open on any
    experiment (a shared demo, the browser test).
    """
    path = os.environ.get("LUNGLENS_SELECTION")
    if not path:
        return Selection()
    try:
        spec = json.loads(Path(path).read_text())
        return Selection(engine.RunConfig.from_dict(spec["config"]), tuple(spec.get("depths") or (spec["config"].get("depth", 5),)))
    except (OSError, ValueError, KeyError, TypeError, engine.LungLensError) as exc:
        st.warning(f"Ignoring LUNGLENS_SELECTION={path}: {exc}. Showing the demo experiment instead.")
        return Selection()


def selection() -> Selection:
    """The current selection (the demo preset, or $LUNGLENS_SELECTION, until the user changes it on Home)."""
    if KEY not in st.session_state:
        st.session_state[KEY] = initial_selection()
    return st.session_state[KEY]


def set_selection(sel: Selection) -> None:
    """Replace the current selection."""
    st.session_state[KEY] = sel


def shared_datasets() -> dict[str, Path]:
    """The folders of ``../shared/data`` that look like datasets, by name."""
    if not SHARED_DATA.is_dir():
        return {}
    return {p.name: p for p in sorted(SHARED_DATA.iterdir()) if (p / "images").is_dir()}
