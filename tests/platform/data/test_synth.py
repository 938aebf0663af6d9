"""The synthetic P2Med-MD generator: determinism, DICOM validity, findings in the pixels,
identifying data present (for ingest to remove), safe reruns, S3 output."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.uid import UID

from p2med.platform.data.synth import SynthSettings, generate
from p2med.platform.data.synth.anatomy import LOBE_BANDS, lobe_mask_2d
from p2med.platform.data.synth.ct import lobe_mask_3d, lung_masks, volume_grid
from p2med.platform.data.synth.dicom import uid
from p2med.platform.data.synth.identity_zh import chinese_identity, resident_id
from p2med.platform.data.synth.patients import dataset_key, patient_case, patient_layout
from p2med.platform.data.synth.xray import image_grid
from p2med.platform.data.vocabulary import LOBES
from p2med.platform.errors import P2MedError
from p2med.platform.storage import resolve

SMALL = SynthSettings(
    patients=16, ct_fraction=0.5, xray_size=192, ct_slices=16, ct_size=64, workers=1, seed=3
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "raw"
    generate(SMALL, resolve(str(root)), progress=False)
    return root


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def xray_path(root: Path, index: int) -> Path:
    return root / "dicom/xray" / f"{uid(dataset_key(SMALL), index, 'xray-image')}.dcm"


def ct_volume(root: Path, index: int) -> np.ndarray:
    """(slices, rows, cols) in HU, inferior first, sorted by position along the normal."""
    folder = root / "dicom/ct" / uid(dataset_key(SMALL), index, "ct-series")
    slices = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    return np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])


def test_same_seed_same_bytes_whatever_the_worker_count(dataset, tmp_path):
    again = tmp_path / "again"
    generate(SMALL.model_copy(update={"workers": 2}), resolve(str(again)), progress=False)
    assert all_files(again) == all_files(dataset)


def test_a_larger_set_extends_a_smaller_one(dataset, tmp_path):
    fewer = tmp_path / "fewer"
    generate(SMALL.model_copy(update={"patients": 5}), resolve(str(fewer)), progress=False)
    small, big = all_files(fewer), all_files(dataset)
    dicoms = [name for name in small if name.endswith(".dcm")]
    assert dicoms and all(small[name] == big[name] for name in dicoms)


def test_patient_ids_are_unique():
    ids = [patient_case(SMALL, i).identity for i in range(3000)]
    assert len({i.mrn for i in ids}) == len({i.accession_xray for i in ids}) == 3000


def test_other_settings_other_uids():
    assert dataset_key(SMALL) != dataset_key(SMALL.model_copy(update={"xray_size": 200}))
    assert dataset_key(SMALL) == dataset_key(SMALL.model_copy(update={"patients": 99, "workers": 2}))


def test_other_seed_other_data(dataset, tmp_path):
    other = tmp_path / "other"
    generate(SMALL.model_copy(update={"seed": 4, "patients": 4}), resolve(str(other)), progress=False)
    assert (other / "reports.jsonl").read_bytes() != (dataset / "reports.jsonl").read_bytes()


def test_manifest_lists_what_was_written(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert manifest["kind"] == "p2med-synthetic-raw" and manifest["counts"]["patients"] == 16
    files = set(all_files(dataset))
    for study in manifest["studies"]:
        listed = [f for f in files if f.startswith(study["path"])]
        assert len(listed) == study["files"]
    dicoms = sum(s["files"] for s in manifest["studies"])
    assert dicoms == len([f for f in files if f.endswith(".dcm")])
    assert not (dataset / ".p2med-synth-incomplete").exists()


def test_xrays_are_valid_dicom(dataset):
    for i in range(SMALL.patients):
        ds = pydicom.dcmread(xray_path(dataset, i))
        assert ds.Modality in ("CR", "DX")
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.PhotometricInterpretation == "MONOCHROME2" and ds.BitsAllocated == 16
        assert len(ds.PixelSpacing) == 2 and float(ds.WindowWidth) > 0
        if ds.Modality == "DX":
            assert ds.PixelIntensityRelationship == "LIN" and ds.ImageLaterality == "U"
            assert ds.PresentationIntentType == "FOR PRESENTATION" and "AcquisitionContextSequence" in ds
        for value in (ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID):
            assert UID(value).is_valid
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16 and pixels.shape[0] == SMALL.xray_size
        assert 0.8 * SMALL.xray_size <= pixels.shape[1] <= SMALL.xray_size


def test_ct_series_geometry_and_hounsfield_units(dataset):
    cases = [patient_case(SMALL, i) for i in range(SMALL.patients)]
    with_ct = [c for c in cases if c.has_ct]
    assert with_ct, "the small set must hold CT series"
    for case in with_ct:
        folder = dataset / "dicom/ct" / uid(dataset_key(SMALL), case.index, "ct-series")
        slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
        assert len(slices) == SMALL.ct_slices
        assert {ds.SeriesInstanceUID for ds in slices} == {folder.name}
        assert {ds.Modality for ds in slices} == {"CT"}
        z = [float(ds.ImagePositionPatient[2]) for ds in slices]
        assert len(set(z)) == len(z)
        by_position = sorted(slices, key=lambda ds: float(ds.ImagePositionPatient[2]))
        # File names are UIDs and instance numbers run head first: neither gives slice order.
        assert [ds.InstanceNumber for ds in by_position] == list(range(SMALL.ct_slices, 0, -1))
        gaps = np.diff(sorted(z))
        assert np.allclose(gaps, float(slices[0].SliceThickness), atol=0.01)
        hu = ct_volume(dataset, case.index)
        assert hu.min() >= -1024 and hu.max() <= 3071
        corner = hu[:, :3, :3]
        assert np.median(corner) < -900  # air outside the body


def test_monai_loads_a_series_as_one_volume_with_consistent_geometry(dataset):
    case = next(c for c in (patient_case(SMALL, i) for i in range(SMALL.patients)) if c.has_ct)
    folder = dataset / "dicom/ct" / uid(dataset_key(SMALL), case.index, "ct-series")
    image = LoadImage(reader="PydicomReader", image_only=True)(str(folder))
    assert tuple(image.shape) == (SMALL.ct_size, SMALL.ct_size, SMALL.ct_slices)
    ours = ct_volume(dataset, case.index)  # (S, rows, cols), inferior first
    by_z = {}
    for p in folder.glob("*.dcm"):
        ds = pydicom.dcmread(p)
        by_z[round(float(ds.ImagePositionPatient[2]), 2)] = ds
    affine = np.asarray(image.affine)  # voxel (column, row, slice) -> RAS mm
    array = np.asarray(image)
    for k in range(SMALL.ct_slices):
        x_ras, y_ras, z, _ = affine @ np.array([0, 0, k, 1.0])
        ds = by_z[round(float(z), 2)]
        # RAS is LPS with x and y negated: voxel (0, 0) is the slice's ImagePositionPatient.
        assert np.allclose([-x_ras, -y_ras], [float(v) for v in ds.ImagePositionPatient[:2]], atol=0.01)
        assert np.array_equal(array[:, :, k].T, ds.pixel_array - 1024.0)
    # Column 0 is the patient's right (RAS x larger), row 0 anterior (RAS y larger).
    assert (affine @ [0, 0, 0, 1])[0] > (affine @ [SMALL.ct_size - 1, 0, 0, 1])[0]
    assert (affine @ [0, 0, 0, 1])[1] > (affine @ [0, SMALL.ct_size - 1, 0, 1])[1]
    assert np.median(array) < 0 and ours.shape == (SMALL.ct_slices, SMALL.ct_size, SMALL.ct_size)


def _comparison_lobes(case, stated: str) -> list[str]:
    """Lobes without findings of their own, nor under an effusion (which is dense too)."""
    focal = {f.lobe for f in case.findings if f.lobe}
    effusion_sides = {f.side for f in case.findings if f.type == "pleural_effusion"}
    return [
        lobe
        for lobe in LOBES
        if lobe != stated
        and lobe not in focal
        and not (lobe.split("_")[0] in effusion_sides and LOBE_BANDS[lobe][1] == 1.0)
    ]


def cases_with_focal_findings(config: SynthSettings, root: Path):
    """Generate `config` into `root`; yield (case, its focal findings) where it has some."""
    generate(config, resolve(str(root)), progress=False)
    for i in range(config.patients):
        case = patient_case(config, i)
        focal = [f for f in case.findings if f.lobe]
        if focal:
            yield case, focal


def test_xray_pixels_show_the_stated_lobe(tmp_path):
    config = SMALL.model_copy(update={"patients": 40, "ct_fraction": 0.0, "xray_size": 256})
    root = tmp_path / "raw"
    checked = 0
    for case, focal in cases_with_focal_findings(config, root):
        path = root / "dicom/xray" / f"{uid(dataset_key(config), case.index, 'xray-image')}.dcm"
        pixels = pydicom.dcmread(path).pixel_array
        layout = patient_layout(config, case)
        x, y = image_grid(*pixels.shape)
        mean = {lobe: float(pixels[lobe_mask_2d(layout, x, y, lobe)].mean()) for lobe in LOBES}
        for finding in focal:
            others = _comparison_lobes(case, finding.lobe)
            assert mean[finding.lobe] > max(mean[o] for o in others) + 100, (finding, mean)
            checked += 1
    assert checked >= 10


def test_ct_voxels_show_the_stated_lobe(tmp_path):
    config = SMALL.model_copy(update={"patients": 30, "ct_fraction": 1.0, "xray_size": 64})
    root = tmp_path / "raw"
    checked = 0
    for case, focal in cases_with_focal_findings(config, root):
        folder = root / "dicom/ct" / uid(dataset_key(config), case.index, "ct-series")
        slices = sorted(
            (pydicom.dcmread(p) for p in folder.glob("*.dcm")), key=lambda d: float(d.SliceLocation)
        )
        hu = np.stack([ds.pixel_array - 1024.0 for ds in slices])
        layout = patient_layout(config, case)
        hyper = any(f.type == "hyperinflation" for f in case.findings)
        z, yy, xx = volume_grid(config.ct_slices, config.ct_size)
        lungs = lung_masks(layout, z, yy, xx, hyper)
        # Share of voxels denser than aerated (or interstitially thickened) lung.
        dense = {
            lobe: float((hu[lobe_mask_3d(layout, z, yy, xx, lungs, lobe, hyper)] > -450).mean())
            for lobe in LOBES
        }
        for finding in focal:
            others = _comparison_lobes(case, finding.lobe)
            assert dense[finding.lobe] > max(dense[o] for o in others) + 0.05, (finding, dense)
            checked += 1
    assert checked >= 8


def test_raw_output_carries_identifying_data(dataset):
    case = patient_case(SMALL, 0)
    ds = pydicom.dcmread(xray_path(dataset, 0))
    assert str(ds.PatientName) == f"{case.identity.family_name}^{case.identity.given_name}"
    assert ds.PatientID == case.identity.mrn and ds.AccessionNumber == case.identity.accession_xray
    assert ds.PatientBirthDate == case.identity.birth_date.strftime("%Y%m%d")
    assert ds.InstitutionName and ds.ReferringPhysicianName and ds.StudyDate
    private = ds.private_block(0x0011, "P2MED SYNTH 1.0")
    assert private[0x10].value == case.identity.mrn
    records = [json.loads(line) for line in (dataset / "records.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["patient_id"] == case.identity.mrn)
    assert case.identity.given_name in first["sections"]["history"]
    assert first["patient_name"] == case.identity.full_name and first["phone"]
    reports = (dataset / "reports.jsonl").read_text()
    assert case.identity.mrn in reports and case.identity.radiologist in reports


def test_text_never_gives_away_lobe_or_side_outside_imaging_sections(dataset):
    records = [json.loads(line) for line in (dataset / "records.jsonl").read_text().splitlines()]
    for record in records:
        for name, text in record["sections"].items():
            if name in ("imaging",):
                continue
            lowered = text.lower()
            assert "lobe" not in lowered and " left" not in lowered and " right" not in lowered, (name, text)


def test_rerun_replaces_an_earlier_data_set(tmp_path):
    out = resolve(str(tmp_path / "raw"))
    generate(SMALL.model_copy(update={"patients": 6}), out, progress=False)
    summary = generate(SMALL.model_copy(update={"patients": 3}), out, progress=False)
    assert summary.patients == 3
    manifest = json.loads(out.join("manifest.json").read_text())
    assert manifest["counts"]["patients"] == 3
    assert len(list((tmp_path / "raw/dicom/xray").iterdir())) == 3


def test_refuses_a_folder_holding_something_else(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(P2MedError, match="not empty and holds no P2Med synthetic data set"):
        generate(SMALL, resolve(str(tmp_path)), progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["precious.txt"]


def test_an_interrupted_run_never_looks_complete_and_a_rerun_finishes_it(tmp_path):
    out = tmp_path / "raw"
    cmd = [sys.executable, "-m", "p2med", "synth", f"out={out}", "patients=400", "workers=1", "xray_size=256"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "dicom/xray").is_dir() or len(os.listdir(out / "dicom/xray")) < 5:
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert (out / ".p2med-synth-incomplete").exists()
    generate(SMALL.model_copy(update={"patients": 4}), resolve(str(out)), progress=False)
    assert json.loads((out / "manifest.json").read_text())["counts"]["patients"] == 4


@pytest.mark.s3
def test_generates_into_s3(bucket, s3_storage):
    out = resolve(f"s3://{bucket}/raw", s3_storage)
    config = SMALL.model_copy(update={"patients": 4, "workers": 2})
    summary = generate(config, out, progress=False)
    assert summary.out == f"s3://{bucket}/raw"
    manifest = json.loads(out.join("manifest.json").read_text())
    files = out.list_files()
    assert "manifest.json" in files and "reports.jsonl" in files
    assert sum(s["files"] for s in manifest["studies"]) == len([f for f in files if f.endswith(".dcm")])
    with out.join(manifest["studies"][0]["path"]).open("rb") as f:
        assert pydicom.dcmread(f).PatientID


def test_chinese_identities_carry_valid_resident_id_numbers():
    assert resident_id("110105", dt.date(1949, 12, 31), 2) == "11010519491231002X"  # a published example
    ident = chinese_identity(np.random.default_rng(3), "F", dt.date(2021, 5, 6), 41)
    assert ident.resident_id[6:14] == "20210506" and int(ident.resident_id[16]) % 2 == 0  # even: a girl
    assert ident.name.startswith(ident.family_name) and ident.outpatient_number.endswith("41")
