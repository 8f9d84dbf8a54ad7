"""``python -m engine explain``: the overlay of one explanation method for one image file."""
from __future__ import annotations

from pathlib import Path

from .data.imageio import read_image
from .data.transforms import preprocess
from .explain.overlay import write_overlay
from .runs import load_run


def explain_to_file(run_id: str, method: str, image: Path, out: Path, *, target: str | None = None) -> dict:
    """Explain ``image`` with run ``run_id``'s model and write the overlay to ``out``; returns the explanation."""
    run = load_run(run_id)
    cfg = run.config
    pixels = preprocess(read_image(image), cfg.image_size, clahe=cfg.clahe)
    return write_overlay(run.load_model(), pixels, method, out, classes=run.classes, target=target)
