"""Cheng et al.'s augmentation (§3.1): load size, crop, flip / rotation / scale, masks on the image's draw, training."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torchvision
from scipy import ndimage

import engine
from engine.config import RunConfig
from engine.data.arrays import image_array
from engine.data.sources import load_dataset
from engine.data.transforms import apply_augmentation, cheng_augment, draw_augmentation, load_size, to_model_input
from engine.models.backbones import stage
from engine.store import home
from engine.training import LoadSized, train

CROP_ONLY = {"flip": 0.0, "degrees": 0.0, "scale": (1.0, 1.0)}


@pytest.mark.parametrize("size,expected", [(224, 256), (112, 128), (128, 146), (64, 73), (32, 37)])
def test_load_size_is_the_size_times_256_over_224(size, expected):
    assert load_size(size) == expected  # 128 * 8 / 7 = 146.3, 64 * 8 / 7 = 73.1, 32 * 8 / 7 = 36.6


def _position_film(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A film whose pixels hold their row and a label mask holding their column (n <= 256)."""
    rows, cols = np.indices((n, n))
    return rows.astype(np.uint8), cols.astype(np.uint8)


@pytest.mark.parametrize("seed", range(8))
def test_crop_alone_keeps_224_of_256_contiguous_pixels_per_axis(seed):
    rows, cols = _position_film(256)
    out_rows, out_cols = cheng_augment(rows, cols, size=224, generator=torch.Generator().manual_seed(seed), **CROP_ONLY)
    assert out_rows.shape == out_cols.shape == (224, 224)
    top, left = int(out_rows[0, 0]), int(out_cols[0, 0])
    assert 0 <= top <= 32 and 0 <= left <= 32
    # At scale 1 the crop is a window of 224 consecutive rows and columns of the 256 film: 7/8 of each axis.
    np.testing.assert_array_equal(out_rows.numpy(), rows[top : top + 224, left : left + 224])
    np.testing.assert_array_equal(out_cols.numpy(), cols[top : top + 224, left : left + 224])


def test_crop_corners_vary_over_the_whole_margin():
    rows, cols = _position_film(256)
    gen = torch.Generator().manual_seed(0)
    corners = {(int(r[0, 0]), int(c[0, 0])) for r, c in
               (cheng_augment(rows, cols, size=224, generator=gen, **CROP_ONLY) for _ in range(300))}
    tops, lefts = {t for t, _ in corners}, {left for _, left in corners}
    assert min(tops) == 0 and max(tops) == 32 and min(lefts) == 0 and max(lefts) == 32 and len(corners) > 250


def test_flip_mirrors_the_crop_left_right():
    rows, cols = _position_film(73)
    out_rows, out_cols = cheng_augment(rows, cols, size=64, generator=torch.Generator().manual_seed(3),
                                       **{**CROP_ONLY, "flip": 1.0})
    top, right = int(out_rows[0, 0]), int(out_cols[0, 0])
    left = right - 63  # the first output column is the crop's last one
    np.testing.assert_array_equal(out_cols.numpy(), cols[top : top + 64, left : left + 64][:, ::-1])
    np.testing.assert_array_equal(out_rows.numpy(), rows[top : top + 64, left : left + 64])


def _film_with_masks(n: int = 73) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A film bright (250) on an off-centre lesion and mid-grey (100) on the rest of an off-centre lung, 0 outside."""
    lung = np.zeros((n, n), bool)
    lung[10:60, 8:42] = True
    lesion = np.zeros((n, n), bool)
    lesion[14:30, 12:26] = True
    image = np.where(lesion, 250, np.where(lung, 100, 0)).astype(np.uint8)
    return image, lesion, lung


def _off_edge(marked: np.ndarray, mask: np.ndarray) -> float:
    """Largest distance from ``mask``'s edge of a pixel where ``marked`` and ``mask`` disagree (0: none)."""
    padded = np.pad(mask, 1)  # the film's border counts as the mask's edge
    to_edge = np.where(padded, ndimage.distance_transform_edt(padded), ndimage.distance_transform_edt(~padded))
    return float(to_edge[1:-1, 1:-1][marked != mask].max(initial=0))


@pytest.mark.parametrize("seed", range(25))
def test_lesion_and_lung_masks_follow_the_image(seed):
    image, lesion, lung = _film_with_masks()
    out, out_lesion, out_lung = cheng_augment(image, lesion, lung, size=64, generator=torch.Generator().manual_seed(seed))
    assert out.shape == out_lesion.shape == out_lung.shape == (64, 64)
    assert out.dtype == torch.uint8 and out_lesion.dtype == out_lung.dtype == torch.bool
    img, les, lun = out.numpy(), out_lesion.numpy(), out_lung.numpy()
    assert les.sum() > 100 and lun.sum() > 600
    assert not (les & ~lun).any()  # nearest neighbour moves both masks alike: the lesion stays inside the lung
    # Bilinear resampling blurs the image's edges while nearest keeps the masks sharp: thresholded image and mask may
    # differ only next to the mask's edge (at most one diagonal pixel from it).
    assert _off_edge(img > 175, les) <= np.sqrt(2) + 1e-9
    assert _off_edge(img > 50, lun) <= np.sqrt(2) + 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_masks_match_opencv_applying_the_same_draw(seed):
    image, lesion, lung = _film_with_masks()
    draw = draw_augmentation(image.shape, 64, torch.Generator().manual_seed(seed))
    _, out_lesion, out_lung = apply_augmentation(draw, 64, image, lesion, lung)
    # OpenCV as an independent implementation: crop, flip, then rotate about the centre pixel (OpenCV's angle is
    # counter-clockwise, torchvision's clockwise) and scale, nearest neighbour.
    turn = cv2.getRotationMatrix2D((31.5, 31.5), -draw.angle, draw.scale)
    for mask, out in ((lesion, out_lesion), (lung, out_lung)):
        crop = mask[draw.top : draw.top + 64, draw.left : draw.left + 64]
        crop = np.ascontiguousarray(crop[:, ::-1] if draw.flip else crop).astype(np.uint8)
        expected = cv2.warpAffine(crop, turn, (64, 64), flags=cv2.INTER_NEAREST).astype(bool)
        assert (expected != out.numpy()).sum() <= 2  # rounding of pixels that map exactly between two source pixels


def test_magnitudes_are_small_and_draws_vary():
    gen = torch.Generator().manual_seed(0)
    draws = [draw_augmentation((146, 146), 128, gen) for _ in range(400)]
    angles, scales, flips = (np.array([getattr(d, k) for d in draws]) for k in ("angle", "scale", "flip"))
    assert np.abs(angles).max() <= 10 and angles.min() < -8 and angles.max() > 8
    assert scales.min() >= 0.95 and scales.max() <= 1.05
    assert 0.4 < flips.mean() < 0.6
    assert {d.top for d in draws} == set(range(19)) and {d.left for d in draws} == set(range(19))


def test_same_seed_same_result_other_seed_other_result():
    image, lesion, lung = _film_with_masks()

    def run(seed: int) -> list[np.ndarray]:
        gen = torch.Generator().manual_seed(seed)
        return [t.numpy() for _ in range(3) for t in cheng_augment(image, lesion, lung, size=64, generator=gen)]

    for a, b in zip(run(7), run(7)):
        np.testing.assert_array_equal(a, b)
    assert any((a != b).any() for a, b in zip(run(7), run(8)))
    torch.manual_seed(5)  # without a generator the draw comes from torch's seeded global RNG
    first = cheng_augment(image, size=64)[0]
    torch.manual_seed(5)
    np.testing.assert_array_equal(cheng_augment(image, size=64)[0], first)


def test_crop_refuses_a_film_smaller_than_the_input():
    with pytest.raises(ValueError, match="cannot crop"):
        cheng_augment(np.zeros((60, 80), np.uint8), size=64)


def _toy(n: int = 24, size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Input-size images, their load-size films, labels and a split: a bright square whose place gives the class."""
    rng = np.random.default_rng(0)
    big = load_size(size)
    y = np.arange(n) % 3
    films = rng.integers(0, 120, (n, big, big)).astype(np.uint8)
    for i, label in enumerate(y):
        r = 8 + 18 * label
        films[i, r : r + 14, r : r + 14] = 230
    images = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in films])
    return images, films, y, np.array(["train"] * (n - 8) + ["val"] * 4 + ["test"] * 4)


def _alexnet() -> torch.nn.Module:
    torch.manual_seed(0)
    return stage(torchvision.models.get_model("alexnet", weights=None), "alexnet", 3, head_width=16)


def test_augmented_training_resumes_exactly_and_scores_the_unchanged_images(tmp_path):
    images, films, y, split = _toy()
    cfg = RunConfig(backbone="alexnet", depth=2, init="scratch", image_size=64, head_width=16, epochs=2, patience=0,
                    batch_size=8, lr=1e-3, augment=True)
    cpu = torch.device("cpu")
    full = train(cfg, _alexnet(), images, y, split, 3, 2, cpu, load=LoadSized(films))

    class Interrupted(Exception):
        pass

    def stop_after_one(p):
        if p.phase == "epoch":
            raise Interrupted

    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Interrupted):
        train(cfg, _alexnet(), images, y, split, 3, 2, cpu, ckpt, stop_after_one, load=LoadSized(films))
    resumed = train(cfg, _alexnet(), images, y, split, 3, 2, cpu, ckpt, load=LoadSized(films))
    # The same seed draws the same crops, epoch 2 included (the augmentation's generator is in the checkpoint).
    assert [h["train_loss"] for h in resumed.history] == pytest.approx([h["train_loss"] for h in full.history], rel=1e-5)
    np.testing.assert_allclose(resumed.proba, full.proba, rtol=1e-4, atol=1e-6)
    # Predictions come from the input-size images as they are (no crop): the returned model on them gives them.
    with torch.no_grad():
        expected = torch.softmax(full.model.eval()(to_model_input(images)), 1).numpy()
    np.testing.assert_allclose(full.proba, expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="load size"):
        train(cfg, _alexnet(), images, y, split, 3, 2, cpu)


def test_augmented_attention_run_reads_films_and_masks_at_the_load_size(tiny_folder):
    cfg = engine.RunConfig(data=str(tiny_folder), backbone="resnet18", init="scratch", image_size=64, epochs=1,
                           patience=0, batch_size=12, lr=1e-3, depth=1, augment=True, attention=True)
    run = engine.train_run(cfg)
    assert len(run.history) == 1 and np.isfinite(run.history["train_attention_loss"]).all()
    ds = load_dataset(cfg.data)
    # The films and lesion masks were decoded from the source files at 73 px and cached, not enlarged from 64 px arrays.
    cached = {p.name.removeprefix(ds.fingerprint) for p in (home() / "arrays").glob(f"{ds.fingerprint}-*.npz")}
    assert {"-73px.npz", "-73px-masks.npz", "-64px.npz"} <= cached
    source = cv2.imread(str(ds.items["path"].iloc[0]), cv2.IMREAD_GRAYSCALE)  # 64 px: enlarged linearly to 73
    np.testing.assert_array_equal(image_array(ds, 73)[0], cv2.resize(source, (73, 73), interpolation=cv2.INTER_LINEAR))
