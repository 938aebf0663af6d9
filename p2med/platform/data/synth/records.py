"""Outpatient and inpatient records: history, examination, labs, diagnosis and a plan
personalised by weight, allergy, severity and test results.

Only the `imaging` section states a lobe or side: it quotes the radiology impression.
Downstream datasets must treat it as a target, never as an input (a text-only model
that reads it could cheat on image-only findings); every other section is safe input.
"""

from __future__ import annotations

import datetime as dt

from p2med.platform.data.synth.cases import Case
from p2med.platform.data.synth.reports import impression_text
from p2med.platform.data.vocabulary import DIAGNOSIS_NAMES


def dose(case: Case, mg_per_kg: float, max_mg: float) -> int:
    return int(min(round(case.weight_kg * mg_per_kg), max_mg))


def oseltamivir_mg(weight_kg: float) -> int:
    for limit, mg in ((15, 30), (23, 45), (40, 60)):
        if weight_kg <= limit:
            return mg
    return 75


def treatment_plan(case: Case, inpatient: bool) -> str:
    """The plan a pediatrician would write for this case."""
    d, plan = case.diagnosis, []
    fever = f"Paracetamol {dose(case, 15, 1000)} mg every 6 hours as needed for fever."
    if d == "bacterial_pneumonia":
        if inpatient:
            plan.append(
                f"IV clindamycin {dose(case, 10, 600)} mg every 8 hours (penicillin allergy)."
                if case.penicillin_allergy
                else f"IV ceftriaxone {dose(case, 50, 2000)} mg once daily, "
                "then oral step-down when afebrile."
            )
        else:
            plan.append(
                f"Oral cefuroxime {dose(case, 15, 500)} mg twice daily for 5 days (penicillin allergy)."
                if case.penicillin_allergy
                else f"Oral amoxicillin {dose(case, 45, 1000)} mg twice daily for 5 days."
            )
    elif d == "mycoplasma_pneumonia":
        plan.append(
            f"Azithromycin {dose(case, 10, 500)} mg on day 1, "
            f"then {dose(case, 5, 250)} mg daily on days 2 to 5."
        )
    elif d == "viral_pneumonia":
        plan.append("Supportive care; antibiotics are not indicated.")
        if case.labs.influenza:
            plan.append(f"Oseltamivir {oseltamivir_mg(case.weight_kg)} mg twice daily for 5 days.")
    elif d == "bronchiolitis":
        plan.append(
            "Supportive care with nasal suctioning and small frequent feeds; "
            "no bronchodilators or antibiotics."
        )
    else:
        plan.append("Symptomatic care; no antibiotics.")
    if case.vitals.spo2 < 92:
        plan.append("Supplemental oxygen to keep SpO2 at or above 92%.")
    if case.diagnosis != "normal" or case.vitals.temperature_c >= 38:
        plan.append(fever)
    if inpatient:
        plan.append("Maintenance IV fluids if oral intake is poor; continuous pulse oximetry.")
    else:
        plan.append(
            "Return if breathing becomes difficult, feeding drops, or fever lasts beyond 48 hours. "
            "Review in 2 days."
        )
    return " ".join(plan)


def _shared_sections(case: Case) -> dict[str, str]:
    ident, v, lab = case.identity, case.vitals, case.labs
    child = "boy" if case.sex == "M" else "girl"
    pronoun = "He" if case.sex == "M" else "She"
    allergy = "Allergic to penicillin (rash)." if case.penicillin_allergy else "No known drug allergies."
    history = (
        f"{ident.given_name} is a {case.age_phrase} {child} brought in by {ident.guardian_name} with "
        f"{', '.join(case.symptoms)} for {case.symptom_days} days. {pronoun} has no chronic illness. "
        f"Immunisations are up to date. {allergy}"
    )
    tests = [
        f"WBC {lab.wbc} x10^9/L (neutrophils {lab.neutrophil_pct}%, lymphocytes {lab.lymphocyte_pct}%), "
        f"CRP {lab.crp} mg/L, procalcitonin {lab.procalcitonin} ng/mL.",
        f"Mycoplasma pneumoniae IgM {'positive' if lab.mycoplasma_igm else 'negative'}.",
        f"RSV antigen {'positive' if lab.rsv else 'negative'}; "
        f"influenza A/B {'positive' if lab.influenza else 'negative'}.",
    ]
    signs = "Crackles on auscultation." if case.findings else "Chest clear on auscultation."
    if case.diagnosis == "bronchiolitis":
        signs = "Diffuse wheeze and fine crackles on auscultation; subcostal retractions."
    imaging = f"Chest X-ray: {impression_text(case)}"
    if case.has_ct:
        imaging += f" Chest CT: {impression_text(case)}"
    return {
        "history": history,
        "examination": (
            f"T {v.temperature_c} °C, HR {v.heart_rate}/min, RR {v.respiratory_rate}/min, "
            f"SpO2 {v.spo2}% on room air. Weight {case.weight_kg} kg. {signs}"
        ),
        "investigations": " ".join(tests),
        "imaging": imaging,
    }


def _header(case: Case, record_type: str) -> dict:
    """Who, where and which studies: the identifying fields an EHR export carries."""
    ident = case.identity
    return {
        "record_id": f"{'OP' if record_type == 'outpatient' else 'IP'}-{ident.accession_xray}",
        "record_type": record_type,
        "patient_id": ident.mrn,
        "patient_name": ident.full_name,
        "birth_date": ident.birth_date.isoformat(),
        "sex": case.sex,
        "address": ident.address,
        "phone": ident.phone,
        "institution": ident.institution,
        "physician": f"Dr. {ident.attending}",
        "accession_numbers": [ident.accession_xray] + ([ident.accession_ct] if case.has_ct else []),
    }


def outpatient_record(case: Case) -> dict:
    """The clinic visit record, as a JSONL row (raw: full identity in header and text)."""
    return {
        **_header(case, "outpatient"),
        "visit_date": case.visit_date.isoformat(),
        "sections": {
            "chief_complaint": f"{case.symptoms[0].capitalize()} for {case.symptom_days} days.",
            **_shared_sections(case),
            "diagnosis": DIAGNOSIS_NAMES[case.diagnosis].capitalize() + ".",
            "plan": treatment_plan(case, inpatient=False)
            if not case.admitted
            else "Admitted to the pediatric ward for further management.",
        },
    }


def admission_reasons(case: Case) -> list[str]:
    """Why an admitted case was admitted ("hypoxaemia", "young_infant", "inflammation");
    none: the common reasons (poor intake, work of breathing)."""
    reasons = []
    if case.vitals.spo2 < 92:
        reasons.append("hypoxaemia")
    if case.age_days < 90:
        reasons.append("young_infant")
    if case.labs.crp > 150:
        reasons.append("inflammation")
    return reasons


def inpatient_record(case: Case) -> dict:
    """The admission-to-discharge record of an admitted case, as a JSONL row."""
    ident = case.identity
    discharge = case.visit_date + dt.timedelta(days=case.length_of_stay_days)
    phrases = {
        "hypoxaemia": f"hypoxaemia (SpO2 {case.vitals.spo2}%)",
        "young_infant": "young infant",
        "inflammation": "markedly raised inflammatory markers",
    }
    reasons = [phrases[reason] for reason in admission_reasons(case)]
    reason = ", ".join(reasons) or "poor oral intake and increased work of breathing"
    return {
        **_header(case, "inpatient"),
        "admission_date": case.visit_date.isoformat(),
        "discharge_date": discharge.isoformat(),
        "sections": {
            "reason_for_admission": reason.capitalize() + ".",
            **_shared_sections(case),
            "hospital_course": (
                f"{ident.given_name} was treated as follows: {treatment_plan(case, inpatient=True)} "
                f"Clinical improvement allowed discharge on day {case.length_of_stay_days}."
            ),
            "discharge_diagnosis": DIAGNOSIS_NAMES[case.diagnosis].capitalize() + ".",
            "discharge_plan": (
                "Complete the course of treatment at home. Follow-up in the pediatric clinic in 1 week."
            ),
        },
    }
