"""Reading clinical content back out of generated text: findings, diagnosis, treatments.

`ClinicalExtractor` is what the scorers need; `VocabularyExtractor` implements it with
rules over the closed vocabulary of `data.vocabulary` and the phrasings the synthetic
generator writes (`data.synth.reports`, `data.synth.records`). On real reports a clinical
NER model or an LLM judge would implement the same protocol.

Negation is scoped to a clause (text between `.`, `;`, newlines and "but"/"however"): a cue
such as "no" or "without" negates the mentions after it in the clause, and a trailing cue
such as "not seen", "not indicated" or "resolved" negates the mention it follows (up to the
next term).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from p2med.platform.data.vocabulary import DIAGNOSIS_NAMES, Finding, lobe_side

# Plan items a treatment text can name. Doses, routes and durations are left out on
# purpose: scoring compares what is given, not how much.
TREATMENT_ITEMS: tuple[str, ...] = (
    "amoxicillin",
    "cefuroxime",
    "ceftriaxone",
    "clindamycin",
    "azithromycin",
    "oseltamivir",
    "paracetamol",
    "oxygen",
    "iv_fluids",
    "pulse_oximetry",
    "nasal_suction",
    "supportive_care",
    "no_antibiotics",
    "no_bronchodilators",
    "admission",
    "return_advice",
    "follow_up",
)


class ClinicalExtractor(Protocol):
    """Turns free text into the terms the clinical scores compare."""

    def findings(self, text: str) -> frozenset[Finding]:
        """The imaging findings the text states as present."""
        ...

    def diagnosis(self, text: str) -> str | None:
        """The stated diagnosis, one of `vocabulary.DIAGNOSES`, or None when none is stated."""
        ...

    def treatments(self, text: str) -> frozenset[str]:
        """The plan items (of `TREATMENT_ITEMS`) the text prescribes or advises."""
        ...


_CLAUSE_BREAK = re.compile(r"(?<!\d)\.(?!\d)|[;!?\n]|\b(?:but|however|although|whereas)\b", re.I)
_NEGATION_BEFORE = re.compile(r"\b(?:no|not|without|negative for|absence of|free of)\b", re.I)
_NEGATION_AFTER = re.compile(
    r"\b(?:not\s+(?:seen|present|identified|demonstrated|indicated|needed|required)|absent|resolved)\b",
    re.I,
)
_FINDING_MENTIONS = re.compile(
    r"(?P<consolidation>\bconsolidat\w*)"
    r"|(?P<patchy_opacity>\bpatchy(?:[\s-]+(?:ground[- ]glass|airspace|alveolar))?(?:\s+opacit\w*)?"
    r"|\bground[- ]glass(?:\s+opacit\w*)?)"
    r"|(?P<interstitial_opacity>\binterstitial(?:\s+opacit\w*)?)"
    r"|(?P<pleural_effusion>\b(?:pleural\s+)?effusions?\b)"
    r"|(?P<hyperinflation>\bhyperinflat\w*|\bhyperexpan\w*)",
    re.I,
)
_LOBE = re.compile(r"\b(right|left)\s+(upper|middle|lower)\s+lobe", re.I)
# A side word that is not the start of a lobe name ("right" in "right lower lobe").
_SIDE = re.compile(r"\b(left|right|bilateral)\b(?!\s+(?:upper|middle|lower)\s+lobe)", re.I)
_TREATMENT_MENTIONS = re.compile(
    r"(?P<amoxicillin>\bamox[iy]cillin\b)"
    r"|(?P<cefuroxime>\bcefuroxime\b)"
    r"|(?P<ceftriaxone>\bceftriaxone\b)"
    r"|(?P<clindamycin>\bclindamycin\b)"
    r"|(?P<azithromycin>\bazithromycin\b)"
    r"|(?P<oseltamivir>\boseltamivir\b)"
    r"|(?P<paracetamol>\b(?:paracetamol|acetaminophen)\b)"
    r"|(?P<oxygen>\boxygen\b)"
    r"|(?P<iv_fluids>\b(?:iv|intravenous)\s+fluids?\b)"
    r"|(?P<pulse_oximetry>\bpulse\s+oximetry\b)"
    r"|(?P<nasal_suction>\bnasal\s+suction\w*)"
    r"|(?P<supportive_care>\b(?:supportive|symptomatic)\s+care\b)"
    r"|(?P<antibiotics>\bantibiotics?\b)"
    r"|(?P<bronchodilators>\bbronchodilators?\b)"
    r"|(?P<admission>\badmit\w*|\badmission\b)"
    r"|(?P<return_advice>\breturn\s+if\b)"
    r"|(?P<follow_up>\bfollow[- ]?up\b|\breview\s+in\b)",
    re.I,
)
# Drug classes are only items when withheld: "antibiotics" alone does not say which.
_WITHHELD = {"antibiotics": "no_antibiotics", "bronchodilators": "no_bronchodilators"}
_DIAGNOSIS_LINE = re.compile(r"\bdiagnosis\s*:\s*([^\n]*)", re.I)
# Each label by its full name and by its label in words ("bacterial pneumonia").
_DIAGNOSIS_ALIASES = [
    (re.compile(rf"\b{re.escape(alias)}\b", re.I), label)
    for label, name in DIAGNOSIS_NAMES.items()
    for alias in (name, label.replace("_", " "))
]


@dataclass(frozen=True)
class _Mention:
    """A vocabulary term in a clause, with the words around it up to the neighbouring terms."""

    kind: str
    prefix: str  # the clause before the term
    before: str  # from the previous term (or clause start) to this one
    after: str  # from this term to the next one (or clause end)
    clause: str

    @property
    def negated(self) -> bool:
        return bool(_NEGATION_BEFORE.search(self.prefix) or _NEGATION_AFTER.search(self.after))


class VocabularyExtractor:
    """Rule-based `ClinicalExtractor` over the synthetic vocabulary and its paraphrases."""

    def findings(self, text: str) -> frozenset[Finding]:
        found: set[Finding] = set()
        for mention in _mentions(_FINDING_MENTIONS, text):
            if not mention.negated:
                found.update(_complete(mention))
        return frozenset(found)

    def diagnosis(self, text: str) -> str | None:
        line = _DIAGNOSIS_LINE.search(text)
        if line is None:
            return None
        hits = [(m.start(), label) for alias, label in _DIAGNOSIS_ALIASES if (m := alias.search(line[1]))]
        # The name stated first wins ("viral pneumonia rather than bacterial pneumonia").
        return min(hits)[1] if hits else None

    def treatments(self, text: str) -> frozenset[str]:
        items: set[str] = set()
        for mention in _mentions(_TREATMENT_MENTIONS, text):
            if mention.kind in _WITHHELD:
                if mention.negated:
                    items.add(_WITHHELD[mention.kind])
            elif not mention.negated:
                items.add(mention.kind)
        return frozenset(items)


def _mentions(pattern: re.Pattern[str], text: str) -> Iterator[_Mention]:
    for clause in _CLAUSE_BREAK.split(text):
        matches = list(pattern.finditer(clause))
        for i, match in enumerate(matches):
            left = matches[i - 1].end() if i else 0
            right = matches[i + 1].start() if i + 1 < len(matches) else len(clause)
            start, end = match.span()
            yield _Mention(match.lastgroup, clause[:start], clause[left:start], clause[end:right], clause)


def _complete(mention: _Mention) -> list[Finding]:
    """The findings a mention states, with lobe or side; none when it lacks them (a
    consolidation without a lobe is not a finding the scores can compare)."""
    kind = mention.kind
    if kind in ("interstitial_opacity", "hyperinflation"):
        return [Finding(kind, "bilateral")]
    if kind == "pleural_effusion":
        # The side nearest before it ("small left pleural effusion"), else the first after.
        sides = _SIDE.findall(mention.before)[-1:] or _SIDE.findall(mention.after)[:1]
        return [Finding(kind, sides[0].lower())] if sides else []
    # A focal term takes the lobes after it ("consolidation in the right lower lobe"), else
    # those of its clause ("patchy opacities and consolidation in the left lower lobe").
    lobes = _LOBE.findall(mention.after) or _LOBE.findall(mention.clause)
    return [
        Finding(kind, lobe_side(lobe), lobe)
        for lobe in (f"{side.lower()}_{level.lower()}" for side, level in lobes)
    ]
