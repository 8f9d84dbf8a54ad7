"""Choosing an external test folder and how its classes map onto a run's: one picker for every page that scores one."""
from __future__ import annotations

from pathlib import Path

import streamlit as st

import engine
from dashboard.background import background
from dashboard.state import shared_datasets
from engine.data.access import DATA_ROOT_ENV, allowed_folder, data_root, is_exposed
from engine.external import ExternalRun, external_dataset, suggest_mapping

LEAVE_OUT = "(leave out)"


def _folder(key: str, exclude: str | None) -> str | None:
    """The folder the user picks (a shared dataset or a typed path), or None while there is none."""
    shared = {n: p for n, p in shared_datasets().items() if str(p) != exclude}
    typed = "A folder on this machine"
    options = [*shared, typed]
    choice = st.selectbox("External test folder", options, index=None, key=f"{key}_folder_choice",
                          placeholder="Choose a folder of another site's images…",
                          help="Every image of it is test data: it is scored, never trained on. Layout as for "
                               "training: ROOT/images/<class>/*, ROOT/<class>/* or a manifest.csv; PNG, JPEG, BMP, "
                               "TIFF or DICOM.")
    if choice is None:
        return None
    if choice != typed:
        return str(shared[choice])
    exposed = is_exposed(st.get_option("server.address"))
    limit = data_root() if exposed else None
    path = st.text_input("Folder", key=f"{key}_folder_path", disabled=exposed and limit is None,
                         help=f"Only folders under {limit}." if limit else None)
    return checked_folder(path, exposed, limit)


def checked_folder(path: str, exposed: bool, limit: Path | None) -> str | None:
    """``path`` resolved when this dashboard may read it; else None, after saying why (typed folders are off on a
    dashboard reachable from the network without ``$LUNGLENS_DATA_ROOT``, or the folder lies outside it)."""
    if exposed and limit is None:
        st.info(f"Typed folders are off: this dashboard is reachable from the network. Set {DATA_ROOT_ENV} to the "
                "folder holding the datasets it may read (see README, Reliability).")
        return None
    if not path:
        return None
    try:
        return allowed_folder(path, exposed)
    except engine.LungLensError as exc:
        st.error(str(exc))
        return None


def external_picker(run: engine.Run, key: str) -> ExternalRun | None:
    """A folder picker and one mapping box per folder class the run lacks; the run seen through that folder (None
    while no folder is chosen, or while a large one is being read: its progress panel is drawn instead)."""
    path = _folder(key, exclude=run.meta.get("data_root"))
    if path is None:
        return None
    skip_bad = st.toggle("Skip unreadable images (they are reported)", key=f"{key}_skip_bad")
    # Every image of a large folder is checked once: in the background (progress, Cancel) when it takes long; a
    # folder that cannot be used fails that job, whose panel says why.
    source = background(external_dataset, path, skip_bad=skip_bad, name=f"{key}_read",
                        label="Reading the external folder (every image is checked once)")
    if source is None:
        return None
    unknown = [c for c in source.classes if c not in run.classes]
    suggested = suggest_mapping(source.classes, run.classes)
    mapping: dict[str, str] = {}
    if unknown:
        st.caption(f"The run knows {', '.join(run.classes)}. Map the folder's other classes onto one of them, or "
                   "leave them out (they are counted and reported).")
        columns = st.columns(min(len(unknown), 4))
        for i, name in enumerate(unknown):
            options = [LEAVE_OUT, *run.classes]
            default = options.index(suggested[name]) if name in suggested else 0
            target = columns[i % len(columns)].selectbox(f"Folder class '{name}' is", options, index=default,
                                                         key=f"{key}_map_{name}")
            if target != LEAVE_OUT:
                mapping[name] = target
    return ExternalRun(run, source, mapping)
