"""Uploads become model pixels through the ingest's preprocessing, whatever form they come
in (DICOM, PNG, JPEG, a CT's slices or one zip of them); anything else is a BadUpload."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from p2med.platform.data.imaging import ImagingSettings, ct_volume, read_dicom, xray_pixels
from p2med.serve_apps.errors import BadUpload
from p2med.serve_apps.uploads import decode_upload, inspect_upload
from tests.platform.data.test_imaging import ct_slices
from tests.serve_apps.conftest import zipped
from tests.support.dicoms import deflated

IMAGING = ImagingSettings(xray_size=64, ct_slices=8, ct_size=32)
LIMIT = 2**20


def picture(mode: str, fmt: str, size=(90, 60)) -> bytes:
    values = np.random.default_rng(0).random(size[::-1])
    array = (values * (65535 if mode == "I;16" else 255)).astype(np.uint16 if mode == "I;16" else np.uint8)
    image = Image.fromarray(array) if mode != "RGB" else Image.fromarray(array).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(("mode", "fmt"), [("L", "PNG"), ("I;16", "PNG"), ("RGB", "JPEG")])
def test_pictures_become_square_xrays_in_0_1(mode, fmt):
    kind, pixels = decode_upload([picture(mode, fmt)], IMAGING, LIMIT)
    assert kind == "xray" and pixels.shape == (64, 64) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1 and pixels.max() > 0.5


def test_dicom_uploads_go_through_the_ingest_preprocessing(xray_dicom, ct_series):
    kind, pixels = decode_upload([xray_dicom], IMAGING, LIMIT)
    assert kind == "xray"
    np.testing.assert_array_equal(pixels, xray_pixels(read_dicom(xray_dicom, LIMIT), IMAGING))

    series = ct_series
    expected = ct_volume([read_dicom(s, LIMIT) for s in series], IMAGING)
    for files in (series, series[::-1], [zipped(series)]):  # slice order comes from positions
        kind, volume = decode_upload(files, IMAGING, LIMIT)
        assert kind == "ct"
        np.testing.assert_array_equal(volume, expected)


def test_what_is_not_one_image_is_refused_by_name(ct_series):
    series = ct_series
    cases = {
        "holds no file": [],
        "not an image": [b"hello"],
        "not a readable zip": [b"PK\x03\x04broken"],
        "ct_too_few_slices": [zipped(series[:1])],
        "expands to more than": [zipped(series)],
    }
    for message, files in cases.items():
        limit = 1000 if message == "expands to more than" else LIMIT
        with pytest.raises(BadUpload, match=message):
            decode_upload(files, IMAGING, limit)
    assert inspect_upload([zipped(series)], LIMIT).kind == "ct"
    with pytest.raises(BadUpload, match="unreadable_file"):
        decode_upload([b"\x89PNG\r\n\x1a\n" + b"\0" * 50], IMAGING, LIMIT)


def test_an_upload_decoding_past_the_limit_is_refused_from_its_headers():
    blank = Image.new("L", (2000, 2000))  # 4,000,000 bytes of pixels in a few KB of PNG
    buffer = io.BytesIO()
    blank.save(buffer, format="PNG")
    series = zipped([deflated(ds) for ds in ct_slices(10)])  # 10 x 128 x 128 x 2 bytes, deflated
    assert len(buffer.getvalue()) < 2**15 and len(series) < 2**15
    for files, decoded in (([buffer.getvalue()], "4,000,000"), ([series], "327,680")):
        with pytest.raises(BadUpload, match=f"pixel data decodes to {decoded} bytes; the limit is 200,000"):
            inspect_upload(files, 200_000)
