"""A Chinese data set end to end on the ingest's passes (in this process): `p2med synth
language=zh` writes what a Chinese children's hospital exports, with the clinical content
of the English data set of the same seed (`language=mixed` too, with English terms among
the Chinese), and no identifier of it reaches the shards."""

from __future__ import annotations

import json

import pydicom
import pytest

from p2med.model.config import ModelConfig
from p2med.model.tokenizer import IMAGE_TOKEN
from p2med.platform.data.extract import VocabularyExtractor
from p2med.platform.data.ingest_plan import SPLITS
from p2med.platform.data.language import text_language
from p2med.platform.data.prompts import CHINESE as CHINESE_WORDS
from p2med.platform.data.prompts import request_prompt, stage_samples
from p2med.platform.data.raw_store import RECORDS_FILE, REPORTS_FILE, dicom_paths, read_jsonl
from p2med.platform.data.shards import SHARD_SCHEMA, split_rows
from p2med.platform.data.stage_datasets import split_language
from p2med.platform.data.synth import generate
from p2med.platform.data.tasks import TASKS
from p2med.platform.data.vocabulary import DIAGNOSES, FINDING_LABELS, finding_phrases
from p2med.platform.eval.benchmark import row_diagnosis
from p2med.platform.storage import resolve
from p2med.platform.train.settings import TrainSettings
from p2med.platform.train.trainer import model_config_for
from tests.platform.conftest import INGEST, RAW, ingest_in_process

CHINESE = RAW.model_copy(update={"patients": 10, "language": "zh"})
ENGLISH = CHINESE.model_copy(update={"language": "en"})
MIXED = CHINESE.model_copy(update={"language": "mixed"})
EXTRACT = VocabularyExtractor()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("chinese")
    raws = {}
    for name, settings in (("zh", CHINESE), ("en", ENGLISH), ("mixed", MIXED)):
        raws[name] = resolve(str(root / name))
        generate(settings, raws[name], progress=False)
    return raws, ingest_in_process(raws["zh"], resolve(str(root / "shards")), INGEST)


@pytest.mark.parametrize("language", ["zh", "mixed"])
def test_the_chinese_data_sets_state_the_english_one_s_findings_and_diagnoses(stores, language):
    raws, _ = stores
    reports = [read_jsonl(raws[name], REPORTS_FILE)[0] for name in (language, "en")]
    records = [read_jsonl(raws[name], RECORDS_FILE)[0] for name in (language, "en")]
    assert len(reports[0]) == len(reports[1]) and len(records[0]) == len(records[1])
    for zh, en in zip(*reports, strict=True):
        assert text_language(zh["findings"]) == "zh" and text_language(en["findings"]) == "en"
        assert EXTRACT.findings(zh["findings"]) == EXTRACT.findings(en["findings"])
    for zh, en in zip(*records, strict=True):
        diagnosis = "discharge_diagnosis" if zh["record_type"] == "inpatient" else "diagnosis"
        assert EXTRACT.diagnosis("诊断：" + zh["sections"][diagnosis]) == EXTRACT.diagnosis(
            "Diagnosis: " + en["sections"][diagnosis]
        )
        if zh["record_type"] == "outpatient":
            assert EXTRACT.treatments(zh["sections"]["plan"]) == EXTRACT.treatments(en["sections"]["plan"])


def test_mixed_text_writes_some_terms_in_english_among_the_chinese(stores):
    raws, _ = stores
    rows = read_jsonl(raws["mixed"], REPORTS_FILE)[0] + read_jsonl(raws["mixed"], RECORDS_FILE)[0]
    written = json.dumps(rows, ensure_ascii=False)
    assert "mg po" in written and "口服" in written  # each form for some patients
    assert "Paracetamol" in written and "对乙酰氨基酚" in written


def test_headers_name_the_patient_in_pinyin_and_characters(stores):
    raws, _ = stores
    ds = pydicom.dcmread(raws["zh"].join(dicom_paths(raws["zh"])[0]).path, stop_before_pixels=True)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    alphabetic, ideographic = str(ds.PatientName).split("=")
    assert alphabetic.isascii() and text_language(ideographic) == "zh"


def test_no_identifier_of_the_chinese_export_reaches_the_shards(stores):
    raws, ingested = stores
    values = set()
    for record in read_jsonl(raws["zh"], RECORDS_FILE)[0]:
        people = ("patient_name", "guardian", "next_of_kin")
        values |= {record[key] for key in (*people, "phone", "resident_id", "address", "record_id")}
        values |= {record["institution"], record["physician"].split()[0], record["address"][:3]}
    shards, manifest = ingested.shards, ingested.manifest
    rows = [row for split in SPLITS for row in split_rows(shards, manifest, split, SHARD_SCHEMA.names)]
    texts = [
        json.dumps(json.loads(row[column]), ensure_ascii=False)
        for row in rows
        for column in ("xray_report", "ct_report", "outpatient", "inpatient")
        if row[column]
    ]
    text = "\n".join(texts)
    assert text_language(text) == "zh" and "[REDACTED]" in text
    leaked = sorted(value for value in values if value and value in text)
    assert not leaked, f"{len(leaked)} identifying values reached the shards"


def test_a_chinese_row_trains_on_chinese_prompts_and_targets(stores):
    _, ingested = stores
    shards, manifest = ingested.shards, ingested.manifest
    rows = [row for split in SPLITS for row in split_rows(shards, manifest, split, SHARD_SCHEMA.names)]
    samples = [sample for row in rows for sample in stage_samples(row, 3)]
    assert {sample.task for sample in samples} == set(TASKS)
    # the benchmark reads the Chinese records' diagnoses (it mixes diagnoses by them)
    assert {row_diagnosis(row) for row in rows if row["outpatient"] or row["inpatient"]} <= set(DIAGNOSES)
    for sample in samples:
        instruction = sample.prompt.removeprefix(f"{IMAGE_TOKEN}\n" * len(sample.images)).split("\n")[0]
        assert instruction == CHINESE_WORDS.instructions[sample.task]
        assert text_language(sample.target) == "zh"
        if sample.task == "differential_diagnosis":
            assert sample.target.startswith("诊断：") and EXTRACT.diagnosis(sample.target) is not None
    assert request_prompt("xray_report", ["xray"], "发热3天").startswith(f"{IMAGE_TOKEN}\n请为这张胸部X线片")
    assert request_prompt("xray_report", ["xray"], "fever for 3 days").endswith("fever for 3 days")
    # without clinical text, in the language the model was trained in
    chinese = CHINESE_WORDS.instructions["xray_report"]
    assert request_prompt("xray_report", ["xray"], "", "zh") == f"{IMAGE_TOKEN}\n{chinese}"
    assert request_prompt("xray_report", ["xray"], "fever", "zh").startswith(f"{IMAGE_TOKEN}\nWrite")


def test_a_model_trained_on_chinese_knows_it_and_starts_its_slots_at_chinese_words(stores, small_ingest):
    _, ingested = stores
    assert split_language(ingested.shards) == "zh" and split_language(small_ingest.shards) == "en"
    config = model_config_for(TrainSettings(), ingested.manifest, split_language(ingested.shards))
    assert ModelConfig.from_dict(config.to_dict()).language == "zh"
    for language in ("zh", "en"):
        for finding, phrase in zip(FINDING_LABELS, finding_phrases(language), strict=True):
            assert EXTRACT.findings(phrase) == {finding}, phrase
