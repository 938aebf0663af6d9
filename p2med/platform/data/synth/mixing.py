"""Chinese clinical text as it is often written (`language=mixed`): Chinese sentences with
English drug names, test and imaging abbreviations and prescription shorthand, each
doctor with his own habits.

`reports_zh` and `records_zh` already write what every Chinese record writes in Latin
letters (WBC, CRP, SpO2, mg/L, ×10^9/L). Here each of `ENGLISH_FORMS` is written in
English for a share of patients (`SHARE`), chosen per patient and term, so one patient's
texts are consistent and the data set holds both forms. The clinical content and what
`extract.CHINESE` reads from it stay the same.
"""

from __future__ import annotations

import re

import numpy as np

SHARE = 0.5
"""The chance that a patient's texts write a given term in English."""
ENGLISH_FORMS = {
    # drugs: English generic names, as prescriptions and notes often give them
    "阿莫西林": "Amoxicillin",
    "头孢呋辛": "Cefuroxime",
    "头孢曲松": "Ceftriaxone",
    "克林霉素": "Clindamycin",
    "阿奇霉素": "Azithromycin",
    "奥司他韦": "Oseltamivir",
    "对乙酰氨基酚": "Paracetamol",
    # prescription shorthand
    "静脉滴注": "ivgtt",
    "口服": "po",
    "每日两次": "bid",
    "每日一次": "qd",
    "每8小时一次": "q8h",
    # tests and imaging
    "肺炎支原体IgM": "MP-IgM",
    "甲/乙型流感病毒": "Flu A/B",
    "胸部X线": "胸部DR",
    "胸部正位片": "胸部DR正位片",
    "磨玻璃影": "GGO",
    "支气管充气征": "air bronchogram",
    # the diagnosis keeps its Chinese name, its abbreviation beside it
    "肺炎支原体肺炎": "肺炎支原体肺炎（MPP）",
}
_LATIN = re.compile("[A-Za-z0-9]")
_TERMS = re.compile("|".join(map(re.escape, sorted(ENGLISH_FORMS, key=len, reverse=True))))


class Mixer:
    """Which terms one patient's texts write in English (the habits of their doctors)."""

    def __init__(self, seed: int, patient: int) -> None:
        draws = np.random.default_rng([seed, patient, 11]).random(len(ENGLISH_FORMS))
        self.english = {term for term, draw in zip(ENGLISH_FORMS, draws, strict=True) if draw < SHARE}

    def __call__(self, text: str) -> str:
        return _TERMS.sub(self._form, text)

    def _form(self, term: re.Match) -> str:
        """The term as this patient's texts write it; English beside a digit or a Latin
        letter is set apart by a space ("Amoxicillin 450 mg po"), beside characters not."""
        if term[0] not in self.english:
            return term[0]
        text, english = term.string, ENGLISH_FORMS[term[0]]
        before = _apart(text[term.start() - 1 : term.start()], english[0])
        after = _apart(text[term.end() : term.end() + 1], english[-1])
        return before + english + after

    def record(self, row: dict) -> dict:
        """A report or record row with its texts mixed (identifiers and keys as they were)."""
        if "sections" in row:
            return row | {"sections": {key: self(text) for key, text in row["sections"].items()}}
        return row | {
            key: self(row[key]) for key in ("examination", "clinical_history", "findings", "impression")
        }


def _apart(neighbour: str, edge: str) -> str:
    return " " if _LATIN.fullmatch(neighbour) and _LATIN.fullmatch(edge) else ""
