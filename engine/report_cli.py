"""``python -m engine report``: one self-contained HTML report of a run, drawn with the dashboard's figures."""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from .errors import ConfigError
from .runs import load_run


def report_to_file(run_id: str, out: Path) -> Path:
    """Write run ``run_id``'s HTML report to ``out`` atomically (a progress bar on stderr); returns its full path."""
    run = load_run(run_id)
    try:
        # Imported here: the dashboard package loads Plotly and Streamlit, which no other command needs.
        from dashboard.html_report import write_report
    except ImportError as exc:
        raise ConfigError(f"The HTML report is drawn by LungLens's dashboard package, which cannot be imported "
                          f"({exc}): run the command from the repository's folder, or install LungLens with "
                          "`pip install -e .` and its requirements.") from None
    with tqdm(total=1000, desc="HTML report", unit="‰", file=sys.stderr, dynamic_ncols=True) as bar:
        def progress(fraction: float, text: str) -> None:
            bar.n = int(fraction * 1000)
            bar.set_postfix_str(text, refresh=True)

        return write_report(run, Path(out), progress)


def report_message(run_id: str, path: Path) -> str:
    """What the command prints when the report is written: where, and how big."""
    size = Path(path).stat().st_size / 1e6
    return f"Wrote the HTML report of run {run_id} to {path} ({size:.1f} MB); it opens offline in any browser."
