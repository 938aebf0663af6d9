"""De-identification recall on planted identifiers, and what it removes that is none.

    .venv/bin/python bench/deid.py                  # 200 synthetic patients (seconds)
    .venv/bin/python bench/deid.py --patients 50
    .venv/bin/python bench/deid.py --language zh    # Chinese identities and text

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

With `--language zh`, each patient gets a Chinese identity (`synth.identity_zh`: names in
characters, parents, resident ID number, mobile and landline, address, hospital, outpatient
and inpatient numbers), carried by a DICOM header (`Zhang^Xiaoming=张^晓明`) and two records
as a Chinese hospital's export would; planted are the names in characters and in pinyin,
the given name alone, a physician's family name with a title (张医生), the ID number, phone
numbers and the birth date in the formats Chinese text uses (full-width digits among them),
the address whole and in parts, the hospital and the record numbers, and the names, the
address and the record labels in traditional characters. Recall counts a
planted identifier missed when any of its characters is left where it stood. Over-scrubbing
is measured on Chinese clinical sentences written for this benchmark (the synthetic
generator writes English only), scrubbed with each patient's scrubber.

Baseline in the same run: a scrubber replacing the header values exactly as written
(case-sensitive), the first thing one would write. The last line is the pasteable result.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import itertools
import re
from collections.abc import Callable

import numpy as np
from pydicom.dataset import Dataset

from p2med.platform.data.deid import HALF_WIDTH, REDACTED, Scrubber, header_identifiers
from p2med.platform.data.deid_zh import pinyin_names, split_chinese_name
from p2med.platform.data.ingest_plan import record_identifiers, report_identifiers
from p2med.platform.data.synth.cases import Case, make_case
from p2med.platform.data.synth.identity_zh import AREA_CODES, ChineseIdentity, chinese_identity
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
    return _replacing([str(element.value) for element in header(case)] + [case.identity.phone])


def _replacing(values: list[str]) -> Callable[[str], str]:
    def scrub(text: str) -> str:
        for value in sorted(values, key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text

    return scrub


def chinese_header(ident: ChineseIdentity) -> Dataset:
    """The identifying attributes of a Chinese hospital's DICOM header: names in pinyin and in
    characters (DICOM PN groups), the outpatient number as the patient ID."""
    (family_pinyin, given_pinyin), *_ = pinyin_names(ident.family_name, ident.given_name)
    ds = Dataset()
    ds.PatientName = f"{family_pinyin}^{given_pinyin}={ident.family_name}^{ident.given_name}"
    ds.PatientID = ident.outpatient_number
    ds.ResponsiblePerson = ident.mother
    ds.ReferringPhysicianName = ident.physician
    ds.PerformingPhysicianName = ident.radiologist
    ds.InstitutionName = ident.hospital
    ds.PatientAddress = ident.address
    return ds


def chinese_records(ident: ChineseIdentity) -> list[dict]:
    """The identifying fields of an outpatient and an inpatient record of the patient."""
    shared = {
        "patient_name": ident.name,
        "institution": ident.hospital,
        "birth_date": ident.birth_date.isoformat(),
    }
    return [
        shared | {"guardian": ident.mother, "physician": f"{ident.physician} 主治医师", "phone": ident.mobile}
        | {"address": ident.address, "record_id": ident.outpatient_number},
        shared | {"next_of_kin": ident.father, "phone": ident.landline, "record_id": ident.inpatient_number},
    ]  # fmt: skip


def chinese_scrubber(ident: ChineseIdentity) -> Scrubber:
    values = header_identifiers(chinese_header(ident))
    return Scrubber(values.union(*(record_identifiers(record) for record in chinese_records(ident))))


def chinese_planted(ident: ChineseIdentity) -> list[str]:
    """The patient's identifiers as Chinese reports and records may write them."""
    family, given, born = ident.family_name, ident.given_name, ident.birth_date
    (family_pinyin, given_pinyin), *_ = pinyin_names(family, given)
    mobile, resident = ident.mobile, ident.resident_id
    area = next(code for city, code in AREA_CODES.items() if city == ident.city)
    road = re.search(r"[^区]+?(?:路|大道)\d+号", ident.address)
    names = [ident.name, f"{family} {given}", ident.mother, ident.father, ident.physician, ident.radiologist]
    mother_given = split_chinese_name(ident.mother)[1]
    names += [name for name in (given, mother_given) if len(name) >= 2]
    physician_family = split_chinese_name(ident.physician)[0]
    radiologist_family = split_chinese_name(ident.radiologist)[0]
    return [
        *names,
        f"{family_pinyin} {given_pinyin}", f"{family_pinyin.upper()} {given_pinyin.upper()}",
        f"{given_pinyin} {family_pinyin}", f"{physician_family}医生", f"{radiologist_family}主任",
        resident, f"{resident[:6]} {resident[6:14]} {resident[14:]}", _full_width(resident),
        mobile, f"{mobile[:3]}-{mobile[3:7]}-{mobile[7:]}", f"+86 {mobile[:3]} {mobile[3:7]} {mobile[7:]}",
        _full_width(mobile), ident.landline, f"({area}){ident.landline.split('-')[1]}",
        f"{born.year}年{born.month}月{born.day}日", born.isoformat(), f"{born.year}.{born.month}.{born.day}",
        f"{born.year}/{born.month}/{born.day}", _in_numerals(born), f"{born.month}月{born.day}日",
        born.strftime("%Y%m%d"), ident.address, ident.city, road.group() if road else ident.city,
        ident.hospital, f"门诊号：{ident.outpatient_number}", f"住院号 {ident.inpatient_number}",
        ident.outpatient_number, ident.inpatient_number,
        *{_traditional(text) for text in (ident.name, ident.mother, ident.physician, ident.address)}
        - {ident.name, ident.mother, ident.physician, ident.address},
        f"門診號：{ident.outpatient_number}", f"住院號 {ident.inpatient_number}",
    ]  # fmt: skip


def _traditional(text: str) -> str:
    """As a record from Hong Kong or Taiwan, or a traditional-script input method, writes it."""
    import opencc

    return opencc.OpenCC("s2t").convert(text)


def _full_width(text: str) -> str:
    return text.translate({ascii_: wide for wide, ascii_ in HALF_WIDTH.items()})


def _in_numerals(day: dt.date) -> str:
    """二〇二一年五月六日"""
    digits = "〇一二三四五六七八九"

    def small(number: int) -> str:  # 1-31
        tens, ones = divmod(number, 10)
        return ("" if tens < 2 else digits[tens]) + ("十" if tens else "") + (digits[ones] if ones else "")

    return "".join(digits[int(d)] for d in str(day.year)) + f"年{small(day.month)}月{small(day.day)}日"


SENTENCES_ZH = (
    "患儿{}因发热、咳嗽3天就诊。",
    "病史由{}提供，体温38.9℃，SpO2 93%。",
    "建议{}于48小时后复诊。",
)
CLINICAL_ZH = (
    "胸部正位片：双肺纹理增多、模糊，右下肺野见斑片状密度增高影，边缘模糊，心影不大，双膈面光整。",
    "印象：右下肺炎，建议抗感染治疗后复查。",
    "CT：右肺下叶背段见实变影，内见支气管充气征，范围约2.3×3.1cm，左侧少量胸腔积液，未见支气管扩张。",
    "主诉：发热、咳嗽3天，气促1天。现病史：患儿3天前无明显诱因出现发热，最高体温39.5℃，伴阵发性咳嗽。",
    "查体：T 38.6℃，P 132次/分，R 42次/分，SpO2 92%，双肺可闻及细湿啰音，三凹征阳性。",
    "血常规：WBC 15.6×10^9/L，N 78%，CRP 56 mg/L，PCT 0.8 ng/mL；肺炎支原体IgM阴性。",
    "诊断：社区获得性肺炎（细菌性）。处理：阿莫西林克拉维酸钾静脉滴注，雾化吸入，必要时吸氧。",
    "入院第3天体温平稳，咳嗽减轻，复查胸片示病灶较前吸收，于住院第6天好转出院。",
    "出院医嘱：口服抗生素5天，1周后门诊复诊，如有高热、气促及时就诊；曾有青霉素过敏史者慎用。",
)


def chinese_recall(idents: list[ChineseIdentity], scrubber_of) -> tuple[float, list[str], int]:
    """The share of planted identifiers of which no character is left, those that were
    not, and how many characters of the sentences around them went too."""
    missed, total, context = [], 0, 0
    for ident in idents:
        scrub = scrubber_of(ident)
        for number, identifier in enumerate(chinese_planted(ident)):
            before, after = SENTENCES_ZH[number % len(SENTENCES_ZH)].split("{}")
            scrubbed = scrub(before + identifier + after)
            total += 1
            kept_before = _common_start(scrubbed, before)
            kept_after = _common_start(scrubbed[::-1], after[::-1])
            context += len(before) - kept_before + len(after) - kept_after
            left = scrubbed[kept_before : len(scrubbed) - kept_after].replace(REDACTED, "")
            if re.search(r"\w", left):
                missed.append(identifier)
    return 1 - len(missed) / total, missed, context


def _common_start(text: str, other: str) -> int:
    """How many characters `text` and `other` share at their start."""
    same = itertools.takewhile(lambda pair: pair[0] == pair[1], zip(text, other, strict=False))
    return sum(1 for _ in same)


def chinese_over_scrubbed(idents: list[ChineseIdentity]) -> collections.Counter[str]:
    """What each patient's scrubber removes from clinical sentences that hold no identifier."""
    removed: collections.Counter[str] = collections.Counter()
    for ident in idents:
        scrub = chinese_scrubber(ident)
        for text in CLINICAL_ZH:
            scrubbed = scrub(text)
            if scrubbed != text:
                pattern = re.escape(scrubbed).replace(re.escape(REDACTED), "(.+?)")
                removed.update(re.fullmatch(pattern, text).groups())
    return removed


def chinese_exact_values(ident: ChineseIdentity) -> Callable[[str], str]:
    """The baseline: the header's values replaced as written."""
    return _replacing([str(element.value) for element in chinese_header(ident)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--language", choices=("en", "zh"), default="en")
    args = parser.parse_args()
    if args.language == "zh":
        chinese(args.patients)
        return
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


def chinese(patients: int) -> None:
    prevalence = Prevalence().model_dump()
    idents = []
    for index in range(patients):
        case = make_case(SEED, index, prevalence, ct_fraction=0.5)
        rng = np.random.default_rng([SEED, index, 7])
        idents.append(chinese_identity(rng, case.sex, case.identity.birth_date, index))
    base, _, _ = chinese_recall(idents, chinese_exact_values)
    measured, missed, context = chinese_recall(idents, chinese_scrubber)
    removed = chinese_over_scrubbed(idents)
    planted_count = sum(len(chinese_planted(ident)) for ident in idents)
    print(f"baseline: exact header values, recall {base:.3f} of {planted_count} planted identifiers")
    print(f"measured: the ingest's scrubber, recall {measured:.3f}; missed: {sorted(set(missed))[:12]}")
    top = dict(removed.most_common(12))
    print(f"over-scrubbed from {len(CLINICAL_ZH)} clinical sentences per patient: {top}")
    verdict = "meets" if measured >= TARGET_RECALL else "MISSES"
    print(
        f"deid: ratio {measured / base:.2f} (recall vs exact header values), Chinese, recall {measured:.3f} "
        f"of {planted_count} planted identifiers ({verdict} the {TARGET_RECALL:.3f} target), "
        f"{sum(removed.values())} pieces of clinical text scrubbed over {len(idents)} patients, "
        f"{context} characters beside the planted identifiers"
    )


if __name__ == "__main__":
    main()
