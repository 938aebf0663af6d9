"""DICOM to model pixels: compressed transfer syntaxes, LUTs, MONOCHROME1, aspect ratio,
CT geometry checks."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import JPEGBaseline8Bit

from p2med.platform.data.imaging import (
    DecodeFailure,
    ImagingSettings,
    ct_volume,
    frame_bytes,
    read_dicom,
    square,
    xray_pixels,
)
from p2med.platform.data.quarantine import Reason
from p2med.platform.data.raw_store import read_header
from p2med.platform.data.synth import SynthSettings
from p2med.platform.data.synth.faults import make_faults
from p2med.platform.storage import resolve
from tests.support.dicoms import as_radiograph, deflated, malformed_radiographs

CONFIG = ImagingSettings(xray_size=64, ct_slices=8, ct_size=32, min_side=16, ct_min_slices=4)
LIMIT = CONFIG.max_image_bytes


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"]
)
def test_lossless_syntaxes_decode_like_the_uncompressed_file(name):
    reference = xray_pixels(as_radiograph("MR_small.dcm"), CONFIG)
    assert np.array_equal(xray_pixels(as_radiograph(name), CONFIG), reference)


def test_jpeg_extended_and_baseline_decode():
    extended = xray_pixels(as_radiograph("JPGExtended.dcm"), CONFIG)
    assert extended.shape == (64, 64) and extended.max() > 0.5
    ds = as_radiograph("MR_small.dcm")
    eight_bit = (ds.pixel_array / ds.pixel_array.max() * 255).astype(np.uint8)
    jpeg = io.BytesIO()
    Image.fromarray(eight_bit).save(jpeg, format="JPEG", quality=95)
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    for attribute in ("WindowCenter", "WindowWidth"):
        del ds[attribute]
    baseline = xray_pixels(ds, CONFIG)
    reference = xray_pixels(as_radiograph("MR_small.dcm"), CONFIG)
    assert np.corrcoef(baseline.ravel(), reference.ravel())[0, 1] > 0.95


def test_monochrome1_is_inverted():
    plain = xray_pixels(as_radiograph("MR_small.dcm"), CONFIG)
    ds = as_radiograph("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.allclose(xray_pixels(ds, CONFIG)[plain > 0], 1 - plain[plain > 0], atol=1e-5)


def test_window_from_the_header_is_applied():
    ds = as_radiograph("MR_small.dcm")
    ds.WindowCenter, ds.WindowWidth = 300, 100  # values run 127..2145: many saturate
    narrow = xray_pixels(ds, CONFIG)
    assert (narrow > 0.99).mean() > 0.3 and (narrow[8:-8, 8:-8] < 0.01).mean() > 0.1


def test_aspect_ratio_is_kept_and_padded():
    tall = np.ones((100, 50), dtype=np.float32)
    out = square(tall, 64)
    assert out.shape == (64, 64)
    assert np.allclose(out[:, 16:48], 1) and np.allclose(out[:, :15], 0) and np.allclose(out[:, 49:], 0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda ds: setattr(ds, "Modality", "MR"), Reason.UNSUPPORTED_MODALITY),
        (lambda ds: ds.__delattr__("PixelData"), Reason.NO_PIXEL_DATA),
        (lambda ds: setattr(ds, "Rows", 4), Reason.BAD_DIMENSIONS),
    ],
)
def test_xray_refusals(change, reason):
    ds = as_radiograph("MR_small.dcm")
    change(ds)
    with pytest.raises(DecodeFailure) as failure:
        xray_pixels(ds, CONFIG)
    assert failure.value.reason == reason


def ct_slices(count: int, spacing=None):
    """An axial series of `count` 32x32 slices; `spacing` gives each z position."""
    base = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    positions = spacing or [2.5 * k for k in range(count)]
    out = []
    for k, z in enumerate(positions):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
        ds.ImagePositionPatient = [0, 0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.InstanceNumber = count - k
        ds.PixelData = (np.full((base.Rows, base.Columns), k * 10, dtype=np.int16)).tobytes()
        out.append(ds)
    return out


def test_ct_sorted_by_position_not_file_order():
    series = ct_slices(6)
    shuffled = [series[i] for i in (3, 0, 5, 1, 4, 2)]
    config = CONFIG.model_copy(update={"ct_slices": 6, "ct_window_center": 0, "ct_window_width": 4000})
    volume = ct_volume(shuffled, config)
    means = volume.mean(axis=(1, 2))
    assert np.all(np.diff(means) > 0)  # slice k holds k * 10: order restored, inferior first


@pytest.mark.parametrize(
    ("positions", "reason"),
    [
        ([0, 2.5, 5, 12.5, 15, 17.5], Reason.CT_MISSING_SLICES),
        ([0, 2.5, 5, 5, 7.5, 10], Reason.CT_DUPLICATE_SLICES),
        ([0, 2.5, 6, 7.5, 10, 14], Reason.CT_UNEVEN_SPACING),
        ([0], Reason.CT_TOO_FEW_SLICES),
    ],
)
def test_ct_geometry_refusals(positions, reason):
    with pytest.raises(DecodeFailure) as failure:
        ct_volume(ct_slices(len(positions), positions), CONFIG)
    assert failure.value.reason == reason


def test_every_file_fault_of_the_generator_is_refused_with_its_reason():
    """The ingest's and the serving app's decode path on each broken file of `make_faults`
    (headers cut short or holding values no decoder can use among them): that file's
    `DecodeFailure` with the fault's reason, never another error."""
    faults = make_faults(SynthSettings(patients=2, xray_size=96, ct_slices=12, ct_size=48), 2, 0, 0)
    refused = set()
    for entry in faults.expected:
        files = [faults.files[p] for p in entry["inputs"] if p in faults.files]
        if not files or entry["kind"] == "image_without_report":  # JSONL lines; a sound image
            continue
        with pytest.raises(DecodeFailure) as failure:
            slices = [read_dicom(data, LIMIT) for data in files]
            if entry["inputs"][0].startswith("dicom/xray/"):
                xray_pixels(slices[0], CONFIG)
            else:
                ct_volume(slices, CONFIG)
        assert failure.value.reason == entry["reason"], entry["kind"]
        refused.add(entry["kind"])
    assert {"cut_in_header", "zero_window", "ct_bad_orientation", "truncated"} <= refused


@pytest.mark.parametrize("name", list(malformed_radiographs()))
def test_a_malformed_header_is_that_files_failure_and_quotes_no_value(name):
    with pytest.raises(DecodeFailure) as failure:
        xray_pixels(read_dicom(malformed_radiographs()[name], LIMIT), CONFIG)
    assert failure.value.reason == Reason.UNREADABLE_FILE
    assert "malformed" in failure.value.detail and "abc" not in str(failure.value)


def test_a_refusal_quotes_no_header_value():
    """A header field may hold anything, a patient's name included."""
    xray = as_radiograph("MR_small.dcm")
    xray.Modality = "SMITH EMMA"
    series = ct_slices(6)
    series[2].Modality = "SMITH EMMA"
    for decode in (lambda: xray_pixels(xray, CONFIG), lambda: ct_volume(series, CONFIG)):
        with pytest.raises(DecodeFailure) as failure:
            decode()
        assert failure.value.reason == Reason.UNSUPPORTED_MODALITY
        assert "SMITH" not in str(failure.value)


def test_a_deflated_file_decodes_within_its_budget_and_is_refused_past_it_before_it_inflates():
    data = deflated(as_radiograph("MR_small.dcm"))
    reference = xray_pixels(as_radiograph("MR_small.dcm"), CONFIG)
    assert np.array_equal(xray_pixels(read_dicom(data, LIMIT), CONFIG), reference)
    header = read_dicom(data, LIMIT, stop_before_pixels=True)
    assert "PixelData" not in header and header.PatientName == as_radiograph("MR_small.dcm").PatientName
    big = as_radiograph("MR_small.dcm")
    big.Rows = big.Columns = 2048  # 8 MiB of zeros in a few KB
    big.PixelData = bytes(2048 * 2048 * 2)
    bomb = deflated(big)
    assert len(bomb) < 2**16
    with pytest.raises(DecodeFailure, match=r"inflating past the limit of 1,048,576 bytes") as failure:
        read_dicom(bomb, 2**20)
    assert failure.value.reason == Reason.TOO_LARGE
    # its header alone is read within a piece: what the pixels would decode to is known
    # without inflating them
    assert frame_bytes(read_dicom(bomb, 2**16, stop_before_pixels=True)) == 2048 * 2048 * 2


def test_images_past_the_pixel_budget_are_refused_from_their_headers():
    small_budget = CONFIG.model_copy(update={"max_image_mb": 4096 / 2**20})  # 64 x 64 x 2 bytes = 8,192
    with pytest.raises(DecodeFailure, match=r"decoding to 8,192 bytes, past the limit of 4,096") as xray:
        xray_pixels(as_radiograph("MR_small.dcm"), small_budget)
    series = ct_slices(6)  # 6 slices of 128 x 128 x 2 bytes: each within, together past
    budget = CONFIG.model_copy(update={"max_image_mb": 3 * 128 * 128 * 2 / 2**20})
    with pytest.raises(DecodeFailure, match=r"decoding to 196,608 bytes") as ct:
        ct_volume(series, budget)
    assert xray.value.reason == ct.value.reason == Reason.TOO_LARGE


def test_of_a_multi_frame_file_only_the_first_frame_is_decoded():
    single = as_radiograph("MR_small.dcm")
    frames = as_radiograph("MR_small.dcm")
    others = np.full((2, frames.Rows, frames.Columns), 7, dtype=np.int16)
    frames.PixelData = single.PixelData + others.tobytes()
    frames.NumberOfFrames = 3
    budget = CONFIG.model_copy(update={"max_image_mb": frame_bytes(single) / 2**20})  # one frame's worth
    assert frame_bytes(frames) == frame_bytes(single)
    assert np.array_equal(xray_pixels(frames, budget), xray_pixels(single, budget))


def test_the_ingest_reads_a_header_whole_past_a_large_private_element(tmp_path):
    """Pixel data comes last, but a header may hold any amount before the patient's name."""
    ds = as_radiograph("MR_small.dcm")
    ds.PatientName, ds.PatientID = "Doe^Jane", "PID-1"
    ds.private_block(0x0009, "P2MED TEST", create=True).add_new(0x01, "OB", bytes(200_000))
    ds.save_as(tmp_path / "big-header.dcm", enforce_file_format=True)
    header = read_header(resolve(str(tmp_path)), "big-header.dcm", LIMIT)
    assert header.patient_id == "PID-1" and "Doe^Jane" in header.identifiers


def test_burned_in_text_is_refused_unless_allowed():
    ds = as_radiograph("MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(DecodeFailure) as failure:
        xray_pixels(ds, CONFIG)
    assert failure.value.reason == Reason.BURNED_IN_TEXT
    allowed = CONFIG.model_copy(update={"refuse_burned_in_text": False})  # serving: an upload is not kept
    assert xray_pixels(ds, allowed).shape == (64, 64)


def test_malformed_header_values_are_not_logged(caplog):
    """pydicom warns about an invalid value by quoting it ("Invalid value for VR UI:
    '1.2.SMITH'"); headers are identifying."""
    ds = as_radiograph("MR_small.dcm")
    ds["StudyInstanceUID"] = RawDataElement(Tag(0x0020000D), "UI", 10, b"1.2.SMITH\0", 0, False, True)
    ds["InstanceNumber"] = RawDataElement(Tag(0x00200013), "IS", 4, b"7.5 ", 0, False, True)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.DEBUG):
        warnings.simplefilter("always")
        read = read_dicom(buffer.getvalue(), LIMIT)
        assert (str(read.StudyInstanceUID), str(read.InstanceNumber)) == ("1.2.SMITH", "7.5")
        xray_pixels(read, CONFIG)
    said = [str(w.message) for w in warned] + [record.getMessage() for record in caplog.records]
    assert not [line for line in said if "SMITH" in line or "7.5" in line], said
