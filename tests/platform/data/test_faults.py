"""Synthetic faults: deterministic, one per kind, each input present and broken as stated."""

from __future__ import annotations

import io
import json
import struct
from collections import Counter

import numpy as np
import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from p2med.platform.data.quarantine import Reason
from p2med.platform.data.synth import SynthSettings
from p2med.platform.data.synth.faults import UNEVEN_GAPS, FaultSet, make_faults

CONFIG = SynthSettings(patients=4, xray_size=96, ct_slices=12, ct_size=48)
REPORTS_BEFORE, RECORDS_BEFORE = 5, 7
KINDS = {
    "truncated": Reason.UNREADABLE_FILE,
    "cut_in_header": Reason.UNREADABLE_FILE,
    "zero_window": Reason.UNREADABLE_FILE,
    "not_dicom": Reason.UNREADABLE_FILE,
    "no_pixel_data": Reason.NO_PIXEL_DATA,
    "undecodable": Reason.UNDECODABLE_PIXEL_DATA,
    "wrong_modality": Reason.UNSUPPORTED_MODALITY,
    "absurd_dimensions": Reason.BAD_DIMENSIONS,
    "ct_missing_slices": Reason.CT_MISSING_SLICES,
    "ct_duplicate_slices": Reason.CT_DUPLICATE_SLICES,
    "ct_uneven_spacing": Reason.CT_UNEVEN_SPACING,
    "ct_bad_orientation": Reason.CT_MISSING_SLICES,
    "ct_single_slice": Reason.CT_TOO_FEW_SLICES,
    "report_without_image": Reason.REPORT_WITHOUT_IMAGE,
    "image_without_report": Reason.IMAGE_WITHOUT_REPORT,
    "malformed_jsonl": Reason.MALFORMED_JSONL,
}


@pytest.fixture(scope="module")
def faults() -> FaultSet:
    return make_faults(CONFIG, CONFIG.patients, REPORTS_BEFORE, RECORDS_BEFORE)


def inputs(faults: FaultSet, kind: str) -> list[str]:
    """The inputs of the one fault of `kind`."""
    (entry,) = [e for e in faults.expected if e["kind"] == kind]
    return entry["inputs"]


def read(faults: FaultSet, path: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(faults.files[path]))


def jsonl_line(faults: FaultSet, ref: str) -> str:
    """The line that "reports.jsonl:<n>" or "records.jsonl:<n>" names, n counted from 1."""
    name, number = ref.split(":")
    lines, before = {
        "reports.jsonl": (faults.report_lines, REPORTS_BEFORE),
        "records.jsonl": (faults.record_lines, RECORDS_BEFORE),
    }[name]
    return lines[int(number) - before - 1]


def dicom_paths(faults: FaultSet) -> list[str]:
    """Every file but those that pydicom cannot parse: not DICOM at all, or cut in the header."""
    unparsable = inputs(faults, "not_dicom") + inputs(faults, "cut_in_header")
    return [p for p in faults.files if p not in unparsable]


def slice_positions(faults: FaultSet, kind: str) -> np.ndarray:
    """z of every slice of the fault's series, sorted."""
    return np.sort([float(read(faults, p).ImagePositionPatient[2]) for p in inputs(faults, kind)])


def test_same_arguments_same_faults(faults):
    assert make_faults(CONFIG, CONFIG.patients, REPORTS_BEFORE, RECORDS_BEFORE) == faults


def test_one_fault_per_kind_with_its_reason(faults):
    counts = Counter(e["kind"] for e in faults.expected)
    assert counts == {kind: 2 if kind == "malformed_jsonl" else 1 for kind in KINDS}
    for entry in faults.expected:
        assert entry["reason"] == KINDS[entry["kind"]].value
        assert Reason(entry["reason"])


def test_every_input_exists_and_every_file_is_an_input(faults):
    named = [ref for e in faults.expected for ref in e["inputs"]]
    assert len(named) == len(set(named))
    files = {ref for ref in named if ref.startswith("dicom/")}
    assert files == set(faults.files)
    lines = [ref for ref in named if not ref.startswith("dicom/")]
    assert {jsonl_line(faults, ref) for ref in lines} == {*faults.report_lines, *faults.record_lines}
    assert all("\n" not in line for line in faults.report_lines + faults.record_lines)


def test_file_names_follow_the_raw_store_layout(faults):
    for path in faults.files:
        assert path.startswith(("dicom/xray/", "dicom/ct/")) and path.endswith(".dcm")
    for path in dicom_paths(faults):
        ds = read(faults, path)
        assert path.split("/")[-1] == f"{ds.SOPInstanceUID}.dcm"
        if path.startswith("dicom/ct/"):
            assert path.split("/")[2] == ds.SeriesInstanceUID


def test_truncated_file_has_a_header_but_not_all_its_pixels(faults):
    (path,) = inputs(faults, "truncated")
    # pydicom reads a file cut inside the pixel data without complaint; decoding fails.
    with pytest.raises(ValueError, match="less than expected"):
        _ = read(faults, path).pixel_array


def test_cut_in_header_stops_inside_the_file_meta(faults):
    (path,) = inputs(faults, "cut_in_header")
    data = faults.files[path]
    assert data[128:132] == b"DICM" and len(data) == 153
    with pytest.raises(struct.error):
        read(faults, path)


def test_zero_window_is_a_readable_file_with_a_window_of_width_0(faults):
    (path,) = inputs(faults, "zero_window")
    ds = read(faults, path)
    assert float(ds.WindowWidth) == 0 and ds.pixel_array.shape == (CONFIG.xray_size, CONFIG.xray_size)


def test_ct_bad_orientation_has_four_values_on_every_slice(faults):
    paths = inputs(faults, "ct_bad_orientation")
    assert len(paths) == CONFIG.ct_slices
    assert all(len(read(faults, p).ImageOrientationPatient) == 4 for p in paths)


def test_not_dicom_is_not_dicom(faults):
    (path,) = inputs(faults, "not_dicom")
    with pytest.raises(InvalidDicomError):
        read(faults, path)


def test_no_pixel_data(faults):
    (path,) = inputs(faults, "no_pixel_data")
    ds = read(faults, path)
    assert "PixelData" not in ds and ds.Rows == CONFIG.xray_size


def test_undecodable_pixel_data(faults):
    (path,) = inputs(faults, "undecodable")
    ds = read(faults, path)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.100"
    with pytest.raises(NotImplementedError):
        _ = ds.pixel_array


def test_wrong_modality_is_a_valid_mr_image(faults):
    (path,) = inputs(faults, "wrong_modality")
    ds = read(faults, path)
    assert ds.Modality == "MR" and ds.SOPClassUID == pydicom.uid.MRImageStorage
    assert ds.pixel_array.shape == (CONFIG.xray_size, CONFIG.xray_size)


def test_absurd_dimensions_with_matching_pixels(faults):
    (path,) = inputs(faults, "absurd_dimensions")
    ds = read(faults, path)
    assert (ds.Rows, ds.Columns) == (2, 4096)
    assert ds.pixel_array.shape == (2, 4096)


def test_ct_missing_slices_leave_a_gap(faults):
    gaps = np.diff(slice_positions(faults, "ct_missing_slices"))
    assert len(gaps) == CONFIG.ct_slices - 1
    assert np.isclose(gaps.max(), 4 * np.median(gaps), rtol=0.01)


def test_ct_duplicate_slice_shares_a_position(faults):
    paths = inputs(faults, "ct_duplicate_slices")
    slices = [read(faults, p) for p in paths]
    assert len({ds.SOPInstanceUID for ds in slices}) == len(slices) == CONFIG.ct_slices + 1
    positions = Counter(tuple(map(float, ds.ImagePositionPatient)) for ds in slices)
    assert sorted(positions.values())[-2:] == [1, 2]


def test_ct_uneven_spacing_without_a_missing_slice_gap(faults):
    gaps = np.diff(slice_positions(faults, "ct_uneven_spacing"))
    assert len(gaps) == CONFIG.ct_slices - 1
    median = np.median(gaps)
    assert (gaps.max() - gaps.min()) / median > 0.5
    assert gaps.max() < 1.5 * min(median, gaps.mean())


@pytest.mark.parametrize("slices", [8, 9, 10, 11])
def test_uneven_gaps_never_look_like_a_missing_slice(slices):
    gaps = np.resize(UNEVEN_GAPS, slices - 1)
    assert np.median(gaps) == 1.0 and gaps.mean() >= 1.0 and gaps.max() < 1.5


def test_ct_single_slice(faults):
    assert len(slice_positions(faults, "ct_single_slice")) == 1


def test_report_without_image_is_well_formed_and_names_no_file(faults):
    (ref,) = inputs(faults, "report_without_image")
    assert ref == f"reports.jsonl:{REPORTS_BEFORE + 1}"
    report = json.loads(jsonl_line(faults, ref))
    studies = {read(faults, p).StudyInstanceUID for p in dicom_paths(faults)}
    assert report["study_instance_uid"] not in studies and report["findings"]


def test_image_without_report_is_valid(faults):
    (path,) = inputs(faults, "image_without_report")
    assert read(faults, path).pixel_array.shape == (CONFIG.xray_size, CONFIG.xray_size)


def test_no_fault_image_has_a_report_or_record(faults):
    """So that each fault file gives exactly one quarantine entry."""
    lines = "\n".join(faults.report_lines + faults.record_lines)
    for path in dicom_paths(faults):
        assert read(faults, path).PatientID not in lines


def test_malformed_lines_do_not_parse(faults):
    refs = [ref for e in faults.expected if e["kind"] == "malformed_jsonl" for ref in e["inputs"]]
    assert sorted(ref.split(":")[0] for ref in refs) == ["records.jsonl", "reports.jsonl"]
    for ref in refs:
        with pytest.raises(json.JSONDecodeError):
            json.loads(jsonl_line(faults, ref))
