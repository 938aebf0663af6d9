"""Broken inputs for a synthetic raw store: one of each kind the ingest must quarantine.

Real exports hold transfers cut short (in the pixels or in the header), error pages saved
as `.dcm`, headers with values no decoder can use, pixel data no decoder reads, MR images
among the chest studies, CT series with lost, repeated or unevenly spaced slices or without
a usable orientation, reports whose images never arrived and JSONL lines cut off
mid-write. The ingest must set each aside with a reason and carry on. `make_faults` makes
one input of each kind, with the reason it should get, so tests, benchmarks and demos can
mix them into a raw store and check the ingest's quarantine.

Each fault belongs to its own extra patient (indices from `first_index` up), built with the
generator's own functions (`patients`), so it looks like the rest of the store and shares no
UID with it. No fault patient has a report or record line, except the report that lacks its
image and the cut lines themselves: each fault should give exactly one quarantine entry (a
CT fault names its whole series). Pure: the same arguments give the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, MRImageStorage

from p2med.platform.data.quarantine import Reason
from p2med.platform.data.synth.ct import render_ct
from p2med.platform.data.synth.dicom import CtSeries, XrayFile, ct_series, uid, xray_file
from p2med.platform.data.synth.patients import dataset_key, patient_case, patient_layout
from p2med.platform.data.synth.records import outpatient_record
from p2med.platform.data.synth.reports import report_record
from p2med.platform.data.synth.settings import SynthSettings
from p2med.platform.data.synth.xray import render_xray

XRAY_FOV_MM = 300.0
CT_FOV_MM = 250.0
CT_CHEST_MM = 200.0
# What a proxy or a failed download leaves in place of the file.
ERROR_PAGE = (
    b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>\n"
)
# Slice gaps as multiples of the nominal spacing: they spread over 80% of it, yet none reaches
# 1.5x the median or the mean (those read as a missing slice). Starting at 1.0, 1.4 keeps the
# median at 1.0 and the mean at or above it whatever the slice count.
UNEVEN_GAPS = (1.0, 1.4, 1.0, 0.6)


@dataclass(frozen=True)
class FaultSet:
    """Broken inputs to mix into a raw store, and what the ingest should say about each.

    Line numbers in `expected` assume `report_lines` and `record_lines` are appended, in
    order, after the `reports_before` and `records_before` lines already in those files.
    """

    files: dict[str, bytes]
    """Path relative to the raw store -> file bytes."""
    report_lines: list[str]
    """Raw lines (no trailing newline) to append to reports.jsonl; some are malformed."""
    record_lines: list[str]
    """Raw lines (no trailing newline) to append to records.jsonl; some are malformed."""
    expected: list[dict]
    """One per fault: {"kind", "inputs", "reason"}. `inputs` are paths in `files` (every file
    of a CT series) or "reports.jsonl:<line>" / "records.jsonl:<line>", 1-based; `reason` is a
    `Reason` value. A malformed line in each JSONL file is a fault of its own."""


def make_faults(
    config: SynthSettings, first_index: int, reports_before: int, records_before: int
) -> FaultSet:
    """One broken input of each kind, from patients `first_index` on (`len(FILE_FAULTS) + 2`
    patients: one per file fault, the imageless report, the cut lines)."""
    files: dict[str, bytes] = {}
    expected = []
    for offset, (kind, (reason, build)) in enumerate(FILE_FAULTS.items()):
        made = build(config, first_index + offset)
        files |= made
        expected.append(_entry(kind, sorted(made), reason))
    index = first_index + len(FILE_FAULTS)
    cut_report, cut_record = _cut_lines(config, index + 1)
    expected += [
        _entry("report_without_image", [f"reports.jsonl:{reports_before + 1}"], Reason.REPORT_WITHOUT_IMAGE),
        _entry("malformed_jsonl", [f"reports.jsonl:{reports_before + 2}"], Reason.MALFORMED_JSONL),
        _entry("malformed_jsonl", [f"records.jsonl:{records_before + 1}"], Reason.MALFORMED_JSONL),
    ]
    return FaultSet(files, [_report_without_image(config, index), cut_report], [cut_record], expected)


def _entry(kind: str, inputs: list[str], reason: Reason) -> dict:
    return {"kind": kind, "inputs": inputs, "reason": reason.value}


# --- X-ray files -------------------------------------------------------------------------


def _xray(
    config: SynthSettings, index: int, shape: tuple[int, int] | None = None, modality: str = "DX"
) -> XrayFile:
    """Patient `index`'s chest X-ray, square at the configured size unless `shape` says otherwise."""
    case = patient_case(config, index)
    rng = np.random.default_rng([config.seed, index, 1])
    shape = shape or (config.xray_size, config.xray_size)
    pixels = render_xray(patient_layout(config, case), case.findings, shape, rng)
    return xray_file(case, dataset_key(config), pixels, XRAY_FOV_MM / config.xray_size, modality)


def _xray_path(sop_instance_uid: str) -> str:
    return f"dicom/xray/{sop_instance_uid}.dcm"


def _rewrite(data: bytes, change: Callable[[Dataset], None]) -> bytes:
    """The DICOM file `data`, read back, changed in place by `change` and written again."""
    ds = dcmread(io.BytesIO(data))
    change(ds)
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _set_sop_instance_uid(ds: Dataset, sop_instance_uid: str) -> None:
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_instance_uid


def _truncated(config: SynthSettings, index: int) -> dict[str, bytes]:
    """An upload cut short: the header survives, the pixel data stops at 60% of the file."""
    xray = _xray(config, index)
    return {_xray_path(xray.sop_instance_uid): xray.data[: len(xray.data) * 3 // 5]}


def _cut_in_header(config: SynthSettings, index: int) -> dict[str, bytes]:
    """A transfer cut off inside the file meta header: after the preamble, the DICM prefix,
    the 12-byte group length element and 9 bytes of the next element's header (pydicom's
    parser then fails to unpack it)."""
    xray = _xray(config, index)
    return {_xray_path(xray.sop_instance_uid): xray.data[: 128 + 4 + 12 + 9]}


def _zero_window(config: SynthSettings, index: int) -> dict[str, bytes]:
    """A header whose VOI window has a width of 0 (a broken modality's export), which no
    windowing can apply."""

    def change(ds: Dataset) -> None:
        ds.WindowCenter, ds.WindowWidth = "2048", "0"

    xray = _xray(config, index)
    return {_xray_path(xray.sop_instance_uid): _rewrite(xray.data, change)}


def _not_dicom(config: SynthSettings, index: int) -> dict[str, bytes]:
    return {_xray_path(uid(dataset_key(config), index, "xray-image")): ERROR_PAGE}


def _no_pixel_data(config: SynthSettings, index: int) -> dict[str, bytes]:
    xray = _xray(config, index)
    return {_xray_path(xray.sop_instance_uid): _rewrite(xray.data, lambda ds: delattr(ds, "PixelData"))}


def _undecodable(config: SynthSettings, index: int) -> dict[str, bytes]:
    """Pixel data labelled MPEG-2 video, which neither pydicom nor pylibjpeg decodes."""
    garbage = np.random.default_rng([config.seed, index, 6]).bytes(1024)

    def change(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([garbage])
        # Encapsulated pixel data is OB of undefined length, as the standard requires.
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True

    xray = _xray(config, index)
    return {_xray_path(xray.sop_instance_uid): _rewrite(xray.data, change)}


def _wrong_modality(config: SynthSettings, index: int) -> dict[str, bytes]:
    """A valid MR image misrouted into the X-ray folder: only its modality is wrong."""
    key = dataset_key(config)
    mr_uid = uid(key, index, "mr-image")

    def change(ds: Dataset) -> None:
        ds.Modality = "MR"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
        _set_sop_instance_uid(ds, mr_uid)
        ds.StudyInstanceUID = uid(key, index, "mr-study")
        ds.SeriesInstanceUID = uid(key, index, "mr-series")
        ds.StudyDescription = "MR CHEST WITHOUT CONTRAST"
        ds.SeriesDescription = "AX T2"
        del ds.ViewPosition
        # The MR Image module's required attributes.
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = "4000"
        ds.EchoTime = "90"
        ds.EchoTrainLength = "16"
        ds.MagneticFieldStrength = "1.5"
        ds.ImagedNucleus = "1H"

    # A CR header carries fewer projection-only attributes than DX to take off.
    xray = _xray(config, index, modality="CR")
    return {_xray_path(mr_uid): _rewrite(xray.data, change)}


def _absurd_dimensions(config: SynthSettings, index: int) -> dict[str, bytes]:
    """A valid file whose image is 2 x 4096 pixels: a strip, not a chest."""
    xray = _xray(config, index, shape=(2, 4096))
    return {_xray_path(xray.sop_instance_uid): xray.data}


def _image_without_report(config: SynthSettings, index: int) -> dict[str, bytes]:
    xray = _xray(config, index)
    return {_xray_path(xray.sop_instance_uid): xray.data}


# --- CT series ---------------------------------------------------------------------------


def _ct(config: SynthSettings, index: int, slices: int | None = None) -> CtSeries:
    """Patient `index`'s chest CT of `slices` slices (the configured number unless given),
    made even if the patient's case has no CT."""
    slices = slices or config.ct_slices
    case = dataclasses.replace(patient_case(config, index), has_ct=True)
    rng = np.random.default_rng([config.seed, index, 5])
    volume = render_ct(patient_layout(config, case), case.findings, slices, config.ct_size, rng)
    key = dataset_key(config)
    return ct_series(case, key, volume, CT_FOV_MM / config.ct_size, CT_CHEST_MM / slices)


def _ct_files(series: CtSeries, slices: list[tuple[str, bytes]]) -> dict[str, bytes]:
    return {f"dicom/ct/{series.series_instance_uid}/{sop}.dcm": data for sop, data in slices}


def _ct_missing_slices(config: SynthSettings, index: int) -> dict[str, bytes]:
    """Three consecutive middle slices lost: a gap of four spacings. The series is made three
    slices longer, so that it keeps as many as a sound one and is not merely too short."""
    series = _ct(config, index, config.ct_slices + 3)
    middle = len(series.files) // 2
    return _ct_files(series, series.files[: middle - 1] + series.files[middle + 2 :])


def _ct_duplicate_slices(config: SynthSettings, index: int) -> dict[str, bytes]:
    """The middle slice sent twice, the second time under a new SOPInstanceUID."""
    series = _ct(config, index)
    again = uid(dataset_key(config), index, "ct-slice-duplicate")
    copy = _rewrite(series.files[len(series.files) // 2][1], lambda ds: _set_sop_instance_uid(ds, again))
    return _ct_files(series, [*series.files, (again, copy)])


def _ct_uneven_spacing(config: SynthSettings, index: int) -> dict[str, bytes]:
    """Every slice in place but moved along z so that the gaps follow `UNEVEN_GAPS`."""
    series = _ct(config, index)
    gaps = CT_CHEST_MM / config.ct_slices * np.resize(UNEVEN_GAPS, len(series.files) - 1)
    positions = np.concatenate([[0.0], np.cumsum(gaps)])

    def move_to(z: float) -> Callable[[Dataset], None]:
        def change(ds: Dataset) -> None:
            ds.ImagePositionPatient = [*ds.ImagePositionPatient[:2], f"{z:.3f}"]
            ds.SliceLocation = f"{z:.3f}"

        return change

    moved = [
        (sop, _rewrite(data, move_to(z))) for (sop, data), z in zip(series.files, positions, strict=True)
    ]
    return _ct_files(series, moved)


def _ct_bad_orientation(config: SynthSettings, index: int) -> dict[str, bytes]:
    """Every slice's ImageOrientationPatient with 4 values instead of 6: no slice normal."""

    def change(ds: Dataset) -> None:
        ds.ImageOrientationPatient = ds.ImageOrientationPatient[:4]

    series = _ct(config, index)
    return _ct_files(series, [(sop, _rewrite(data, change)) for sop, data in series.files])


def _ct_single_slice(config: SynthSettings, index: int) -> dict[str, bytes]:
    series = _ct(config, index)
    return _ct_files(series, [series.files[len(series.files) // 2]])


FILE_FAULTS: dict[str, tuple[Reason, Callable[[SynthSettings, int], dict[str, bytes]]]] = {
    "truncated": (Reason.UNREADABLE_FILE, _truncated),
    "cut_in_header": (Reason.UNREADABLE_FILE, _cut_in_header),
    "zero_window": (Reason.UNREADABLE_FILE, _zero_window),
    "not_dicom": (Reason.UNREADABLE_FILE, _not_dicom),
    "no_pixel_data": (Reason.NO_PIXEL_DATA, _no_pixel_data),
    "undecodable": (Reason.UNDECODABLE_PIXEL_DATA, _undecodable),
    "wrong_modality": (Reason.UNSUPPORTED_MODALITY, _wrong_modality),
    "absurd_dimensions": (Reason.BAD_DIMENSIONS, _absurd_dimensions),
    "ct_missing_slices": (Reason.CT_MISSING_SLICES, _ct_missing_slices),
    "ct_duplicate_slices": (Reason.CT_DUPLICATE_SLICES, _ct_duplicate_slices),
    "ct_uneven_spacing": (Reason.CT_UNEVEN_SPACING, _ct_uneven_spacing),
    "ct_bad_orientation": (Reason.CT_MISSING_SLICES, _ct_bad_orientation),
    "ct_single_slice": (Reason.CT_TOO_FEW_SLICES, _ct_single_slice),
    "image_without_report": (Reason.IMAGE_WITHOUT_REPORT, _image_without_report),
}
"""Faults that are files: kind -> (reason, builder of the files of patient `index`)."""


# --- JSONL lines -------------------------------------------------------------------------


def _json_line(row: dict) -> str:
    """A row as the generator writes it to JSONL, without the newline."""
    return json.dumps(row, ensure_ascii=False, sort_keys=True)


def _report_without_image(config: SynthSettings, index: int) -> str:
    """A well-formed report for an X-ray study of which no file exists."""
    study = uid(dataset_key(config), index, "xray-study")
    return _json_line(report_record(patient_case(config, index), config.seed, "DX", study))


def _cut_lines(config: SynthSettings, index: int) -> tuple[str, str]:
    """A report line and a record line cut in half, as an exporter that died mid-write leaves them."""
    case = patient_case(config, index)
    report = _json_line(report_record(case, config.seed, "DX", uid(dataset_key(config), index, "xray-study")))
    record = _json_line(outpatient_record(case))
    return report[: len(report) // 2], record[: len(record) // 2]
