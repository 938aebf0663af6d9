"""From DICOM to model-ready pixels: the one preprocessing path of the platform.

The ingest uses it on raw exports and the serving app on uploads, so what a model sees at
inference is exactly what it was trained on.

- X-ray: decode (compressed transfer syntaxes through pylibjpeg), Modality LUT / rescale,
  VOI LUT or window, invert MONOCHROME1, resize the longest side to `xray_size` keeping
  the aspect ratio, pad to a square, scale to [0, 1]. Returns (S, S) float32.
- X-ray as a picture (PNG or JPEG, as clinical apps upload them): greyscale, scaled to
  [0, 1] (8-bit by 255; deeper by robust percentiles, as a window-less DICOM), then the
  same resize and pad.
- CT: check the series geometry (slices sorted by position along the slice normal;
  gaps, duplicates, uneven spacing are refused), convert to HU, apply the lung window,
  resample to `ct_slices` x `ct_size` x `ct_size` with MONAI (trilinear, computed slice by
  slice in-plane, then along the normal: the same result without the whole volume in
  float). Returns (D, H, W) float32, inferior slice first.

What an image decodes to is bounded before it is decoded (`max_image_mb`, from the
headers): a few KB of compressed pixel data, or of a Deflated dataset, can ask for
gigabytes. Of a multi-frame file only the first frame is decoded.

Every refusal is a `DecodeFailure` with a quarantine `Reason` and a detail that quotes no
header value; any other error met while decoding one input becomes that input's
`DecodeFailure` too (`judged_alone`), so that it never fails the inputs decoded beside it.
"""

from __future__ import annotations

import contextlib
import functools
import io
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, ParamSpec, TypeVar

import numpy as np
import pydicom
from pydantic import Field
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from p2med.platform.config import Settings
from p2med.platform.data.quarantine import Reason

XRAY_MODALITIES = frozenset({"CR", "DX"})
# pydicom's warnings about malformed values quote them ("Invalid value for VR UI:
# '1.2.SMITH'"), into Ray's logs and the console: headers are identifying, and a value we
# use is checked where it is used
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
PIXEL_DATA_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})  # float, double float, integer


class ImagingSettings(Settings):
    """How images are normalised for the model."""

    xray_size: int = Field(224, ge=32, le=2048)
    """Side of the square X-ray after resizing (longest side) and padding."""
    ct_slices: int = Field(32, ge=4, le=512)
    """Slices of a CT volume after resampling along the slice normal."""
    ct_size: int = Field(128, ge=32, le=1024)
    """Height and width of each CT slice after resampling."""
    ct_window_center: float = -600.0
    """Lung window centre in HU."""
    ct_window_width: float = Field(1500.0, gt=0)
    """Lung window width in HU."""
    ct_min_slices: int = Field(8, ge=2)
    """A CT series with fewer slices is refused (not a chest volume)."""
    ct_spacing_tolerance: float = Field(0.2, gt=0, lt=1)
    """Largest relative deviation of a slice gap from the median gap."""
    min_side: int = Field(32, ge=1)
    """Images with a side shorter than this are refused."""
    max_side: int = Field(8192, ge=64)
    """Images with a side longer than this are refused."""
    max_aspect: float = Field(4.0, ge=1)
    """Images more elongated than this (long side / short side) are refused."""
    refuse_burned_in_text: bool = True
    """Refuse images whose header says text is burned into the pixels
    (BurnedInAnnotation YES): it may name the patient. Text burned in without the flag is
    not detected."""
    max_image_mb: float = Field(256.0, gt=0)
    """The most one image may decode to, in MiB: an X-ray's first frame, a CT series' slices
    together (stored values, as the headers give them), a Deflated DICOM file's dataset.
    Larger ones are refused before anything is decoded."""

    @property
    def max_image_bytes(self) -> int:
        return int(self.max_image_mb * 2**20)


class DecodeFailure(Exception):
    """An input that cannot become model pixels, with the reason to quarantine it."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


P = ParamSpec("P")
T = TypeVar("T")


def judged_alone(decode: Callable[P, T]) -> Callable[P, T]:
    """`decode`, with any error it meets on its input raised as that input's
    `DecodeFailure` (UNREADABLE_FILE, naming the error's type, never its message: messages
    quote header values). pydicom converts header values when they are first read and
    numpy computes with them, so a malformed header raises whatever they raise: a numpy
    UFuncTypeError for a non-numeric RescaleSlope, ValueError for a zero WindowWidth,
    struct.error for a file cut inside its header, RecursionError for sequences nested
    thousands deep."""

    @functools.wraps(decode)
    def judged(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return decode(*args, **kwargs)
        except DecodeFailure:
            raise
        except Exception as error:
            detail = f"a malformed DICOM header or pixel data ({type(error).__name__})"
            raise DecodeFailure(Reason.UNREADABLE_FILE, detail) from None

    return judged


@judged_alone
def read_dicom(data: bytes | BinaryIO, max_bytes: int, stop_before_pixels: bool = False) -> Dataset:
    """Parse DICOM bytes (or a binary file at its start); anything that is not a readable
    DICOM file is UNREADABLE_FILE, a Deflated dataset inflating past `max_bytes` TOO_LARGE."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        ds = _read_deflated(source, max_bytes, stop_before_pixels) or pydicom.dcmread(
            source, stop_before_pixels=stop_before_pixels
        )
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DecodeFailure(
            Reason.UNREADABLE_FILE, f"not a readable DICOM file ({type(exc).__name__})"
        ) from None
    # what it was read from, which the dataset would otherwise keep alive as long as itself
    # (its elements are read)
    ds.buffer = None
    return ds


def _read_deflated(source: BinaryIO, max_bytes: int, stop_before_pixels: bool) -> FileDataset | None:
    """A file of the Deflated transfer syntax, its dataset inflated as it is parsed: to its
    pixel data for a header, whole (at most `max_bytes`) otherwise. None for any other
    file, `source` left where it was. pydicom inflates the whole dataset at once, even to
    read a header: a few hundred KB of a Deflated file can ask for gigabytes."""
    start = source.tell()
    preamble = source.read(132)
    if preamble[128:] == b"DICM":
        meta = FileMetaDataset(read_dataset(source, False, True, stop_when=_past_file_meta))
        if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            stop = _at_pixel_data if stop_before_pixels else None
            # Deflated is Explicit VR Little Endian once inflated
            dataset = read_dataset(_Inflating(source, max_bytes), False, True, stop_when=stop)
            ds = FileDataset(source, dataset, preamble[:128], meta, False, True)
            ds.set_original_encoding(False, True, dataset.original_character_set)
            return ds
    source.seek(start)
    return None


def _past_file_meta(tag: BaseTag, *_: object) -> bool:
    return tag.group != 2


def _at_pixel_data(tag: BaseTag, *_: object) -> bool:
    return tag in PIXEL_DATA_TAGS


class _Inflating:
    """The raw-deflate stream of `source` (from where it is) as a readable, seekable file,
    inflated a piece (64 KiB) at a time as far as it is read; inflating past `max_bytes` is refused
    (TOO_LARGE). What was inflated is kept: pydicom seeks back a few bytes at times."""

    PIECE = 2**16

    def __init__(self, source: BinaryIO, max_bytes: int) -> None:
        self._source, self._max_bytes = source, max_bytes
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        self._inflated = bytearray()
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        while (size < 0 or len(self._inflated) < self._position + size) and self._inflate_piece():
            pass
        end = len(self._inflated) if size < 0 else self._position + size
        data = bytes(self._inflated[self._position : end])
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_END:
            while self._inflate_piece():
                pass
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._inflated)}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def tell(self) -> int:
        return self._position

    def _inflate_piece(self) -> bool:
        """Inflates the next piece onto what was inflated; False at the stream's end."""
        if self._inflater.eof:
            return False
        compressed = self._inflater.unconsumed_tail or self._source.read(self.PIECE)
        if not compressed:
            return False
        # a piece at most, and one byte past the limit tells it apart from reaching it
        room = min(self.PIECE, self._max_bytes - len(self._inflated) + 1)
        self._inflated += self._inflater.decompress(compressed, room)
        if len(self._inflated) > self._max_bytes:
            limit = f"the limit of {self._max_bytes:,} bytes"
            raise DecodeFailure(Reason.TOO_LARGE, f"a Deflated dataset inflating past {limit}")
        return True


@judged_alone
def frame_bytes(ds: Dataset) -> int:
    """What one frame of `ds` decodes to, in bytes, from its header alone."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    depth = (int(ds.get("BitsAllocated", 16) or 16) + 7) // 8
    return int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * samples * depth


def _check_burned_in_text(ds: Dataset, config: ImagingSettings) -> None:
    if config.refuse_burned_in_text and str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        raise DecodeFailure(Reason.BURNED_IN_TEXT, "its header says text is burned into the pixels")


def _check_size(decoded_bytes: int, config: ImagingSettings) -> None:
    if decoded_bytes > config.max_image_bytes:
        limit = f"the limit of {config.max_image_bytes:,} (max_image_mb)"
        raise DecodeFailure(Reason.TOO_LARGE, f"pixel data decoding to {decoded_bytes:,} bytes, past {limit}")


def _check_dimensions(rows: int, cols: int, config: ImagingSettings) -> None:
    short, long = sorted((int(rows), int(cols)))
    if short < config.min_side or long > config.max_side or long / max(short, 1) > config.max_aspect:
        raise DecodeFailure(Reason.BAD_DIMENSIONS, f"image of {rows}x{cols} pixels")


def _stored_pixels(ds: Dataset) -> np.ndarray:
    """The first frame's stored values, or the failure that explains why there are none.
    Not kept in `ds` (as `ds.pixel_array` would): a CT's slices are decoded one at a time."""
    if "PixelData" not in ds:
        raise DecodeFailure(Reason.NO_PIXEL_DATA, "no pixel data element")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        return pixel_array(ds, index=0)
    except Exception as exc:  # decoders raise many types; all mean the same here
        if syntax is not None and syntax.is_compressed:
            detail = f"cannot decode transfer syntax {syntax} ({type(exc).__name__})"
            raise DecodeFailure(Reason.UNDECODABLE_PIXEL_DATA, detail) from None
        detail = f"pixel data does not match the header ({type(exc).__name__})"
        raise DecodeFailure(Reason.UNREADABLE_FILE, detail) from None


@judged_alone
def xray_pixels(ds: Dataset, config: ImagingSettings) -> np.ndarray:
    """A chest radiograph as model input. Returns (S, S) float32 in [0, 1], S = xray_size."""
    modality = str(ds.get("Modality", ""))
    if modality not in XRAY_MODALITIES:
        # the value is not quoted: a header field may hold anything, identifiers included
        detail = "no modality" if not modality else "a modality other than CR or DX: not a radiograph"
        raise DecodeFailure(Reason.UNSUPPORTED_MODALITY, detail)
    _check_dimensions(ds.get("Rows", 0), ds.get("Columns", 0), config)
    _check_burned_in_text(ds, config)
    _check_size(frame_bytes(ds), config)
    stored = _stored_pixels(ds)
    if stored.ndim != 2:
        raise DecodeFailure(Reason.BAD_DIMENSIONS, f"expected one grey channel, got shape {stored.shape}")
    values = apply_modality_lut(stored, ds).astype(np.float32)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        # The header's window maps values onto the output range, saturating outside it.
        values = apply_voi_lut(values, ds).astype(np.float32)
        lo, hi = float(values.min()), float(values.max())
    else:  # no window given: stretch between robust percentiles, as viewers do
        lo, hi = np.percentile(values, [0.5, 99.5])
    scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if ds.get("PhotometricInterpretation") == "MONOCHROME1":  # bright means air: flip
        scaled = 1.0 - scaled
    return square(scaled, config.xray_size)


@contextlib.contextmanager
def _picture(data: bytes) -> Iterator[Any]:
    """The PIL image of PNG or JPEG bytes (pixels decoded when first read), with every
    error of reading it an UNREADABLE_FILE."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format not in ("PNG", "JPEG"):
                raise DecodeFailure(Reason.UNREADABLE_FILE, f"a {picture.format} picture, not PNG or JPEG")
            yield picture
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        detail = f"not a readable PNG or JPEG ({type(exc).__name__})"
        raise DecodeFailure(Reason.UNREADABLE_FILE, detail) from None


@judged_alone
def picture_bytes(data: bytes) -> int:
    """What a PNG or JPEG decodes to, in bytes, from its header alone."""
    from PIL import ImageMode

    with _picture(data) as picture:
        mode = ImageMode.getmode(picture.mode)
        return picture.width * picture.height * len(mode.bands) * np.dtype(mode.typestr).itemsize


@judged_alone
def picture_pixels(data: bytes, config: ImagingSettings) -> np.ndarray:
    """A chest radiograph exported as PNG or JPEG, as model input. Returns (S, S) float32 in
    [0, 1], S = xray_size, as `xray_pixels` does for DICOM."""
    with _picture(data) as picture:
        _check_dimensions(picture.height, picture.width, config)
        deep = picture.mode in ("I", "I;16", "I;16B", "F")
        values = np.asarray(picture if deep else picture.convert("L"), dtype=np.float32)
    if deep:
        lo, hi = np.percentile(values, [0.5, 99.5])
        scaled = np.clip((values - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    else:
        scaled = values / 255.0
    return square(scaled, config.xray_size)


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longest side is `size`, keeping the aspect ratio, then pad (with 0,
    i.e. black) to `size` x `size`, centred. (H, W) -> (size, size) float32."""
    import torch  # torch and MONAI take seconds to load: only where pixels are resampled
    from monai.transforms import Resize, SpatialPad

    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    resized = Resize(spatial_size=size, size_mode="longest", mode="area")(tensor)
    padded = SpatialPad(spatial_size=(size, size), mode="constant")(resized)
    return np.asarray(padded[0], dtype=np.float32)


@judged_alone
def ct_volume(slices: list[Dataset], config: ImagingSettings) -> np.ndarray:
    """A chest CT series as model input. `slices`: the series' datasets in any order.
    Returns (ct_slices, ct_size, ct_size) float32 in [0, 1] (lung window), inferior first."""
    modalities = {str(ds.get("Modality", "")) for ds in slices}
    if modalities != {"CT"}:
        raise DecodeFailure(Reason.UNSUPPORTED_MODALITY, "a slice's modality is not CT")
    if len(slices) < config.ct_min_slices:
        raise DecodeFailure(Reason.CT_TOO_FEW_SLICES, f"{len(slices)} slices, need {config.ct_min_slices}")
    ordered = sort_along_normal(slices, config.ct_spacing_tolerance)
    shapes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in ordered}
    if len(shapes) != 1:
        raise DecodeFailure(Reason.BAD_DIMENSIONS, f"slices of different sizes {sorted(shapes)}")
    _check_dimensions(*shapes.pop(), config)
    for ds in ordered:
        _check_burned_in_text(ds, config)
    _check_size(sum(frame_bytes(ds) for ds in ordered), config)
    import torch  # see square()
    from monai.transforms import Resize

    # trilinear resampling is separable: in-plane per slice, then along the normal
    in_plane = Resize(spatial_size=(config.ct_size, config.ct_size), mode="bilinear")
    low = config.ct_window_center - config.ct_window_width / 2
    planes = torch.empty((len(ordered), config.ct_size, config.ct_size))
    for index, ds in enumerate(ordered):
        hu = apply_modality_lut(_stored_pixels(ds), ds).astype(np.float32)
        windowed = np.clip((hu - low) / config.ct_window_width, 0.0, 1.0, dtype=np.float32)
        planes[index] = in_plane(torch.from_numpy(windowed)[None])[0]
    along = Resize(spatial_size=(config.ct_slices, config.ct_size, config.ct_size), mode="trilinear")
    return np.asarray(along(planes[None])[0], dtype=np.float32)


def sort_along_normal(slices: list[Dataset], tolerance: float) -> list[Dataset]:
    """Slices ordered by position along the slice normal (inferior first for axial CT),
    refusing duplicates, gaps and uneven spacing. File order and InstanceNumber are not
    trusted: exports shuffle files and scanners number slices either way."""
    try:
        orientation = np.array([float(v) for v in slices[0].ImageOrientationPatient])
        positions = [np.array([float(v) for v in ds.ImagePositionPatient]) for ds in slices]
    except (AttributeError, ValueError, TypeError):
        raise DecodeFailure(Reason.CT_MISSING_SLICES, "a slice lacks position or orientation") from None
    if orientation.shape != (6,) or any(p.shape != (3,) for p in positions):
        raise DecodeFailure(Reason.CT_MISSING_SLICES, "a slice's position or orientation has the wrong size")
    normal = np.cross(orientation[:3], orientation[3:])
    distance = np.array([float(p @ normal) for p in positions])
    order = np.argsort(distance, kind="stable")
    gaps = np.diff(distance[order])
    median = float(np.median(gaps))
    if median <= 1e-6 or np.any(gaps < 1e-3 * max(median, 1e-3)):
        raise DecodeFailure(Reason.CT_DUPLICATE_SLICES, "two or more slices share a position")
    deviation = np.abs(gaps - median) / median
    if np.any(gaps > (1.5 + tolerance) * median):
        raise DecodeFailure(
            Reason.CT_MISSING_SLICES, f"a gap of {gaps.max() / median:.1f}x the slice spacing"
        )
    if np.any(deviation > tolerance):
        raise DecodeFailure(Reason.CT_UNEVEN_SPACING, f"slice spacing varies by up to {deviation.max():.0%}")
    return [slices[i] for i in order]
