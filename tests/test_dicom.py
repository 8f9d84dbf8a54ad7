"""DICOM files written here with pydicom, read by the one image reader: expected values are worked out by hand."""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.sequence import Sequence
from pydicom.uid import (ExplicitVRLittleEndian, JPEGLosslessSV1, RLELossless, SecondaryCaptureImageStorage, UID,
                         generate_uid)

from engine.data.folder import load_folder
from engine.data.imageio import IMAGE_SUFFIXES, decode_image_bytes, image_header, read_image
from engine.data.splits import assign_splits
from engine.errors import DataError

LOW_HIGH = np.array([[0, 1000], [3000, 4000]], np.uint16)


def dicom_bytes(pixels: np.ndarray | None, *, bits_stored: int | None = None, signed: bool = False,
                photometric: str = "MONOCHROME2", preamble: bool = True, transfer_syntax: UID = ExplicitVRLittleEndian,
                patient: str = "P1", **elements) -> bytes:
    """A DICOM file of ``pixels`` (None: no Pixel Data) with the given Image Pixel elements and extra ``elements``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax
    ds = FileDataset("test", {}, file_meta=meta, preamble=b"\0" * 128) if preamble else Dataset()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = patient
    if pixels is not None:
        bits = pixels.dtype.itemsize * 8
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
        if pixels.ndim == 3:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = bits
        ds.BitsStored = bits_stored or bits
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(signed)
        ds.PixelData = pixels.tobytes()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:  # a bare data set: no preamble, no DICM marker, no file meta
        ds.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def voi_lut(descriptor: list[int], data: list[int]) -> Sequence:
    """A VOI LUT Sequence of one LUT."""
    item = Dataset()
    item.add_new("LUTDescriptor", "US", descriptor)
    item.add_new("LUTData", "US", data)
    return Sequence([item])


def decode(data: bytes, name: str = "x.dcm") -> np.ndarray:
    image = decode_image_bytes(data, name)
    assert image.dtype == np.float32 and image.ndim == 2
    return image


# --- grayscale pipeline ------------------------------------------------------------------------------------------

def test_without_voi_the_image_own_range_becomes_0_to_1():
    # 0, 1000, 3000, 4000 over [0, 4000]
    np.testing.assert_allclose(decode(dicom_bytes(LOW_HIGH)), [[0, 0.25], [0.75, 1]], atol=1e-7)


def test_monochrome1_is_inverted():
    image = decode(dicom_bytes(LOW_HIGH, photometric="MONOCHROME1"))
    np.testing.assert_allclose(image, [[1, 0.75], [0.25, 0]], atol=1e-7)


def test_12_bit_in_16_bit_storage_ignores_the_unused_high_bits():
    stored = np.array([[0x0000, 0x0FFF], [0x0400, 0x0000]], np.uint16)
    garbage = np.array([[0xF000, 0x1000], [0x3000, 0x8000]], np.uint16)  # e.g. overlay bits above BitsStored
    image = decode(dicom_bytes(stored | garbage, bits_stored=12))
    np.testing.assert_allclose(image, [[0, 1], [1024 / 4095, 0]], atol=1e-7)


def test_the_modality_lut_comes_first():
    # slope -1: stored 0, 1000, 3000, 4000 -> -0, -1000, -3000, -4000, over [-4000, 0]
    image = decode(dicom_bytes(LOW_HIGH, RescaleSlope=-1, RescaleIntercept=0))
    np.testing.assert_allclose(image, [[1, 0.75], [0.25, 0]], atol=1e-7)


def test_signed_16_bit_with_rescale_and_window():
    stored = np.array([[-100, 0], [100, 600]], np.int16)
    image = decode(dicom_bytes(stored, signed=True, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=-824,
                               WindowWidth=401))
    # Modality: 2 x - 1024 = -1224, -1024, -824, 176. LINEAR window (PS3.3 C.11.2.1.2.1): c = -824.5, w = 400,
    # 0 at or below c - w/2 = -1024.5, 1 above c + w/2 = -624.5, ((y - c) / w + 0.5) between.
    expected = [[0, (-1024 + 824.5) / 400 + 0.5], [(-824 + 824.5) / 400 + 0.5, 1]]
    assert expected[0][1] == pytest.approx(0.00125) and expected[1][0] == pytest.approx(0.50125)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_12_bit_monochrome1_window_is_applied_then_inverted():
    stored = np.array([[0, 2048], [1000, 4095]], np.uint16)
    image = decode(dicom_bytes(stored, bits_stored=12, photometric="MONOCHROME1", WindowCenter=2048,
                               WindowWidth=2048))
    # c = 2047.5, w = 2047: 0 up to 1024, 1 above 3071; 2048 -> 0.5 / 2047 + 0.5; then 1 - x.
    np.testing.assert_allclose(image, [[1, 1 - (0.5 / 2047 + 0.5)], [1, 0]], atol=1e-6)


def test_an_8_bit_voi_lut():
    stored = np.array([[5, 10], [12, 100]], np.uint16)
    image = decode(dicom_bytes(stored, bits_stored=12, VOILUTSequence=voi_lut([4, 10, 8], [0, 50, 200, 255])))
    # first mapped value 10: 5 -> entry 0 (below), 10 -> entry 0, 12 -> entry 2, 100 -> last entry; / (2**8 - 1)
    np.testing.assert_allclose(image, [[0, 0], [200 / 255, 1]], atol=1e-7)


def test_a_16_bit_voi_lut_after_rescale_wins_over_a_window():
    stored = np.array([[0, 1], [2, 5]], np.uint16)
    lut = voi_lut([3, 0, 16], [0, 32768, 65535])
    image = decode(dicom_bytes(stored, RescaleSlope=1, RescaleIntercept=-1, VOILUTSequence=lut, WindowCenter=1,
                               WindowWidth=2))
    # modality -1, 0, 1, 4 -> entry 0 (below), 0, 1, 2 (clipped to the last); / (2**16 - 1)
    np.testing.assert_allclose(image, [[0, 0], [32768 / 65535, 1]], atol=1e-7)


def test_a_constant_image_is_black():
    np.testing.assert_array_equal(decode(dicom_bytes(np.full((3, 4), 700, np.uint16))), np.zeros((3, 4)))


def test_an_unusable_window_falls_back_to_the_image_range(caplog):
    with caplog.at_level(logging.WARNING):
        image = decode(dicom_bytes(LOW_HIGH, WindowCenter=100, WindowWidth=0), "w0.dcm")
    np.testing.assert_allclose(image, [[0, 0.25], [0.75, 1]], atol=1e-7)
    assert "w0.dcm" in caplog.text and "window" in caplog.text


def test_rgb_dicom_becomes_gray_by_the_luminance_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [100, 100, 100]]], np.uint8)
    image = decode(dicom_bytes(rgb, photometric="RGB"))
    np.testing.assert_allclose(image, [[0.299, 0.587], [0.114, 100 / 255]], atol=1e-6)


def test_ybr_full_gray_pixels_keep_their_luma():
    ybr = np.array([[[0, 128, 128], [51, 128, 128]], [[204, 128, 128], [255, 128, 128]]], np.uint8)
    image = decode(dicom_bytes(ybr, photometric="YBR_FULL"))
    np.testing.assert_allclose(image, [[0, 0.2], [0.8, 1]], atol=1.5 / 255)


# --- which files are DICOM ---------------------------------------------------------------------------------------

def test_the_dicm_marker_makes_any_name_dicom_and_dcm_is_an_image_suffix(tmp_path):
    assert ".dcm" in IMAGE_SUFFIXES
    data = dicom_bytes(LOW_HIGH)
    path = tmp_path / "IM000001"
    path.write_bytes(data)
    np.testing.assert_allclose(read_image(path), [[0, 0.25], [0.75, 1]], atol=1e-7)
    assert image_header(data, "scan.png") == ("DICOM", 2, 2, 1)


def test_a_bare_data_set_named_dcm_is_read():
    data = dicom_bytes(LOW_HIGH, preamble=False)
    assert data[128:132] != b"DICM"
    np.testing.assert_allclose(decode(data, "bare.dcm"), [[0, 0.25], [0.75, 1]], atol=1e-7)


def test_a_compressed_file_with_its_decoder_installed_is_read():
    ds = dcmread(io.BytesIO(dicom_bytes(LOW_HIGH, photometric="MONOCHROME1")))
    ds.compress(RLELossless)  # pydicom's own RLE codec: no extra package
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert ds.PixelData != LOW_HIGH.tobytes()
    np.testing.assert_allclose(decode(buffer.getvalue(), "rle.img"), [[1, 0.75], [0.25, 0]], atol=1e-7)


# --- refusals ----------------------------------------------------------------------------------------------------

def test_a_volume_is_refused_saying_so():
    volume = np.zeros((3, 4, 5), np.uint16)  # 3 frames of 4 x 5
    data = dicom_bytes(volume[0], NumberOfFrames=3)
    with pytest.raises(DataError, match=r"ct\.dcm is a DICOM volume \(3 frames, 5 x 4 px each\).*export the one"):
        decode_image_bytes(data, "ct.dcm")


@pytest.mark.parametrize("rows", [False, True], ids=["no-image-elements", "rows-but-no-pixel-data"])
def test_a_file_without_pixels_is_refused(rows):
    data = dicom_bytes(None, Rows=4, Columns=4) if rows else dicom_bytes(None)
    with pytest.raises(DataError, match="sr.dcm is a DICOM file without image pixels.*export the image itself"):
        decode_image_bytes(data, "sr.dcm")


def test_damaged_files_are_refused():
    truncated = dicom_bytes(np.arange(64, dtype=np.uint16).reshape(8, 8))[:-40]
    with pytest.raises(DataError, match="cut.dcm has pixel data that cannot be decoded.*re-export it or remove it"):
        decode_image_bytes(truncated, "cut.dcm")
    with pytest.raises(DataError, match="junk.dcm is not a readable DICOM image.*re-export it or remove it"):
        decode_image_bytes(b"this is plain text, not an image" * 10, "junk.dcm")


def test_a_compressed_file_without_its_decoder_is_refused_from_the_header_naming_the_packages(monkeypatch):
    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed here")
    data = dicom_bytes(np.zeros((4, 4), np.uint16), transfer_syntax=JPEGLosslessSV1,
                       PixelData=encapsulate([b"\xff\xd8 not really a JPEG \xff\xd9"]))
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda self: pytest.fail("decoded without a decoder")))
    words = r"cr.dcm is compressed as JPEG Lossless.*install .*pylibjpeg-libjpeg.*pip install .*uncompressed"
    with pytest.raises(DataError, match=words):
        image_header(data, "cr.dcm")
    with pytest.raises(DataError, match=words):
        decode_image_bytes(data, "cr.dcm")


def test_the_pixel_limit_applies_before_decoding(monkeypatch):
    data = dicom_bytes(np.zeros((2, 2), np.uint16), Rows=20000, Columns=15000)
    monkeypatch.setattr(Dataset, "pixel_array", property(lambda self: pytest.fail("decoded a bomb")))
    with pytest.raises(DataError, match=r"bomb.dcm is too large: 15000 x 20000 px"):
        decode_image_bytes(data, "bomb.dcm")
    monkeypatch.setenv("LUNGLENS_MAX_MEGAPIXELS", "0.000003")  # 3 px: a 2 x 2 image is too large
    with pytest.raises(DataError, match=r"too large: 2 x 2 px"):
        image_header(dicom_bytes(LOW_HIGH), "small.dcm")


# --- folders -----------------------------------------------------------------------------------------------------

def write_patients(root: Path, n_patients: int = 8, per_patient: int = 2, seed: int = 0) -> dict[str, str]:
    """Two classes of DICOM files, ``per_patient`` images per patient; returns file -> PatientID."""
    rng = np.random.default_rng(seed)
    patients = {}
    for label in ("covid", "normal"):
        (root / label).mkdir(parents=True)
        for p in range(n_patients):
            for i in range(per_patient):
                patient = f"{label[0].upper()}{p:03d}"
                name = f"{label}/{patient}_{i}.dcm" if i else f"{label}/{patient}_{i}"  # one without suffix
                pixels = rng.integers(0, 4096, (8, 8)).astype(np.uint16)
                (root / name).write_bytes(dicom_bytes(pixels, bits_stored=12, patient=patient))
                patients[name] = patient
    (root / "covid" / "DICOMDIR").write_bytes(dicom_bytes(None))  # an index, not an image
    (root / "covid" / "notes.txt").write_text("not an image")
    return patients


def test_a_dicom_folder_groups_by_patient_id_and_splits_keep_patients_whole(tmp_path):
    patients = write_patients(tmp_path / "d")
    ds = load_folder(tmp_path / "d")
    items = ds.items.set_index("file")
    assert sorted(items.index) == sorted(patients)
    by_patient = items.groupby(items.index.map(patients))["group"].agg(["nunique", "first"])
    assert (by_patient["nunique"] == 1).all() and by_patient["first"].nunique() == len(by_patient)
    for seed in range(3):
        split = assign_splits(ds.items, seed=seed)
        per_patient = split.groupby(ds.items["file"].map(patients).to_numpy()).nunique()
        assert (per_patient == 1).all(), f"seed {seed}: a patient's images straddle splits"
        assert set(split) == {"train", "val", "test"}


def test_a_manifest_patient_id_wins_over_the_dicom_one(tmp_path):
    root = tmp_path / "d"
    patients = write_patients(root, n_patients=6)
    files = sorted(patients)
    own = [f"own{i}" if i % 4 >= 2 else "" for i in range(len(files))]  # every other patient: ids of its own
    pd.DataFrame({"file": files, "class": [f.split("/")[0] for f in files], "patient_id": own}).to_csv(
        root / "manifest.csv", index=False)
    items = load_folder(root).items.set_index("file")
    groups = items["group"]
    linked = []
    for i, file in enumerate(files):
        partner = [f for f in files if f != file and patients[f] == patients[file]][0]
        linked.append(groups[file] == groups[partner])
        # The manifest's id (unique per row) decides; without one, the DICOM PatientID links the two images.
        assert linked[-1] == (not own[i] and not own[files.index(partner)])
    assert any(linked) and not all(linked)


def test_a_bad_dicom_in_a_folder_is_named_and_skippable(tmp_path):
    root = tmp_path / "d"
    write_patients(root, n_patients=5)
    (root / "normal" / "volume.dcm").write_bytes(dicom_bytes(np.zeros((2, 2), np.uint16), NumberOfFrames=2))
    with pytest.raises(DataError, match="volume.dcm is a DICOM volume.*--skip-bad"):
        load_folder(root)
    ds = load_folder(root, skip_bad=True)
    assert [file for file, _ in ds.skipped] == ["normal/volume.dcm"]


def test_a_dicom_upload_is_read_like_a_training_image():
    from engine.explain.upload import read_upload

    pixels = np.tile(np.arange(16, dtype=np.uint16) * 256, (16, 1))  # a horizontal ramp over 0..3840
    image = read_upload(dicom_bytes(pixels, photometric="MONOCHROME1"), "scan.dcm", 8)
    assert image.shape == (8, 8) and image.dtype == np.uint8
    assert image[:, 0].min() > image[:, -1].max()  # MONOCHROME1: the high values are dark
    volume = dicom_bytes(np.zeros((2, 4, 4), np.uint16), NumberOfFrames=2)
    assert "volume" in read_upload(volume, "ct.dcm", 8)
