"""DICOM files a hostile or careless client may send, built from pydicom's own test
files: the tests and `bench/hostile.py` both use them."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian


def as_radiograph(name: str) -> pydicom.Dataset:
    """A pydicom test file relabelled as a DX, so it takes the X-ray path."""
    ds = pydicom.dcmread(get_testdata_file(name, download=False))
    ds.Modality = "DX"
    return ds


def blank(side: int, modality: str = "DX") -> pydicom.Dataset:
    """A pydicom test file made `side` x `side`, its pixels zeros: megabytes that deflate to KB."""
    source = "CT_small.dcm" if modality == "CT" else "MR_small.dcm"
    ds = pydicom.dcmread(get_testdata_file(source, download=False))
    ds.Modality, ds.Rows, ds.Columns = modality, side, side
    ds.PixelData = bytes(side * side * 2)
    return ds


def blank_series(count: int, side: int) -> list[pydicom.Dataset]:
    """`count` blank axial CT slices of `side` x `side`, 2.5 mm apart."""
    series = [blank(side, "CT") for _ in range(count)]
    for index, ds in enumerate(series):
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 2.5 * index], [1, 0, 0, 0, 1, 0]
    return series


def saved(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def deflated(ds: pydicom.Dataset) -> bytes:
    """`ds` saved in the Deflated Explicit VR Little Endian transfer syntax."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return saved(ds)


def nested_sequences(depth: int) -> bytes:
    """`depth` sequences of undefined length, each in the one item of the one above
    (explicit VR little endian), as a hostile file may hold."""
    opening = struct.pack("<HH", 0x0040, 0xA730) + b"SQ\0\0" + struct.pack("<I", 0xFFFFFFFF)
    opening += struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * depth + closing * depth


def malformed_radiographs() -> dict[str, bytes]:
    """Radiograph files whose headers pydicom reads but whose values break decoding."""
    slope = as_radiograph("MR_small.dcm")
    slope["RescaleSlope"] = RawDataElement(Tag(0x00281053), "DS", 4, b"abc ", 0, False, True)
    slope.RescaleIntercept = 0
    deep = as_radiograph("MR_small.dcm")
    pixels = deep.PixelData
    del deep.PixelData
    pixel_element = struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", len(pixels)) + pixels
    return {
        "a non-numeric RescaleSlope": saved(slope),
        "sequences nested 3,000 deep": saved(deep) + nested_sequences(3000) + pixel_element,
    }
