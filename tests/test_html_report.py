"""The self-contained HTML report of a run (``python -m engine report``): one file that opens offline, every section,
Table 1's test ACC against scikit-learn, escaped user strings, sections without data, and the atomic CLI write."""
from __future__ import annotations

import errno
import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs
from sklearn.metrics import accuracy_score

import engine
from dashboard import html_report
from dashboard.html_report import SECTIONS, escape, html_table
from engine.explain.report import ReportSettings, method_report
from engine.report_cli import report_message, report_to_file

#: Small explanation-report settings, so that the cached row the report shows computes in seconds.
SMALL = ReportSettings(faithfulness_images=4, road_images=2, sanity_images=2, deletion_steps=8)
#: Elements that would make a browser fetch something, and the attributes that would name it.
FETCHING = {"script": ("src",), "img": ("src", "srcset"), "link": ("href",), "iframe": ("src",), "source": ("src",),
            "embed": ("src",), "object": ("data",), "audio": ("src",), "video": ("src", "poster"), "a": ("href",)}


class _Page(HTMLParser):
    """Every start tag with its attributes, the text of every heading, and each table (by id) as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.headings: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._heading: list[str] | None = None
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("h2", "h3"):
            self._heading = []
        elif tag == "table":
            self._table = dict(attrs).get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3") and self._heading is not None:
            self.headings.append("".join(self._heading))
            self._heading = None
        elif tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        for part in (self._heading, self._cell):
            if part is not None:
                part.append(data)


@pytest.fixture(scope="module")
def run(trained_selection) -> engine.Run:
    return engine.get_run(trained_selection.configs()[-1])  # the deepest depth


@pytest.fixture(scope="module")
def written(run, tmp_path_factory) -> tuple[Path, str]:
    """The report written the CLI's way, after one explanation-report row is cached; (path, text)."""
    method_report(run, "gradcam", SMALL)
    folder = tmp_path_factory.mktemp("report")
    path = report_to_file(run.id, folder / "report.html")
    return path, path.read_text(encoding="utf-8")


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_the_report_is_one_file_that_fetches_nothing(written, run):
    path, text = written
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no side files, no temporary file left
    page = _parse(text)
    for tag, attrs in page.tags:
        for attr in FETCHING.get(tag, ()):
            value = (attrs.get(attr) or "").strip().lower()
            if tag == "a":
                assert value.startswith("#"), f"a link out of the report: {value}"
            else:
                assert not value, f"<{tag} {attr}={value!r}> would be fetched"
    assert text.count(get_plotlyjs()[:120]) == 1  # plotly.js inlined, once
    assert text.count("Plotly.newPlot(") >= 10
    # Images are PNG data URIs inside the figures (first-layer filters, Grad-CAM tiles), never addresses.
    figures = text.replace("\\u002f", "/")  # Plotly's JSON writes "/" as \u002f
    sources = re.findall(r'"source":"([^"]{0,40})', figures)
    assert len(sources) >= 3 + 2 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_every_section_is_there_with_the_run_id(written, run):
    _, text = written
    page = _parse(text)
    assert [h for h in page.headings if h in SECTIONS.values()] == list(SECTIONS.values())
    assert f"<title>LungLens report · {run.id}</title>" in text
    assert page.tables["table-0"][1] == ["Run id", run.id]  # the first row of the provenance table
    assert 'class="missing"' not in text  # this run has every section's data
    report = page.tables["explanation-report"]
    # Every cached row of the run shows: the Grad-CAM row this module cached, and any other tests cached before it.
    assert report[0][0] == "Method" and "Grad-CAM" in [r[0] for r in report[1:]]


def test_table_1_gives_the_test_accuracy_of_the_predictions(written, run):
    _, text = written
    rows = run.predictions[run.predictions["split"] == "test"]
    acc = accuracy_score(rows["y"], rows["pred"])
    table = _parse(text).tables["table-1"]
    header, body = table[0], {r[0]: r[1:] for r in table[1:]}
    assert list(body) == ["LBP + SVM", "Deep features + SVM", "Fine-tuned CNN"]
    cell = body["Fine-tuned CNN"][header.index("ACC") - 1]
    assert cell.startswith(f"{acc:.3f} [")
    low, high = (float(x) for x in cell.split("[")[1].rstrip("]").split(","))
    assert low <= acc <= high


def test_user_strings_are_escaped():
    assert escape('<script>alert("x")</script> & \'y\'') == \
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#x27;y&#x27;"
    import pandas as pd

    evil = pd.DataFrame({"<b>class</b>": ["<script>alert(1)</script>"], "file": ['a"b.png']})
    out = html_table(evil)
    assert "<script>" not in out and "<b>" not in out
    assert "<th>&lt;b&gt;class&lt;/b&gt;</th>" in out
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td>" in out and "<td>a&quot;b.png</td>" in out


def test_a_section_without_its_data_says_so(run, monkeypatch):
    import engine.explain.report as explain_report
    import engine.projections as projections

    def no_features(*_args, **_kwargs):
        raise engine.DataError("the deep features of this run are not cached")

    monkeypatch.setattr(projections, "run_projection", no_features)
    monkeypatch.setattr(explain_report, "latest_method_report", lambda *_a: None)
    text = html_report.report_html(run)
    page = _parse(text)
    assert [h for h in page.headings if h in SECTIONS.values()] == list(SECTIONS.values())
    assert "The LBP projection is not available for this run: the deep features of this run are not cached" in text
    assert "No explanation report is cached for this run yet" in text
    assert "table-1" in page.tables  # the other sections are drawn as usual


def test_the_cli_writes_atomically_and_says_where(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "report.html"
    out.write_text("the previous report")

    def full_disk(_fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(html_report, "report_html", lambda run_, progress=None: f"<!DOCTYPE html>{run_.id}")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(engine.StoreError, match="is full"):
        report_to_file(run.id, out)
    assert out.read_text() == "the previous report" and [p.name for p in tmp_path.iterdir()] == ["report.html"]

    monkeypatch.undo()
    monkeypatch.setattr(html_report, "report_html", lambda run_, progress=None: f"<!DOCTYPE html>{run_.id}")
    path = report_to_file(run.id, out)
    assert path == out.resolve() and path.read_text() == f"<!DOCTYPE html>{run.id}"
    assert str(path) in report_message(run.id, path) and run.id in report_message(run.id, path)
    assert "HTML report" in capsys.readouterr().err  # the progress bar goes to stderr
    with pytest.raises(engine.ConfigError, match="is a folder"):
        report_to_file(run.id, tmp_path)
    with pytest.raises(engine.LungLensError, match="No finished run 'no-such-run'"):
        report_to_file("no-such-run", out)


def test_python_m_engine_report(run, tmp_path, monkeypatch, capsys):
    import argparse

    from engine import cli

    commands = next(a.choices for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    if "report" not in commands:
        pytest.skip("engine/cli.py has no report subcommand yet (the lead wires it)")
    monkeypatch.setattr(html_report, "report_html", lambda run_, progress=None: f"<!DOCTYPE html>{run_.id}")
    out = tmp_path / "r.html"
    assert cli.main(["report", "--run", run.id, "--out", str(out)]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    assert out.read_text() == f"<!DOCTYPE html>{run.id}"


def test_a_cancelled_report_stops_before_the_next_section(run):
    from engine.explain.report import Cancelled

    seen: list[str] = []
    asked = iter([False, False, True])
    with pytest.raises(Cancelled, match="cancelled"):
        html_report.report_html(run, progress=lambda _f, text: seen.append(text), cancelled=lambda: next(asked))
    assert seen == [f"{title} ({i} of {len(SECTIONS)})" for i, title in enumerate(list(SECTIONS.values())[:2], 1)]
