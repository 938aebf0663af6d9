"""De-identification recall on planted identifiers, and what it removes that is none.

    .venv/bin/python bench/deid.py                  # 200 synthetic patients (seconds)
    .venv/bin/python bench/deid.py --patients 50

For each synthetic patient (the generator's identities), the identifiers the ingest
collects from the DICOM header, the report and the records (`header_identifiers`,
`report_identifiers`, `record_identifiers`) build one `Scrubber`, as the ingest does.
Planted into clinical sentences are the patient's, the guardian's and the physicians'
names in every spelling a record may use (either order, any letter case, initials, a
title or relation before a given name), the record and accession numbers, the address,
and dates, phone numbers and e-mail addresses in several formats: recall is the share of
planted identifiers of which the scrubbed text keeps no word (an initial or a title
alone aside).
The generator's own reports and records of the same patients are then scrubbed, and
every removed word that is part of no identifier is listed: over-scrubbing.

Baseline in the same run: a scrubber replacing the header values exactly as written
(case-sensitive), the first thing one would write. The last line is the pasteable result.
"""

from __future__ import annotations

import argparse
import collections
import re
from collections.abc import Callable

from pydicom.dataset import Dataset

from p2med.platform.data.deid import REDACTED, Scrubber, header_identifiers
from p2med.platform.data.ingest_plan import record_identifiers, report_identifiers
from p2med.platform.data.synth.cases import Case, make_case
from p2med.platform.data.synth.records import inpatient_record, outpatient_record
from p2med.platform.data.synth.reports import report_record
from p2med.platform.data.synth.settings import Prevalence

SEED = 11
CUES = {"dr", "mrs", "mother", "mrn", "of", "th"}  # the words around a planted identifier that name no one
TARGET_RECALL = 1.0


def header(case: Case) -> Dataset:
    """The identifying attributes of the patient's DICOM header, as the generator writes them."""
    ident = case.identity
    ds = Dataset()
    ds.PatientName = f"{ident.family_name}^{ident.given_name}"
    ds.PatientID = ident.mrn
    ds.ResponsiblePerson = "^".join(reversed(ident.guardian_name.split(" ", 1)))
    ds.ReferringPhysicianName = "^".join(reversed(ident.referring_physician.split(" ", 1)))
    ds.PerformingPhysicianName = "^".join(reversed(ident.radiologist.split(" ", 1)))
    ds.AccessionNumber = ident.accession_xray
    ds.InstitutionName = ident.institution
    ds.InstitutionAddress = ident.institution_address
    ds.PatientAddress = ident.address
    return ds


def planted(case: Case) -> list[str]:
    """The patient's identifiers as a record or report may write them."""
    ident = case.identity
    given, family = ident.given_name, ident.family_name
    guardian_given, guardian_family = ident.guardian_name.split(" ", 1)
    doctor_given, doctor_family = ident.attending.split(" ", 1)
    born = ident.birth_date
    month, digits = born.strftime("%B"), ident.mrn.removeprefix("MRN")
    area, exchange, line = ident.phone.split("-")
    return [
        f"{given} {family}", f"{family}, {given}", f"{family.upper()} {given.upper()}",
        f"{given.lower()} {family.lower()}", f"{given[0]}. {family}", f"{family.upper()}", given,
        f"mother {guardian_given}", f"Mrs {guardian_family}", ident.guardian_name,
        f"Dr. {doctor_family}", f"Dr {doctor_given} {doctor_family}", f"{doctor_family.upper()}",
        ident.mrn, f"MRN: {digits}", f"MRN #{digits}", ident.accession_xray, ident.accession_ct,
        ident.address, ident.address.split(",")[0], ident.institution,
        born.isoformat(), born.strftime("%m/%d/%Y"), born.strftime("%d.%m.%Y"), born.strftime("%Y%m%d"),
        f"{born.day} {month} {born.year}", f"{month} {born.day}, {born.year}",
        f"{born.day}th of {month[:3]} {born.year}",
        ident.phone, f"({area}) {exchange}-{line}", f"+1 {area} {exchange} {line}", "+44 20 7946 0958",
        "020 7946 0958", f"{given.lower()}.{family.lower()}@example.org",
    ]  # fmt: skip


SENTENCES = (
    "Seen today: {} presented with cough and fever for 3 days.",
    "History from the chart ({}); temperature 38.9 C, SpO2 93% on room air.",
    "Follow-up arranged with {} in 48 hours if breathing worsens.",
)


def recall(cases: list[Case], scrubber_of: Callable[[Case], Callable[[str], str]]) -> tuple[float, list[str]]:
    """The share of planted identifiers of which no word is left, and those that were not."""
    missed, total = [], 0
    for case in cases:
        scrub = scrubber_of(case)
        for number, identifier in enumerate(planted(case)):
            sentence = SENTENCES[number % len(SENTENCES)]
            context = set(_words(sentence))
            left = set(_words(scrub(sentence.format(identifier)))) - context
            total += 1
            if left & {word for word in _words(identifier) if len(word) > 1 and word.lower() not in CUES}:
                missed.append(identifier)
    return 1 - len(missed) / total, missed


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text)


def over_scrubbed(cases: list[Case]) -> collections.Counter[str]:
    """Words the scrubber removes from the generator's reports and records that belong to no
    identifier of the patient (dates, numbers and names by pattern are identifiers)."""
    removed: collections.Counter[str] = collections.Counter()
    for case in cases:
        scrub = ingest_scrubber(case)
        known = " ".join(planted(case) + sorted(header_identifiers(header(case)))).lower()
        texts = [report_record(case, SEED, "CR", "1.2.3")[key] for key in ("findings", "impression")]
        for record in (outpatient_record(case), inpatient_record(case)):
            texts += [str(text) for text in record["sections"].values()]
        for text in texts:
            kept = collections.Counter(re.findall(r"\w+", scrub(text)))
            for word, count in (collections.Counter(re.findall(r"\w+", text)) - kept).items():
                if word.lower() not in known and word != REDACTED.strip("[]") and not word.isdigit():
                    removed[word] += count
    return removed


def ingest_scrubber(case: Case) -> Scrubber:
    report = report_record(case, SEED, "CR", "1.2.3")
    records = [outpatient_record(case), inpatient_record(case)]
    values = header_identifiers(header(case)) | report_identifiers(report)
    return Scrubber(values.union(*(record_identifiers(record) for record in records)))


def exact_values(case: Case) -> Callable[[str], str]:
    """The baseline: the header's values replaced as written."""
    values = [str(element.value) for element in header(case)] + [case.identity.phone]

    def scrub(text: str) -> str:
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text

    return scrub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    args = parser.parse_args()
    prevalence = Prevalence().model_dump()
    cases = [make_case(SEED, index, prevalence, ct_fraction=0.5) for index in range(args.patients)]
    base, _ = recall(cases, exact_values)
    measured, missed = recall(cases, ingest_scrubber)
    removed = over_scrubbed(cases)
    planted_count = sum(len(planted(case)) for case in cases)
    print(f"baseline: exact header values, recall {base:.3f} of {planted_count} planted identifiers")
    print(f"measured: the ingest's scrubber, recall {measured:.3f}; missed: {sorted(set(missed))[:12]}")
    print(f"over-scrubbed words in the generator's reports and records: {dict(removed.most_common(12))}")
    verdict = "meets" if measured >= TARGET_RECALL else "MISSES"
    print(
        f"deid: ratio {measured / base:.2f} (recall vs exact header values), recall {measured:.3f} of "
        f"{planted_count} planted identifiers ({verdict} the {TARGET_RECALL:.3f} target), "
        f"{sum(removed.values())} words of no identifier scrubbed from {len(cases)} patients' texts"
    )


if __name__ == "__main__":
    main()
