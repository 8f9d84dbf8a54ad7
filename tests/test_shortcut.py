"""The shortcut-marker comparison: where a plain and an attention-trained model put their support."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import engine
from engine.data.imageio import read_image
from engine.explain.runs_explain import run_heatmaps, split_rows
from engine.shortcut import marker_masks, support_comparison, support_on_marker

TINY_MARKED = dict(data="builtin", builtin_per_class=20, confounder_prob=0.95, backbone="resnet18", init="scratch",
                   image_size=64, epochs=1, patience=0, batch_size=16, lr=1e-3)


@pytest.fixture(scope="module")
def marked_runs():
    plain = engine.train_run(engine.RunConfig(**TINY_MARKED))
    attended = engine.train_run(engine.RunConfig(**TINY_MARKED, attention=True))
    return {"plain": plain, "attention": attended}


def test_support_on_marker_by_hand():
    maps = np.zeros((2, 4, 4))
    maps[0, 0, :] = 1.0            # support: the top row (4 pixels), 2 of them on the marker
    box = np.zeros((2, 4, 4), dtype=bool)
    box[0, 0:2, 0:2] = True
    got = support_on_marker(maps, box, 0.7)
    assert got[0] == pytest.approx(0.5) and np.isnan(got[1])  # no marker in image 2: undefined


def test_marker_masks_cover_the_bright_tag(marked_runs):
    run = marked_runs["plain"]
    masks = marker_masks(run)
    rows = split_rows(run, "test")
    manifest = pd.read_csv(run.dataset().root / "manifest.csv", keep_default_na=False).set_index("file")
    marked = manifest.loc[rows["file"], "marker_box"].to_numpy() != ""
    assert np.array_equal(masks.any(axis=(1, 2)), marked) and marked.any()
    for i in np.flatnonzero(marked):
        x0, y0, w, h = (int(v) for v in manifest.loc[rows["file"].iloc[i], "marker_box"].split())
        film = read_image(rows["path"].iloc[i])
        assert np.median(film[y0 : y0 + h, x0 : x0 + w]) > 0.9  # the box is (x, y, width, height) of the white tag
        scale = 64 / film.shape[0]
        ys, xs = np.nonzero(masks[i])
        assert (ys.min(), xs.min()) == (int(y0 * scale), int(x0 * scale))
        assert (ys.max() + 1, xs.max() + 1) == (int(np.ceil((y0 + h) * scale)), int(np.ceil((x0 + w) * scale)))


def test_support_comparison_reads_the_maps(marked_runs):
    table = support_comparison(marked_runs).set_index("model")
    assert list(table.index) == ["plain", "attention"]
    for name, run in marked_runs.items():
        maps, masks = run_heatmaps(run, "gradcam", "test", "pred"), marker_masks(run)
        on = [((m > 0.7) & b).sum() / (m > 0.7).sum() for m, b in zip(maps, masks) if b.any() and (m > 0.7).any()]
        assert table.loc[name, "on_marker"] == pytest.approx(np.mean(on))
        rows = split_rows(run, "test")
        assert table.loc[name, "test_acc"] == pytest.approx((rows["y"] == rows["pred"]).mean())
        assert table.loc[name, "consistency_lo"] <= table.loc[name, "consistency"] <= table.loc[name, "consistency_hi"]
