"""Support regions (Wan et al. §3.5, Cheng et al. fig. 7, Lee et al. figs. 8-10, Ouyang et al. figs. 5-6): where
the model looks by every registered explanation method, how much of the lesion that covers against baselines that
mean something, whether the maps are faithful and pass the sanity check, which decisions rest on the wrong region,
and a new image (with a warning when it is unlike the training data). The image sections work on the run's test split
or on an external folder. Methods, labels, knobs and citations all come from ``engine.explain.METHODS``; every number
comes from the engine, and what may take long runs in the background (progress, Cancel) while the page stays usable.
The section, image, methods, target, layer and threshold live in the URL, so a shared link reopens the same view.
For a 3-D CT run (Ouyang et al.) the page is a slice viewer of the test volumes with their maps by the volumetric
methods and the run's localisation in 3-D; its case, slice, planes and point live in the URL too."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

import engine
from dashboard.background import background, cached, job_panel, start
from dashboard.exports import export_name
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
    Panel,
    consistency_depth_figure,
    consistency_histogram,
    filter_test_rows,
    grid_figure,
    image_label,
    markdown_literal,
    probability_figure,
    short_name,
    unlike_message,
)
from dashboard.url_state import decode, publish, url_get, url_set, url_tabs, url_widget
from dashboard.volume_charts import DRAW, case_label, case_name, localisation_figure, localisation_table, slice_figure
from dashboard.widgets import caption, depth_slider, figure, presenter, require_runs
from engine.data.imageio import IMAGE_SUFFIXES
from engine.explain import (
    METHODS,
    SUPPORT_THRESHOLD,
    is_empty,
    run_heatmaps,
    run_image_explanation,
    run_masks,
    split_rows,
)
from engine.explain.gallery import wrong_reason_gallery
from engine.explain.methods import volume_methods
from engine.explain.report import (
    REPORT_COLUMNS,
    ReportSettings,
    best_per_column,
    cached_method_report,
    latest_method_report,
    method_reports,
    report_across_depths,
)
from engine.explain.support import (
    cam_layer_choices,
    image_scores,
    localisation_by_depth,
    localisation_view,
    row_masks,
    same_image_across_depths,
    split_images,
    target_index,
)
from engine.explain.upload import MAX_UPLOAD_BYTES, MAX_UPLOAD_SIDE, diagnose_run_upload
from engine.explain.volume import (
    PLANES,
    default_point,
    is_volume_run,
    view_spacing,
    volume_localisation_view,
    volume_maps,
    volume_masks,
)
from engine.external import ExternalRun
from engine.store import stable_hash

#: The page's sections (tabs) and their codes in the URL (``section``).
SECTIONS = {"Explain an image": "explain", "Explanation report": "report", "Consistency degree": "consistency",
            "Wrong-reason gallery": "gallery", "Same image across depths": "depths", "Diagnose a new image": "diagnose"}
#: Where the image sections' images come from; EXTERNAL_SECTIONS work on an external folder as on the test split.
IMAGE_SOURCES = ("This run's test split", "An external folder")
EXTERNAL_SECTIONS = ("Explain an image", "Consistency degree", "Wrong-reason gallery", "Same image across depths")
#: Methods offered where every test image is explained (consistency, gallery, across depths): the fast ones (seconds
#: per split; in the background when not cached). Medium and slow ones (occlusion: minutes per split on a CPU) are
#: scored by the explanation report on a sample.
SPLIT_METHODS = tuple(name for name, m in METHODS.items() if m.cost == "fast")
#: The class a map explains (URL ``target``: pred, true or a class name).
TARGETS = {"Predicted": "pred", "True": "true"}
OTHER_CLASS = "Another class"
#: Support thresholds offered (URL ``threshold``).
THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))
#: Gallery filter: both kinds, or only images classified wrongly / rightly (the value of the ``correct`` column).
GALLERY_KINDS = {"Both": None, "Misclassified (Lee fig. 9)": False, "Right for the wrong reason (Lee fig. 10)": True}
OUTLINES_CAPTION = ("Heatmaps in jet colours, red high and blue low (Wan fig. 11), on one colour scale (0 to 1) for "
                    "every map; LIME's superpixels on a red (for the class) / blue (against) scale of their weights. "
                    "Magenta line: support region (heatmap above the threshold). Green: annotated lesion. Dotted "
                    "cyan: lungs (where the data has these masks).")
#: Session-state key of the explanation-report job this session started (the job itself lives in engine.jobs).
REPORT_JOB = "support_report_job"


def _label(name: str) -> str:
    return METHODS[name].label


def _note(name: str) -> str:
    """One line on a method from the registry: label, citation, what it computes."""
    m = METHODS[name]
    return f"**{m.label}** ({m.citation}): {m.description}"


def _percent(value: Any) -> str:
    """A share as a percentage, "n/a" for NaN."""
    return "n/a" if value is None or np.isnan(value) else f"{value:.1%}"


def _masks(run: engine.Run) -> dict[str, np.ndarray]:
    """The lesion and lung masks of the run's test split (``run_masks``)."""
    return cached(run_masks, run, "test")


def _images(run: engine.Run) -> np.ndarray:
    """The run's preprocessed test images."""
    return cached(split_images, run, "test")


def _layers(run: engine.Run) -> dict[str, str]:
    """Module name -> human label of every CAM layer of the run's model, input to output."""
    return dict(cached(cam_layer_choices, run.trained_run))


def _layer_picker(run: engine.Run, key: str, column: DeltaGenerator) -> str | None:
    """A CAM layer of the run's model (URL ``layer``); None for the last one, the default (Wan et al.'s A^k)."""
    layers = _layers(run)
    names = list(layers)
    layer = url_widget(column.selectbox, "Layer (CAM methods)", names, key=key, param="layer", default=names[-1],
                       format_func=layers.get,
                       help="Wan et al. use the last convolutional layer (the default), after its ReLU: it holds the "
                            "most semantic information but is coarse. Earlier layers localise small objects (a "
                            "marker, a device) more sharply and are less class-specific.")
    return None if layer == names[-1] else layer  # the default stays implicit: its cache is shared with other views


def _layer_label(run: engine.Run, name: str, layer: str | None) -> str | None:
    """The human label of the layer a method reads (None for methods that read no layer)."""
    if not METHODS[name].uses_layer:
        return None
    layers = _layers(run)
    return layers[layer] if layer is not None else list(layers.values())[-1]


def _method_picker(key: str, column: DeltaGenerator, help: str | None = None) -> str:
    """One of the fast methods (URL ``method``)."""
    return url_widget(column.selectbox, "Method", SPLIT_METHODS, key=key, param="method", default="gradcam",
                      format_func=_label, help=help)


def _target_picker(classes: tuple[str, ...], key: str, column: DeltaGenerator, kinds: Sequence[str],
                   default: str = "Predicted", help: str | None = None) -> str | int:
    """The class to explain as the engine's target ('pred', 'true' or a class index), kept in the URL as ``target``
    (pred, true or a class name); ``kinds``: the choices offered (TARGETS' keys, OTHER_CLASS)."""
    state, code = st.session_state, url_get("target")
    if key not in state:
        if OTHER_CLASS in kinds and code in classes:
            state[key], state[f"{key}_class"] = OTHER_CLASS, code
        else:
            state[key] = decode(code, kinds, default, lambda k: TARGETS.get(k, k))
    kind = column.radio("Explain the class", kinds, horizontal=True, key=key, help=help)
    if kind != OTHER_CLASS:
        publish("target", TARGETS[kind], TARGETS[default])
        return TARGETS[kind]
    name = column.selectbox("Class to explain", classes, key=f"{key}_class")
    publish("target", name, None)
    return classes.index(name)


def _image_picker(column: DeltaGenerator, label: str, rows: pd.DataFrame, options: list[int],
                  classes: tuple[str, ...], key: str) -> int:
    """A test image among ``options`` (rows of ``split_rows``), kept in the URL as ``image`` (its file name)."""
    files = rows["file"].astype(str)
    return url_widget(column.selectbox, label, options, key=key, param="image", default=options[0], always=True,
                      encode=lambda i: files[i], format_func=lambda i: image_label(rows.loc[i], classes))


def _sanity_notes(run: engine.Run, names: Sequence[str]) -> None:
    """The methods' sanity verdicts from their newest cached report rows: a warning for each that fails, one note
    for the others."""
    # A property of the model and the method, not of the images: read from the run behind an external view.
    verdicts = {n: sanity_message(_label(n), latest_method_report(run.trained_run, n)) for n in names}
    for level, text in verdicts.values():
        if level == "warning":
            st.warning(text, icon=":material/warning:")
    passed = [text for level, text in verdicts.values() if level == "ok"]
    missing = [_label(n) for n, (level, _) in verdicts.items() if level == "missing"]
    if missing:
        passed.append(f"{', '.join(missing)}: sanity check (Adebayo et al. 2018) not computed yet; the Explanation "
                      "report tab computes it.")
    if passed:
        caption(" ".join(passed), label="Sanity check")


def _empty_count(n_empty: int, n: int, label: str, where: str) -> None:
    """Say how many of the listed maps are empty (all zero or constant); nothing when none is."""
    if n_empty:
        st.warning(f"{n_empty} of the {n} {label} maps {where} are empty (all zero or constant): the method found "
                   "no positive evidence there, so those maps have no support region. They are counted, not drawn "
                   "blank.", icon=":material/visibility_off:")


def _grid(run: engine.Run, panels: list[Panel], what: str, key: str, *, columns: int, threshold: float,
          opacity: float, panel_px: int) -> None:
    """Image panels in one figure: one colour scale and one legend below them, PNG export in the toolbar."""
    if panels:
        fig = grid_figure(panels, columns=columns, threshold=threshold, opacity=opacity, panel_px=panel_px,
                          title_size=18 if presenter() else 14)
        figure(fig, export_name(run, what), key=key)


def _split_maps(run: engine.Run, name: str, target: str | int, layer: str | None, job: str) -> np.ndarray | None:
    """Every test image's map by ``name``, from the cache or computed in the background (None while it runs)."""
    return background(run_heatmaps, run, name, "test", target, layer, reports=True, name=job,
                      label=f"{_label(name)} of every test image (depth {run.config.depth})")


# --- explain an image -----------------------------------------------------------------------------------------------

def _pick_image(rows: pd.DataFrame, classes: tuple[str, ...]) -> int | None:
    """A test image (row of ``split_rows``), filterable by true class and by correct / wrong; None if none matches."""
    c1, c2, c3 = st.columns([3, 3, 6])
    chosen = c1.pills("True class", classes, selection_mode="multi", key="support_classes",
                      help="Only images of these true classes (none chosen: every class).")
    outcome = c2.radio("Classification", OUTCOMES, horizontal=True, key="support_outcome")
    shown = filter_test_rows(rows, classes, chosen, outcome)
    if shown.empty:
        c3.info("No test image matches these filters: widen the class or classification filter.")
        return None
    return _image_picker(c3, f"Test image ({len(shown)} of {len(rows)} match)", rows, shown.index.tolist(), classes,
                         "support_image")


def _knobs(name: str, column: DeltaGenerator) -> dict[str, Any]:
    """The method's parameters from the registry's knobs (label, choices, default), rendered generically."""
    values = {}
    for knob, (label, choices, default) in METHODS[name].knobs.items():
        key = f"support_knob_{name}_{knob}"
        st.session_state.setdefault(key, default)  # a state default, not value=, so a preset value wins
        shown = label if _label(name) in label else f"{label} ({_label(name)})"
        values[knob] = column.select_slider(shown, choices, key=key)
    return values


def _pick_methods(run: engine.Run) -> tuple[list[str], str | int, str | None, dict[str, dict[str, Any]]]:
    """The chosen methods (URL ``method``), the class to explain, the CAM layer and each method's parameters."""
    names = url_widget(st.pills, "Methods", list(METHODS), key="support_methods", param="method",
                       default=["gradcam"], format_func=_label, selection_mode="multi",
                       help="Every registered explanation method (click to add or remove one); several are drawn "
                            "side by side on one colour scale.")
    c1, c2, c3 = st.columns([2, 1, 1])
    target = _target_picker(run.classes, "support_target", c1, (*TARGETS, OTHER_CLASS))
    layer = _layer_picker(run, "support_layer", c2) if any(METHODS[n].uses_layer for n in names) else None
    params: dict[str, dict[str, Any]] = {}
    for name in names:
        params[name] = _knobs(name, c3)
        if layer is not None and METHODS[name].uses_layer:
            params[name]["layer"] = layer
    return names, target, layer, params


def _method_panel(image: np.ndarray, result: dict[str, np.ndarray], title: str, lesion: np.ndarray | None,
                  lung: np.ndarray | None) -> Panel:
    """One method's panel: LIME-like results (signed superpixels) tinted red / blue, other maps in jet; an empty
    map is not drawn (the page says what it means instead)."""
    heatmap = result["heatmap"]
    if "segments" in result and "map" in result:
        return Panel(image, heatmap, lime=result, lesion=lesion, lung=lung, title=title)
    empty = bool(is_empty(heatmap[None])[0])
    return Panel(image, None if empty else heatmap, lesion=lesion, lung=lung,
                 title=title + (" · empty map" if empty else ""))


def _scores_table(scores: dict[str, dict[str, float]]) -> pd.DataFrame:
    """The engine's per-method scores as display strings, one column per method (pointing game: hit / miss)."""
    table = pd.DataFrame(scores)
    shown = table.map(_percent)
    if "pointing game" in table.index:
        shown.loc["pointing game", :] = ["n/a" if np.isnan(v) else "hit" if v else "miss"
                                         for v in table.loc["pointing game"]]
    return shown


def _explain_section(run: engine.Run, threshold: float, opacity: float) -> None:
    rows, classes = split_rows(run, "test"), run.classes
    row = _pick_image(rows, classes)
    if row is None:
        return
    names, target, layer, params = _pick_methods(run)
    image, (lesion, lung) = _images(run)[row], row_masks(_masks(run), row)
    r = rows.loc[row]
    class_name = classes[target_index(r, target)]
    panels = [Panel(image, lesion=lesion, lung=lung, title=f"Image<br>{short_name(r['file'])}")]
    scores, done = {}, []
    for name in names:
        result = background(run_image_explanation, run, row, "test", name, target, reports=True,
                            name=f"support_job_{name}", label=f"{_label(name)} of {r['file']}", **params[name])
        if result is None:
            continue  # its progress panel is drawn; the page reruns when it is in
        done.append((name, result))
        panels.append(_method_panel(image, result, f"{_label(name)}<br>explaining {class_name}", lesion, lung))
        scores[_label(name)] = cached(image_scores, result["heatmap"], lesion, lung, threshold, row)
    columns = min(len(panels), 3)
    _grid(run, panels, "support-regions", "support_grid", columns=columns, threshold=threshold, opacity=opacity,
          panel_px={1: 520, 2: 440}.get(columns, 300))
    empty = [n for n, res in done if is_empty(res["heatmap"][None])[0]]
    for name in empty:
        st.warning(empty_map_message(_label(name), class_name, _layer_label(run, name, layer),
                                     dict(done)[name]["heatmap"]), icon=":material/visibility_off:")
    if len(done) > 1:
        _empty_count(len(empty), len(done), "method", "of this image")
    _sanity_notes(run, [n for n, _ in done])
    caption(OUTLINES_CAPTION)
    with st.expander("What each method computes", expanded=len(names) <= 2 and not presenter()):
        st.markdown("\n".join(f"- {_note(n)}" for n in names) or "No method chosen.")

    left, right = st.columns(2)
    with left:
        probabilities = {c: float(r[f"prob_{c}"]) for c in classes}
        figure(probability_figure(probabilities, classes[int(r["y"])]), export_name(run, "class-probabilities"),
               key="support_probabilities")
    with right:
        if scores:
            st.dataframe(_scores_table(scores), width="stretch", key="support_scores")
            caption(f"Scores of each map at threshold {threshold:g}: consistency degree = share of the lesion "
                    "covered by support (Wan §3.5), next to support of the same area spread uniformly in the lungs "
                    "and a smooth random map; pointing game = whether the map's peak lies in the lesion; relevance "
                    "mass = share of the map's total inside the lesion (Arras et al.); support outside = share of "
                    "the support pixels outside the lesion or the lungs.", label="About these scores")


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


def _start_report(work: list[tuple[engine.Run, list[str]]], settings: ReportSettings) -> None:
    """Start (or join, when the same work is already running) the report job; this session follows it."""
    n = sum(len(m) for _, m in work)
    key = "explanation-report:" + stable_hash({"work": [(r.id, m) for r, m in work], "settings": asdict(settings)}, 16)

    def compute(progress: Callable[[float, str], None], cancelled: Callable[[], bool]) -> int:
        return method_reports(work, settings, progress=progress, cancel=cancelled)

    start(key, f"Explanation report: {n} method row(s)", compute)
    st.session_state[REPORT_JOB] = key


def _report_job() -> bool:
    """This session's report job (progress, time left and Cancel while it runs; how it ended); whether it runs."""
    key = st.session_state.get(REPORT_JOB)
    job = job_panel(key, "support_report", what="the explanation report",
                    done=lambda j: st.success(f"{j.label}: computed in {j.elapsed:.0f} s.")) if key else None
    return job is not None and job.running


def _report_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float) -> None:
    depth = run.config.depth
    sampled = [f"{m.label} ({m.cost}, {m.report_images} images)" for m in METHODS.values()
               if m.report_images is not None]
    st.session_state.setdefault("support_report_methods", list(METHODS))  # a state default: a preset value wins
    names = st.pills("Methods", list(METHODS), format_func=_label, selection_mode="multi",
                     key="support_report_methods")
    caption("Slow and medium methods are scored on a sample of the test split, the first images of a fixed seeded "
            f"order (lesion images first): {', '.join(sampled)}. The slow ones are "
            f"{', '.join(m.label for m in METHODS.values() if m.cost == 'slow')}.", label="Which images are scored")
    settings = _report_settings(threshold)
    if not names:
        st.info("Choose at least one method.")
        return
    rows = {n: cached_method_report(run, n, settings) for n in names}
    missing = [n for n, r in rows.items() if r is None]
    busy = _report_job()
    c1, c2 = st.columns(2)
    if c1.button(f"Compute ({len(missing)} of {len(names)} method(s) not cached at depth {depth})",
                 key="support_report_compute", disabled=busy or not missing, type="primary",
                 icon=":material/play_arrow:"):
        _start_report([(run, missing)], settings)
        st.rerun()
    if not missing:
        with c2:
            caption(f"Every chosen method is computed for depth {depth} (read from the run's cache).",
                    label="Cached")

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
    caption(
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
        caption("Guided backpropagation and Guided Grad-CAM were expected to fail (Adebayo et al. 2018): these "
                "are the verdicts as measured on this run.")
    empty = report[report["empty_share"] > 0]
    if len(empty):
        st.warning("Empty maps (all zero or constant) counted in the report: " + ", ".join(
            f"{r['label']} {r['empty_share']:.0%} of {r['n_images']}" for _, r in empty.iterrows()) + ".",
            icon=":material/visibility_off:")
    left, right = st.columns(2)
    with left:
        st.markdown("**Sanity check: cascading randomisation**")
        figure(sanity_figure(report), export_name(run, "sanity-check"), key="support_report_sanity")
        caption("Adebayo et al. 2018, fig. 2 style: similarity of each method's maps to the original maps as "
                "the weights are re-initialised from the classifier head down to block 1 (cumulatively). A "
                "method that explains the model falls towards 0; one that stays near 1 shows image structure.")
    with right:
        st.markdown("**Consistency degree against the support threshold**")
        figure(consistency_curve_figure(report, threshold), export_name(run, "consistency-vs-threshold"),
               key="support_report_curve")
        caption("Mean consistency degree (Wan §3.5) at thresholds 0.1 to 0.9; the dotted line is the page's "
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
            _start_report([(runs[d], m) for d, m in missing.items()], settings)
            st.rerun()
    if long.empty:
        st.info("No depth has a computed report at these settings yet.")
        return
    figure(depth_score_figure(long, score), f"explanation-scores-by-depth-{score}", key="support_report_depths")
    empty = long[(long["score"] == "empty_share") & (long["value"].astype(float) > 0)]
    if len(empty):
        caption("Empty maps by depth: " + "; ".join(f"{r['label']} at depth {r['depth']}: {r['value']:.0%}"
                                                    for _, r in empty.iterrows()) + ".")
    caption("How explanation quality changes with fine-tuning depth: each point is one depth's run scored on its "
            "own test split with the same settings (cached rows only; compute the missing depths above).")




# --- consistency degree -------------------------------------------------------------------------------------------

def _consistency_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float, opacity: float) -> None:
    masks = _masks(run)
    if not masks["has_lesion"].any():
        st.info("This data has no lesion masks (for example covidct, which has labels only), so the consistency "
                "degree cannot be measured. Lesion masks go in ROOT/masks/<class>/<same name>.png; the other "
                "sections of this page work without them.")
        return
    c1, c2 = st.columns(2)
    name = _method_picker("support_consistency_method", c1,
                          help="Only the fast methods are offered here, where every test image is explained; the "
                               "Explanation report tab scores the others (occlusion, LIME, Integrated Gradients, "
                               "...) in the background, with progress and a cancel button.")
    target = _target_picker(run.classes, "support_consistency_target", c2, tuple(TARGETS),
                            help="Wan et al. explain the model's decision (predicted). The true class asks whether "
                                 "the evidence for the right answer lies on the lesion.")
    label = _label(name)
    found = background(localisation_view, run, threshold, name, target, reports=True,
                       name="support_job_localisation",
                       label=f"Scoring {label} against the lesion masks of every test image (depth "
                             f"{run.config.depth})")
    if found is None:
        return
    df, s = found
    _sanity_notes(run, [name])
    _empty_count(s["n_empty"], s["n"], label, "of the test images with a lesion")
    cols = st.columns(4)
    cols[0].metric("Mean consistency degree", f"{s['consistency']:.1%}",
                   help=f"{label}; 95% interval {format_ci(s['consistency'], s['consistency_ci'])}; median "
                        f"{s['median']:.1%}; {s['n']} test images with a lesion mask.")
    cols[1].metric("Baseline: lungs, same area", _percent(s["lung_area_matched_baseline"]),
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
    figure(consistency_histogram(df, s, label), export_name(run, f"consistency-{name}"),
           key="support_consistency_histogram")
    caption(
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


def _top_consistency(run: engine.Run, df: pd.DataFrame, name: str, target: str | int, threshold: float,
                     opacity: float, masks: dict[str, np.ndarray]) -> None:
    """The six images of highest consistency with their maps (Wan fig. 12)."""
    st.markdown("**Highest consistency degree (Wan et al., fig. 12)**")
    top = df.sort_values("consistency", ascending=False, kind="stable").head(6)
    maps = _split_maps(run, name, target, None, "support_job_top")
    if maps is None:
        return
    images = _images(run)
    _empty_count(int(top["empty"].sum()), len(top), _label(name), "shown here")
    panels = []
    for _, r in top.iterrows():
        row = int(r["row"])
        lesion, lung = row_masks(masks, row)
        heatmap = None if r["empty"] else maps[row]
        panels.append(Panel(images[row], heatmap, lesion=lesion, lung=lung,
                            title=f"{r['consistency']:.0%} of the lesion<br>{short_name(r['file'])}"))
    _grid(run, panels, f"highest-consistency-{name}", "support_top_grid", columns=3, threshold=threshold,
          opacity=opacity, panel_px=300)
    caption(OUTLINES_CAPTION)


def _consistency_by_depth(runs: dict[int, engine.Run], threshold: float, name: str, target: str | int) -> None:
    st.markdown("**Consistency degree vs fine-tuning depth**")
    table = background(localisation_by_depth, runs, threshold, name, target, reports=True,
                       name="support_job_consistency_depths",
                       label=f"Scoring {_label(name)} for {len(runs)} trained depth(s)")
    if table is None:
        return
    if len(table) < 2:
        st.info("Only one fine-tuning depth is trained for this experiment: add depths on Home to compare them.")
    figure(consistency_depth_figure(table), f"consistency-by-depth-{name}", key="support_consistency_depth")
    empties = [f"depth {r['depth']}: {r['n_empty']} of {r['n']}" for _, r in table.iterrows() if r["n_empty"]]
    if empties:
        caption(f"Empty {_label(name)} maps (all zero or constant) among the images with a lesion: "
                + "; ".join(empties) + ".", label="Empty maps")
    caption(f"One point per trained depth, each run scored on its own test split with {_label(name)} at threshold "
            f"{threshold:g}. Does fine-tuning more blocks move the support onto the lesions (Lee et al. compare "
            "depths by accuracy only)?")


# --- gallery, depths, upload ----------------------------------------------------------------------------------------

def _gallery_section(run: engine.Run, threshold: float, opacity: float) -> None:
    masks = _masks(run)
    c1, c2, c3, c4 = st.columns(4)
    kind = c1.radio("Show", tuple(GALLERY_KINDS), key="support_gallery_kind")
    name = _method_picker("support_gallery_method", c2)
    layer = _layer_picker(run, "support_gallery_layer", c2) if METHODS[name].uses_layer else None
    mostly = c3.slider("Mostly-outside cut", 0.3, 0.9, 0.5, 0.05, key="support_mostly",
                       help="An image's support lies 'mostly outside' the lesion or the lungs when more than this "
                            "share of its support pixels does.")
    n_show = c4.slider("Images shown", 4, 32, 12, 4, key="support_gallery_size")
    gallery = background(wrong_reason_gallery, run, threshold, name, mostly=mostly, reports=True,
                         name="support_job_gallery", label=f"Explaining every test image with {_label(name)}",
                         **({"layer": layer} if layer is not None else {}))
    if gallery is None:
        return
    n_test = len(split_rows(run, "test"))
    _sanity_notes(run, [name])
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
    maps = _split_maps(run, name, "pred", layer, "support_job_gallery_maps")
    if maps is None:
        return
    shown = gallery.head(n_show).reset_index(drop=True)
    images, rows = _images(run), shown["row"].to_numpy(int)
    empty = is_empty(maps[rows])
    _empty_count(int(empty.sum()), len(shown), _label(name), "shown here")
    panels = []
    for k, g in shown.iterrows():
        lesion, lung = row_masks(masks, int(g["row"]))
        title = f"{k + 1}. {g['true_class']} → {g['pred_class']}<br>{short_name(g['file'])}"
        panels.append(Panel(images[int(g["row"])], None if empty[k] else maps[int(g["row"])], lesion=lesion,
                            lung=lung, title=title))
    _grid(run, panels, f"wrong-reason-gallery-{name}", "support_gallery_grid", columns=4, threshold=threshold,
          opacity=opacity, panel_px=220)
    st.dataframe(shown.assign(**{"#": shown.index + 1})[["#", "file", "true_class", "pred_class", "p_pred", "reason"]],
                 hide_index=True, width="stretch", key="support_gallery_table",
                 column_config={"p_pred": st.column_config.NumberColumn("p(predicted)", format="%.2f"),
                                "true_class": "true", "pred_class": "predicted",
                                "reason": st.column_config.TextColumn("reason", width="large")})
    caption(
        f"Worst first; showing {len(shown)} of {len(gallery)}. {_label(name)} of the predicted class. Ranked by "
        "badness = the probability given to a wrong class (0 when correct) + the share of the support outside the "
        "lesion or the lungs when it exceeds the 'mostly' cut. Lee et al. (figs. 9-10) found foreign bodies (ports, "
        "pacemakers) behind wrong and right-for-the-wrong-reason calls; Ouyang et al. (fig. 6) show maps lit "
        "outside the lungs in failures. " + OUTLINES_CAPTION)


def _depth_title(r: pd.Series) -> str:
    """A panel title of two short lines: the depth, then its prediction and the consistency degree."""
    second = f"{r['predicted']} {r['probability']:.2f}"
    if r["empty"]:
        second += " · empty map"
    elif not np.isnan(r["consistency"]):
        second += f" · {r['consistency']:.0%} of lesion"
    return f"Depth {r['depth']}<br>{second}"


def _depths_section(run: engine.Run, runs: dict[int, engine.Run], threshold: float, opacity: float) -> None:
    rows, classes = split_rows(run, "test"), run.classes
    c1, c2, c3 = st.columns([3, 1, 1])
    row = _image_picker(c1, "Test image", rows, rows.index.tolist(), classes, "support_depth_image")
    name = _method_picker("support_depth_method", c2)
    target = _target_picker(classes, "support_depth_target", c3, ("True", "Predicted"), default="True",
                            help="The true class shows every depth's evidence for the same class; 'predicted' each "
                                 "run's own decision.")
    file = str(rows.loc[row, "file"])
    found = background(same_image_across_depths, runs, file, name, target, threshold, reports=True,
                       name="support_job_depths", label=f"{_label(name)} of the test split for {len(runs)} depth(s)")
    if found is None:
        return
    table, maps = found
    if len(table) < 2:
        st.info("Only one fine-tuning depth of this experiment is trained with this image in its test split: add "
                "depths on Home to compare them.")
    empty = table[table["empty"]]
    _empty_count(len(empty), len(table), _label(name), "across depths")
    for _, r in empty.iterrows():
        caption(f"Depth {r['depth']}: " + empty_map_message(_label(name), r["explained"],
                                                            _layer_label(runs[r["depth"]], name, None),
                                                            maps[r["depth"]]), label=f"Depth {r['depth']}: empty map")
    lesion, lung = row_masks(_masks(run), row)
    image = _images(run)[row]
    panels = [Panel(image, None if r["empty"] else maps[r["depth"]], lesion=lesion, lung=lung, title=_depth_title(r))
              for _, r in table.iterrows()]
    _grid(run, panels, f"same-image-across-depths-{name}", "support_depth_strip", columns=min(len(panels), 4),
          threshold=threshold, opacity=opacity, panel_px={1: 480, 2: 440, 3: 300}.get(len(panels), 220))
    st.dataframe(table.drop(columns="row"), hide_index=True, width="stretch", key="support_depth_table",
                 column_config={"probability": st.column_config.NumberColumn("p(predicted)", format="%.2f"),
                                "explained": "class explained",
                                "consistency": st.column_config.NumberColumn("consistency", format="percent")})
    caption(f"{_label(name)} of each depth's run (CAM methods on the last conv layer) for the same test image "
            f"`{file}`; panel titles give that run's prediction, its probability and, with a lesion mask, the "
            "consistency degree (the table repeats them). " + OUTLINES_CAPTION)
    _sanity_notes(run, [name])


def _unlike_note(check: dict[str, Any] | str | None) -> None:
    """Under the prediction: a warning when the upload is unlike the training data, else its distance in a caption."""
    if check is None:
        return
    if isinstance(check, str):
        caption(check, label="Like the training data?")
        return
    level, text = unlike_message(check)
    if level == "warning":
        st.warning(text, icon=":material/warning:")
    else:
        caption(text, label="Like the training data?")


def _diagnose_section(run: engine.Run, threshold: float, opacity: float) -> None:
    cfg = run.config
    st.markdown(f"Upload a chest X-ray or CT slice: this run's model (depth {cfg.depth}) gives its class probabilities "
                f"and shows where it looked, by {_label('gradcam')} and {_label('lime')}.")
    upload = st.file_uploader("Image (PNG, JPEG, BMP, TIFF or DICOM)", type=[s.lstrip(".") for s in IMAGE_SUFFIXES],
                              key="support_upload", max_upload_size=MAX_UPLOAD_BYTES // 2**20)
    knob, (knob_label, choices, default) = next(iter(METHODS["lime"].knobs.items()))
    n_samples = st.select_slider(knob_label, choices, value=default, key="support_upload_lime_samples",
                                 help="Perturbed images LIME scores; fewer is faster and noisier.")
    caption(f"At most {MAX_UPLOAD_BYTES // 2**20} MB and {MAX_UPLOAD_SIDE} px per side. The image is read in memory "
            f"only (nothing is saved), converted to gray and resized to {cfg.image_size} px"
            f"{' with CLAHE' if cfg.clahe else ''}, as the training images were. A research tool, not a diagnostic "
            "device.", label="About uploads")
    if upload is None:
        return
    result = background(diagnose_run_upload, run, np.frombuffer(upload.getvalue(), np.uint8), upload.name,
                        n_samples, reports=True, name="support_job_upload",
                        label=f"Diagnosing and explaining {upload.name}")
    if result is None:
        return
    if isinstance(result, str):
        st.error(markdown_literal(result))  # the message holds the uploaded file's name: shown as written
        return
    image, predicted = result["image"], result["predicted"]
    maps = {"gradcam": {"heatmap": result["gradcam"]}, "lime": result["lime"]}
    n_empty = int(sum(bool(is_empty(m["heatmap"][None])[0]) for m in maps.values()))
    _empty_count(n_empty, len(maps), "method", "of this upload")
    left, right = st.columns([1, 2])
    with left:
        figure(probability_figure(result["probabilities"]), export_name(run, "upload-probabilities"),
               key="support_upload_probs")
        _unlike_note(result.get("unlike"))
    with right:
        panels = [Panel(image, title="Model input<br>(as preprocessed)")]
        panels += [_method_panel(image, maps[n], f"{_label(n)}<br>explaining {predicted}", None, None) for n in maps]
        _grid(run, panels, "upload-explained", "support_upload_grid", columns=3, threshold=threshold,
              opacity=opacity, panel_px=200)
        _sanity_notes(run, list(maps))
    caption(f"Both maps explain the predicted class ({predicted}); magenta line: support (heatmap > {threshold:g}). "
            + " ".join(_note(n) for n in maps))


# --- 3-D CT runs: the slice viewer ---------------------------------------------------------------------------------

#: Methods that explain volumes, from the registry (URL ``method``).
VOLUME_METHODS = volume_methods()
#: The views the slice viewer draws (URL ``plane``: axial or all).
VIEW_CHOICES = {"axial": ("axial",), "all": tuple(PLANES)}
VIEW_LABELS = {"axial": "Axial", "all": "Axial, coronal and sagittal"}
#: Per-case state and URL parameters of the slice viewer's point, forgotten when another case is picked.
POINT_WIDGETS = (("support_volume_slice", "slice"), ("support_volume_row", "row"), ("support_volume_column", "column"))
NOT_IN_3D = ("This run explains 3-D CT volumes: the sections for 2-D images (Explain an image with every method, the "
             "explanation report with faithfulness and sanity checks, the wrong-reason gallery, the same image across "
             "depths, Diagnose a new image, external folders) do not apply to volumes; the slice viewer below shows "
             f"the volumetric methods ({', '.join(_label(n) for n in VOLUME_METHODS)}) and their localisation in 3-D.")


def _volume_case(column: DeltaGenerator, rows: pd.DataFrame, classes: tuple[str, ...]) -> int:
    """A test volume (row of ``split_rows``), kept in the URL as ``case`` (its file name); a new case forgets the
    previous one's slice and point."""
    files = rows["file"].astype(str)
    row = url_widget(column.selectbox, f"Test volume ({len(rows)})", rows.index.tolist(), key="support_volume_case",
                     param="case", default=0, always=True, encode=lambda i: files[i],
                     format_func=lambda i: case_label(rows.loc[i], classes))
    state = st.session_state
    if state.get("support_volume_seen") not in (None, files[row]):
        for key, param in POINT_WIDGETS:
            state.pop(key, None)
            url_set(param, None)
    state["support_volume_seen"] = files[row]
    return row


def _volume_point(shape: tuple[int, ...], lesion: np.ndarray | None, three: bool) -> tuple[int, int, int]:
    """The viewed point (slice, row, column): an axial slider (default: the slice with most lesion) and, with three
    views, row and column sliders (default: the lesion's busiest row and column in that slice); 1-based on screen."""
    defaults = default_point(lesion, shape)
    labels = ("Axial slice (superior to inferior)", "Coronal row (anterior to posterior)",
              "Sagittal column (patient's right to left)")
    columns = st.columns(3 if three else 1)
    point = []
    for k, ((key, param), label) in enumerate(zip(POINT_WIDGETS, labels)):
        if k and not three:
            point.append(defaults[k])
            continue
        n = int(shape[k])
        value = url_widget(columns[k].slider, label, range(1, n + 1), key=key, param=param, default=defaults[k] + 1,
                           min_value=1, max_value=n,
                           help="The default is the one with the most lesion voxels." if k == 0 else None)
        point.append(int(value) - 1)
    return point[0], point[1], point[2]


def _volume_scores(table: pd.DataFrame, row: int, label: str) -> None:
    """The case's consistency degree, pointing game and relevance mass, each with its lung baseline."""
    r = table[table["row"] == row]
    if r.empty or np.isnan(r.iloc[0]["consistency"]):
        st.info("This volume has no lesion mask: its map cannot be scored against a lesion.")
        return
    r = r.iloc[0]
    cols = st.columns(4)
    cols[0].metric("Consistency degree", _percent(r["consistency"]),
                   help=f"Share of the lesion's voxels where {label} > the threshold (Wan §3.5, in 3-D). Support of "
                        "the same volume spread uniformly in the lungs covers "
                        f"{_percent(r['lung_area_matched_baseline'])}; a smooth random map "
                        f"{_percent(r['random_baseline'])}.")
    cols[1].metric("Pointing game", _percent(r["pointing_game"]),
                   help="Share of the map's maximal voxels inside the lesion (1 for a unique peak in it). A peak "
                        f"placed uniformly in the lungs hits with probability {_percent(r['lung_pointing_baseline'])}.")
    cols[2].metric("Relevance mass", _percent(r["relevance_mass"]),
                   help="Share of the map's total inside the lesion (Arras et al.); a map uniform over the lungs "
                        f"puts {_percent(r['lung_relevance_mass_baseline'])} there.")
    cols[3].metric("Infection ratio", _percent(r["infection_ratio"]),
                   help="Lesion volume inside the lungs / lung volume (Ouyang et al.'s size groups: < 0.5%, "
                        "0.5-3%, > 3%).")
    caption(f"This volume's support covers {_percent(r['support_volume'])} of the volume and its lesion "
            f"{_percent(r['lesion_volume'])}. Baselines, in the order consistency / pointing game / relevance mass: "
            f"support of the same size uniform in the lungs {_percent(r['lung_area_matched_baseline'])} / "
            f"{_percent(r['lung_pointing_baseline'])} / {_percent(r['lung_relevance_mass_baseline'])} (the first "
            f"reaches 100% once the support is as large as the lungs); a smooth random map "
            f"{_percent(r['random_baseline'])} / {_percent(r['random_pointing_game'])} / "
            f"{_percent(r['random_relevance_mass'])}.", label="Baselines of this volume")


def _volume_run_localisation(run: engine.Run, summary: pd.DataFrame, name: str, threshold: float) -> None:
    """The run's localisation in 3-D: means with 95% intervals against the baselines, as a table and a chart."""
    st.markdown(f"**Localisation of {_label(name)} in 3-D over the test volumes** (mean and 95% bootstrap interval)")
    st.dataframe(localisation_table(summary), hide_index=True, width="stretch", key="support_volume_table")
    figure(localisation_figure(summary, _label(name)), export_name(run, f"volume-localisation-{name}"),
           key="support_volume_localisation")
    caption(f"Consistency degree: share of the lesion's voxels where the map exceeds {threshold:g} (Wan §3.5, in "
            "3-D); pointing game: share of the map's maximal voxels inside the lesion; relevance mass: share of the "
            "map's total inside the lesion. Baselines scored the same way: support of the same volume spread "
            "uniformly inside the lungs (its expectation), and a smooth random map (blurred noise, seeded per "
            "volume). Beats chance: the mean is above both baselines' and the paired 95% intervals do not overlap.")


def _volume_page(run: engine.Run, threshold: float, opacity: float) -> None:
    """Slice viewer of a 3-D run's test volumes with their maps, the case's scores and the run's localisation."""
    caption(NOT_IN_3D, label="Sections for 2-D images")
    rows, classes = split_rows(run, "test"), run.classes
    if rows.empty:
        st.info("This run has no test volumes.")
        return
    c1, c2, c3 = st.columns([3, 2, 2])
    row = _volume_case(c1, rows, classes)
    name = url_widget(c2.selectbox, "Method", VOLUME_METHODS, key="support_volume_method", param="method",
                      default=VOLUME_METHODS[0], format_func=_label,
                      help="\n\n".join(_note(n) for n in VOLUME_METHODS))
    draw = url_widget(c3.radio, "Draw", list(DRAW), key="support_volume_draw", param="draw", default=next(iter(DRAW)),
                      encode=DRAW.get, horizontal=True)
    views = url_widget(st.radio, "Views", list(VIEW_CHOICES), key="support_volume_planes", param="plane",
                       default="axial", format_func=VIEW_LABELS.get, horizontal=True,
                       help="Coronal and sagittal sections through the same point as the axial slice.")
    masks = background(volume_masks, run, "test", reports=True, name="support_job_volume_masks",
                       label="Reading the lesion and lung masks of the test volumes")
    if masks is None:
        return
    lesion = masks["lesion"][row] if masks["has_lesion"][row] else None
    lung = masks["lung"][row] if masks["has_lung"][row] and masks["lung"][row].any() else None
    image = _images(run)[row]
    point = _volume_point(image.shape, lesion, views == "all")
    maps = background(volume_maps, run, name, [row], reports=True, name="support_job_volume_maps",
                      label=f"{_label(name)} of every test volume (depth {run.config.depth})")
    heatmap = None if maps is None or is_empty(maps)[0] else maps[0]
    if maps is not None and heatmap is None:
        st.warning(f"The {_label(name)} map of this volume is empty (all zero or constant): the method found no "
                   "positive evidence for the predicted class, so there is no support region to draw.",
                   icon=":material/visibility_off:")
    r = rows.loc[row]
    three = VIEW_CHOICES[views]
    fig = slice_figure(image, heatmap, lesion, lung, point, three, spacing=view_spacing(run), threshold=threshold,
                       opacity=opacity, draw=DRAW[draw], panel_px=520 if len(three) == 1 else 360,
                       title_size=18 if presenter() else 14)
    figure(fig, export_name(run, f"volume-{name}-{case_name(r['file'])}"), key="support_volume_views")
    caption(f"{_label(name)} of the predicted class ({classes[int(r['pred'])]}) on the CT in gray, on the page's "
            f"one colour scale (0 to 1). Magenta line: support (map > {threshold:g}). Green: annotated lesion. Dotted "
            "cyan: lungs. Dotted white lines: where the other views cut. Coronal and sagittal views are drawn at "
            "the volumes' voxel spacing. " + _note(name))
    found = background(volume_localisation_view, run, name, "test", threshold=threshold, reports=True,
                       name="support_job_volume_localisation",
                       label=f"Scoring {_label(name)} against the lesion masks of every test volume")
    if found is None:
        return
    table, summary = found
    _volume_scores(table, row, _label(name))
    _volume_run_localisation(run, summary, name, threshold)
    with st.expander("Per test volume"):
        st.dataframe(table.drop(columns=["row", "y", "pred"]), hide_index=True, width="stretch",
                     key="support_volume_cases",
                     column_config={c: st.column_config.NumberColumn(format="percent") for c in table.columns
                                    if table[c].dtype == float})


# --- the page -------------------------------------------------------------------------------------------------------

def _section() -> tuple[DeltaGenerator, str]:
    """The open tab, kept in the URL as ``section`` (its code), and its name; only that tab's content runs."""
    tabs, code = url_tabs({c: name for name, c in SECTIONS.items()}, "support_section")
    return tabs[code], next(name for name, c in SECTIONS.items() if c == code)


def _display_settings(run: engine.Run, items: str) -> tuple[float, float]:
    """The support threshold (URL ``threshold``) and the overlay opacity, with a line on the run."""
    c1, c2 = st.columns(2)
    threshold = url_widget(c1.select_slider, "Support threshold", THRESHOLDS, key="support_threshold",
                           param="threshold", default=SUPPORT_THRESHOLD, encode=lambda v: f"{v:g}",
                           format_func=lambda v: f"{v:g}",
                           help=f"Pixels whose heatmap value exceeds this form the support region, drawn as a "
                                f"magenta contour. Default {SUPPORT_THRESHOLD:g} from Wan et al. §3.5: pixels with "
                                "heatmap > 0.7 are support pixels.")
    opacity = c2.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="support_opacity")
    c2.caption(f"Run `{run.id}`: {run.config.backbone}, depth {run.config.depth}, {run.config.image_size} px, "
               f"{len(split_rows(run, 'test'))} test {items}.")
    return threshold, opacity


st.title("Support Regions")
sel, runs = require_runs("Support Regions")
depth = depth_slider(runs, key="support_depth")
run = runs[depth]
if is_volume_run(run):
    try:
        _volume_page(run, *_display_settings(run, "volumes"))
    except engine.LungLensError as exc:
        st.error(f"The slice viewer cannot be shown for this run: {exc}")
    st.stop()
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
threshold, opacity = _display_settings(run, "images")


def _on_images(draw_section: Callable[[engine.Run], None]) -> Callable[[], None]:
    """A section drawn on the chosen images, or a note while no external folder is chosen."""
    def inner() -> None:
        if shown is None:
            st.info("Choose an external folder above (or switch back to this run's test split).")
        else:
            draw_section(shown)
    return inner


draw = {
    "Explain an image": _on_images(lambda r: _explain_section(r, threshold, opacity)),
    "Explanation report": lambda: _report_section(run, runs, threshold),
    "Consistency degree": _on_images(lambda r: _consistency_section(r, shown_runs, threshold, opacity)),
    "Wrong-reason gallery": _on_images(lambda r: _gallery_section(r, threshold, opacity)),
    "Same image across depths": _on_images(lambda r: _depths_section(r, shown_runs, threshold, opacity)),
    "Diagnose a new image": lambda: _diagnose_section(run, threshold, opacity),
}
tab, name = _section()
with tab:
    try:
        draw[name]()
    except engine.LungLensError as exc:
        where = "this folder" if shown is not run and name in EXTERNAL_SECTIONS else "this run"
        st.error(f"{name} cannot be shown for {where}: {exc}")
