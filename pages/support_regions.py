"""Support regions (Wan et al. §3.5, Cheng et al. fig. 7, Lee et al. figs. 8-10, Ouyang et al. figs. 5-6): where
the model looks by every registered explanation method, how much of the lesion that covers against baselines that
mean something, whether the maps are faithful and pass the sanity check, which decisions rest on the wrong region,
and a new image (with a warning when it is unlike the training data). The image sections work on the run's test split
or on an external folder. Methods, labels, knobs and citations all come from ``engine.explain.METHODS``."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

import engine
from dashboard.exports import png_config
from dashboard.external_picker import external_picker
from dashboard.report_charts import (
    DEPTH_SCORES,
    consistency_curve_figure,
    depth_score_figure,
    empty_map_message,
    format_ci,
    missing_depths,
    report_csv,
    report_table,
    sanity_figure,
    sanity_message,
    styled_report,
)
from dashboard.support_charts import (
    OUTCOMES,
    colour_scale_figure,
    consistency_depth_figure,
    consistency_depth_table,
    consistency_histogram,
    depth_strip_figure,
    filter_test_rows,
    image_label,
    lime_figure,
    markdown_literal,
    probability_figure,
    support_figure,
    unlike_message,
)
from dashboard.widgets import depth_slider, require_runs, time_left
from engine.data.imageio import IMAGE_SUFFIXES
from engine.explain import (
    METHODS,
    SUPPORT_THRESHOLD,
    consistency_degree,
    is_empty,
    layer_choices,
    outside_share,
    pointing_game,
    run_heatmaps,
    run_image_explanation,
    run_masks,
    split_rows,
    support_area,
    wrong_reason_gallery,
)
from engine.explain.localisation import localisation_scores
from engine.explain.report import (
    REPORT_COLUMNS,
    ReportSettings,
    best_per_column,
    cached_method_report,
    latest_method_report,
    localisation_summary,
    method_report,
    report_across_depths,
    run_localisation,
)
from engine.explain.upload import MAX_UPLOAD_BYTES, MAX_UPLOAD_SIDE, diagnose_upload
from engine.external import ExternalRun
from engine.jobs import Job, get_job, start_job
from engine.models.backbones import StagedNet
from engine.store import stable_hash

SECTIONS = ("Explain an image", "Explanation report", "Consistency degree", "Wrong-reason gallery",
            "Same image across depths", "Diagnose a new image")
#: Where the image sections' images come from; EXTERNAL_SECTIONS work on an external folder as on the test split.
IMAGE_SOURCES = ("This run's test split", "An external folder")
EXTERNAL_SECTIONS = ("Explain an image", "Consistency degree", "Wrong-reason gallery", "Same image across depths")
#: Methods scored over a whole test split on this page, where they run while the page waits: only the fast ones.
#: Medium and slow ones (occlusion: minutes per split on a CPU) are scored by the explanation report, in the
#: background with a cancel button.
SPLIT_METHODS = tuple(name for name, m in METHODS.items() if m.cost == "fast")
#: Image panels and bar charts: no Plotly toolbar over their titles (drag still zooms, double-click resets).
NO_TOOLBAR = {"displayModeBar": False}
TARGETS = {"Predicted": "pred", "True": "true"}
#: Gallery filter: both kinds, or only images classified wrongly / rightly (the value of the ``correct`` column).
GALLERY_KINDS = {"Both": None, "Misclassified (Lee fig. 9)": False, "Right for the wrong reason (Lee fig. 10)": True}
OUTLINES_CAPTION = ("Heatmaps in jet colours, red high and blue low (Wan fig. 11), one colour scale (0 to 1) for "
                    "every map. Magenta line: support region (heatmap above the threshold). Green: annotated lesion. "
                    "Dotted cyan: lungs (where the data has these masks).")
#: Session-state key of the explanation-report job this session started (the job itself lives in engine.jobs).
REPORT_JOB = "support_report_job"
#: How often the progress panel of a running job redraws itself.
POLL_SECONDS = 1.0


def _label(name: str) -> str:
    return METHODS[name].label


def _note(name: str) -> str:
    """One line on a method from the registry: label, citation, what it computes."""
    m = METHODS[name]
    return f"**{m.label}** ({m.citation}): {m.description}"


# Runs are keyed by id (an external view by its ``cache_key``) and ``finished`` so that a run trained again under the
# same id is not served stale; the run object itself is passed unhashed (``_run``). Arrays go through cache_resource
# (shared, not copied on every rerun); the engine caches them on disk as well.
@st.cache_resource(show_spinner=False, max_entries=8)
def _model(run_id: str, finished: float) -> StagedNet:
    return engine.load_run(run_id).load_model()


@st.cache_resource(show_spinner=False, max_entries=8)
def _test_images(key: str, finished: float, _run: engine.Run) -> np.ndarray:
    return _run.images("test")


@st.cache_resource(show_spinner=False, max_entries=8)
def _masks(key: str, finished: float, _run: engine.Run) -> dict[str, np.ndarray]:
    return run_masks(_run, "test")


@st.cache_resource(show_spinner=False, max_entries=32)
def _split_maps(key: str, finished: float, _run: engine.Run, method: str, target: str,
                layer: str | None = None) -> np.ndarray:
    return run_heatmaps(_run, method, "test", target, layer)


@st.cache_data(show_spinner=False, max_entries=128)
def _image_map(key: str, finished: float, _run: engine.Run, row: int, method: str, target: str | int,
               params: tuple[tuple[str, Any], ...]) -> dict[str, np.ndarray]:
    return run_image_explanation(_run, row, "test", method, target, **dict(params))


@st.cache_data(show_spinner=False, max_entries=64)
def _localisation(key: str, finished: float, _run: engine.Run, threshold: float, method: str,
                  target: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    table = run_localisation(_run, threshold, method, target)
    return table, localisation_summary(table)


@st.cache_data(show_spinner=False, max_entries=32)
def _gallery(key: str, finished: float, _run: engine.Run, threshold: float, mostly: float, method: str,
             layer: str | None) -> pd.DataFrame:
    params = {"layer": layer} if layer is not None else {}
    return wrong_reason_gallery(_run, threshold, method, mostly=mostly, **params)


@st.cache_data(show_spinner=False, max_entries=16)
def _diagnose(run_id: str, finished: float, digest: str, _data: bytes, name: str, lime_samples: int) -> Any:
    # ``digest`` stands for the bytes in the cache key; the cache lives in memory only, nothing goes to disk.
    run = engine.load_run(run_id)
    return diagnose_upload(_data, name, _model(run_id, finished), run.classes, run.config.image_size,
                           run.config.clahe, lime_samples, run=run)


def _key(run: engine.Run) -> tuple[str, float, engine.Run]:
    """The cache key of a run or external view, its finish time, and the object (passed to caches unhashed)."""
    return run.cache_key, run.result["finished"], run


def _run_model(run: engine.Run) -> StagedNet:
    """The trained model of a run or of the run behind an external view (one cached copy for both)."""
    base = run.trained_run
    return _model(base.id, base.result["finished"])


def _masks_of(masks: dict[str, np.ndarray], row: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The lesion and lung masks of one test image, None where the data has none (or the lesion mask is empty)."""
    lesion, lung = masks["lesion"][row], masks["lung"][row]
    return (lesion if masks["has_lesion"][row] and lesion.any() else None,
            lung if masks["has_lung"][row] and lung.any() else None)


def _scores(heatmap: np.ndarray, lesion: np.ndarray | None, lung: np.ndarray | None, threshold: float,
            row: int) -> dict:
    """The engine's scores of one heatmap against the image's masks, with baselines (NaN where a mask is missing)."""
    nan = float("nan")
    local = localisation_scores(heatmap, lesion, lung, threshold, seed=row) if lesion is not None else {}
    return {
        "consistency degree": consistency_degree(heatmap, lesion, threshold) if lesion is not None else nan,
        "baseline: lungs, same area": local.get("lung_area_matched_baseline", nan),
        "baseline: random map": local.get("random_baseline", nan),
        "pointing game": ("hit" if pointing_game(heatmap, lesion) else "miss") if lesion is not None else "n/a",
        "relevance mass": local.get("relevance_mass", nan),
        "support area": support_area(heatmap, threshold),
        "support outside lesion": outside_share(heatmap, lesion, threshold) if lesion is not None else nan,
        "support outside lungs": outside_share(heatmap, lung, threshold) if lung is not None else nan,
    }


def _target_picker(classes: tuple[str, ...], key: str, column: Any) -> str | int:
    """Predicted, true or any class, as the engine's target ('pred', 'true' or a class index)."""
    kind = column.radio("Explain the class", (*TARGETS, "Another class"), horizontal=True, key=key)
    if kind in TARGETS:
        return TARGETS[kind]
    return classes.index(column.selectbox("Class to explain", classes, key=f"{key}_class"))


def _layers(run: engine.Run) -> dict[str, str]:
    """Module name -> human label of every CAM layer of the run's model, input to output."""
    return dict(layer_choices(_run_model(run)))


def _layer_picker(run: engine.Run, key: str, column: Any) -> str | None:
    """A CAM layer of the run's model; None for the last one, the default (Wan et al.'s A^k)."""
    layers = _layers(run)
    names = list(layers)
    layer = column.selectbox("Layer (CAM methods)", names, index=len(names) - 1, key=key, format_func=layers.get,
                             help="Wan et al. use the last convolutional layer (the default), after its ReLU: it "
                                  "holds the most semantic information but is coarse. Earlier layers localise small "
                                  "objects (a marker, a device) more sharply and are less class-specific.")
    return None if layer == names[-1] else layer  # the default stays implicit: its cache is shared with other views


def _layer_label(run: engine.Run, name: str, layer: str | None) -> str | None:
    """The human label of the layer a method reads (None for methods that read no layer)."""
    if not METHODS[name].uses_layer:
        return None
    layers = _layers(run)
    return layers[layer] if layer is not None else list(layers.values())[-1]


def _grid(n: int, per_row: int) -> Iterator[Any]:
    """Containers for ``n`` panels laid out row by row, so that the panels of a row line up."""
    for start in range(0, n, per_row):
        yield from st.columns(per_row)[: min(per_row, n - start)]


def _target_index(row: pd.Series, target: str | int) -> int:
    """The class index a target names for one test row."""
    return int(row["pred"] if target == "pred" else row["y"] if target == "true" else target)


def _sanity_note(run: engine.Run, name: str) -> None:
    """The method's sanity verdict from its newest cached report row: a warning when it fails, a note otherwise."""
    # A property of the model and the method, not of the images: read from the run behind an external view.
    level, text = sanity_message(_label(name), latest_method_report(run.trained_run, name))
    if level == "warning":
        st.warning(text, icon=":material/warning:")
    else:
        st.caption(text)


def _empty_count(n_empty: int, n: int, label: str, where: str) -> None:
    """Say how many of the listed maps are empty (all zero or constant); nothing when none is."""
    if n_empty:
        st.warning(f"{n_empty} of the {n} {label} maps {where} are empty (all zero or constant): the method found "
                   "no positive evidence there, so those maps have no support region. They are counted, not drawn "
                   "blank.", icon=":material/visibility_off:")


def _pick_image(rows: pd.DataFrame, classes: tuple[str, ...]) -> int | None:
    """A test image (row of ``split_rows``), filterable by true class and by correct / wrong; None if none matches."""
    c1, c2 = st.columns(2)
    chosen = c1.multiselect("True class", classes, key="support_classes", placeholder="All classes")
    outcome = c2.radio("Classification", OUTCOMES, horizontal=True, key="support_outcome")
    shown = filter_test_rows(rows, classes, chosen, outcome)
    if shown.empty:
        st.info("No test image matches these filters: widen the class or classification filter.")
        return None
    return st.selectbox(f"Test image ({len(shown)} of {len(rows)} match)", shown.index.tolist(),
                        format_func=lambda i: image_label(rows.loc[i], classes), key="support_image")


def _knobs(name: str, column: Any) -> dict[str, Any]:
    """The method's parameters from the registry's knobs (label, choices, default), rendered generically."""
    values = {}
    for knob, (label, choices, default) in METHODS[name].knobs.items():
        key = f"support_knob_{name}_{knob}"
        st.session_state.setdefault(key, default)  # a state default, not value=, so a preset value wins
        shown = label if _label(name) in label else f"{label} ({_label(name)})"
        values[knob] = column.select_slider(shown, choices, key=key)
    return values


def _pick_methods(run: engine.Run) -> tuple[list[str], str | int, str | None, dict[str, dict[str, Any]]]:
    """The chosen methods, the class to explain, the CAM layer and each method's parameters."""
    c1, c2, c3 = st.columns(3)
    names = c1.multiselect("Methods", list(METHODS), default=["gradcam"], format_func=_label, key="support_methods",
                           help="Every registered explanation method; several are shown side by side on one colour "
                                "scale.")
    target = _target_picker(run.classes, "support_target", c2)
    layer = _layer_picker(run, "support_layer", c3) if any(METHODS[n].uses_layer for n in names) else None
    params: dict[str, dict[str, Any]] = {}
    for name in names:
        params[name] = _knobs(name, c3)
        if layer is not None and METHODS[name].uses_layer:
            params[name]["layer"] = layer
    return names, target, layer, params


def _map_panel(run: engine.Run, image: np.ndarray, name: str, result: dict[str, np.ndarray], *, title: str,
               class_name: str, layer: str | None, threshold: float, opacity: float, lesion: np.ndarray | None,
               lung: np.ndarray | None, height: int, key: str, colorbar: bool) -> None:
    """One method's map over the image, or what an empty map means instead of a blank picture."""
    heatmap = result["heatmap"]
    empty = bool(is_empty(heatmap[None])[0])
    if "segments" in result and "map" in result:  # LIME-like: signed superpixels
        fig = lime_figure(image, result, threshold=threshold, opacity=opacity, lesion=lesion, lung=lung,
                          title=title, height=height, legend=False)
    else:
        fig = support_figure(image, None if empty else heatmap, threshold=threshold, opacity=opacity, lesion=lesion,
                             lung=lung, title=title, height=height, colorbar=colorbar, legend=False)
    st.plotly_chart(fig, width="stretch", key=key, config=png_config(key))
    if empty:
        st.warning(empty_map_message(_label(name), class_name, _layer_label(run, name, layer), heatmap),
                   icon=":material/visibility_off:")


def _explain_section(run: engine.Run, threshold: float, opacity: float) -> None:
    rows, classes = split_rows(run, "test"), run.classes
    row = _pick_image(rows, classes)
    if row is None:
        return
    names, target, layer, params = _pick_methods(run)
    image, (lesion, lung) = _test_images(*_key(run))[row], _masks_of(_masks(*_key(run)), row)
    r = rows.loc[row]
    class_name = classes[_target_index(r, target)]
    n_columns = 4 if len(names) > 2 else len(names) + 1
    height = 340 if n_columns <= 2 else 300 if n_columns == 3 else 250  # about square panels: no letterbox bars
    cells = _grid(len(names) + 1, n_columns)
    with next(cells):
        st.plotly_chart(support_figure(image, lesion=lesion, lung=lung, title="Image", height=height),
                        width="stretch", key="support_image_figure", config=png_config("support_image"))
    scores, empties = {}, 0
    for cell, name in zip(cells, names):
        with cell, st.spinner(f"Computing {_label(name)}…"):
            result = _image_map(*_key(run), row, name, target, tuple(sorted(params[name].items())))
            _map_panel(run, image, name, result, title=f"{_label(name)} · {class_name}", class_name=class_name,
                       layer=layer, threshold=threshold, opacity=opacity, lesion=lesion, lung=lung, height=height,
                       key=f"support_overlay_{name}", colorbar=len(names) == 1)
            _sanity_note(run, name)
        empties += bool(is_empty(result["heatmap"][None])[0])
        scores[_label(name)] = _scores(result["heatmap"], lesion, lung, threshold, row)
    if len(names) > 1:
        st.plotly_chart(colour_scale_figure(threshold), width="stretch", key="support_colour_scale",
                        config=NO_TOOLBAR)
        _empty_count(empties, len(names), "method", "of this image")
    st.caption(OUTLINES_CAPTION)
    with st.expander("What each method computes", expanded=len(names) <= 2):
        st.markdown("\n".join(f"- {_note(n)}" for n in names) or "No method chosen.")

    left, right = st.columns(2)
    with left:
        probabilities = {c: float(r[f"prob_{c}"]) for c in classes}
        st.plotly_chart(probability_figure(probabilities, classes[int(r["y"])]), width="stretch",
                        key="support_probabilities", config=png_config("class_probabilities"))
    with right:
        if scores:
            table = pd.DataFrame(scores)  # one column per method
            st.dataframe(table.map(lambda v: v if isinstance(v, str) else "n/a" if np.isnan(v) else f"{v:.1%}"),
                         width="stretch")
            st.caption(f"Scores of each map at threshold {threshold:g}: consistency degree = share of the lesion "
                       "covered by support (Wan §3.5), next to support of the same area spread uniformly in the "
                       "lungs and a smooth random map; pointing game = whether the map's peak lies in the lesion; "
                       "relevance mass = share of the map's total inside the lesion (Arras et al.); support "
                       "outside = share of the support pixels outside the lesion or the lungs.")


# --- the explanation report -----------------------------------------------------------------------------------------

def _report_settings(threshold: float) -> ReportSettings:
    """The report's settings: the page's threshold, and image counts the user may lower for speed."""
    d = ReportSettings()
    fields = (("faithfulness_images", "Deletion / insertion images", 1, 1000),
              ("road_images", "ROAD images", 1, 1000), ("sanity_images", "Sanity-check images", 1, 200),
              ("deletion_steps", "Deletion / insertion steps", 4, 256))
    values = {}
    with st.expander("Report settings (images per check)"):
        for column, (field, label, lo, hi) in zip(st.columns(len(fields)), fields):
            key = f"support_report_{field}"
            st.session_state.setdefault(key, getattr(d, field))
            values[field] = int(column.number_input(label, lo, hi, step=1, key=key))
        st.caption("Each check scores the first images of the test split in a fixed seeded order, images with a "
                   "lesion mask first. Every setting is part of the cache key: changing one computes again.")
    return ReportSettings(split="test", threshold=threshold, **values)


def _report_work(work: list[tuple[str, list[str]]], settings: ReportSettings) -> Callable[..., int]:
    """The job computing the report rows of ``work`` ((run id, method names) pairs) one method at a time."""
    def compute(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> int:
        total, done = sum(len(methods) for _, methods in work), 0
        for run_id, methods in work:
            run = engine.load_run(run_id)
            for name in methods:
                def step(fraction: float, text: str, done: int = done, depth: int = run.config.depth) -> None:
                    progress((done + fraction) / total, f"depth {depth} · {text}")

                method_report(run, name, settings, progress=step, cancel=cancelled)
                done += 1
        return done

    return compute


def _start_report(work: list[tuple[str, list[str]]], settings: ReportSettings) -> None:
    """Start (or find, when the same work is already running) the report job and remember it for this session."""
    n = sum(len(m) for _, m in work)
    key = "explanation-report:" + stable_hash({"work": work, "settings": asdict(settings)}, 16)
    start_job(key, f"Explanation report: {n} method row(s)", _report_work(work, settings))
    st.session_state[REPORT_JOB] = key
    st.session_state.pop("support_report_seen", None)


def _job_panel() -> Job | None:
    """Progress of this session's report job (polled every POLL_SECONDS while it runs), Cancel, and its outcome."""
    key = st.session_state.get(REPORT_JOB)
    job = get_job(key) if key else None
    if job is None:
        return None

    def panel() -> None:
        current = get_job(key)
        if current is None:
            return
        if current.running:
            st.progress(current.fraction, text=f"{current.label}: {current.text} · {current.fraction:.0%} · "
                                               f"{time_left(current)}")
            if current.cancel_requested:
                st.caption("Cancelling after the current chunk…")
            elif st.button("Cancel", key="support_report_cancel", icon=":material/stop:"):
                current.cancel()
                st.caption("Cancelling after the current chunk…")
            st.caption("It runs in the background: the rest of the page (and the other tabs) stay usable.")
            return
        seen = f"{key}@{current.started}"
        if st.session_state.get("support_report_seen") != seen:
            st.session_state["support_report_seen"] = seen
            st.rerun()  # the whole page, so the table shows what the job computed
        if current.status == "done":
            st.success(f"{current.label}: computed in {current.elapsed:.0f} s.")
        elif current.status == "cancelled":
            st.info("Cancelled: the method rows finished before the cancel are cached, the interrupted one is not.")
        else:
            st.error(f"The report stopped with an error: {current.error}")

    st.fragment(panel, run_every=POLL_SECONDS if job.running else None)()
    return job


def _report_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float) -> None:
    depth = run.config.depth
    sampled = [f"{m.label} ({m.cost}, {m.report_images} images)" for m in METHODS.values()
               if m.report_images is not None]
    names = st.multiselect("Methods", list(METHODS), default=list(METHODS), format_func=_label,
                           key="support_report_methods")
    st.caption("Slow and medium methods are scored on a sample of the test split, the first images of a fixed "
               f"seeded order (lesion images first): {', '.join(sampled)}. The slow ones are "
               f"{', '.join(m.label for m in METHODS.values() if m.cost == 'slow')}.")
    settings = _report_settings(threshold)
    if not names:
        st.info("Choose at least one method.")
        return
    rows = {n: cached_method_report(run, n, settings) for n in names}
    missing = [n for n, r in rows.items() if r is None]
    job = _job_panel()
    busy = job is not None and job.running
    c1, c2 = st.columns(2)
    if c1.button(f"Compute ({len(missing)} of {len(names)} method(s) not cached at depth {depth})",
                 key="support_report_compute", disabled=busy or not missing, type="primary",
                 icon=":material/play_arrow:"):
        _start_report([(run.id, missing)], settings)
        st.rerun()
    if not missing:
        c2.caption(f"Every chosen method is computed for depth {depth} (read from the run's cache).")

    done = [r for r in rows.values() if r is not None]
    if not done:
        st.info(f"No method of this list is computed for depth {depth} at these settings yet: press **Compute**. "
                "It runs in the background with a progress bar and can be cancelled; results are cached per run, "
                "method and settings.")
    else:
        _report_table(run, pd.DataFrame(done, columns=list(REPORT_COLUMNS)), threshold)
    _report_depths(runs, names, settings, busy)


def _report_table(run: engine.Run, report: pd.DataFrame, threshold: float) -> None:
    st.markdown(f"**Methods × scores, depth {run.config.depth}** ({len(report)} method(s), mean and 95% bootstrap "
                "interval)")
    table, best = report_table(report, best_per_column(report))
    st.dataframe(styled_report(table, best), hide_index=True, width="stretch", key="support_report_table")
    st.download_button("Download the table (CSV)", report_csv(report), mime="text/csv", key="support_report_csv",
                       file_name=f"explanation-report-{run.id}-depth{run.config.depth}.csv",
                       icon=":material/download:")
    st.caption(
        f"★ bold green: the best mean of a column (every tied method is marked). Consistency: Wan §3.5's share of "
        f"the lesion covered by support (heatmap > {threshold:g}); Wan et al. report 60.02% on 500 CT images. Next "
        "to it the **lung-area baseline** (support of the same area spread uniformly in the lungs: support area in "
        "the lungs / lung area × the lesion's share inside the lungs) and a smooth **random map**, both scored the "
        "same way. **Beats chance**: the mean beats both baselines and the 95% intervals do not overlap. IoU with "
        "Otsu's threshold as CheXlocalize; relevance mass and rank accuracy after Arras et al.; deletion (lower is "
        "better) and insertion AUCs of the class probability as the most relevant pixels are removed / added "
        "(Petsiuk et al. 2018, RISE); ROAD = least-relevant-first minus most-relevant-first with noisy linear "
        "imputation (Rong et al. 2022); sanity check: cascading model-parameter randomisation (Adebayo et al. "
        "2018), SSIM of the fully randomised maps with the originals (fail: still similar).")
    failed = report[report["sanity_pass"] == False]  # noqa: E712 - NaN (not computed) is neither
    for _, r in failed.iterrows():
        st.warning(sanity_message(r["label"], r.to_dict())[1], icon=":material/warning:")
    if len(failed):
        st.caption("Guided backpropagation and Guided Grad-CAM were expected to fail (Adebayo et al. 2018): these "
                   "are the verdicts as measured on this run.")
    empty = report[report["empty_share"] > 0]
    if len(empty):
        st.warning("Empty maps (all zero or constant) counted in the report: " + ", ".join(
            f"{r['label']} {r['empty_share']:.0%} of {r['n_images']}" for _, r in empty.iterrows()) + ".",
            icon=":material/visibility_off:")
    left, right = st.columns(2)
    with left:
        st.markdown("**Sanity check: cascading randomisation**")
        st.plotly_chart(sanity_figure(report), width="stretch", key="support_report_sanity")
        st.caption("Adebayo et al. 2018, fig. 2 style: similarity of each method's maps to the original maps as "
                   "the weights are re-initialised from the classifier head down to block 1 (cumulatively). A "
                   "method that explains the model falls towards 0; one that stays near 1 shows image structure.")
    with right:
        st.markdown("**Consistency degree against the support threshold**")
        st.plotly_chart(consistency_curve_figure(report, threshold), width="stretch", key="support_report_curve")
        st.caption("Mean consistency degree (Wan §3.5) at thresholds 0.1 to 0.9; the dotted line is the page's "
                   "threshold. A map that only reaches the lesion at low thresholds has weak evidence there.")


def _report_depths(runs: dict[int, engine.Run], names: list[str], settings: ReportSettings, busy: bool) -> None:
    st.markdown("**Every score against fine-tuning depth, one line per method**")
    long = report_across_depths(runs, names, settings)
    missing = missing_depths(long, sorted(runs), names)
    c1, c2 = st.columns([1, 2])
    score = c1.selectbox("Score", list(DEPTH_SCORES), format_func=DEPTH_SCORES.get, key="support_report_score")
    if missing:
        n = sum(len(m) for m in missing.values())
        c2.caption("Not computed yet: " + "; ".join(
            f"depth {d} ({len(m)} of {len(names)} methods: {', '.join(_label(x) for x in m[:4])}"
            f"{', …' if len(m) > 4 else ''})" for d, m in missing.items()))
        if c2.button(f"Compute the missing depths ({n} method row(s), in the background)",
                     key="support_report_compute_depths", disabled=busy, icon=":material/play_arrow:"):
            _start_report([(runs[d].id, m) for d, m in missing.items()], settings)
            st.rerun()
    if long.empty:
        st.info("No depth has a computed report at these settings yet.")
        return
    st.plotly_chart(depth_score_figure(long, score), width="stretch", key="support_report_depths")
    empty = long[(long["score"] == "empty_share") & (long["value"].astype(float) > 0)]
    if len(empty):
        st.caption("Empty maps by depth: " + "; ".join(f"{r['label']} at depth {r['depth']}: {r['value']:.0%}"
                                                       for _, r in empty.iterrows()) + ".")
    st.caption("How explanation quality changes with fine-tuning depth: each point is one depth's run scored on its "
               "own test split with the same settings (cached rows only; compute the missing depths above).")


# --- consistency degree -------------------------------------------------------------------------------------------

def _consistency_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float, opacity: float) -> None:
    masks = _masks(*_key(run))
    if not masks["has_lesion"].any():
        st.info("This data has no lesion masks (for example covidct, which has labels only), so the consistency "
                "degree cannot be measured. Lesion masks go in ROOT/masks/<class>/<same name>.png; the other "
                "sections of this page work without them.")
        return
    c1, c2 = st.columns(2)
    name = c1.selectbox("Method", SPLIT_METHODS, format_func=_label, key="support_consistency_method",
                        help="Only the fast methods are offered here, where the page waits for every test image; "
                             "the Explanation report tab scores the others (occlusion, LIME, Integrated Gradients, "
                             "...) in the background, with progress and a cancel button.")
    kind = c2.radio("Explain the class", tuple(TARGETS), horizontal=True, key="support_consistency_target",
                    help="Wan et al. explain the model's decision (predicted). The true class asks whether the "
                         "evidence for the right answer lies on the lesion.")
    target, label = TARGETS[kind], _label(name)
    with st.spinner(f"Scoring {label} against the lesion masks of every test image (once per run, then cached)…"):
        df, s = _localisation(*_key(run), threshold, name, target)
    _sanity_note(run, name)
    _empty_count(s["n_empty"], s["n"], label, "of the test images with a lesion")
    cols = st.columns(4)
    cols[0].metric("Mean consistency degree", f"{s['consistency']:.1%}",
                   help=f"{label}; 95% interval {format_ci(s['consistency'], s['consistency_ci'])}; median "
                        f"{s['median']:.1%}; {s['n']} test images with a lesion mask.")
    cols[1].metric("Baseline: lungs, same area",
                   "n/a" if np.isnan(s["lung_area_matched_baseline"]) else f"{s['lung_area_matched_baseline']:.1%}",
                   help="The expected consistency of support pixels spread uniformly inside the lungs with the same "
                        f"area as the map's support ({s['n_lung']} images with a lung mask).")
    cols[2].metric("Baseline: random map", f"{s['random_baseline']:.1%}",
                   help="A smooth random map (blurred uniform noise, seeded per image), scored the same way.")
    cols[3].metric("Pointing game", f"{s['pointing_game']:.1%}",
                   help=f"Share of images whose map peak lies in the lesion; a random peak hits "
                        f"{s['pointing_chance']:.1%} (the mean lesion area).")
    verdict = "beats" if s["beats_chance"] else "does not beat"
    (st.success if s["beats_chance"] else st.warning)(
        f"{label} {verdict} chance: consistency {format_ci(s['consistency'], s['consistency_ci'])} against "
        f"{format_ci(s['lung_area_matched_baseline'], s['lung_area_matched_baseline_ci'])} (lungs, same area) and "
        f"{format_ci(s['random_baseline'], s['random_baseline_ci'])} (random map); it beats chance only where its "
        "mean is above both and the 95% bootstrap intervals do not overlap.")
    st.plotly_chart(consistency_histogram(df, s, label), width="stretch", key="support_consistency_histogram")
    st.caption(
        f"Consistency degree (Wan §3.5): the share of the annotated lesion covered by support pixels (heatmap > "
        f"{threshold:g}). Wan et al. report a mean of 60.02% on 500 CT images for a modified AlexNet's Grad-CAM at "
        f"0.7; here the mean is {s['consistency']:.1%} on {s['n']} test images. The degree grows with the support "
        f"area (here {s['support_area']:.1%} of the image on average), so read it against the lung-area baseline: "
        "support of the same area placed anywhere in the lungs. Dashed lines: means."
    )
    table = df.assign(true_class=[run.classes[y] for y in df["y"]], predicted=[run.classes[p] for p in df["pred"]])
    with st.expander("Per image with a lesion (highest consistency first)"):
        st.dataframe(
            table.sort_values("consistency", ascending=False)[
                ["file", "true_class", "predicted", "empty", "consistency", "lung_area_matched_baseline",
                 "random_baseline", "pointing_game", "relevance_mass", "lesion_area", "support_area"]],
            hide_index=True, width="stretch",
            column_config={c: st.column_config.NumberColumn(format="percent") for c in
                           ("consistency", "lung_area_matched_baseline", "random_baseline", "relevance_mass",
                            "lesion_area", "support_area")})
    _top_consistency(run, df, name, target, threshold, opacity, masks)
    _consistency_by_depth(runs, threshold, name, target)


def _top_consistency(run: engine.Run, df: pd.DataFrame, name: str, target: str, threshold: float, opacity: float,
                     masks: dict[str, np.ndarray]) -> None:
    """The six images of highest consistency with their maps (Wan fig. 12)."""
    st.markdown("**Highest consistency degree (Wan et al., fig. 12)**")
    top = df.sort_values("consistency", ascending=False, kind="stable").head(6)
    maps, images = _split_maps(*_key(run), name, target), _test_images(*_key(run))
    _empty_count(int(top["empty"].sum()), len(top), _label(name), "shown here")
    rows = split_rows(run, "test")
    for k, (cell, (_, r)) in enumerate(zip(_grid(len(top), 3), top.iterrows())):
        row = int(r["row"])
        lesion, lung = _masks_of(masks, row)
        with cell:
            _map_panel(run, images[row], name, {"heatmap": maps[row]}, title=f"{r['consistency']:.0%} of the lesion",
                       class_name=run.classes[_target_index(rows.loc[row], target)], layer=None, threshold=threshold,
                       opacity=opacity, lesion=lesion, lung=lung, height=300, key=f"support_top_{k}", colorbar=False)
            st.caption(f"`{r['file']}`")
    st.caption(OUTLINES_CAPTION)


def _consistency_by_depth(runs: dict[int, engine.Run], threshold: float, name: str, target: str) -> None:
    st.markdown("**Consistency degree vs fine-tuning depth**")
    summaries = {}
    with st.spinner(f"Scoring {_label(name)} for {len(runs)} trained depth(s)…"):
        for depth, r in sorted(runs.items()):
            summaries[depth] = _localisation(*_key(r), threshold, name, target)[1]
    table = consistency_depth_table(summaries)
    if len(table) < 2:
        st.info("Only one fine-tuning depth is trained for this experiment: add depths on Home to compare them.")
    st.plotly_chart(consistency_depth_figure(table), width="stretch", key="support_consistency_depth")
    empties = [f"depth {d}: {s['n_empty']} of {s['n']}" for d, s in summaries.items() if s["n_empty"]]
    if empties:
        st.caption(f"Empty {_label(name)} maps (all zero or constant) among the images with a lesion: "
                   + "; ".join(empties) + ".")
    st.caption(f"One point per trained depth, each run scored on its own test split with {_label(name)} at "
               f"threshold {threshold:g}. Does fine-tuning more blocks move the support onto the lesions (Lee et al. "
               "compare depths by accuracy only)?")


# --- gallery, depths, upload ----------------------------------------------------------------------------------------

def _gallery_section(run: engine.Run, threshold: float, opacity: float) -> None:
    masks = _masks(*_key(run))
    c1, c2, c3, c4 = st.columns(4)
    kind = c1.radio("Show", tuple(GALLERY_KINDS), key="support_gallery_kind")
    name = c2.selectbox("Method", SPLIT_METHODS, format_func=_label, key="support_gallery_method")
    layer = _layer_picker(run, "support_gallery_layer", c2) if METHODS[name].uses_layer else None
    mostly = c3.slider("'Mostly outside' means more than this share of the support", 0.3, 0.9, 0.5, 0.05,
                       key="support_mostly")
    n_show = c4.slider("Images shown", 4, 32, 12, 4, key="support_gallery_size")
    with st.spinner(f"Explaining every test image with {_label(name)} (once per run and layer, then cached)…"):
        gallery = _gallery(*_key(run), threshold, mostly, name, layer)
    n_test = len(split_rows(run, "test"))
    _sanity_note(run, name)
    if not (masks["has_lesion"].any() or masks["has_lung"].any()):
        st.info("This data has no lesion or lung masks: the gallery can only list misclassified images, not those "
                "right for the wrong reason.")
    if gallery.empty:
        st.success(f"None of the {n_test} test images is misclassified or has its support mostly outside the "
                   "lesion and the lungs.")
        return
    wrong = int((~gallery["correct"]).sum())
    st.markdown(f"**{wrong}** misclassified and **{len(gallery) - wrong}** right for the wrong reason, of {n_test} "
                "test images.")
    if GALLERY_KINDS[kind] is not None:
        gallery = gallery[gallery["correct"] == GALLERY_KINDS[kind]]
    if gallery.empty:
        st.info(f"No test image of this kind ({kind.lower()}) at these settings.")
        return
    st.caption(f"Worst first; showing {min(n_show, len(gallery))} of {len(gallery)}.")
    maps, images = _split_maps(*_key(run), name, "pred", layer), _test_images(*_key(run))
    shown = gallery.head(n_show)
    _empty_count(int(is_empty(maps[shown["row"].to_numpy(int)]).sum()), len(shown), _label(name), "shown here")
    for k, (cell, (_, g)) in enumerate(zip(_grid(len(shown), 4), shown.iterrows())):
        row = int(g["row"])
        lesion, lung = _masks_of(masks, row)
        with cell:
            _map_panel(run, images[row], name, {"heatmap": maps[row]},
                       title=f"{k + 1}. {g['true_class']} → {g['pred_class']}", class_name=g["pred_class"],
                       layer=layer, threshold=threshold, opacity=opacity, lesion=lesion, lung=lung, height=280,
                       key=f"support_gallery_{k}", colorbar=False)
            st.caption(f"`{g['file']}`: {g['reason']}.")
    st.caption(
        f"{_label(name)} of the predicted class. Ranked by badness = the probability given to a wrong class (0 when "
        "correct) + the share of the support outside the lesion or the lungs when it exceeds the 'mostly' cut. Lee "
        "et al. (figs. 9-10) found foreign bodies (ports, pacemakers) behind wrong and right-for-the-wrong-reason "
        "calls; Ouyang et al. (fig. 6) show maps lit outside the lungs in failures. " + OUTLINES_CAPTION)


def _depths_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float, opacity: float) -> None:
    rows, classes = split_rows(run, "test"), run.classes
    c1, c2, c3 = st.columns([2, 1, 1])
    row = c1.selectbox("Test image", rows.index.tolist(), format_func=lambda i: image_label(rows.loc[i], classes),
                       key="support_depth_image")
    name = c2.selectbox("Method", SPLIT_METHODS, format_func=_label, key="support_depth_method")
    kind = c3.radio("Explain the class", ("True", "Predicted"), horizontal=True, key="support_depth_target",
                    help="The true class shows every depth's evidence for the same class; 'predicted' each run's "
                         "own decision.")
    target = TARGETS[kind]
    masks = _masks(*_key(run))
    lesion, lung = _masks_of(masks, row)
    file = rows.loc[row, "file"]
    maps, titles, explained, empty = {}, {}, {}, []
    with st.spinner(f"{_label(name)} of the test split for {len(runs)} depth(s) (once per run, then cached)…"):
        for depth, r in sorted(runs.items()):
            other = split_rows(r, "test")
            match = np.flatnonzero(other["file"].to_numpy() == file)
            if not len(match):
                continue
            i = int(match[0])
            maps[depth] = _split_maps(*_key(r), name, target)[i]
            pred = classes[int(other.loc[i, "pred"])]
            explained[depth] = classes[int(other.loc[i, "y"])] if target == "true" else pred
            title = f"depth {depth}: {pred} ({float(other.loc[i, f'prob_{pred}']):.2f})"
            if is_empty(maps[depth][None])[0]:
                title += " · empty map"
                empty.append(depth)
            elif lesion is not None:
                title += f" · {consistency_degree(maps[depth], lesion, threshold):.0%} of lesion"
            titles[depth] = title
    if len(maps) < 2:
        st.info("Only one fine-tuning depth of this experiment is trained with this image in its test split: add "
                "depths on Home to compare them.")
    _sanity_note(run, name)
    _empty_count(len(empty), len(maps), _label(name), "across depths")
    for depth in empty:
        st.caption(f"Depth {depth}: " + empty_map_message(_label(name), explained[depth],
                                                          _layer_label(runs[depth], name, None), maps[depth]))
    strip = {d: None if d in empty else m for d, m in maps.items()}  # an empty map is said above, not drawn
    st.plotly_chart(depth_strip_figure(_test_images(*_key(run))[row], strip, titles, threshold=threshold,
                                       opacity=opacity, lesion=lesion, lung=lung),
                    width="stretch", key="support_depth_strip", config=png_config("same_image_across_depths"))
    st.caption(f"{_label(name)} of each depth's run (CAM methods on the last conv layer); panel titles give that "
               "run's prediction, its probability and, with a lesion mask, the consistency degree. "
               + OUTLINES_CAPTION)


def _unlike_note(check: dict[str, Any] | str | None) -> None:
    """Under the prediction: a warning when the upload is unlike the training data, else its distance in a caption."""
    if check is None:
        return
    if isinstance(check, str):
        st.caption(check)
        return
    level, text = unlike_message(check)
    if level == "warning":
        st.warning(text, icon=":material/warning:")
    else:
        st.caption(text)


def _diagnose_section(run: engine.Run, threshold: float, opacity: float) -> None:
    cfg = run.config
    st.markdown(f"Upload a chest X-ray or CT slice: this run's model (depth {cfg.depth}) gives its class probabilities "
                f"and shows where it looked, by {_label('gradcam')} and {_label('lime')}.")
    upload = st.file_uploader("Image (PNG, JPEG, BMP, TIFF or DICOM)", type=[s.lstrip(".") for s in IMAGE_SUFFIXES],
                              key="support_upload", max_upload_size=MAX_UPLOAD_BYTES // 2**20)
    knob, (knob_label, choices, default) = next(iter(METHODS["lime"].knobs.items()))
    n_samples = st.select_slider(knob_label, choices, value=default, key="support_upload_lime_samples",
                                 help="Perturbed images LIME scores; fewer is faster and noisier.")
    st.caption(f"At most {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_SIDE} px per side. The image is read in "
               f"memory only (nothing is saved), converted to gray and resized to {cfg.image_size} px"
               f"{' with CLAHE' if cfg.clahe else ''}, as the training images were. A research tool, not a "
               "diagnostic device.")
    if upload is None:
        return
    data = upload.getvalue()
    with st.spinner("Diagnosing and explaining the image, and comparing it with the training images (these are "
                    "summarised once per run)…"):
        result = _diagnose(run.id, run.result["finished"], hashlib.sha256(data).hexdigest(), data, upload.name,
                           n_samples)
    if isinstance(result, str):
        st.error(markdown_literal(result))  # the message holds the uploaded file's name: shown as written
        return
    image = result["image"]
    maps = {"gradcam": {"heatmap": result["gradcam"]}, "lime": result["lime"]}
    n_empty = int(sum(bool(is_empty(m["heatmap"][None])[0]) for m in maps.values()))
    _empty_count(n_empty, len(maps), "method", "of this upload")
    c1, c2, c3 = st.columns(3)
    with c1:
        st.plotly_chart(probability_figure(result["probabilities"]), width="stretch", key="support_upload_probs",
                        config=png_config("upload_probabilities"))
        _unlike_note(result.get("unlike"))
        st.plotly_chart(support_figure(image, title="Model input", height=320, legend=False), width="stretch",
                        key="support_upload_image", config=png_config("uploaded_image"))
    for column, name in zip((c2, c3), maps):
        with column:
            _map_panel(run, image, name, maps[name], title=f"{_label(name)} · {result['predicted']}",
                       class_name=result["predicted"], layer=None, threshold=threshold, opacity=opacity, lesion=None,
                       lung=None, height=420, key=f"support_upload_{name}", colorbar=name == "gradcam")
            _sanity_note(run, name)
    st.caption(f"Both maps explain the predicted class ({result['predicted']}); magenta line: support (heatmap > "
               f"{threshold:g}). " + " ".join(_note(n) for n in maps))


st.title("Support Regions")
sel, runs = require_runs("Support Regions")
depth = depth_slider(runs, key="support_depth")
run = runs[depth]
source = st.radio("Images", IMAGE_SOURCES, horizontal=True, key="support_images",
                  help="The sections that explain images (an image, consistency, gallery, across depths) work on the "
                       "run's own test split or on every image of another folder of the run's classes, read and "
                       "preprocessed as the training images were. The explanation report and Diagnose use the run.")
shown, shown_runs = run, runs  # what the image sections explain: the run's test split, or an external folder
if source == IMAGE_SOURCES[1]:
    view = external_picker(run, key="support_external")
    try:
        if view is not None:
            shown_runs = {d: ExternalRun(r, view.source, view.mapping) for d, r in runs.items()}
            shown = shown_runs[depth]
            n_left = sum(shown.left_out.values())
            st.caption(f"{len(split_rows(shown, 'test'))} images of {view.source.root} stand in for the test split"
                       + (f" ({n_left} of classes the run does not know left out)" if n_left else "") + ".")
    except engine.LungLensError as exc:
        st.error(f"This folder cannot be explained with run {run.id}: {exc}")
        view = None
    if view is None:
        shown = None
c1, c2 = st.columns(2)
threshold = c1.slider("Support threshold", 0.05, 0.95, SUPPORT_THRESHOLD, 0.05, key="support_threshold",
                      help="Pixels whose heatmap value exceeds this form the support region.")
c1.caption(f"Default {SUPPORT_THRESHOLD:g} from Wan et al. §3.5: pixels with heatmap > 0.7 are support pixels, "
           "drawn as a magenta contour.")
opacity = c2.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="support_opacity")
c2.caption(f"Run `{run.id}`: {run.config.backbone}, depth {depth}, {run.config.image_size} px, "
           f"{len(split_rows(run, 'test'))} test images.")


def _images(draw_section: Callable[[engine.Run], None]) -> Callable[[], None]:
    """A section drawn on the chosen images, or a note while no external folder is chosen."""
    def inner() -> None:
        if shown is None:
            st.info("Choose an external folder above (or switch back to this run's test split).")
        else:
            draw_section(shown)
    return inner


tabs = st.tabs(SECTIONS, key="support_section", on_change="rerun")  # only the open tab runs
draw = {
    "Explain an image": _images(lambda r: _explain_section(r, threshold, opacity)),
    "Explanation report": lambda: _report_section(run, runs, threshold),
    "Consistency degree": _images(lambda r: _consistency_section(r, shown_runs, threshold, opacity)),
    "Wrong-reason gallery": _images(lambda r: _gallery_section(r, threshold, opacity)),
    "Same image across depths": _images(lambda r: _depths_section(r, shown_runs, threshold, opacity)),
    "Diagnose a new image": lambda: _diagnose_section(run, threshold, opacity),
}
for tab, name in zip(tabs, SECTIONS):
    if tab.open:
        with tab:
            try:
                draw[name]()
            except engine.LungLensError as exc:
                where = "this folder" if shown is not run and name in EXTERNAL_SECTIONS else "this run"
                st.error(f"{name} cannot be shown for {where}: {exc}")
