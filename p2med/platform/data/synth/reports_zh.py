"""Chinese radiology reports (影像所见, 印象) of the same cases as `reports`: the same
findings in the phrasings of a Chinese children's hospital, with its relevant negatives
("未见胸腔积液。"). `extract.CHINESE` reads them back into the same labels.
"""

from __future__ import annotations

import numpy as np

from p2med.platform.data.synth.cases import Case
from p2med.platform.data.synth.identity_zh import ChineseIdentity
from p2med.platform.data.synth.reports import impression_reading
from p2med.platform.data.vocabulary import LOBE_PHRASES_ZH, Finding

SIDES_ZH = {"left": "左侧", "right": "右侧", "bilateral": "双侧"}
XRAY_SENTENCES = {
    "consolidation": ["{lobe}见大片实变影，内见支气管充气征。", "{lobe}可见实变影，边界尚清。"],
    "patchy_opacity": ["{lobe}见斑片状影，边缘模糊。", "{lobe}可见斑片状密度增高影。"],
    "interstitial_opacity": ["双肺门周围间质性改变，支气管壁增厚。", "双肺纹理增多，见间质性改变。"],
    "pleural_effusion": ["{side}少量胸腔积液，肋膈角变钝。", "{side}见少量胸腔积液。"],
    "hyperinflation": ["双肺过度充气，膈肌低平。", "双肺透亮度增高，过度充气。"],
}
CT_SENTENCES = {
    "consolidation": ["{lobe}见实变影，内见支气管充气征。", "{lobe}大片实变影。"],
    "patchy_opacity": ["{lobe}见斑片状磨玻璃影。", "{lobe}可见斑片状影。"],
    "interstitial_opacity": ["双肺间质性改变，小叶间隔增厚。", "双肺见网格状间质性改变。"],
    "pleural_effusion": ["{side}少量胸腔积液。", "{side}胸腔积液，量少。"],
    "hyperinflation": ["双肺过度充气，呈马赛克灌注。", "双肺过度充气。"],
}
IMPRESSION_TAILS_ZH = {  # the readings of `reports.impression_reading`
    "pneumonia": "符合肺炎表现，请结合临床",
    "small_airways": "考虑毛细支气管炎等小气道病变",
    "viral": "提示病毒性或非典型下呼吸道感染",
    "bronchopneumonia": "考虑支气管肺炎或非典型感染",
}
NEGATIVES = {"consolidation": "未见明确实变影。", "pleural_effusion": "未见胸腔积液。"}
SYMPTOMS_ZH = {
    "fever": "发热",
    "productive cough": "咳嗽咳痰",
    "tachypnea": "气促",
    "chest pain": "胸痛",
    "dry cough": "干咳",
    "rhinorrhea": "流涕",
    "myalgia": "肌肉酸痛",
    "persistent dry cough": "持续干咳",
    "headache": "头痛",
    "sore throat": "咽痛",
    "wheezing": "喘息",
    "cough": "咳嗽",
    "poor feeding": "吃奶差",
    "nasal congestion": "鼻塞",
    "mild cough": "轻咳",
    "runny nose": "流涕",
}


def age_zh(case: Case) -> str:
    """As a Chinese record writes it: '7月龄' under two years, else '4岁'."""
    return f"{case.age_days // 30}月龄" if case.age_days < 730 else f"{int(case.age_years)}岁"


def child_zh(case: Case) -> str:
    return "男童" if case.sex == "M" else "女童"


def symptoms_zh(case: Case) -> str:
    return "、".join(SYMPTOMS_ZH[symptom] for symptom in case.symptoms)


def findings_text_zh(case: Case, modality: str, rng: np.random.Generator) -> str:
    templates = CT_SENTENCES if modality == "CT" else XRAY_SENTENCES
    sentences = [_sentence(finding, templates, rng) for finding in case.findings]
    present = {finding.type for finding in case.findings}
    if not case.findings:
        sentences.append("双肺纹理清晰，未见异常密度影。")
    sentences += [negative for kind, negative in NEGATIVES.items() if kind not in present]
    sentences.append("未见气胸。")
    sentences.append("纵隔及心影未见异常。" if modality == "CT" else "心影大小、形态未见异常。")
    return "".join(sentences)


def impression_text_zh(case: Case) -> str:
    if not case.findings:
        return "心肺未见明显急性病变。"
    summary = "；".join(finding.phrase_zh() for finding in case.findings)
    return f"{summary}，{IMPRESSION_TAILS_ZH[impression_reading(case)]}。"


def report_record_zh(
    case: Case, ident: ChineseIdentity, seed: int, modality: str, study_uid: str, accession: str
) -> dict:
    """One radiology report as a JSONL row, in Chinese (raw: it names the patient's
    outpatient number and the reporting radiologist, as a RIS export does)."""
    rng = np.random.default_rng([seed, case.index, 3 if modality == "CT" else 2])
    ct = modality == "CT"
    return {
        "report_id": f"{'CT' if ct else 'XR'}-{accession}",
        "patient_id": ident.outpatient_number,
        "accession_number": accession,
        "study_instance_uid": study_uid,
        "modality": modality,
        "study_date": case.visit_date.isoformat(),
        "examination": "胸部CT平扫" if ct else "胸部正位片",
        "clinical_history": f"{age_zh(case)}{child_zh(case)}，{symptoms_zh(case)}{case.symptom_days}天。",
        "findings": findings_text_zh(case, modality, rng),
        "impression": impression_text_zh(case),
        "radiologist": f"{ident.radiologist} 主治医师",
        "institution": ident.hospital,
    }


def _sentence(finding: Finding, templates: dict[str, list[str]], rng: np.random.Generator) -> str:
    options = templates[finding.type]
    lobe = LOBE_PHRASES_ZH[finding.lobe] if finding.lobe else ""
    return options[int(rng.integers(len(options)))].format(lobe=lobe, side=SIDES_ZH[finding.side])
