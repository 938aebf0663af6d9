"""Image files -> model pixels, through the ingest's own preprocessing (`imaging`): what the
API does with an upload and the eval with a benchmark file's images.

One image is an X-ray (one DICOM, PNG or JPEG file) or a CT series (its DICOM slices as
several files, or one zip of them). Which it is comes from the bytes, never from a file
name or a declared type:

    kind, pixels = decode_image_files([png_bytes], imaging, max_bytes)   # "xray", (S, S)
    kind, pixels = decode_image_files(slice_files, imaging, max_bytes)   # "ct", (D, H, W)
    kind, pixels = decode_image_files([zip_bytes], imaging, max_bytes)   # "ct", (D, H, W)

`max_bytes` also bounds what the files expand to: a zip's files, and the pixel data they
decode to, as their headers give it (a few KB of compressed pixels can ask for
gigabytes). `inspect_image_files` checks all that from the headers, before any pixel is
decoded; `decode_image_files` checks it again (a file is read once there, with its pixel
data still encoded) before it decodes.

Every refusal is a `BadImage` whose message says what is wrong with the files without
quoting a header value.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from p2med.model.config import ModelConfig
from p2med.platform.data.imaging import (
    DecodeFailure,
    ImagingSettings,
    ct_volume,
    frame_bytes,
    picture_bytes,
    picture_pixels,
    read_dicom,
    xray_pixels,
)

PNG_MAGIC, JPEG_MAGIC, ZIP_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"PK\x03\x04"
MAX_ZIP_MEMBERS = 2048  # slices of one CT series; a zip with more is not one series


class BadImage(ValueError):
    """Files that cannot become model input (not an image, a corrupt DICOM, ...)."""


def file_type(data: bytes) -> str:
    """ "dicom", "png", "jpeg", "zip" or "unknown", from the leading bytes."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    for name, magic in (("png", PNG_MAGIC), ("jpeg", JPEG_MAGIC), ("zip", ZIP_MAGIC)):
        if data.startswith(magic):
            return name
    return "unknown"


@dataclass(frozen=True)
class ImageFiles:
    """One image's files as their bytes and headers tell it, before any pixel is decoded."""

    kind: str  # "xray" or "ct"
    files: list[bytes]  # a zip unpacked
    pixel_bytes: int  # what its pixel data decodes to (stored values; a DICOM's first frame)


def imaging_for(config: ModelConfig) -> ImagingSettings:
    """The preprocessing that made the model's training images (sizes from its config; the
    lung window is the ingest's default). Burned-in text is accepted: an upload is not kept."""
    vision = config.vision
    sizes = {"xray_size": vision.xray_size, "ct_slices": vision.ct_slices, "ct_size": vision.ct_size}
    return ImagingSettings(**sizes, refuse_burned_in_text=False)


def inspect_image_files(files: list[bytes], max_bytes: int) -> ImageFiles:
    """What the files are, from their bytes and headers alone.

    Raises:
        BadImage: no file, files that are not one image, or files that expand (zip)
            or decodes past `max_bytes`.
    """
    return _read(files, max_bytes, stop_before_pixels=True)[0]


def decode_image_files(
    files: list[bytes], imaging: ImagingSettings, max_bytes: int
) -> tuple[str, np.ndarray]:
    """One image's files -> ("xray", (S, S)) or ("ct", (D, H, W)), float32 in [0, 1].

    Raises:
        BadImage: not an image, a corrupt DICOM, a CT series that is not a volume, an
            image past `max_bytes` (see `inspect_image_files`), ...
    """
    image, datasets = _read(files, max_bytes, stop_before_pixels=False)
    try:
        if not datasets:  # a picture
            return image.kind, picture_pixels(image.files[0], imaging)
        pixels = xray_pixels(datasets[0], imaging) if image.kind == "xray" else ct_volume(datasets, imaging)
        return image.kind, pixels
    except DecodeFailure as failure:
        raise BadImage(f"{failure.reason.value}: {failure.detail}") from None


def _read(files: list[bytes], max_bytes: int, stop_before_pixels: bool) -> tuple[ImageFiles, list[Dataset]]:
    """The image's files, and its DICOM files read (to their pixel data, or whole with the
    pixel data still encoded); no dataset for a picture. Raises BadImage as
    `inspect_image_files`."""
    if not files:
        raise BadImage("the upload holds no file")
    types = [file_type(data) for data in files]
    try:
        if len(files) == 1 and types[0] in ("png", "jpeg"):
            return _within(ImageFiles("xray", files, picture_bytes(files[0])), max_bytes), []
        zipped = types == ["zip"]
        if zipped:
            files = _unzipped(files[0], max_bytes)
        elif set(types) != {"dicom"}:
            raise BadImage(
                "not an image: an upload is one PNG, JPEG or DICOM X-ray, or a CT series as DICOM "
                "files or one zip of them"
            )
        datasets = [read_dicom(data, max_bytes, stop_before_pixels) for data in files]
        single_ct = str(datasets[0].get("Modality", "")) == "CT"
        kind = "ct" if zipped or len(files) > 1 or single_ct else "xray"
        image = ImageFiles(kind, files, sum(frame_bytes(ds) for ds in datasets))
        return _within(image, max_bytes), datasets
    except DecodeFailure as failure:
        raise BadImage(f"{failure.reason.value}: {failure.detail}") from None


def _within(image: ImageFiles, max_bytes: int) -> ImageFiles:
    if image.pixel_bytes > max_bytes:
        raise BadImage(
            f"the image's pixel data decodes to {image.pixel_bytes:,} bytes; the limit is {max_bytes:,}"
        )
    return image


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
                raise BadImage("the zip holds no file")
            if len(members) > MAX_ZIP_MEMBERS:
                limit = f"a CT series has at most {MAX_ZIP_MEMBERS}"
                raise BadImage(f"the zip holds {len(members)} files; {limit}")
            if sum(m.file_size for m in members) > max_bytes:
                raise BadImage(f"the zip expands to more than the request limit of {max_bytes:,} bytes")
            return [archive.read(m) for m in members]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as exc:
        raise BadImage(f"not a readable zip ({type(exc).__name__})") from None
