"""De-identification, after the DICOM PS3.15 Annex E Basic Application Level
Confidentiality Profile.

Shards never hold a DICOM header. Ingest keeps pixels plus an allow-list of attributes
that identify no one (modality, sex, age; Annex E keeps age and sex only as derived,
coarse values), so every other attribute is removed ("X"), private tags included. UIDs and
patient IDs are replaced ("U") by keyed pseudonyms: HMAC-SHA256 under a secret key that
lives in config or the environment and is never written anywhere. Dates are dropped ("X");
the patient's age at the visit is kept. Report and record text is scrubbed of every
identifying value the headers and records carry for that patient (names, IDs, accession
numbers, institutions, addresses, phone numbers), in any letter case and, for names, in
either order, with initials; and of dates (numeric and written out), phone numbers,
e-mail addresses, record numbers and physician names by pattern. A name that is also an
ordinary word of a report (`ORDINARY_WORDS`: "May", "Grace", "White"...) is scrubbed on
its own only as a name: capitalised, after a title or a relation ("Mrs", "mother").
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
_MONTH = (
    r"(?i:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
_NAME_WORD = r"[A-Z][A-Za-z'’-]+"  # MacDonald, O'Neil, Smith-Jones
IDENTIFYING_PATTERN = re.compile(
    "|".join(
        [
            r"\b\d{4}-\d{2}-\d{2}\b",  # ISO dates
            r"\b\d{1,2}[/.]\d{1,2}[/.]\d{2,4}\b",  # 03/04/2024, 03.04.2024
            r"\b(?:19|20)\d{6}\b",  # DICOM dates, 20240304
            rf"\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}\b",  # 4 March 2024
            rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}\b",  # March 4, 2024
            r"(?<!\w)(?:\+?\d{1,3}[ -])?\(?\d{3}\)?[ -]\d{3}-\d{4}\b",  # North American phone numbers
            # international (+44 20 7946 0958) and with a national trunk prefix (020 7946 0958)
            r"\+\d{1,3}[ .-]?(?:\(0\)[ .-]?)?\d{1,5}(?:[ .-]?\d{2,5}){1,4}\b",
            r"\b0\d{2,4}[ -]\d{3,4}[ -]?\d{3,4}\b",
            r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail addresses
            r"\b(?i:MRN|ACC|accession|record)(?i:\s*(?:no\.?|number|#))?\s*[:#]?\s*[A-Z]*\d{4,}[A-Z]?\b",
            rf"\b(?:Dr|Prof)\.?\s+{_NAME_WORD}(?:\s+{_NAME_WORD})?",  # physician names
        ]
    )
)
# Names that are also words of English clinical text ("may represent", "X-ray", "white
# cell count", "lung fields", "fine crackles"): alone, they are scrubbed only as names
# (see Scrubber). Names that are words but not of this text (Grace, Lily) are scrubbed
# wherever they stand.
ORDINARY_WORDS = frozenset(
    " ".join(
        (
            "may will mark frank max ray gene hope young long little white green gray grey brown",
            "fields clear free fine well small mass major early late bright",
        )
    ).split()
)
# what precedes a name: a title, or a relation ("brought in by her mother May")
_NAME_CUE = (
    r"(?:(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)\.?|mother|father|guardian|parent|brother|sister|named|called)\s+"
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
    whole name in either order (also 'Smith, Emma'), with the given name as an initial
    ('E. Smith'), and the given and family names on their own."""
    name = re.sub(r"^(?:Dr|Prof|Mr|Mrs|Ms|Miss|Mx)\.?\s+", "", name.strip())
    if "^" in name:  # DICOM order is family^given^middle...
        family, _, rest = name.partition("^")
        given = [part for part in rest.split("^") if part.strip()]
        family_names, given_names = family.split(), " ".join(given).split()
    else:  # text order: given names, then the family name
        words = name.split()
        family_names, given_names = words[-1:], words[:-1]
    family, given = " ".join(family_names), " ".join(given_names)
    forms = {name, *family_names, *given_names}
    if family and given:
        first = given_names[0]
        forms |= {f"{given} {family}", f"{family} {given}", f"{family}, {given}", f"{first} {family}"}
        forms |= {f"{first[0]}. {family}", f"{first[0]} {family}", f"{family}, {first[0]}."}
    return {f.strip() for f in forms if len(f.strip()) >= 2}


def value_spellings(value: str) -> set[str]:
    """An identifying value and, for addresses, its comma-separated parts."""
    value = value.strip()
    forms = {value, *(part.strip() for part in value.split(","))}
    return {f for f in forms if len(f) >= 2}


class Scrubber:
    """Replaces one patient's identifying values (whole words, any letter case) and every
    identifying pattern in text by [REDACTED]. A value that is an ordinary word
    (`ORDINARY_WORDS`) is replaced only as a name: capitalised after a title or a relation.
    Build once per patient: the values compile into one regular expression, longest first,
    so 'Emma Smith' goes before 'Emma' can match."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        values = sorted({v for v in identifiers if v}, key=len, reverse=True)
        words = [v for v in values if v.lower() in ORDINARY_WORDS]
        others = [v for v in values if v.lower() not in ORDINARY_WORDS]
        parts = []
        if others:
            parts.append(rf"(?i:(?<!\w)(?:{'|'.join(map(re.escape, others))})(?!\w))")
        if words:
            names = "|".join(re.escape(w[:1].upper() + w[1:]) for w in words)
            parts.append(rf"(?P<cue>\b(?i:{_NAME_CUE}))(?:{names})(?!\w)")
        self._values = re.compile("|".join(parts)) if parts else None

    def __call__(self, text: str) -> str:
        # patterns first: a name inside an e-mail address would otherwise break its pattern
        text = IDENTIFYING_PATTERN.sub(REDACTED, text)
        if self._values is not None:
            text = self._values.sub(lambda found: (found.groupdict().get("cue") or "") + REDACTED, text)
        return text
