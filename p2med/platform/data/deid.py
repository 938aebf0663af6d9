"""De-identification, after the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile.

Shards never hold a DICOM header. Ingest keeps pixels plus an allow-list of attributes
that identify no one (modality, sex, age; Annex E keeps age and sex only as derived,
coarse values), so every other attribute is removed ("X"), private tags included. UIDs and
patient IDs are replaced ("U") by keyed pseudonyms: HMAC-SHA256 under a secret key that
lives in config or the environment and is never written anywhere. Dates are dropped ("X");
the patient's age at the visit is kept. Report and record text is scrubbed of every
identifying value the headers and records carry for that patient (names, IDs, accession
numbers, institutions, addresses, phone numbers), and of dates, phone numbers, record
numbers and physician names by pattern.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Iterable

from pydantic import SecretStr
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from p2med.platform.config import Settings
from p2med.platform.errors import P2MedError

KEY_ENV = "P2MED_DEID_KEY"
REDACTED = "[REDACTED]"

# Header attributes whose values identify someone; they are read only to scrub text.
IDENTIFYING_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientAddress",
    "ResponsiblePerson",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "InstitutionAddress",
    "StudyID",
)
IDENTIFYING_PATTERN = re.compile(
    "|".join(
        [
            r"\b\d{4}-\d{2}-\d{2}\b",  # ISO dates
            r"\b\d{1,2}/\d{1,2}/\d{2,4}\b",  # 03/04/2024
            r"\b(?:19|20)\d{6}\b",  # DICOM dates, 20240304
            r"\b(?:\+?\d{1,3}[ -])?\(?\d{3}\)?[ -]\d{3}-\d{4}\b",  # phone numbers
            r"\b(?:MRN|ACC)\s*\d{4,}[A-Z]?\b",  # record and accession numbers
            r"\bDr\.? [A-Z][a-z'’-]+(?: [A-Z][a-z'’-]+)?",  # physician names
        ]
    )
)


class DeidSettings(Settings):
    """De-identification settings."""

    key: SecretStr | None = None
    """Secret key for pseudonyms (HMAC-SHA256); unset: $P2MED_DEID_KEY. Never stored."""


def resolve_key(config: DeidSettings) -> bytes:
    """The pseudonymisation key from config or environment; there is no default, so
    pseudonyms cannot be recomputed by anyone who has only the code and the shards."""
    value = config.key.get_secret_value() if config.key else os.environ.get(KEY_ENV, "")
    if not value:
        raise P2MedError(
            f"no de-identification key: set deid.key or ${KEY_ENV} to a secret of your own "
            "(keep it: the same key gives the same pseudonyms and splits on the next ingest)"
        )
    return value.encode()


class Pseudonymizer:
    """Keyed, stable replacements for identifiers: same key and value, same pseudonym."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def _digest(self, kind: str, value: str) -> bytes:
        return hmac.new(self._key, f"{kind}\x00{value}".encode(), hashlib.sha256).digest()

    def pseudonym(self, kind: str, value: str) -> str:
        """E.g. pseudonym("patient", "MRN123") -> "patient-3f9a..." (16 hex digits)."""
        return f"{kind}-{self._digest(kind, value).hex()[:16]}"

    def unit_interval(self, kind: str, value: str) -> float:
        """A number in [0, 1) fixed by the key and value: deterministic, unguessable splits."""
        return int.from_bytes(self._digest(f"{kind}-fraction", value)[:8], "big") / 2**64


def header_identifiers(ds: Dataset) -> set[str]:
    """Every identifying value in a DICOM header, in the forms text may spell it."""
    values: set[str] = set()
    for name in IDENTIFYING_ATTRIBUTES:
        element = ds.data_element(name) if name in ds else None
        if element is None or element.value in (None, ""):
            continue
        items = element.value if isinstance(element.value, MultiValue) else [element.value]
        for item in items:
            values |= name_spellings(str(item)) if element.VR == "PN" else value_spellings(str(item))
    return values


def name_spellings(name: str) -> set[str]:
    """A person's name as text may write it: 'Smith^Emma' or 'Dr. Emma Smith' give the
    whole name both ways round, and the given and family names on their own."""
    name = name.strip().removeprefix("Dr. ").removeprefix("Dr ")
    components = [c.strip() for c in name.replace("^", " ").split() if c.strip()]
    forms = {name, " ".join(components), *components}
    if "^" in name:  # DICOM order is family^given
        family, _, rest = name.partition("^")
        forms.add(f"{rest.split('^')[0]} {family}".strip())
    return {f for f in forms if len(f) >= 2}


def value_spellings(value: str) -> set[str]:
    """An identifying value and, for addresses, its comma-separated parts."""
    value = value.strip()
    forms = {value, *(part.strip() for part in value.split(","))}
    return {f for f in forms if len(f) >= 2}


class Scrubber:
    """Replaces one patient's identifying values (whole words) and every identifying
    pattern in text by [REDACTED]. Build once per patient: the values compile into one
    regular expression, longest first, so 'Emma Smith' goes before 'Emma' can match."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        values = sorted({v for v in identifiers if v}, key=len, reverse=True)
        alternatives = "|".join(map(re.escape, values))
        self._values = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)") if values else None

    def __call__(self, text: str) -> str:
        if self._values is not None:
            text = self._values.sub(REDACTED, text)
        return IDENTIFYING_PATTERN.sub(REDACTED, text)
