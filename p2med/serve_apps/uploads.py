"""Uploaded files -> model pixels, through the ingest's own preprocessing (`imaging`).

An upload is one image: an X-ray (one DICOM, PNG or JPEG file) or a CT series (its
DICOM slices as several files, or one zip of them). Which it is comes from the bytes,
never from a file name or a declared type:

    kind, pixels = decode_upload([png_bytes], imaging)           # "xray", (S, S)
    kind, pixels = decode_upload(slice_files, imaging)           # "ct", (D, H, W)
    kind, pixels = decode_upload([zip_bytes], imaging)           # "ct", (D, H, W)

Every refusal is a `BadUpload` whose message says what is wrong with the upload without
quoting a header value.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np

from p2med.platform.data.imaging import (
    DecodeFailure,
    ImagingSettings,
    ct_volume,
    picture_pixels,
    read_dicom,
    read_modality,
    xray_pixels,
)
from p2med.serve_apps.errors import BadUpload

PNG_MAGIC, JPEG_MAGIC, ZIP_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"PK\x03\x04"
MAX_ZIP_MEMBERS = 2048  # slices of one CT series; a zip with more is not one series


def file_type(data: bytes) -> str:
    """ "dicom", "png", "jpeg", "zip" or "unknown", from the leading bytes."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    for name, magic in (("png", PNG_MAGIC), ("jpeg", JPEG_MAGIC), ("zip", ZIP_MAGIC)):
        if data.startswith(magic):
            return name
    return "unknown"


def upload_kind(files: list[bytes], max_bytes: int) -> tuple[str, list[bytes]]:
    """("xray" or "ct", the upload's files with a zip unpacked), from the bytes alone (a
    DICOM header is read without its pixels).

    Raises:
        BadUpload: no file, or files that are not one image.
    """
    if not files:
        raise BadUpload("the upload holds no file")
    types = [file_type(data) for data in files]
    if types == ["zip"]:
        return "ct", _unzipped(files[0], max_bytes)
    if len(files) == 1 and types[0] in ("png", "jpeg"):
        return "xray", files
    if set(types) != {"dicom"}:
        raise BadUpload(
            "not an image: an upload is one PNG, JPEG or DICOM X-ray, or a CT series as DICOM "
            "files or one zip of them"
        )
    if len(files) > 1:
        return "ct", files
    try:
        modality = read_modality(files[0])
    except DecodeFailure as failure:
        raise BadUpload(f"{failure.reason.value}: {failure.detail}") from None
    return ("ct" if modality == "CT" else "xray"), files


def decode_upload(files: list[bytes], imaging: ImagingSettings, max_bytes: int) -> tuple[str, np.ndarray]:
    """One uploaded image -> ("xray", (S, S)) or ("ct", (D, H, W)), float32 in [0, 1].
    `max_bytes` bounds what a zip may expand to.

    Raises:
        BadUpload: not an image, a corrupt DICOM, a CT series that is not a volume, ...
    """
    kind, files = upload_kind(files, max_bytes)
    try:
        if file_type(files[0]) in ("png", "jpeg"):
            return kind, picture_pixels(files[0], imaging)
        slices = [read_dicom(data) for data in files]
        return kind, xray_pixels(slices[0], imaging) if kind == "xray" else ct_volume(slices, imaging)
    except DecodeFailure as failure:
        raise BadUpload(f"{failure.reason.value}: {failure.detail}") from None


def _unzipped(data: bytes, max_bytes: int) -> list[bytes]:
    """The files of a zip (folders and hidden files skipped), refusing one that would
    expand past `max_bytes`."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [
                m
                for m in archive.infolist()
                if not m.is_dir() and not m.filename.rsplit("/", 1)[-1].startswith(".")
            ]
            if not members:
                raise BadUpload("the zip holds no file")
            if len(members) > MAX_ZIP_MEMBERS:
                limit = f"a CT series has at most {MAX_ZIP_MEMBERS}"
                raise BadUpload(f"the zip holds {len(members)} files; {limit}")
            if sum(m.file_size for m in members) > max_bytes:
                raise BadUpload(f"the zip expands to more than the request limit of {max_bytes:,} bytes")
            return [archive.read(m) for m in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise BadUpload(f"not a readable zip ({type(exc).__name__})") from None
