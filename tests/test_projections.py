"""Feature projections (PCA, kernel PCA, t-SNE), class separability, thumbnails and the cached per-run wrapper."""
from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from engine.config import RunConfig
from engine.data.transforms import to_model_input
from engine.errors import ConfigError, DataError
from engine.lbp import lbp_histograms
from engine.models.backbones import StagedNet, stage
from engine.projections import METHODS, project, run_projection, separability, thumbnail_uri


def _blobs(n: int = 60, d: int = 80, gap: float = 8.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two Gaussian clusters ``gap`` apart along every dimension, with some dimensions on very different scales."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, d)) + gap / np.sqrt(d) * y[:, None]
    return x * np.geomspace(1e-3, 1e3, d), y


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_projection_shape_and_determinism(method: str, dims: int) -> None:
    x, _ = _blobs()
    a = project(x, method, dims, seed=0)
    assert a.shape == (60, dims) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, project(x, method, dims, seed=0))


def test_pca_equals_svd_of_standardised_features_and_linear_kpca_equals_pca() -> None:
    # Three latent directions of distinct spread, so that the top three components are well defined.
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(60, 3)) * [5.0, 3.0, 2.0]) @ rng.normal(size=(3, 80)) + 0.1 * rng.normal(size=(60, 80))
    z = (x - x.mean(0)) / x.std(0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    scores = u[:, :3] * s[:3]
    for method in ("pca", "kpca-linear"):
        points = project(x, method, 3)
        signs = np.sign((points * scores).sum(0))  # components are defined up to sign
        np.testing.assert_allclose(points * signs, scores, rtol=1e-3, atol=1e-3)


def test_standardising_makes_every_dimension_count() -> None:
    # The class signal lives in a small-scale dimension; a large-scale noise dimension would dominate unscaled PCA.
    rng = np.random.default_rng(1)
    y = np.arange(80) % 2
    x = np.column_stack([y + 0.05 * rng.normal(size=80), 1000 * rng.normal(size=80)])
    first = project(x, "pca", 2)[:, 0]
    assert abs(np.corrcoef(first, y)[0, 1]) > 0.5


def test_tsne_keeps_clusters_apart() -> None:
    x, y = _blobs()
    assert separability(project(x, "tsne", 2), y)["knn_accuracy"] == 1.0


def test_projection_rejects_bad_arguments() -> None:
    x, _ = _blobs()
    with pytest.raises(ConfigError, match="umap"):
        project(x, "umap", 2)
    with pytest.raises(ConfigError, match="dims=4"):
        project(x, "pca", 4)
    with pytest.raises(DataError, match="more than 2 rows"):
        project(x[:2], "pca", 2)


def test_separability_is_perfect_on_separated_blobs_and_chance_on_shuffled_labels() -> None:
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    points = rng.normal(size=(200, 2)) + 20 * y[:, None]
    good = separability(points, y)
    assert good["silhouette"] > 0.9 and good["knn_accuracy"] == 1.0 and good["knn_folds"] == 5
    assert good["chance"] == 0.5
    shuffled = separability(points, rng.permutation(y))
    assert abs(shuffled["silhouette"]) < 0.05
    assert 0.35 < shuffled["knn_accuracy"] < 0.65


def test_separability_hand_worked_silhouette_and_small_classes() -> None:
    # Points 0, 1 (class a) and 10, 12 (class b): s(0) = 1 - 1/11, s(1) = 1 - 1/10, s(10) = 1 - 2/9.5,
    # s(12) = 1 - 2/11.5.
    points = np.array([[0.0], [1.0], [10.0], [12.0]])
    got = separability(points, np.array(["a", "a", "b", "b"]))
    expected = np.mean([1 - 1 / 11, 1 - 1 / 10, 1 - 2 / 9.5, 1 - 2 / 11.5])
    assert got["silhouette"] == pytest.approx(expected)
    assert got["knn_folds"] == 2  # two images per class: 2-fold instead of 5
    one_class = separability(points, np.zeros(4))
    assert np.isnan(one_class["silhouette"]) and np.isnan(one_class["knn_accuracy"]) and one_class["chance"] == 1.0


def test_thumbnail_is_a_decodable_png_of_the_requested_size() -> None:
    image = np.zeros((128, 128), np.uint8)
    image[:, 64:] = 200
    uri = thumbnail_uri(image, size=32)
    assert uri.startswith("data:image/png;base64,")
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (32, 32)
    assert (decoded[:, :16] == 0).all() and (decoded[:, 16:] == 200).all()


# ---- run_projection on a stand-in run --------------------------------------------------------------------------

@dataclass
class FakeRun:
    """The attributes of engine.runs.Run that the projections use (see notes/API.md)."""

    dir: Path
    predictions: pd.DataFrame
    all_images: np.ndarray
    model: StagedNet
    classes: tuple[str, ...] = ("normal", "covid")
    positive: int = 1
    config: RunConfig = field(default_factory=RunConfig)
    id: str = "fake"
    model_loads: list[int] = field(default_factory=list)

    def images(self, split: str | None = None) -> np.ndarray:
        if split is None:
            return self.all_images
        return self.all_images[(self.predictions["split"] == split).to_numpy()]

    def load_model(self) -> StagedNet:
        self.model_loads.append(1)
        return self.model

    def artifact(self, name: str) -> Path:
        return self.dir / "artifacts" / name


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRun:
    monkeypatch.setenv("LUNGLENS_HOME", str(tmp_path / "home"))
    rng = np.random.default_rng(0)
    n = 24
    y = np.arange(n) % 2
    images = rng.integers(0, 120, size=(n, 64, 64), dtype=np.uint8)
    images[y == 1, 16:48, 16:48] += 120  # a bright square marks class 1
    split = np.array(["train", "val", "test"] * (n // 3))
    pred = np.where(np.arange(n) % 5 == 0, 1 - y, y)
    preds = pd.DataFrame({"file": [f"im{i}.png" for i in range(n)], "path": [f"/data/im{i}.png" for i in range(n)],
                          "split": split, "y": y, "pred": pred})
    torch.manual_seed(0)
    model = stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 2, head_width=8).eval()
    return FakeRun(tmp_path / "run", preds, images, model)


def test_run_projection_covers_every_image_in_prediction_order(fake_run: FakeRun) -> None:
    df = run_projection(fake_run, "deep", "pca", 3)
    with torch.no_grad():
        features = fake_run.model.features(to_model_input(fake_run.all_images)).numpy()
    np.testing.assert_allclose(df[["x", "y", "z"]].to_numpy(), project(features, "pca", 3), rtol=1e-4, atol=1e-4)
    preds = fake_run.predictions
    assert list(df.columns) == ["x", "y", "z", "file", "path", "split", "label", "pred", "correct"]
    assert df["file"].tolist() == preds["file"].tolist() and df["split"].tolist() == preds["split"].tolist()
    assert df["label"].tolist() == [("normal", "covid")[v] for v in preds["y"]]
    assert df["pred"].tolist() == [("normal", "covid")[v] for v in preds["pred"]]
    np.testing.assert_array_equal(df["correct"], preds["y"] == preds["pred"])
    sep = df.attrs["separability"]
    points = df[["x", "y", "z"]].to_numpy()
    assert sep == pytest.approx(separability(points, preds["y"].to_numpy()), nan_ok=True)


def test_run_projection_lbp_and_caching(fake_run: FakeRun) -> None:
    df = run_projection(fake_run, "lbp", "kpca-rbf", 2, seed=3)
    expected = project(lbp_histograms(fake_run.all_images), "kpca-rbf", 2, seed=3)
    np.testing.assert_allclose(df[["x", "y"]].to_numpy(), expected, rtol=1e-4, atol=1e-5)
    assert fake_run.artifact("projection-lbp-kpca-rbf-2d-seed3.npz").exists()
    pd.testing.assert_frame_equal(run_projection(fake_run, "lbp", "kpca-rbf", 2, seed=3), df)

    run_projection(fake_run, "deep", "tsne", 2)
    run_projection(fake_run, "deep", "tsne", 2)
    run_projection(fake_run, "deep", "pca", 2)  # another projection of the same features: no new extraction
    assert len(fake_run.model_loads) == 2  # once for train + test (baselines' cache), once for val


def test_run_projection_rejects_unknown_feature_set(fake_run: FakeRun) -> None:
    with pytest.raises(ConfigError, match="hog"):
        run_projection(fake_run, "hog", "pca", 2)
