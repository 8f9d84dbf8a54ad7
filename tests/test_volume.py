"""CT volumes: NIfTI orientation and spacing, masks aligned through the 3-D transforms, clear errors for bad volumes,
folders of volumes, their cached arrays and the 5-D model input."""
import nibabel as nib
import numpy as np
import pytest
import torch

from engine.data.arrays import image_array, mask_arrays
from engine.data.folder import load_folder
from engine.data.phantom_ct import CTPhantomSpec, write_ct_dataset
from engine.data.transforms import gray_of, to_display, to_model_input
from engine.data.volume import (
    HU_WINDOW,
    is_volume,
    load_volume,
    volume_shape,
    volume_spacing,
    write_nifti,
)
from engine.errors import ConfigError, DataError

# At size 16 the box is (8, 16, 16) voxels of 44 x 24 x 24 mm (the field of view 352 x 384 x 384 mm).
SIZE = 16


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(np.asarray(data), np.asarray(affine, float)), str(path))
    return path


def _marker_lps(background=-1000.0):
    """31 x 31 x 15 voxels (i: towards the patient's left, j: posterior, k: superior) of 12 x 12 x 22 mm, a +1000 HU
    marker at i=6, j=10, k=10."""
    data = np.full((31, 31, 15), background, np.float32)
    data[6, 10, 10] = 1000.0
    return data, np.diag([-12.0, -12.0, 22.0, 1.0])


def test_shapes_and_spacing_of_the_box():
    assert volume_shape(64) == (32, 64, 64) and volume_shape(17) == (8, 17, 17)
    assert volume_spacing(SIZE) == (44.0, 24.0, 24.0)
    assert is_volume("a/B.NII.GZ") and is_volume("x.nii") and not is_volume("x.gz") and not is_volume("x.png")


def test_marker_lands_where_its_world_position_says_whatever_the_storage(tmp_path):
    # Hand-worked: spacing 12 -> 24 mm and 22 -> 44 mm halves each axis exactly (31 -> 16, 15 -> 8 voxels: no pad or
    # crop). D runs superior -> inferior, so D = (14 - k) / 2 = 2; H (posterior) = j / 2 = 5; W (left) = i / 2 = 3.
    data, affine = _marker_lps()
    lps = _save(tmp_path / "lps.nii.gz", data, affine)
    permuted = _save(tmp_path / "perm.nii", data.transpose(2, 0, 1), affine[:, [2, 0, 1, 3]])
    ras = np.zeros((15, 31, 31), np.float32) - 1000.0  # the same scan in the (D, H, W) layout, D = 14 - k
    ras[14 - 10, 10, 6] = 1000.0
    written = write_nifti(tmp_path / "ras.nii.gz", ras, (22.0, 12.0, 12.0), dtype=np.int16)
    assert np.allclose(nib.load(str(written)).header.get_zooms(), (12.0, 12.0, 22.0))
    volumes = [load_volume(p, SIZE)[0] for p in (lps, permuted, written)]
    for vol in volumes:
        assert vol.shape == (8, 16, 16) and vol.dtype == np.uint8
        assert np.unravel_index(np.argmax(vol), vol.shape) == (2, 5, 3)
        assert vol.min() == 60  # -1000 HU: (-1000 + 1350) / 1500 * 255 = 59.5, rounded
    assert np.array_equal(volumes[0], volumes[1]) and np.array_equal(volumes[0], volumes[2])


def test_spacing_is_honoured_a_box_keeps_its_size_in_mm(tmp_path):
    # A 96 mm cube (4 voxels of 24 mm across rows and columns) drawn at two resolutions gives the same box.
    def cube(step):
        n = int(240 / step)
        vol = np.full((n, n, n), -1000.0, np.float32)
        lo, hi = int(72 / step), int(168 / step)
        vol[lo:hi, lo:hi, lo:hi] = 0.0  # soft tissue, inside the lung window
        return write_nifti(tmp_path / f"cube{step}.nii.gz", vol, (step, step, step), dtype=np.int16)

    fine, coarse = (load_volume(cube(s), SIZE)[0] for s in (4.0, 8.0))
    assert np.abs(fine.astype(int) - coarse.astype(int)).mean() < 3
    gray = [(hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]) * 255 for hu in (-1000.0, 0.0)]
    bright = fine > sum(gray) / 2  # half way between the background's and the cube's grey
    rows, cols = bright.any((0, 2)).sum(), bright.any((0, 1)).sum()
    assert rows == cols == 4


def test_masks_stay_aligned_with_the_image(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(-850.0, 20.0, (70, 50, 40)).astype(np.float32)
    mask = np.zeros(data.shape, np.uint8)
    mask[40:60, 10:30, 12:30] = 1  # a box of 34 x 46 x 70 mm, away from the centre
    data[mask > 0] = 100.0
    affine = np.array([[0.0, -2.3, 0.0, 40.0], [-1.7, 0.0, 0.0, -20.0], [0.0, 0.0, 3.9, 15.0], [0, 0, 0, 1]])
    image = _save(tmp_path / "img.nii.gz", data, affine)
    lesion = _save(tmp_path / "lesion.nii.gz", mask, affine)
    lung = _save(tmp_path / "lung.nii.gz", np.ones_like(mask), affine)
    vol, m, lg = load_volume(image, 64, mask=lesion, lung_mask=lung)
    assert m.dtype == bool and m.shape == vol.shape == (32, 64, 64) and lg.shape == vol.shape
    mid = ((-850.0 + 100.0) / 2 - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]) * 255
    bright = vol > mid
    iou = (bright & m).sum() / (bright | m).sum()
    assert iou > 0.75 and bright.sum() > 50
    assert not (m & ~lg).any() and lg.sum() > m.sum()


def _write(name, data=None, affine=None, raw=None):
    """A maker of a file ``name`` in a folder: raw bytes, or a NIfTI image of ``data`` with ``affine``."""
    def make(folder):
        path = folder / name
        if raw is not None:
            path.write_bytes(raw)
            return path
        return _save(path, data, np.eye(4) if affine is None else affine)
    return make


@pytest.mark.parametrize("make, words", [
    (_write("scan.png", raw=b"\x89PNG"), "not a NIfTI volume"),
    (_write("scan.nii.gz", raw=b"not a nifti file at all" * 20), "not a readable NIfTI"),
    (_write("scan.nii.gz", np.zeros((20, 20), np.float32)), "2-D"),
    (_write("scan.nii.gz", np.zeros((8, 8, 8, 2), np.float32)), "one time point"),
    (_write("scan.nii.gz", np.where(np.arange(512).reshape(8, 8, 8) == 7, np.nan, 0).astype(np.float32)), "NaN"),
])
def test_bad_volumes_raise_data_errors_that_say_what_to_fix(tmp_path, make, words):
    with pytest.raises(DataError, match=words):
        load_volume(make(tmp_path), SIZE)


def test_one_frame_4d_is_a_volume_and_bad_masks_are_refused(tmp_path, monkeypatch):
    data, affine = _marker_lps()
    image = _save(tmp_path / "img.nii", data[..., None], affine)
    assert load_volume(image, SIZE)[0].shape == (8, 16, 16)
    small = _save(tmp_path / "small.nii", np.zeros((31, 31, 14), np.uint8), affine)
    with pytest.raises(DataError, match="voxel grid"):
        load_volume(image, SIZE, mask=small)
    shifted = affine.copy()
    shifted[0, 3] = 5.0
    moved = _save(tmp_path / "moved.nii", np.zeros((31, 31, 15), np.uint8), shifted)
    with pytest.raises(DataError, match="affine"):
        load_volume(image, SIZE, lung_mask=moved)
    monkeypatch.setenv("LUNGLENS_MAX_MEGAVOXELS", "0.01")  # 10,000 voxels < 31 x 31 x 15
    with pytest.raises(DataError, match="too large.*LUNGLENS_MAX_MEGAVOXELS"):
        load_volume(image, SIZE)


@pytest.fixture(scope="module")
def ct_folder(tmp_path_factory):
    return write_ct_dataset(tmp_path_factory.mktemp("ct") / "data", CTPhantomSpec(n_per_class=5, shape=(24, 48, 48)))


def test_a_folder_of_volumes_loads_reading_headers_only(ct_folder, monkeypatch):
    def no_voxels(*args, **kwargs):
        raise AssertionError("the folder check read voxel data")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    ds = load_folder(ct_folder)
    assert ds.ndim == 3 and len(ds) == 10 and ds.classes == ("cap", "covid")
    assert ds.has_masks and ds.has_lung_masks
    assert all(p.endswith(".nii.gz") for p in ds.items["mask"])


def test_a_folder_mixing_images_and_volumes_is_refused(ct_folder, tiny_folder, tmp_path):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(ct_folder / "images", mixed / "images")
    shutil.copy(next((tiny_folder / "images" / "covid").iterdir()), mixed / "images" / "covid" / "film.png")
    with pytest.raises(DataError, match=r"mixes 10 volume\(s\).*1 2-D image.*film.png"):
        load_folder(mixed)


def test_image_and_mask_arrays_of_volumes(ct_folder):
    ds = load_folder(ct_folder)
    images = image_array(ds, SIZE)
    lesion, lung, has_lesion, has_lung = mask_arrays(ds, SIZE)
    assert images.shape == lesion.shape == lung.shape == (10, 8, 16, 16)
    assert images.dtype == np.uint8 and lesion.dtype == bool
    assert has_lesion.all() and has_lung.all()
    assert np.array_equal(images[3], load_volume(ds.items["path"][3], SIZE)[0])
    assert not (lesion & ~lung).any() and lung.sum((1, 2, 3)).min() > 0
    with pytest.raises(ConfigError, match="CLAHE applies to 2-D"):
        image_array(ds, SIZE, clahe=True)


def test_mask_arrays_of_images_match_nearest_resizing(tiny_folder):
    import cv2

    ds = load_folder(tiny_folder)
    lesion, lung, has_lesion, has_lung = mask_arrays(ds, 32)
    assert lesion.shape == lung.shape == (36, 32, 32) and has_lesion.all() and has_lung.all()
    # The tiny folder's lung mask is rows 8..55, columns 6..57 of 64: at 32 px, rows 4..27 and columns 3..28.
    expected = np.zeros((32, 32), bool)
    expected[4:28, 3:29] = True
    assert np.array_equal(lung[0], expected)
    png = cv2.imread(ds.items["mask"][0], cv2.IMREAD_GRAYSCALE) > 127
    assert lesion[0].sum() == png[::2, ::2].sum()


def test_model_input_of_volumes_is_one_channel_in_unit_range():
    batch = np.array([[[[0, 255], [51, 102]]]] * 2, np.uint8)  # (2, 1, 2, 2): N, D, H, W
    x = to_model_input(batch)
    assert x.shape == (2, 1, 1, 2, 2) and x.dtype == torch.float32
    assert torch.allclose(x[0, 0, 0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    assert torch.equal(gray_of(x), x)
    assert to_display(x).shape == (2, 1, 2, 2)
    assert to_model_input(np.zeros((2, 4, 4), np.uint8)).shape == (2, 3, 4, 4)  # 2-D unchanged
