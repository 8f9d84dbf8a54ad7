"""Shareable state: widgets whose value lives in the URL (``st.query_params``), so a copied link reopens the same view.

A widget drawn with :func:`url_widget` starts from the URL's value when the page opens (an unknown or stale value
falls back to the default, silently) and writes its value back on every run. Parameters are short words (``depth``,
``method``, ``image``); values are the options' codes (a depth, a method name, an image's file name).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import streamlit as st

T = TypeVar("T")

#: The parameters each page owns (``st.Page.url_path`` -> names). Opening another page drops the ones it does not
#: own, so a link carries only what its page reads. The experiment (``data``, ``cfg``, ``depths``), ``depth`` and
#: ``presenter`` belong to every page.
PAGE_PARAMS: dict[str, tuple[str, ...]] = {
    "training": ("compare", "quantity", "splits", "runs", "backbones", "average", "fold_quantity", "fold_split"),
    "features": ("method", "dims", "colour", "image"),
    "performance": ("section", "metric", "normalise", "temperature", "preset", "cutoff", "external_metric",
                    "cheng_backbones", "cheng_depth", "cheng_figure", "cheng_class"),
    "layers": ("filters", "section", "view", "image", "layer", "slice", "neurons", "seed", "gray", "class", "draw",
               "maps", "show", "opacity", "tree_inputs", "tree_depth", "tree_image", "tree_leaf",
               "topo_view", "topo_channels", "topo_edges", "topo_blocks"),
    "support_regions": ("section", "image", "method", "target", "threshold", "layer", "case", "slice", "plane", "row",
                        "column", "draw"),
}
#: Widgets that take no ``options`` argument (their ``options`` are only the values a URL may set).
_NO_OPTIONS = frozenset({"toggle", "checkbox", "number_input", "slider"})
#: Separator of a multiselect's values in one parameter.
SEP = ","


def flag(value: bool) -> str:
    """A boolean as a URL code: ``1`` or ``0``."""
    return "1" if value else "0"


def url_get(param: str) -> str | None:
    """The URL's value of ``param`` (its last one when repeated), None when absent."""
    return st.query_params.get(param)


def url_set(param: str, code: str | None) -> None:
    """Write ``param=code`` into the URL (remove it for None); untouched when it already holds that."""
    if code is None:
        if param in st.query_params:
            del st.query_params[param]
    elif st.query_params.get(param) != code:
        st.query_params[param] = code


def decode(code: str | None, options: Iterable[T], default: T, encode: Callable[[T], str] = str) -> T:
    """The option whose ``encode`` is ``code``; ``default`` when ``code`` is None or names no option."""
    if code is None:
        return default
    return next((o for o in options if encode(o) == code), default)


def decode_many(code: str | None, options: Iterable[T], default: Sequence[T],
                encode: Callable[[T], str] = str) -> list[T]:
    """The options a comma-separated ``code`` names, in option order; unknown codes are dropped, and ``default``
    is returned when none is left (or ``code`` is None)."""
    if code is None:
        return list(default)
    wanted = set(code.split(SEP))
    picked = [o for o in options if encode(o) in wanted]
    return picked or list(default)


def _valid(value: Any, options: Sequence[Any], default: Any, multi: bool) -> bool:
    if multi:
        return isinstance(value, list) and all(v in options for v in value)
    return value in options or (value is None and default is None)


def url_widget(widget: Callable[..., T], label: str, options: Iterable[Any], *, key: str, param: str, default: Any,
               encode: Callable[[Any], str] = str, always: bool = False, **kwargs: Any) -> T:
    """``widget(label, options, key=key, **kwargs)`` (e.g. ``st.selectbox`` or ``col.radio``) kept in the URL as
    ``param``.

    The widget starts from the URL's value when it has no state yet (or its state is no longer an option), else from
    ``default``; a list ``default`` makes it a multiselect, written comma-separated. Its value is written back to the
    URL after drawing it, and removed while it equals ``default`` unless ``always``. ``st.toggle``, ``st.checkbox``,
    ``st.number_input`` and ``st.slider`` get no options argument: ``options`` are then only the values a URL may
    set (pass their bounds in ``kwargs``).
    Do not pass ``index`` / ``value`` / ``default`` in ``kwargs``: the state carries the starting value.
    """
    opts = list(options)
    multi = isinstance(default, (list, tuple))
    state = st.session_state
    if key not in state or not _valid(state[key], opts, default, multi):
        code = url_get(param)
        state[key] = decode_many(code, opts, default, encode) if multi else decode(code, opts, default, encode)
    args = (label,) if getattr(widget, "__name__", "") in _NO_OPTIONS else (label, opts)
    value = widget(*args, key=key, **kwargs)
    publish(param, value, default, encode, always=always)
    return value


def publish(param: str, value: Any, default: Any, encode: Callable[[Any], str] = str, *, always: bool = False) -> None:
    """Write a widget's ``value`` into the URL as ``param`` (removed while it equals ``default``, unless ``always``)."""
    if value is None or (value == default and not always):
        url_set(param, None)
    elif isinstance(value, (list, tuple)):
        url_set(param, SEP.join(encode(v) for v in value))
    else:
        url_set(param, encode(value))


def url_tabs(sections: Mapping[str, str], key: str, param: str = "section") -> tuple[dict[str, Any], str]:
    """``st.tabs`` of ``sections`` (code -> label) whose open tab is kept in the URL as ``param`` (its code); they
    rerun the page on a switch, so only the open one need be drawn. Returns the tabs by code and the open code."""
    codes, labels = list(sections), list(sections.values())
    if st.session_state.get(key) not in labels:
        st.session_state[key] = sections[decode(url_get(param), codes, codes[0])]
    tabs = st.tabs(labels, key=key, on_change="rerun")
    code = codes[labels.index(st.session_state[key])]
    publish(param, code, codes[0])
    return dict(zip(codes, tabs, strict=True)), code


def keep_page_params(page: str) -> None:
    """Drop the URL parameters of pages other than ``page`` (a ``url_path``), before it runs."""
    own = set(PAGE_PARAMS.get(page, ()))
    for param in {p for params in PAGE_PARAMS.values() for p in params} - own:
        url_set(param, None)

