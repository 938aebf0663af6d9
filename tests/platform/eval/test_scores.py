"""The evaluation's scorers: the vocabulary extractor against every sentence the synthetic
generator writes (negations included), per-sample scores and their summary."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from p2med.platform.data.extract import TREATMENT_ITEMS, VocabularyExtractor
from p2med.platform.data.language import text_language
from p2med.platform.data.synth.cases import Case, make_case
from p2med.platform.data.synth.records import inpatient_record, outpatient_record, treatment_plan
from p2med.platform.data.synth.reports import CT_SENTENCES, XRAY_SENTENCES, findings_text, impression_text
from p2med.platform.data.tasks import TASKS
from p2med.platform.data.vocabulary import DIAGNOSES, FINDING_LABELS, LOBE_PHRASES, LOBES, Finding, lobe_side
from p2med.platform.eval.overlap import corpus_bleu, rouge_l
from p2med.platform.eval.scores import TASK_SCORES, score_sample, summarize

EXTRACT = VocabularyExtractor()
CASES = [make_case(11, i, {d: 1.0 for d in DIAGNOSES}, ct_fraction=0.5) for i in range(200)]
ANTIBIOTICS = {"amoxicillin", "cefuroxime", "ceftriaxone", "clindamycin", "azithromycin"}
REPORT = (
    "Findings: Airspace consolidation is seen in the right lower lobe. "
    "Small right pleural effusion blunting the costophrenic angle. No pneumothorax.\n"
    "Impression: Consolidation in the right lower lobe; right pleural effusion, "
    "consistent with pneumonia in the appropriate clinical setting."
)
RECORD = (
    "Imaging: Chest X-ray: Patchy opacities in the left lower lobe, suggestive of bronchopneumonia.\n"
    "Diagnosis: Mycoplasma pneumoniae pneumonia.\n"
    "Plan: Azithromycin 200 mg on day 1, then 100 mg daily on days 2 to 5. "
    "Paracetamol 300 mg every 6 hours as needed for fever. Review in 2 days."
)


def sentence_cases() -> list[tuple[str, Finding]]:
    """Every template of both modalities with every lobe or side it can name."""
    out = []
    for templates in (XRAY_SENTENCES, CT_SENTENCES):
        for kind, sentences in templates.items():
            if kind in ("consolidation", "patchy_opacity"):
                findings = [Finding(kind, lobe_side(lobe), lobe) for lobe in LOBES]
            elif kind == "pleural_effusion":
                findings = [Finding(kind, "left"), Finding(kind, "right")]
            else:
                findings = [Finding(kind, "bilateral")]
            for sentence in sentences:
                for f in findings:
                    lobe = LOBE_PHRASES[f.lobe] if f.lobe else ""
                    out.append((sentence.format(lobe=lobe, side=f.side), f))
    return out


@pytest.mark.parametrize(("sentence", "finding"), sentence_cases())
def test_every_generator_paraphrase_maps_to_its_finding(sentence: str, finding: Finding) -> None:
    assert EXTRACT.findings(sentence) == {finding}
    assert EXTRACT.findings(finding.phrase().capitalize() + ".") == {finding}  # impression form


@pytest.mark.parametrize("modality", ["DX", "CT"])
def test_reports_of_synthetic_cases_round_trip(modality: str) -> None:
    for case in CASES:
        rng = np.random.default_rng([11, case.index])
        findings = findings_text(case, modality, rng)
        impression = impression_text(case)
        assert EXTRACT.findings(findings) == set(case.findings), findings
        assert EXTRACT.findings(impression) == set(case.findings), impression
        assert EXTRACT.findings(f"Findings: {findings}\nImpression: {impression}") == set(case.findings)


def check_plan(case: Case, plan: str) -> None:
    items = EXTRACT.treatments(plan)
    assert items and items <= set(TREATMENT_ITEMS), plan
    if case.diagnosis in ("bacterial_pneumonia", "mycoplasma_pneumonia"):
        assert len(items & ANTIBIOTICS) == 1 and "no_antibiotics" not in items, plan
    else:
        assert not items & ANTIBIOTICS and "no_antibiotics" in items, plan


def test_records_of_synthetic_cases_round_trip() -> None:
    for case in CASES:
        outpatient = outpatient_record(case)["sections"]
        target = "\n".join(
            f"{name.capitalize()}: {outpatient[name]}" for name in ("imaging", "diagnosis", "plan")
        )
        assert EXTRACT.diagnosis(target) == case.diagnosis, target
        assert EXTRACT.findings(target) == set(case.findings), target
        check_plan(case, treatment_plan(case, inpatient=False))
        check_plan(case, treatment_plan(case, inpatient=True))
        if case.admitted:
            inpatient = inpatient_record(case)["sections"]
            assert EXTRACT.treatments(outpatient["plan"]) == {"admission"}
            target = f"Hospital course: {inpatient['hospital_course']}\n"
            target += f"Discharge diagnosis: {inpatient['discharge_diagnosis']}"
            assert EXTRACT.diagnosis(target) == case.diagnosis  # no message: the course names the child


@pytest.mark.parametrize(
    "text",
    [
        "No focal consolidation. No pleural effusion. No pneumothorax.",
        "There is no consolidation or effusion.",
        "no consolidation in the right lower lobe",
        "Without effusion or hyperinflation in the left lower lobe.",
        "Pleural effusion is not seen on the left.",
        "Consolidation in the right lower lobe has resolved.",
        "The lungs are clear. No acute cardiopulmonary abnormality.",
    ],
)
def test_negated_findings_are_not_extracted(text: str) -> None:
    assert EXTRACT.findings(text) == frozenset()


def test_negation_stays_in_its_clause() -> None:
    rll = Finding("consolidation", "right", "right_lower")
    assert EXTRACT.findings("Consolidation in the right lower lobe without effusion.") == {rll}
    assert EXTRACT.findings("No pleural effusion. Consolidation in the right lower lobe.") == {rll}
    assert EXTRACT.findings("No consolidation, but bilateral hyperinflation.") == {
        Finding("hyperinflation", "bilateral")
    }
    assert EXTRACT.findings(
        "Consolidation in the right lower lobe and patchy opacities in the left upper lobe "
        "with a small left pleural effusion."
    ) == {rll, Finding("patchy_opacity", "left", "left_upper"), Finding("pleural_effusion", "left")}


def test_findings_without_lobe_or_side_are_incomplete() -> None:
    assert EXTRACT.findings("Small pleural effusion. Patchy opacities.") == frozenset()


@pytest.mark.parametrize(
    ("text", "diagnosis"),
    [
        ("Diagnosis: Community-acquired bacterial pneumonia.", "bacterial_pneumonia"),
        ("Discharge diagnosis: MYCOPLASMA PNEUMONIAE PNEUMONIA.", "mycoplasma_pneumonia"),
        ("Diagnosis: No acute cardiopulmonary disease.\nRationale: clear lungs.", "normal"),
        ("Diagnosis: viral pneumonia rather than bacterial pneumonia", "viral_pneumonia"),
        ("Diagnosis: acute bronchiolitis", "bronchiolitis"),
        ("Diagnosis: abnormal chest", None),
        ("Impression: Consolidation, consistent with pneumonia. Acute bronchiolitis is unlikely.", None),
        ("", None),
    ],
)
def test_diagnosis_reads_the_stated_line(text: str, diagnosis: str | None) -> None:
    assert EXTRACT.diagnosis(text) == diagnosis


@pytest.mark.parametrize(
    ("text", "items"),
    [
        ("Supportive care; antibiotics are not indicated.", {"supportive_care", "no_antibiotics"}),
        (
            "Supportive care with nasal suctioning; no bronchodilators or antibiotics.",
            {"supportive_care", "nasal_suction", "no_bronchodilators", "no_antibiotics"},
        ),
        ("No amoxicillin. IV ceftriaxone 1000 mg once daily.", {"ceftriaxone"}),
        ("Oral amoxicillin 450 mg twice daily for 5 days.", {"amoxicillin"}),
        ("Start antibiotics.", set()),
        (
            "Supplemental oxygen. Maintenance IV fluids; continuous pulse oximetry. Follow-up in 1 week.",
            {"oxygen", "iv_fluids", "pulse_oximetry", "follow_up"},
        ),
    ],
)
def test_treatment_items(text: str, items: set[str]) -> None:
    assert EXTRACT.treatments(text) == items


def test_task_scores_cover_every_task() -> None:
    assert set(TASK_SCORES) == set(TASKS)
    assert TASK_SCORES["differential_diagnosis"] == {"findings", "diagnosis"}


def test_identical_texts_score_one() -> None:
    scores = score_sample("outpatient_record", RECORD, RECORD, EXTRACT)
    assert scores["rouge_l"] == pytest.approx(1.0)
    assert scores["bleu4"] == pytest.approx(1.0)
    assert (scores["findings_tp"], scores["findings_fp"], scores["findings_fn"]) == (1, 0, 0)
    assert scores["findings_f1"] == 1.0
    assert scores["diagnosis_reference"] == scores["diagnosis_predicted"] == "mycoplasma_pneumonia"
    assert scores["diagnosis_correct"] is True
    assert scores["treatment_agreement"] == 1.0
    json.dumps(scores)


def test_wrong_lobe_is_a_false_positive_and_a_miss() -> None:
    prediction = REPORT.replace("right lower lobe", "right upper lobe")
    scores = score_sample("xray_report", prediction, REPORT, EXTRACT)
    assert (scores["findings_tp"], scores["findings_fp"], scores["findings_fn"]) == (1, 1, 1)
    assert scores["findings_f1"] == pytest.approx(0.5)
    assert 0 < scores["rouge_l"] < 1 and 0 < scores["bleu4"] < 1
    assert "diagnosis_correct" not in scores and "treatment_agreement" not in scores


def test_empty_prediction_scores_zero() -> None:
    scores = score_sample("outpatient_record", "", RECORD, EXTRACT)
    assert scores["rouge_l"] == 0.0 and scores["bleu4"] == 0.0
    assert (scores["findings_tp"], scores["findings_fp"], scores["findings_fn"]) == (0, 0, 1)
    assert scores["findings_f1"] == 0.0
    assert scores["diagnosis_predicted"] is None and scores["diagnosis_correct"] is False
    assert scores["treatment_agreement"] == 0.0
    normal = "Findings: The lungs are clear.\nImpression: No acute cardiopulmonary abnormality."
    assert score_sample("xray_report", "", normal, EXTRACT)["findings_f1"] == 0.0
    assert score_sample("xray_report", normal, normal, EXTRACT)["findings_f1"] == 1.0


def test_unknown_task_is_named() -> None:
    with pytest.raises(ValueError, match="chest_ultrasound"):
        score_sample("chest_ultrasound", "a", "a", EXTRACT)
    with pytest.raises(ValueError, match="chest_ultrasound"):
        summarize(
            [{"task": "chest_ultrasound", "prediction": "", "reference": "", "scores": {}, "failed": None}]
        )


def sample(task: str, prediction: str, reference: str, failed: str | None = None, **scores) -> dict:
    return {
        "task": task,
        "prediction": prediction,
        "reference": reference,
        "scores": scores,
        "failed": failed,
    }


def dx(reference: str, predicted: str | None) -> dict:
    return {
        "diagnosis_reference": reference,
        "diagnosis_predicted": predicted,
        "diagnosis_correct": reference == predicted,
    }


def test_summarize_by_hand() -> None:
    viral, normal = "Diagnosis: Viral pneumonia.", "Diagnosis: Normal chest."  # 5 tokens each
    samples = [
        sample("treatment_recommendation", RECORD, RECORD, rouge_l=0.9, treatment_agreement=0.8),
        sample("xray_report", REPORT, REPORT, rouge_l=1.0, findings_tp=2, findings_fp=0, findings_fn=0),
        sample("xray_report", REPORT, REPORT, rouge_l=0.5, findings_tp=1, findings_fp=1, findings_fn=1),
        sample(
            "differential_diagnosis", "qq zz", viral, rouge_l=0.2,
            findings_tp=0, findings_fp=0, findings_fn=1, **dx("bacterial_pneumonia", "bacterial_pneumonia"),
        ),
        sample(
            "differential_diagnosis", "ww", viral, rouge_l=0.4,
            findings_tp=0, findings_fp=0, findings_fn=0, **dx("viral_pneumonia", "bacterial_pneumonia"),
        ),
        sample(
            "outpatient_record", "", viral, failed="timed out", rouge_l=0.0, treatment_agreement=0.0,
            findings_tp=0, findings_fp=0, findings_fn=2, **dx("viral_pneumonia", None),
        ),
        sample(
            "outpatient_record", normal, normal, rouge_l=0.6, treatment_agreement=1.0,
            findings_tp=0, findings_fp=0, findings_fn=0, **dx("normal", "normal"),
        ),
    ]  # fmt: skip
    summary = summarize(samples)
    json.dumps(summary)
    assert list(summary["tasks"]) == [
        "xray_report",
        "outpatient_record",
        "differential_diagnosis",
        "treatment_recommendation",
    ]
    xray, outpatient = summary["tasks"]["xray_report"], summary["tasks"]["outpatient_record"]
    differential, treatment = (
        summary["tasks"]["differential_diagnosis"],
        summary["tasks"]["treatment_recommendation"],
    )
    overall = summary["overall"]
    assert set(overall) == set(xray) == {
        "samples", "failed", "rouge_l", "bleu4", "findings_f1",
        "diagnosis_accuracy", "diagnosis_macro_f1", "treatment_agreement",
    }  # fmt: skip
    assert (overall["samples"], overall["failed"], outpatient["failed"]) == (7, 1, 1)
    # Findings micro-F1: xray tp 3, fp 1, fn 1; all tasks tp 3, fp 1, fn 4.
    assert xray["findings_f1"] == pytest.approx(6 / 8)
    assert differential["findings_f1"] == 0.0
    assert overall["findings_f1"] == pytest.approx(6 / 11)
    assert xray["diagnosis_accuracy"] is None and xray["treatment_agreement"] is None
    assert treatment["findings_f1"] is None and treatment["diagnosis_macro_f1"] is None
    # Diagnoses (reference, predicted): (bact, bact), (viral, bact), (viral, none), (normal, normal).
    assert overall["diagnosis_accuracy"] == 0.5
    # F1 per label: bacterial 2/3 (tp 1, fp 1), viral 0 (fn 2), normal 1.
    assert overall["diagnosis_macro_f1"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert differential["diagnosis_macro_f1"] == pytest.approx((2 / 3 + 0) / 2)
    assert outpatient["diagnosis_macro_f1"] == pytest.approx(0.5)
    assert outpatient["treatment_agreement"] == 0.5 and treatment["treatment_agreement"] == 0.8
    assert overall["treatment_agreement"] == pytest.approx(0.6)
    assert xray["rouge_l"] == 0.75 and overall["rouge_l"] == pytest.approx((0.75 + 0.3 + 0.3 + 0.9) / 4)
    # Corpus BLEU: identical pairs 1; no shared words 0; one empty of two equal-length
    # references: every n-gram matches, brevity penalty exp(1 - 10 / 5).
    assert xray["bleu4"] == pytest.approx(1.0) and differential["bleu4"] == 0.0
    assert outpatient["bleu4"] == pytest.approx(math.exp(-1))
    assert overall["bleu4"] == pytest.approx((2 + math.exp(-1)) / 4)
    labels = [*DIAGNOSES, "none"]
    assert summary["confusion"]["labels"] == labels
    matrix = summary["confusion"]["matrix"]
    assert len(matrix) == len(DIAGNOSES)
    assert matrix[DIAGNOSES.index("normal")] == [1, 0, 0, 0, 0, 0]
    assert matrix[DIAGNOSES.index("bacterial_pneumonia")] == [0, 1, 0, 0, 0, 0]
    assert matrix[DIAGNOSES.index("viral_pneumonia")] == [0, 1, 0, 0, 0, 1]
    assert sum(map(sum, matrix)) == 4


def test_summarize_of_perfect_predictions() -> None:
    samples = [
        sample(task, text, text, **score_sample(task, text, text, EXTRACT))
        for task, text in (
            ("xray_report", REPORT),
            ("outpatient_record", RECORD),
            ("treatment_recommendation", RECORD),
        )
    ]
    overall = summarize(samples)["overall"]
    for key in (
        "rouge_l",
        "bleu4",
        "findings_f1",
        "diagnosis_accuracy",
        "diagnosis_macro_f1",
        "treatment_agreement",
    ):
        assert overall[key] == pytest.approx(1.0), key


ZH_REFERENCE = "右下肺野见斑片状密度增高影，考虑右下肺炎。WBC 15.6×10^9/L。"


def test_chinese_text_is_scored_by_character() -> None:
    assert text_language(ZH_REFERENCE) == "zh" and text_language(REPORT) == "en"
    same = score_sample("xray_report", ZH_REFERENCE, ZH_REFERENCE, EXTRACT)
    assert same["rouge_l"] == pytest.approx(1.0) and same["bleu4"] == pytest.approx(1.0)
    shorter = "右下肺野见斑片影，考虑肺炎。WBC 15.6×10^9/L。"
    close = score_sample("xray_report", shorter, ZH_REFERENCE, EXTRACT)
    assert 0.5 < close["rouge_l"] < 1 and 0 < close["bleu4"] < 1  # rouge-score's own tokenizer: 0
    assert rouge_l("完全不同的句子", ZH_REFERENCE) < 0.2


def test_a_corpus_bleu_tokenizes_each_pair_in_its_own_language() -> None:
    pairs = [(ZH_REFERENCE, ZH_REFERENCE), (REPORT, REPORT)]
    assert corpus_bleu(*zip(*pairs, strict=True)) == pytest.approx(1.0)
    chinese = "右下肺野见斑片状密度增高影，考虑右下肺炎。"
    assert corpus_bleu([" ".join(chinese)], [chinese]) == pytest.approx(1.0)  # by character either way


@pytest.mark.parametrize("finding", FINDING_LABELS, ids=str)
def test_every_chinese_finding_phrase_maps_to_its_finding(finding: Finding) -> None:
    assert EXTRACT.findings(f"胸部正位片：见{finding.phrase_zh()}，心影不大。") == {finding}


def test_chinese_findings_negation_and_lobes_as_reports_write_them() -> None:
    report = "右下肺见斑片状密度增高影及实变，左侧少量胸腔积液；双肺未见间质性改变，未见过度充气。"
    assert EXTRACT.findings(report) == {
        Finding("patchy_opacity", "right", "right_lower"),
        Finding("consolidation", "right", "right_lower"),
        Finding("pleural_effusion", "left"),
    }
    assert EXTRACT.findings("双肺纹理清晰，未见实变及斑片状影。复查右肺上叶病灶已吸收。") == frozenset()


@pytest.mark.parametrize(
    ("text", "diagnosis"),
    [
        ("初步诊断：肺炎支原体肺炎。", "mycoplasma_pneumonia"),
        ("出院诊断：社区获得性细菌性肺炎", "bacterial_pneumonia"),
        ("诊断：急性毛细支气管炎", "bronchiolitis"),
        ("诊断：病毒性肺炎，不除外细菌性肺炎", "viral_pneumonia"),
        ("诊断：未见急性心肺病变", "normal"),
        ("现病史：咳嗽3天。", None),
    ],
)
def test_chinese_diagnosis_lines(text: str, diagnosis: str | None) -> None:
    assert EXTRACT.diagnosis(text) == diagnosis


def test_chinese_plan_items() -> None:
    plan = (
        "处理：阿莫西林克拉维酸钾口服，对乙酰氨基酚退热；吸氧，静脉补液，经皮血氧监测，收入院。"
        "无需其他抗生素，暂不使用支气管扩张剂。3天后复诊，如病情加重及时就诊。"
    )
    assert EXTRACT.treatments(plan) == {
        "amoxicillin", "paracetamol", "oxygen", "iv_fluids", "pulse_oximetry", "admission",
        "no_antibiotics", "no_bronchodilators", "follow_up", "return_advice",
    }  # fmt: skip
