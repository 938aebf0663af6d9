"""Radiology reports (findings, impression) that state what the images show.

Findings use the canonical phrases of `vocabulary` with a few paraphrases, and state
relevant negatives ("No pleural effusion."), as radiologists do.
"""

from __future__ import annotations

import numpy as np

from p2med.platform.data.synth.cases import Case
from p2med.platform.data.vocabulary import LOBE_PHRASES, Finding

XRAY_SENTENCES = {
    "consolidation": [
        "There is dense consolidation in the {lobe}.",
        "Airspace consolidation is seen in the {lobe}.",
        "Focal consolidation in the {lobe} with air bronchograms.",
    ],
    "patchy_opacity": [
        "Patchy opacities are present in the {lobe}.",
        "There are patchy airspace opacities in the {lobe}.",
    ],
    "interstitial_opacity": [
        "Bilateral perihilar interstitial opacities with peribronchial thickening.",
        "There are bilateral interstitial opacities, most marked centrally.",
    ],
    "pleural_effusion": [
        "Small {side} pleural effusion blunting the costophrenic angle.",
        "There is a small {side} pleural effusion.",
    ],
    "hyperinflation": [
        "The lungs are hyperinflated with flattening of the hemidiaphragms.",
        "Bilateral hyperinflation.",
    ],
}
CT_SENTENCES = {
    "consolidation": [
        "Dense consolidation with air bronchograms in the {lobe}.",
        "There is consolidation of the {lobe}.",
    ],
    "patchy_opacity": [
        "Patchy ground-glass opacities in the {lobe}.",
        "There are patchy opacities in the {lobe}.",
    ],
    "interstitial_opacity": [
        "Bilateral interstitial opacities with interlobular septal thickening.",
        "There are bilateral reticular interstitial opacities.",
    ],
    "pleural_effusion": [
        "Small {side} pleural effusion.",
        "There is a small dependent {side} pleural effusion.",
    ],
    "hyperinflation": ["The lungs are hyperinflated with mosaic attenuation.", "Bilateral hyperinflation."],
}
NEGATIVES = {
    "consolidation": "No focal consolidation.",
    "pleural_effusion": "No pleural effusion.",
    "hyperinflation": None,
    "interstitial_opacity": None,
    "patchy_opacity": None,
}


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _finding_sentence(finding: Finding, templates: dict[str, list[str]], rng) -> str:
    lobe = LOBE_PHRASES[finding.lobe] if finding.lobe else ""
    return _pick(rng, templates[finding.type]).format(lobe=lobe, side=finding.side)


def findings_text(case: Case, modality: str, rng: np.random.Generator) -> str:
    templates = CT_SENTENCES if modality == "CT" else XRAY_SENTENCES
    sentences = [_finding_sentence(f, templates, rng) for f in case.findings]
    present = {f.type for f in case.findings}
    if not case.findings:
        sentences.append("The lungs are clear.")
    sentences += [neg for kind, neg in NEGATIVES.items() if neg and kind not in present]
    sentences.append("No pneumothorax.")
    sentences.append(
        "The heart and mediastinum are normal."
        if modality == "CT"
        else "The cardiothymic silhouette is normal."
    )
    return " ".join(sentences)


IMPRESSION_TAILS = {
    "pneumonia": "consistent with pneumonia in the appropriate clinical setting",
    "small_airways": "in keeping with small airways disease such as bronchiolitis",
    "viral": "suggestive of viral or atypical lower respiratory tract infection",
    "bronchopneumonia": "suggestive of bronchopneumonia or atypical infection",
}


def impression_reading(case: Case) -> str:
    """What the findings together suggest, a key of `IMPRESSION_TAILS` (a case with findings)."""
    types = {finding.type for finding in case.findings}
    for kind, reading in (
        ("consolidation", "pneumonia"),
        ("hyperinflation", "small_airways"),
        ("interstitial_opacity", "viral"),
    ):
        if kind in types:
            return reading
    return "bronchopneumonia"


def impression_text(case: Case) -> str:
    if not case.findings:
        return "No acute cardiopulmonary abnormality."
    parts = [f.phrase() for f in case.findings]
    summary = "; ".join(parts)
    summary = summary[0].upper() + summary[1:]
    return f"{summary}, {IMPRESSION_TAILS[impression_reading(case)]}."


def report_record(case: Case, seed: int, modality: str, study_uid: str) -> dict:
    """One radiology report as a JSONL row (raw: it names the patient's MRN and the
    reporting radiologist, as an export from a radiology information system does)."""
    rng = np.random.default_rng([seed, case.index, 3 if modality == "CT" else 2])
    ident = case.identity
    ct = modality == "CT"
    sex = "boy" if case.sex == "M" else "girl"
    return {
        "report_id": f"{'CT' if ct else 'XR'}-{ident.accession_ct if ct else ident.accession_xray}",
        "patient_id": ident.mrn,
        "accession_number": ident.accession_ct if ct else ident.accession_xray,
        "study_instance_uid": study_uid,
        "modality": modality,
        "study_date": case.visit_date.isoformat(),
        "examination": "CT chest without contrast" if ct else "Chest radiograph, PA view",
        "clinical_history": f"{case.age_phrase} {sex} with {', '.join(case.symptoms)}.",
        "findings": findings_text(case, modality, rng),
        "impression": impression_text(case),
        "radiologist": f"Dr. {ident.radiologist}",
        "institution": ident.institution,
    }
