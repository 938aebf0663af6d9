"""Uploaded files -> model pixels: `p2med.platform.data.image_files`, whose refusals reach the
client as `BadUpload` (a 400 naming what is wrong with the upload)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from p2med.platform.data.image_files import BadImage, ImageFiles, decode_image_files, inspect_image_files
from p2med.platform.data.imaging import ImagingSettings
from p2med.serve_apps.errors import BadUpload


def inspect_upload(files: list[bytes], max_bytes: int) -> ImageFiles:
    """`inspect_image_files`; raises BadUpload."""
    with _refused():
        return inspect_image_files(files, max_bytes)


def decode_upload(files: list[bytes], imaging: ImagingSettings, max_bytes: int) -> tuple[str, np.ndarray]:
    """`decode_image_files`; raises BadUpload."""
    with _refused():
        return decode_image_files(files, imaging, max_bytes)


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    try:
        yield
    except BadImage as refusal:
        raise BadUpload(str(refusal)) from None
