"""The Performance page's "Calibration" and "Operating point" sections for one run (numbers from engine.calibration)."""
from __future__ import annotations

import math
from typing import Any

import streamlit as st

import engine
from engine.calibration import (
    THRESHOLD_PRESETS,
    run_calibration,
    run_operating_point,
    run_temperature_fit,
    run_threshold,
)

from .background import cached
from .calibration_charts import calibration_table, operating_table, prevalence_figure, reliability_figure
from .exports import csv_button, export_name
from .url_state import flag, publish, url_get, url_widget
from .widgets import caption, figure

CUSTOM = "custom"
#: The threshold radio's options: the engine's presets, then a threshold set by hand.
THRESHOLD_CHOICES = {**THRESHOLD_PRESETS, CUSTOM: "Custom"}
TEMPERATURE_KEY, PRESET_KEY, THRESHOLD_KEY = "calibration_temperature", "calibration_preset", "calibration_threshold"
DEFAULT_THRESHOLD = 0.5
#: The URL parameter of a threshold set by hand.
CUTOFF_PARAM = "cutoff"
_FORMAT = {k: st.column_config.NumberColumn(format="%.3f")
           for k in ("share positive", "ECE", "Brier", "ECE after T", "Brier after T", "sensitivity", "specificity",
                     "PPV", "NPV")}
#: The calibration table sits in half the page: short headers (the full name in each one's tooltip), so that all
#: seven columns fit without scrolling.
_NARROW = {k: st.column_config.NumberColumn(label, format="%.3f", help=k) for k, label in (
    ("share positive", "positive"), ("ECE", "ECE"), ("Brier", "Brier"), ("ECE after T", "ECE (T)"),
    ("Brier after T", "Brier (T)"))}


def _value(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _code(threshold: float) -> str:
    """A threshold as a URL code: three decimals."""
    return f"{threshold:.3f}"


def _linked_threshold() -> float:
    """The link's ``cutoff`` (a threshold set by hand), or the default when it has none or an unreadable one."""
    try:
        value = float(url_get(CUTOFF_PARAM) or DEFAULT_THRESHOLD)
    except ValueError:
        return DEFAULT_THRESHOLD
    return value if 0.0 <= value <= 1.0 else DEFAULT_THRESHOLD


def _to_custom() -> None:
    st.session_state[PRESET_KEY] = CUSTOM  # dragging the slider leaves the preset


def _calibration_part(run: engine.Run) -> bool:
    """The reliability diagram and ECE / Brier table; returns whether temperature scaling is on (and available)."""
    st.subheader("Calibration")
    scaled_on = url_widget(st.toggle, "Temperature scaling (fitted on the validation split)", (False, True),
                           key=TEMPERATURE_KEY, param="temperature", default=False, encode=flag)
    try:
        raw = cached(run_calibration, run, temperature=False)
    except engine.LungLensError as exc:
        st.error(f"The calibration of this run cannot be computed: {exc}")
        return False
    scaled, fit = None, None
    if scaled_on:
        try:
            fit = cached(run_temperature_fit, run)
            scaled = cached(run_calibration, run, temperature=True)
        except engine.LungLensError as exc:
            st.warning(f"Temperature scaling is not available for this run: {exc}")
    positive = raw["class"]
    left, right = st.columns(2)
    with left:
        figure(reliability_figure(raw, scaled), export_name(run, "reliability"), key="calibration_reliability")
        caption(f"Reliability diagram of the probability of {positive} (the positive class, one-vs-rest): the "
                f"images of each split in {raw['n_bins']} equal-width probability bins; each point is a bin's mean "
                f"predicted probability against the share of {positive} images in it (point size: images in the "
                "bin). On the dashed diagonal the probabilities are calibrated: of the images given 0.8, 80% are "
                f"{positive}.")
    with right:
        table = calibration_table(raw, scaled)
        st.dataframe(table, hide_index=True, width="stretch", column_config=_NARROW, key="calibration_table")
        csv_button(table, export_name(run, "calibration"), key="calibration_table_csv")
        caption("ECE (expected calibration error): the gap between the two axes averaged over the bins, weighted "
                "by the images in each. Brier score: the mean squared difference between the probability and the "
                "outcome (1 for a positive image, else 0). For both, 0 is perfect and lower is better. Positive: the "
                "share of positive images; (T): after temperature scaling.")
        if fit is not None and scaled is not None:
            st.metric("Temperature T", f"{fit['temperature']:.3f}",
                      help=f"Negative log-likelihood on the validation split: {fit['nll_before']:.4f} before, "
                           f"{fit['nll_after']:.4f} after.")
            bound = " (at the edge of the searched interval)" if fit["at_bound"] else ""
            caption(f"Temperature scaling (Guo et al. 2017): every logit is divided by one number T{bound}, chosen "
                    f"to minimise the negative log-likelihood on the {fit['n']} validation images only (never the "
                    "test split) and stored with the run. T > 1 softens an over-confident model, T < 1 sharpens an "
                    "under-confident one; the predicted class never changes, only the probabilities.")
    return scaled is not None


def _threshold_choice(run: engine.Run, scaled: bool) -> float | str:
    """The preset radio and threshold slider; returns the preset's name, or the threshold set by hand."""
    choice = url_widget(st.radio, "Threshold", list(THRESHOLD_CHOICES), key=PRESET_KEY, param="preset",
                        default=CUSTOM, format_func=THRESHOLD_CHOICES.get, horizontal=True)
    if choice != CUSTOM:
        try:
            # Set before the slider is drawn, so it shows the preset's threshold (for this run and probabilities).
            st.session_state[THRESHOLD_KEY] = cached(run_threshold, run, choice, temperature=scaled)
        except engine.LungLensError as exc:
            st.warning(f"{THRESHOLD_CHOICES[choice]} is not available for this run: {exc}")
            choice = CUSTOM
    positive = run.classes[run.positive]
    st.session_state.setdefault(THRESHOLD_KEY, _linked_threshold())
    threshold = st.slider(f"Threshold on the probability of {positive}", 0.0, 1.0, step=0.001, format="%.3f",
                          key=THRESHOLD_KEY, on_change=_to_custom,
                          help=f"An image is called {positive} when its probability is at least the threshold. "
                               "Moving it switches to Custom.")
    # A preset's threshold follows from the preset (in the link already); a custom one is kept as ``cutoff``.
    publish(CUTOFF_PARAM, None if choice != CUSTOM else _code(threshold), _code(DEFAULT_THRESHOLD))
    return choice if choice != CUSTOM else float(threshold)


def _operating_part(run: engine.Run, scaled: bool) -> None:
    """The threshold choice, the test split's sensitivity / specificity / PPV / NPV, and PPV / NPV vs prevalence."""
    st.subheader("Operating point")
    choice = _threshold_choice(run, scaled)
    try:
        point: dict[str, Any] = cached(run_operating_point, run, choice, temperature=scaled)
    except engine.LungLensError as exc:
        st.error(f"The operating point cannot be computed: {exc}")
        return
    positive = point["class"]
    cols = st.columns(4)
    for col, (name, label, num, den) in zip(cols, (
            ("sensitivity", "Sensitivity", "tp", ("tp", "fn")), ("specificity", "Specificity", "tn", ("tn", "fp")),
            ("ppv", "PPV", "tp", ("tp", "fp")), ("npv", "NPV", "tn", ("tn", "fn")))):
        col.metric(f"Test {label}", _value(point[name]),
                   help=f"{num.upper()} / ({' + '.join(d.upper() for d in den)}) = {point[num]} / "
                        f"{sum(point[d] for d in den)}")
    table = operating_table(point)
    st.dataframe(table, hide_index=True, width="stretch", column_config=_FORMAT, key="calibration_operating_table")
    csv_button(table, export_name(run, "operating-point"), key="calibration_operating_csv")
    where = "on the validation split, then applied unchanged to the test split" if point["preset"] else "by hand"
    scaled_note = " after temperature scaling" if scaled else ""
    caption(f"Threshold {point['threshold']:.4f} on the probability of {positive}{scaled_note}, chosen {where}. "
            f"Presets, both chosen on the validation split so that the test figures stay an honest estimate: "
            f"{THRESHOLD_PRESETS['sensitivity95']} is the highest threshold that still calls at least 95% of the "
            f"validation split's {positive} images {positive} (screening: few missed cases); "
            f"{THRESHOLD_PRESETS['youden']} maximises sensitivity + specificity - 1. TP / FP / TN / FN count the "
            f"{positive} calls one-vs-rest; n/a marks an undefined ratio.")
    if not (math.isfinite(point["sensitivity"]) and math.isfinite(point["specificity"])):
        st.info(f"PPV and NPV against prevalence need both {positive} and other images in the test split.")
        return
    figure(prevalence_figure(point["sensitivity"], point["specificity"], point["prevalence"]),
           export_name(run, "ppv-npv"), key="calibration_prevalence")
    caption(f"PPV and NPV at this threshold's test sensitivity ({_value(point['sensitivity'])}) and specificity "
            f"({_value(point['specificity'])}) for any prevalence of {positive}, by Bayes' rule: the same test "
            f"means little when a positive result is rare. The marker is the test split's own prevalence "
            f"({point['prevalence']:.3f}), where the curves give the PPV and NPV above.")


def calibration_section(run: engine.Run) -> None:
    """The "Calibration" (reliability, ECE, Brier, temperature scaling) and "Operating point" sections of a run."""
    scaled = _calibration_part(run)
    _operating_part(run, scaled)
