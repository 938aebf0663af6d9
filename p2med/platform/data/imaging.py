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
  resample to `ct_slices` x `ct_size` x `ct_size` with MONAI. Returns (D, H, W) float32,
  inferior slice first.

Every refusal is a `DecodeFailure` with a quarantine `Reason` and a detail that quotes no
header value; any other error met while decoding one input becomes that input's
`DecodeFailure` too (`judged_alone`), so that it never fails the inputs decoded beside it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np
import pydicom
from pydantic import Field
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from p2med.platform.config import Settings
from p2med.platform.data.quarantine import Reason

XRAY_MODALITIES = frozenset({"CR", "DX"})


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
def read_dicom(data: bytes, stop_before_pixels: bool = False) -> Dataset:
    """Parse DICOM bytes; anything that is not a readable DICOM file is UNREADABLE_FILE."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise DecodeFailure(
            Reason.UNREADABLE_FILE, f"not a readable DICOM file ({type(exc).__name__})"
        ) from None


def _check_dimensions(rows: int, cols: int, config: ImagingSettings) -> None:
    short, long = sorted((int(rows), int(cols)))
    if short < config.min_side or long > config.max_side or long / max(short, 1) > config.max_aspect:
        raise DecodeFailure(Reason.BAD_DIMENSIONS, f"image of {rows}x{cols} pixels")


def _stored_pixels(ds: Dataset) -> np.ndarray:
    """The first frame's stored values, or the failure that explains why there are none."""
    if "PixelData" not in ds:
        raise DecodeFailure(Reason.NO_PIXEL_DATA, "no pixel data element")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # decoders raise many types; all mean the same here
        if syntax is not None and syntax.is_compressed:
            detail = f"cannot decode transfer syntax {syntax} ({type(exc).__name__})"
            raise DecodeFailure(Reason.UNDECODABLE_PIXEL_DATA, detail) from None
        detail = f"pixel data does not match the header ({type(exc).__name__})"
        raise DecodeFailure(Reason.UNREADABLE_FILE, detail) from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return pixels[0] if frames > 1 else pixels


@judged_alone
def read_modality(data: bytes) -> str:
    """The Modality of DICOM bytes ("" if absent), read without the pixels."""
    return str(read_dicom(data, stop_before_pixels=True).get("Modality", ""))


@judged_alone
def xray_pixels(ds: Dataset, config: ImagingSettings) -> np.ndarray:
    """A chest radiograph as model input. Returns (S, S) float32 in [0, 1], S = xray_size."""
    modality = str(ds.get("Modality", ""))
    if modality not in XRAY_MODALITIES:
        # the value is not quoted: a header field may hold anything, identifiers included
        detail = "no modality" if not modality else "a modality other than CR or DX: not a radiograph"
        raise DecodeFailure(Reason.UNSUPPORTED_MODALITY, detail)
    _check_dimensions(ds.get("Rows", 0), ds.get("Columns", 0), config)
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


@judged_alone
def picture_pixels(data: bytes, config: ImagingSettings) -> np.ndarray:
    """A chest radiograph exported as PNG or JPEG, as model input. Returns (S, S) float32 in
    [0, 1], S = xray_size, as `xray_pixels` does for DICOM."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            if picture.format not in ("PNG", "JPEG"):
                raise DecodeFailure(Reason.UNREADABLE_FILE, f"a {picture.format} picture, not PNG or JPEG")
            _check_dimensions(picture.height, picture.width, config)
            deep = picture.mode in ("I", "I;16", "I;16B", "F")
            values = np.asarray(picture if deep else picture.convert("L"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        detail = f"not a readable PNG or JPEG ({type(exc).__name__})"
        raise DecodeFailure(Reason.UNREADABLE_FILE, detail) from None
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
    hu = np.stack([apply_modality_lut(_stored_pixels(ds), ds).astype(np.float32) for ds in ordered])
    low = config.ct_window_center - config.ct_window_width / 2
    windowed = np.clip((hu - low) / config.ct_window_width, 0.0, 1.0)
    size = (config.ct_slices, config.ct_size, config.ct_size)
    import torch  # see square()
    from monai.transforms import Resize

    resampled = Resize(spatial_size=size, mode="trilinear")(torch.from_numpy(windowed)[None])
    return np.asarray(resampled[0], dtype=np.float32)


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
