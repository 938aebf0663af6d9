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
Chinese text the same way, through one `Scrubber` (`deid_zh`: names in characters and in
pinyin, address parts, Chinese date, ID card, phone and record number formats). Full-width
digits, letters and punctuation (１３８－１２３４...) are read as their ASCII forms; the text
is otherwise kept as it came.
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
from p2med.platform.data import deid_zh
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
# Word boundaries against Latin letters and digits only: a Chinese character next to an
# identifier ("于2024-03-04", "患者Emma") is no part of it, though regular expressions
# count it a word character.
_LATIN = "0-9A-Za-z_\u00c0-\u024f"
_START, _END = f"(?<![{_LATIN}])", f"(?![{_LATIN}])"
IDENTIFYING_PATTERN = re.compile(
    "|".join(
        [
            rf"{_START}\d{{4}}-\d{{2}}-\d{{2}}{_END}",  # ISO dates
            rf"{_START}\d{{1,2}}[/.]\d{{1,2}}[/.]\d{{2,4}}{_END}",  # 03/04/2024, 03.04.2024
            rf"{_START}(?:19|20)\d{{6}}{_END}",  # DICOM dates, 20240304
            rf"{_START}\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH},?\s+\d{{4}}{_END}",  # 4 March 2024
            rf"{_START}{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}{_END}",  # March 4, 2024
            rf"{_START}(?:\+?\d{{1,3}}[ -])?\(?\d{{3}}\)?[ -]\d{{3}}-\d{{4}}{_END}",  # North American phones
            # international (+44 20 7946 0958) and with a national trunk prefix (020 7946 0958)
            rf"\+\d{{1,3}}[ .-]?(?:\(0\)[ .-]?)?\d{{1,5}}(?:[ .-]?\d{{2,5}}){{1,4}}{_END}",
            rf"{_START}0\d{{2,4}}[ -]\d{{3,4}}[ -]?\d{{3,4}}{_END}",
            r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+",  # e-mail addresses
            rf"{_START}(?i:MRN|ACC|accession|record)(?i:\s*(?:no\.?|number|#))?\s*[:#]?\s*[A-Z]*\d{{4,}}[A-Z]?{_END}",
            rf"{_START}(?:Dr|Prof)\.?\s+{_NAME_WORD}(?:\s+{_NAME_WORD})?",  # physician names
            *deid_zh.IDENTIFYING_PATTERNS,
        ]
    )
)
# Full-width forms (U+FF01-FF5E) and the ideographic space, read as ASCII: one character
# for one, so what is found in the translation is where it is in the text.
HALF_WIDTH = {0xFF01 + offset: 0x21 + offset for offset in range(94)} | {0x3000: 0x20}
# What identifiers are matched in: the text with full-width forms read as ASCII and
# traditional Chinese characters as simplified, each one character for one, so what is
# found in the view is where it is in the text.
MATCHING_VIEW = deid_zh.SimplifiedView(HALF_WIDTH)
# Names that are also words of English clinical text ("may represent", "X-ray", "white
# cell count", "lung fields", "fine crackles"): alone, they are scrubbed only as names
# (see Scrubber). Names that are words but not of this text (Grace, Lily) are scrubbed
# wherever they stand.
ORDINARY_WORDS = frozenset(
    " ".join(
        (
            "may will mark frank max ray gene hope young long little white green gray grey brown",
            "fields clear free fine well small mass major early late bright",
            # pinyin of Chinese family and given names that are English words
            "he an man men fan pan ran tan ban can bin pin gang hang sang song wan sun ding lang",
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
    ('E. Smith'), and the given and family names on their own. A name in Chinese
    characters ('张伟', '张^伟', DICOM's 'Zhang^Wei=张^伟') gives its Chinese spellings
    (`deid_zh.chinese_name_spellings`) and those of its pinyin."""
    forms: set[str] = set()
    for group in name.split("="):  # DICOM PN: alphabetic=ideographic=phonetic
        group = re.sub(r"^(?:Dr|Prof|Mr|Mrs|Ms|Miss|Mx)\.?\s+", "", group.strip())
        group = re.sub(r"\s*(?:副?主任医师|主治医师|住院医师|医师|医生|主任|教授)$", "", group)
        if deid_zh.has_cjk(group):
            forms |= _chinese_spellings(group)
        elif group:
            forms |= _latin_spellings(group)
    return forms


def _chinese_spellings(name: str) -> set[str]:
    if "^" in name:
        family, _, given = name.partition("^")
        family, given = family.strip(), given.replace("^", "").strip()
    else:
        family, given = deid_zh.split_chinese_name(name)
    forms = {name} | deid_zh.chinese_name_spellings(family, given)
    for family_pinyin, given_pinyin in deid_zh.pinyin_names(family, given):
        forms |= _latin_spellings(f"{family_pinyin}^{given_pinyin}")
        for form in deid_zh.given_pinyin_forms(given):
            forms |= {form, f"{family_pinyin} {form}", f"{form} {family_pinyin}"}
    return forms


def _latin_spellings(name: str) -> set[str]:
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
    """An identifying value and, for addresses, its comma-separated parts (a Chinese
    address: its province, city, district, street...)."""
    value = value.strip()
    forms = {value, *(part.strip() for part in re.split(r"[,，、]", value))}
    if deid_zh.has_cjk(value):
        forms |= deid_zh.address_parts(value)
    return {f for f in forms if len(f) >= 2}


class Scrubber:
    """Replaces one patient's identifying values (whole words, any letter case; in Chinese
    characters, wherever they stand, traditional or simplified) and every identifying
    pattern in text by [REDACTED]. A value that is an ordinary word (`ORDINARY_WORDS`) is
    replaced only as a name: capitalised after a title or a relation. Build once per
    patient: the values compile into one regular expression, longest first, so 'Emma
    Smith' goes before 'Emma' can match."""

    def __init__(self, identifiers: Iterable[str]) -> None:
        values = sorted({v.translate(MATCHING_VIEW) for v in identifiers if v}, key=len, reverse=True)
        words = [v for v in values if v.lower() in ORDINARY_WORDS]
        chinese = [v for v in values if deid_zh.has_cjk(v)]
        others = [v for v in values if v.lower() not in ORDINARY_WORDS and not deid_zh.has_cjk(v)]
        parts = []
        if chinese:  # no spaces between words: wherever it stands
            parts.append(f"(?i:{'|'.join(map(re.escape, chinese))})")
        if others:
            parts.append(rf"(?i:{_START}(?:{'|'.join(map(re.escape, others))}){_END})")
        if words:
            names = "|".join(re.escape(w[:1].upper() + w[1:]) for w in words)
            parts.append(rf"(?P<cue>{_START}(?i:{_NAME_CUE}))(?:{names}){_END}")
        self._values = re.compile("|".join(parts)) if parts else None

    def __call__(self, text: str) -> str:
        view = text.translate(MATCHING_VIEW)
        found = [match.span() for match in IDENTIFYING_PATTERN.finditer(view)]
        if self._values is not None:
            # a name inside an e-mail address, a date inside a name's span...: spans merge
            for match in self._values.finditer(view):
                cue = match.groupdict().get("cue")  # kept: "mother [REDACTED]"
                found.append((match.end("cue") if cue else match.start(), match.end()))
        pieces, done = [], 0
        for start, end in _merged(found):
            pieces += [text[done:start], REDACTED]
            done = end
        return "".join(pieces) + text[done:]


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping or touching spans joined, in order."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
