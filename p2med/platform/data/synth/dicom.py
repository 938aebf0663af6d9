"""DICOM files for synthetic studies: a projection X-ray (CR or DX) and CT series.

Headers carry the fake identity on purpose (names, IDs, birth date, institution,
accession numbers, physicians, dates, a private tag with the MRN), so that ingest has real
work to de-identify. UIDs derive from (data set key, patient, role): the same config gives
the same bytes, and two data sets made with different configs share no UID.
"""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass

import numpy as np
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from p2med.platform.data.deid_zh import pinyin_names, split_chinese_name
from p2med.platform.data.synth.cases import Case
from p2med.platform.data.synth.identity_zh import ChineseIdentity

MANUFACTURER = "P2Med Synthetic"
PRIVATE_CREATOR = "P2MED SYNTH 1.0"


def uid(dataset_key: str, index: int, role: str) -> str:
    """A valid DICOM UID that is the same for the same (data set, patient, role)."""
    return generate_uid(entropy_srcs=["p2med-synth", dataset_key, str(index), role])


def _date(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _age_string(age_days: int) -> str:
    if age_days < 31:
        return f"{age_days:03d}D"
    if age_days < 730:
        return f"{int(age_days / 30.4):03d}M"
    return f"{int(age_days / 365.25):03d}Y"


def _person_name(full_name: str) -> str:
    """'Anna Smith' -> 'Smith^Anna': DICOM person names put the family name first."""
    given, _, family = full_name.rpartition(" ")
    return f"{family}^{given}"


@dataclass(frozen=True)
class HeaderIdentity:
    """Who and where a study's header names; person names in DICOM PN form."""

    patient_name: str
    patient_id: str
    guardian: str
    referring_physician: str
    operator: str
    address: str
    institution: str
    institution_address: str


def header_identity(case: Case, chinese: ChineseIdentity | None = None) -> HeaderIdentity:
    """The case's English identity, or its Chinese one as a Chinese hospital's PACS writes
    it: names in pinyin and in characters (`Zhang^Xiaoming=张^晓明`), the outpatient number
    as the patient ID."""
    ident = case.identity
    if chinese is None:
        return HeaderIdentity(
            patient_name=f"{ident.family_name}^{ident.given_name}",
            patient_id=ident.mrn,
            guardian=_person_name(ident.guardian_name),
            referring_physician=_person_name(ident.referring_physician),
            operator=_person_name(ident.attending),
            address=ident.address,
            institution=ident.institution,
            institution_address=ident.institution_address,
        )
    return HeaderIdentity(
        patient_name=_chinese_person_name(chinese.name),
        patient_id=chinese.outpatient_number,
        guardian=_chinese_person_name(chinese.mother),
        referring_physician=_chinese_person_name(chinese.physician),
        operator=_chinese_person_name(chinese.radiologist),
        address=chinese.address,
        institution=chinese.hospital,
        institution_address=chinese.address.split(chinese.city)[0] + chinese.city,
    )


def _chinese_person_name(name: str) -> str:
    """'张晓明' -> 'Zhang^Xiaoming=张^晓明': the alphabetic and ideographic PN groups."""
    family, given = split_chinese_name(name)
    (family_pinyin, given_pinyin), *_ = pinyin_names(family, given)
    return f"{family_pinyin}^{given_pinyin}={family}^{given}"


def _patient_and_study(case: Case, who: HeaderIdentity, study_uid: str, accession: str, time: str) -> Dataset:
    ds = Dataset()
    if not (who.patient_name + who.address + who.institution).isascii():
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8
    ds.PatientName = who.patient_name
    ds.PatientID = who.patient_id
    ds.PatientBirthDate = _date(case.identity.birth_date)
    ds.PatientSex = case.sex
    ds.PatientAge = _age_string(case.age_days)
    ds.PatientWeight = f"{case.weight_kg:.1f}"
    ds.PatientAddress = who.address
    ds.ResponsiblePerson = who.guardian
    ds.ResponsiblePersonRole = "PARENT"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = _date(case.visit_date)
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = time
    ds.AccessionNumber = accession
    ds.StudyID = accession[-6:]
    ds.ReferringPhysicianName = who.referring_physician
    ds.InstitutionName = who.institution
    ds.InstitutionAddress = who.institution_address
    ds.OperatorsName = who.operator
    ds.Manufacturer = MANUFACTURER
    ds.BodyPartExamined = "CHEST"
    # A private block, as vendors add: it repeats the patient ID, so ingest must drop private tags.
    block = ds.private_block(0x0011, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", who.patient_id)
    return ds


def _file_bytes(ds: Dataset, sop_class: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    buf = io.BytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _monochrome(ds: Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2").tobytes()


@dataclass(frozen=True)
class XrayFile:
    """A radiograph ready to store: its identifiers and the DICOM file's bytes."""

    sop_instance_uid: str
    study_instance_uid: str
    modality: str
    data: bytes


def xray_file(
    case: Case,
    dataset_key: str,
    pixels: np.ndarray,
    pixel_spacing_mm: float,
    modality: str,
    who: HeaderIdentity | None = None,
) -> XrayFile:
    """A frontal chest radiograph. `pixels`: (rows, cols) uint16, 12 bits stored. `who`:
    the identity its header names (default: the case's English one)."""
    study_uid = uid(dataset_key, case.index, "xray-study")
    time = f"{8 + case.index % 10:02d}{case.index * 7 % 60:02d}00"
    ds = _patient_and_study(case, who or header_identity(case), study_uid, case.identity.accession_xray, time)
    ds.SOPInstanceUID = uid(dataset_key, case.index, "xray-image")
    ds.SeriesInstanceUID = uid(dataset_key, case.index, "xray-series")
    ds.Modality = modality
    ds.StationName = "XR-ROOM-2"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.StudyDescription = "XR CHEST 1 VIEW"
    ds.SeriesDescription = "CHEST PA"
    ds.ViewPosition = "PA"
    # Radiological display: the patient's right is on the image's left, so columns run
    # towards the patient's Left and rows towards the Feet.
    ds.PatientOrientation = ["L", "F"]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PixelSpacing = [f"{pixel_spacing_mm:.4f}"] * 2
    if modality == "DX":  # the DX Image module's required attributes
        ds.ImagerPixelSpacing = ds.PixelSpacing
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelIntensityRelationship = "LIN"
        ds.PixelIntensityRelationshipSign = 1
        ds.ImageLaterality = "U"
        ds.AcquisitionContextSequence = []
    ds.PresentationLUTShape = "IDENTITY"
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    lo, hi = np.percentile(pixels, [1, 99.5])
    ds.WindowCenter = f"{(lo + hi) / 2:.0f}"
    ds.WindowWidth = f"{max(hi - lo, 1):.0f}"
    _monochrome(ds, pixels, bits_stored=12)
    sop = DigitalXRayImageStorageForPresentation if modality == "DX" else ComputedRadiographyImageStorage
    return XrayFile(ds.SOPInstanceUID, study_uid, modality, _file_bytes(ds, sop))


@dataclass(frozen=True)
class CtSeries:
    """A CT series ready to store: its identifiers and one DICOM file per slice."""

    series_instance_uid: str
    study_instance_uid: str
    files: list[tuple[str, bytes]]  # (SOPInstanceUID, file bytes), inferior slice first


def ct_series(
    case: Case,
    dataset_key: str,
    volume_hu: np.ndarray,
    pixel_spacing_mm: float,
    slice_thickness_mm: float,
    who: HeaderIdentity | None = None,
) -> CtSeries:
    """One axial CT series, a file per slice. `volume_hu`: (slices, rows, cols) in HU,
    slice 0 inferior. Stored values are HU + 1024 (RescaleIntercept -1024). `who`: the
    identity its headers name (default: the case's English one)."""
    slices, rows, cols = volume_hu.shape
    study_uid = uid(dataset_key, case.index, "ct-study")
    series_uid = uid(dataset_key, case.index, "ct-series")
    time = f"{9 + case.index % 9:02d}{case.index * 11 % 60:02d}00"
    ds = _patient_and_study(case, who or header_identity(case), study_uid, case.identity.accession_ct, time)
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = uid(dataset_key, case.index, "ct-frame")
    ds.PositionReferenceIndicator = ""
    ds.Modality = "CT"
    ds.StationName = "CT-1"
    ds.AcquisitionNumber = 1
    ds.SeriesNumber = 2
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.SeriesDescription = f"AXIAL {slice_thickness_mm:.1f}MM"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.PixelSpacing = [f"{pixel_spacing_mm:.4f}"] * 2
    ds.SliceThickness = f"{slice_thickness_mm:.2f}"
    ds.SpacingBetweenSlices = ds.SliceThickness
    ds.KVP = "100"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = ["-600", "40"]
    ds.WindowWidth = ["1500", "400"]
    stored = np.clip(np.rint(volume_hu) + 1024, 0, 4095).astype(np.uint16)
    # Patient origin at the centre of the field of view; z grows towards the head.
    x0 = -pixel_spacing_mm * (cols - 1) / 2
    y0 = -pixel_spacing_mm * (rows - 1) / 2
    files = []
    for k in range(slices):
        z = k * slice_thickness_mm
        ds.SOPInstanceUID = uid(dataset_key, case.index, f"ct-slice-{k}")
        ds.InstanceNumber = slices - k  # scanners number head first; files are not in order
        ds.ImagePositionPatient = [f"{x0:.3f}", f"{y0:.3f}", f"{z:.3f}"]
        ds.SliceLocation = f"{z:.3f}"
        _monochrome(ds, stored[k], bits_stored=12)
        files.append((ds.SOPInstanceUID, _file_bytes(ds, CTImageStorage)))
    return CtSeries(series_uid, study_uid, files)
