"""The user's choice of data and experiment, kept in session state so every page shows the same runs."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import streamlit as st

import engine
from engine.data.access import allowed_folder, is_exposed
from engine.data.sources import BUILTIN_SOURCES, data_label
from engine.data.volume import volume_shape
from engine.jobs import Job

from .background import cached, forget_results
from .url_state import url_set

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
        return data_label(self.config.data)

    @property
    def volumes(self) -> bool:
        """Whether the experiment's backbone takes 3-D volumes (CT) rather than 2-D images."""
        return self.config.backbone in engine.VOLUME_BACKBONES


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
    """The current selection: the one a link names, else the demo preset or $LUNGLENS_SELECTION, until the user
    changes it on Home."""
    if KEY not in st.session_state:
        linked, ignored = selection_from_link(st.query_params.to_dict(), is_exposed(st.get_option("server.address")))
        st.session_state[KEY] = linked or initial_selection()
        if ignored:
            st.toast(f"Parts of this link do not apply here and were left at the demo's values: {'; '.join(ignored)}.",
                     icon=":material/link_off:")
    return st.session_state[KEY]


def set_selection(sel: Selection) -> None:
    """Replace the current selection."""
    st.session_state[KEY] = sel


def shared_datasets() -> dict[str, Path]:
    """The folders of ``../shared/data`` that look like datasets, by name."""
    if not SHARED_DATA.is_dir():
        return {}
    return {p.name: p for p in sorted(SHARED_DATA.iterdir()) if (p / "images").is_dir()}


#: Initialisations a link may name. A weights file named by a link is not followed: a URL must not make the server
#: read a file of the sender's choosing.
LINK_INITS = ("builtin", "imagenet", "scratch", "xrv-densenet121")
#: Config fields a link leaves out: the data has its own parameter; the depth and the fold come from the sweep.
_NOT_IN_LINK = frozenset({"data", "depth", "fold"})
#: The URL parameters that carry the selection.
LINK_PARAMS = ("data", "cfg", "depths")
_BAD = object()


def _code(value: object) -> str:
    """A config value as a URL code: booleans 1 / 0, None ``none``, floats exactly (``repr``)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if value is None:
        return "none"
    return repr(value) if isinstance(value, float) else str(value)


def _parse(kind: str, code: str) -> object:
    """A URL code back as a value of the field type ``kind`` (as annotated on RunConfig), or ``_BAD``."""
    try:
        if kind == "bool":
            return {"1": True, "0": False}[code]
        if kind == "int":
            return int(code)
        if kind == "int | None":
            return None if code == "none" else int(code)
        if kind == "float":
            value = float(code)
            return value if math.isfinite(value) else _BAD
        if kind == "str":
            return code
    except (KeyError, ValueError):
        pass
    return _BAD


def _data_code(data: str) -> str:
    """``builtin``, ``builtin-ct``, a shared dataset's name, or the folder's path."""
    shared = shared_datasets()
    name = Path(data).name
    return name if data not in BUILTIN_SOURCES and name in shared and Path(data) == shared[name] else data


def _data_from_code(code: str, exposed: bool) -> str | None:
    """The data source a link's ``data`` names, or None when it names nothing readable here."""
    if code in BUILTIN_SOURCES:
        return code
    shared = shared_datasets()
    if code in shared:
        return str(shared[code])
    try:
        path = allowed_folder(code, exposed)
    except engine.LungLensError:
        return None
    return path if Path(path).is_dir() else None


def link_params(sel: Selection) -> dict[str, str | None]:
    """The URL parameters that rebuild ``sel``: ``data``; ``cfg``, the config fields that differ from the demo preset
    (``backbone:alexnet,epochs:2``); ``depths`` unless the demo's. None: the parameter is left out."""
    demo = engine.preset("demo")
    base = demo.config.to_dict()
    diff = [f"{k}:{_code(v)}" for k, v in sel.config.to_dict().items() if k not in _NOT_IN_LINK and v != base[k]]
    return {"data": _data_code(sel.config.data), "cfg": ",".join(diff) or None,
            "depths": None if tuple(sel.depths) == tuple(demo.depths) else ",".join(map(str, sel.depths))}


def selection_from_link(params: Mapping[str, str], exposed: bool) -> tuple[Selection | None, list[str]]:
    """The selection a link's ``data`` / ``cfg`` / ``depths`` describe (None when it has none of them), and the parts
    that do not apply here (unknown, unreadable or invalid), which are left at the demo preset's values.

    ``exposed``: the dashboard is reachable from the network, so a folder must lie under $LUNGLENS_DATA_ROOT.
    """
    if not any(p in params for p in LINK_PARAMS):
        return None, []
    demo = engine.preset("demo")
    ignored: list[str] = []
    values = demo.config.to_dict()
    if "data" in params:
        data = _data_from_code(params["data"], exposed)
        if data is None:
            ignored.append(f"data {params['data']}")
        values["data"] = data or demo.config.data
    kinds = {f.name: str(f.type) for f in dataclasses.fields(engine.RunConfig)}
    for item in filter(None, params.get("cfg", "").split(",")):
        name, _, code = item.partition(":")
        value = _parse(kinds[name], code) if name in kinds and name not in _NOT_IN_LINK else _BAD
        if value is _BAD or (name == "init" and value not in LINK_INITS):
            ignored.append(item)
        else:
            values[name] = value
    try:
        config = engine.RunConfig.from_dict(values)
    except engine.LungLensError as exc:
        ignored.append(f"cfg ({exc})")
        config = demo.config.replace(data=values["data"])
    depths = tuple(demo.depths)
    if "depths" in params:
        try:
            linked = tuple(sorted({int(d) for d in params["depths"].split(",")}))
        except ValueError:
            linked = ()
        if linked and all(0 <= d <= engine.N_BLOCKS for d in linked):
            depths = linked
        else:
            ignored.append(f"depths {params['depths']}")
    return Selection(config, depths), ignored


def publish_selection(sel: Selection) -> None:
    """Write ``sel`` into the URL (``data``, ``cfg``, ``depths``), so a copied link opens the same experiment."""
    for param, code in link_params(sel).items():
        url_set(param, code)


def _forget_run_lists(_key: str, _started: float) -> None:
    """Drop the dashboard's caches that list or summarise runs (once per finished job: see ``after_training``)."""
    st.cache_resource.clear()
    forget_results()


def after_training(job: Job | None) -> None:
    """Once a training job has ended (done, cancelled or failed), its runs are new: the caches listing runs go, once
    per job for the whole server (``cached`` remembers the call, made after the caches are cleared)."""
    if job is not None and not job.running:
        cached(_forget_run_lists, job.key, job.started)


def size_text(cfg: engine.RunConfig) -> str:
    """A run's input size: ``128 px`` for images, ``32 × 64 × 64 voxels`` (slices × rows × columns) for volumes."""
    if cfg.backbone in engine.VOLUME_BACKBONES:
        return f"{' × '.join(map(str, volume_shape(cfg.image_size)))} voxels"
    return f"{cfg.image_size} px"
