"""Chinese outpatient and inpatient records (门诊病历, 住院病历) of the same cases as
`records`: the same history, examination, labs, diagnosis and plan, with the identifiers
a Chinese hospital's records carry (names of the child and parents, ID number, phones,
address, dates in Chinese formats). Section keys are the English ones of `records`, so
the stage datasets read either language the same way; the `imaging` section quotes the
radiology impression and is a target only, as in English.
"""

from __future__ import annotations

import datetime as dt

from p2med.platform.data.synth.cases import Case
from p2med.platform.data.synth.identity_zh import ChineseIdentity
from p2med.platform.data.synth.records import admission_reasons, dose, oseltamivir_mg
from p2med.platform.data.synth.reports_zh import age_zh, child_zh, impression_text_zh, symptoms_zh
from p2med.platform.data.vocabulary import DIAGNOSIS_NAMES_ZH


def treatment_plan_zh(case: Case, inpatient: bool) -> str:
    """The plan of `records.treatment_plan`, as a Chinese pediatrician writes it."""
    d, plan = case.diagnosis, []
    if d == "bacterial_pneumonia":
        if inpatient:
            plan.append(
                f"克林霉素{dose(case, 10, 600)} mg静脉滴注，每8小时一次（青霉素过敏）。"
                if case.penicillin_allergy
                else f"头孢曲松{dose(case, 50, 2000)} mg静脉滴注，每日一次，热退后改口服。"
            )
        else:
            plan.append(
                f"头孢呋辛{dose(case, 15, 500)} mg口服，每日两次，共5天（青霉素过敏）。"
                if case.penicillin_allergy
                else f"阿莫西林{dose(case, 45, 1000)} mg口服，每日两次，共5天。"
            )
    elif d == "mycoplasma_pneumonia":
        plan.append(f"阿奇霉素首日{dose(case, 10, 500)} mg，第2至5天每日{dose(case, 5, 250)} mg。")
    elif d == "viral_pneumonia":
        plan.append("对症支持治疗；无需抗生素。")
        if case.labs.influenza:
            plan.append(f"奥司他韦{oseltamivir_mg(case.weight_kg)} mg口服，每日两次，共5天。")
    elif d == "bronchiolitis":
        plan.append("对症支持治疗，鼻腔吸引，少量多次喂养；无需支气管扩张剂及抗生素。")
    else:
        plan.append("对症治疗；无需抗生素。")
    if case.vitals.spo2 < 92:
        plan.append("吸氧，维持SpO2不低于92%。")
    if case.diagnosis != "normal" or case.vitals.temperature_c >= 38:
        plan.append(f"发热时对乙酰氨基酚{dose(case, 15, 1000)} mg口服，间隔6小时以上。")
    if inpatient:
        plan.append("进食差时静脉补液；持续经皮血氧监测。")
    else:
        plan.append("如呼吸困难、进食减少或发热超过48小时，及时就诊。2天后复诊。")
    return "".join(plan)


def outpatient_record_zh(case: Case, ident: ChineseIdentity, accessions: list[str]) -> dict:
    """The clinic visit record, as a JSONL row (raw: full identity in header and text)."""
    return {
        **_header(case, ident, "outpatient", accessions),
        "visit_date": case.visit_date.isoformat(),
        "sections": {
            "chief_complaint": f"{symptoms_zh(case).split('、')[0]}{case.symptom_days}天。",
            **_shared_sections(case, ident),
            "diagnosis": DIAGNOSIS_NAMES_ZH[case.diagnosis] + "。",
            "plan": treatment_plan_zh(case, inpatient=False) if not case.admitted else "收入院进一步治疗。",
        },
    }


def inpatient_record_zh(case: Case, ident: ChineseIdentity, accessions: list[str]) -> dict:
    """The admission-to-discharge record of an admitted case, as a JSONL row."""
    discharge = case.visit_date + dt.timedelta(days=case.length_of_stay_days)
    phrases = {
        "hypoxaemia": f"低氧血症（SpO2 {case.vitals.spo2}%）",
        "young_infant": "小婴儿",
        "inflammation": "炎症指标明显升高",
    }
    reasons = [phrases[reason] for reason in admission_reasons(case)]
    return {
        **_header(case, ident, "inpatient", accessions),
        "admission_date": case.visit_date.isoformat(),
        "discharge_date": discharge.isoformat(),
        "sections": {
            "reason_for_admission": ("、".join(reasons) or "进食差、呼吸做功增加") + "。",
            **_shared_sections(case, ident),
            "hospital_course": (
                f"患儿{_called(ident)}入院后予以治疗：{treatment_plan_zh(case, inpatient=True)}"
                f"病情好转，于{_date_zh(discharge)}（住院第{case.length_of_stay_days}天）出院。"
            ),
            "discharge_diagnosis": DIAGNOSIS_NAMES_ZH[case.diagnosis] + "。",
            "discharge_plan": "出院后继续完成疗程，1周后儿科门诊复诊。",
        },
    }


def _shared_sections(case: Case, ident: ChineseIdentity) -> dict[str, str]:
    v, lab = case.vitals, case.labs
    allergy = "青霉素过敏（皮疹）。" if case.penicillin_allergy else "否认药物过敏史。"
    history = (
        f"患儿{ident.name}，{age_zh(case)}{child_zh(case)}，{_date_zh(case.visit_date)}由母亲{ident.mother}"
        f"陪同就诊（联系电话{ident.mobile}，住址{ident.address}）。{symptoms_zh(case)}{case.symptom_days}天。"
        f"既往体健，按时预防接种。{allergy}"
    )
    positive = {True: "阳性", False: "阴性"}
    tests = (
        f"血常规：WBC {lab.wbc}×10^9/L（中性粒细胞{lab.neutrophil_pct}%，淋巴细胞{lab.lymphocyte_pct}%），"
        f"CRP {lab.crp} mg/L，PCT {lab.procalcitonin} ng/mL。肺炎支原体IgM{positive[lab.mycoplasma_igm]}。"
        f"RSV抗原{positive[lab.rsv]}；甲/乙型流感病毒{positive[lab.influenza]}。"
    )
    signs = "双肺可闻及湿啰音。" if case.findings else "双肺呼吸音清。"
    if case.diagnosis == "bronchiolitis":
        signs = "双肺可闻及广泛哮鸣音及细湿啰音，肋下凹陷。"
    imaging = f"胸部X线：{impression_text_zh(case)}"
    if case.has_ct:
        imaging += f"胸部CT：{impression_text_zh(case)}"
    return {
        "history": history,
        "examination": (
            f"T {v.temperature_c}℃，P {v.heart_rate}次/分，R {v.respiratory_rate}次/分，"
            f"未吸氧下SpO2 {v.spo2}%，体重{case.weight_kg} kg。{signs}"
        ),
        "investigations": tests,
        "imaging": imaging,
    }


def _header(case: Case, ident: ChineseIdentity, record_type: str, accessions: list[str]) -> dict:
    """Who, where and which studies: the identifying fields a Chinese HIS export carries."""
    number = ident.outpatient_number if record_type == "outpatient" else ident.inpatient_number
    return {
        "record_id": number,
        "record_type": record_type,
        "patient_id": ident.outpatient_number,
        "patient_name": ident.name,
        "birth_date": ident.birth_date.isoformat(),
        "sex": case.sex,
        "address": ident.address,
        "phone": ident.mobile,
        "guardian": ident.mother,
        "next_of_kin": ident.father,
        "resident_id": ident.resident_id,
        "institution": ident.hospital,
        "physician": f"{ident.physician} 主治医师",
        "accession_numbers": accessions,
    }


def _called(ident: ChineseIdentity) -> str:
    """How the text names the child: by the given name from two characters on (one
    character alone is not scrubbed from Chinese text: `deid_zh`), else in full."""
    return ident.given_name if len(ident.given_name) >= 2 else ident.name


def _date_zh(day: dt.date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"
