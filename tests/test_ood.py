"""'Unlike the training data' (engine.ood): the distance and threshold against computations done here by hand
(Ledoit-Wolf's formula, scipy's Mahalanobis distance, np.percentile), real X-rays flagged against a phantom run while
its own test phantoms are not, and the cached reference reused, recomputed when damaged, never served damaged."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import mahalanobis

import engine
import engine.ood as ood
from engine.data.transforms import to_model_input
from engine.errors import DataError


def _ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Ledoit & Wolf (2004): mean, shrunk covariance (1 - s) S + s mu I and the shrinkage s, by hand."""
    n, p = x.shape
    mean = x.mean(axis=0)
    xc = x - mean
    s = xc.T @ xc / n
    mu = np.trace(s) / p
    delta2 = ((s - mu * np.eye(p)) ** 2).sum()
    beta2 = sum(((np.outer(r, r) - s) ** 2).sum() for r in xc) / n**2
    shrinkage = min(beta2, delta2) / delta2
    return mean, (1 - shrinkage) * s + shrinkage * mu * np.eye(p), shrinkage


def _scipy_distances(x: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    inv = np.linalg.inv(cov)
    return np.array([mahalanobis(u, mean, inv) for u in x])


@pytest.fixture(scope="module")
def run(trained_selection) -> engine.Run:
    cfg = max(trained_selection.configs(), key=lambda c: c.depth)
    return engine.get_run(cfg)


def test_distance_and_threshold_match_a_hand_computation():
    rng = np.random.default_rng(0)
    # Fewer training rows (20) than dimensions (30): the sample covariance is singular, the shrunk one is not.
    train = rng.normal(size=(20, 30)) * rng.uniform(0.5, 3, 30) + 5
    val, query = rng.normal(size=(50, 30)) + 5, rng.normal(size=(7, 30)) * 2 + 5
    ref = ood.fit_reference(train, val)
    mean, cov, shrinkage = _ledoit_wolf(train)
    assert ref.shrinkage == pytest.approx(shrinkage, rel=1e-9)
    np.testing.assert_allclose(ref.distances(query), _scipy_distances(query, mean, cov), rtol=1e-8)
    val_d = _scipy_distances(val, mean, cov)
    np.testing.assert_allclose(ref.val_distances, val_d, rtol=1e-8)
    assert ref.threshold == pytest.approx(np.percentile(val_d, 99), rel=1e-8)
    assert (ref.percentile, ref.n_train, ref.n_val, ref.method) == (99.0, 20, 50, "mahalanobis-ledoitwolf")
    # A point at the training mean is at distance 0 (no NaN from rounding below zero).
    assert ood.mahalanobis_distances(mean[None], ref.mean, ref.precision)[0] == pytest.approx(0, abs=1e-6)


def test_fit_reference_refuses_too_few_images():
    with pytest.raises(DataError, match="at least 2 training images"):
        ood.fit_reference(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(DataError, match="at least 1 validation image"):
        ood.fit_reference(np.ones((5, 4)), np.zeros((0, 4)))


def test_features_are_the_channel_means_of_the_last_conv_stage(run):
    model = run.load_model()
    images = run.images("test")[:5]
    got = ood.feature_vectors(model, images, batch_size=2)
    # At 64 px AlexNet's last stage is 1 x 1, so its 6 x 6 adaptive pooling (model.features) repeats each channel
    # 36 times: the mean over those copies is the channel value.
    with torch.no_grad():
        pooled = model.features(to_model_input(images)).numpy()
    expected = pooled.reshape(len(images), got.shape[1], -1).mean(axis=2)
    assert got.shape == (5, 256) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_run_reference_is_fitted_on_train_with_the_val_percentile(run):
    ref = ood.ood_reference(run)
    model = run.load_model()
    split = run.predictions["split"]
    assert (ref.n_train, ref.n_val) == ((split == "train").sum(), (split == "val").sum())
    mean, cov, _ = _ledoit_wolf(ood.feature_vectors(model, run.images("train")))
    val_d = _scipy_distances(ood.feature_vectors(model, run.images("val")), mean, cov)
    assert ref.threshold == pytest.approx(np.percentile(val_d, ood.OOD_PERCENTILE), rel=1e-6)

    test = run.images("test")
    out = ood.check_unlike(run, test)
    test_d = _scipy_distances(ood.feature_vectors(model, test), mean, cov)
    np.testing.assert_allclose(out["distance"], test_d, rtol=1e-6)
    np.testing.assert_array_equal(out["unlike"], test_d > ref.threshold)
    np.testing.assert_allclose(out["val_share_below"], [(val_d < d).mean() for d in test_d])
    assert (out["threshold"], out["percentile"], out["method"], out["n_val"]) == \
        (ref.threshold, 99.0, "mahalanobis-ledoitwolf", ref.n_val)
    # The run's own test phantoms are like its training data.
    assert out["unlike"].mean() <= 0.10
    one = ood.check_unlike(run, test[0], model=model)  # one (S, S) image
    assert one["distance"].shape == (1,) and one["distance"][0] == pytest.approx(test_d[0], rel=1e-6)


def _real_xrays(shared: Path, size: int) -> np.ndarray:
    """The first two images of each class of covidqu, read and resized here with OpenCV."""
    root = shared / "covidqu_cxr_infection" / "images"
    paths = [p for c in sorted(root.iterdir()) for p in sorted(c.glob("*.png"))[:2]]
    return np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (size, size),
                                interpolation=cv2.INTER_AREA) for p in paths])


def test_real_xrays_are_unlike_a_phantom_run(run, shared_data):
    real = _real_xrays(shared_data, run.config.image_size)
    out = ood.check_unlike(run, real)
    assert len(real) == 6 and out["unlike"].all(), (out["distance"], out["threshold"])
    assert (out["val_share_below"] == 1).all()


def test_an_external_view_is_compared_with_its_runs_training_data(run, tiny_folder):
    from engine.external import external_view

    view = external_view(run, tiny_folder)
    images = view.images("test")
    out = ood.check_unlike(view, images)
    assert out["threshold"] == ood.ood_reference(run).threshold  # the run's reference, not one of the folder
    np.testing.assert_allclose(out["distance"], ood.check_unlike(run, images)["distance"])
    assert not view.artifact(ood.ARTIFACT).exists()


def test_check_unlike_refuses_images_of_another_size(run):
    with pytest.raises(DataError, match="64 x 64 px"):
        ood.check_unlike(run, np.zeros((2, 32, 32), np.uint8))
    with pytest.raises(DataError, match="uint8"):
        ood.check_unlike(run, np.zeros((2, 64, 64), np.float32))


def test_a_run_without_validation_images_is_refused():
    no_val = SimpleNamespace(id="r-1", predictions=pd.DataFrame({"split": ["train"] * 5 + ["test"] * 2}))
    no_val.trained_run = no_val
    with pytest.raises(DataError, match="Run r-1 has no validation images.*val_fraction"):
        ood.ood_reference(no_val)
    one_train = SimpleNamespace(id="r-2", predictions=pd.DataFrame({"split": ["train", "val", "test"]}))
    one_train.trained_run = one_train
    with pytest.raises(DataError, match="at least 2 are needed"):
        ood.ood_reference(one_train)


@pytest.fixture()
def counted(monkeypatch) -> list[int]:
    """Count the feature extractions of ``ood_reference`` (two per fit: train and val)."""
    calls: list[int] = []
    real = ood.feature_vectors

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ood, "feature_vectors", counting)
    return calls


def _rewrite(path: Path, **changes: np.ndarray) -> None:
    """Write the cached npz again with some arrays changed (a well-formed file with other content)."""
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(changes)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())


def test_cache_is_reused_and_a_damaged_file_is_recomputed(run, counted):
    path = run.artifact(ood.ARTIFACT)
    path.unlink(missing_ok=True)
    first = ood.ood_reference(run)
    assert path.exists() and len(counted) == 2
    again = ood.ood_reference(run)
    assert len(counted) == 2 and again.threshold == first.threshold  # read from the cache, nothing recomputed

    def damaged(damage) -> None:
        before = len(counted)
        damage()
        ref = ood.ood_reference(run)
        assert len(counted) == before + 2, "a damaged reference must be recomputed"
        assert ref.threshold == pytest.approx(first.threshold, rel=1e-9)
        np.testing.assert_allclose(ref.val_distances, first.val_distances, rtol=1e-9)

    data = path.read_bytes()
    damaged(lambda: path.write_bytes(data[: len(data) // 2]))  # truncated
    # one byte of the precision matrix flipped inside the zip (its CRC no longer matches)
    flip = bytearray(path.read_bytes())
    flip[len(flip) // 2] ^= 0xFF
    damaged(lambda: path.write_bytes(bytes(flip)))
    # well-formed, but other numbers than were written (the digest catches it)
    damaged(lambda: _rewrite(path, val_distances=first.val_distances * 0.5))
    with zipfile.ZipFile(path) as z:
        assert "digest.npy" in z.namelist()
