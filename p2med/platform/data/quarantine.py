"""Why an input was set aside: the reasons the ingest records in its manifest.

Real exports are messy. An input that cannot become a clean sample is quarantined with
one of these reasons and a short detail (never an identifying value), and the rest of the
ingest goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Reason(StrEnum):
    UNREADABLE_FILE = "unreadable_file"  # truncated, or not DICOM at all
    NO_PIXEL_DATA = "no_pixel_data"
    UNDECODABLE_PIXEL_DATA = "undecodable_pixel_data"  # a transfer syntax no handler decodes
    UNSUPPORTED_MODALITY = "unsupported_modality"  # e.g. MR among chest X-rays and CTs
    BAD_DIMENSIONS = "bad_dimensions"  # absurdly small, large or elongated images
    BURNED_IN_TEXT = "burned_in_text"  # BurnedInAnnotation YES: text on the pixels may name the patient
    TOO_LARGE = "too_large"  # would decode to more than the pixel budget (imaging.max_image_mb)
    CT_MISSING_SLICES = "ct_missing_slices"  # gaps along the slice normal
    CT_DUPLICATE_SLICES = "ct_duplicate_slices"  # two slices at one position
    CT_UNEVEN_SPACING = "ct_uneven_spacing"  # spacing varies beyond tolerance
    CT_TOO_FEW_SLICES = "ct_too_few_slices"  # e.g. a single-slice series
    REPORT_WITHOUT_IMAGE = "report_without_image"
    IMAGE_WITHOUT_REPORT = "image_without_report"
    MALFORMED_JSONL = "malformed_jsonl"


@dataclass(frozen=True)
class Quarantined:
    """One input set aside. `input` is a path relative to the raw store (plus a line
    number for JSONL); `detail` says what was wrong without quoting identifying data."""

    input: str
    reason: Reason
    detail: str
