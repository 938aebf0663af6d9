"""Reading clinical content back out of generated text: findings, diagnosis, treatments.

`ClinicalExtractor` is what the scorers need; `VocabularyExtractor` implements it with
rules over the closed vocabulary of `data.vocabulary` and the phrasings the synthetic
generator writes (`data.synth.reports`, `data.synth.records`). On real reports a clinical
NER model or an LLM judge would implement the same protocol.

Negation is scoped to a clause (text between `.`, `;`, newlines and "but"/"however"): a cue
such as "no" or "without" negates the mentions after it in the clause, and a trailing cue
such as "not seen", "not indicated" or "resolved" negates the mention it follows (up to the
next term). Chinese text (`language.text_language`) is read by the same procedure with its
own rules (`CHINESE`: 未见, 无需 before a term, 已吸收 after it; a comma ends a clause), into
the same labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from p2med.platform.data.language import text_language
from p2med.platform.data.vocabulary import DIAGNOSIS_NAMES, DIAGNOSIS_NAMES_ZH, LOBES, Finding, lobe_side

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


@dataclass(frozen=True)
class _Rules:
    """How one language states findings, diagnoses and plan items."""

    clause_break: re.Pattern[str]
    negation_before: re.Pattern[str]  # a cue negating the mentions after it in the clause
    negation_after: re.Pattern[str]  # a cue negating the mention it follows
    findings: re.Pattern[str]  # one named group per finding type
    lobe: re.Pattern[str]  # groups: side, level
    side: re.Pattern[str]  # group 1: a side word that does not start a lobe name
    sides: dict[str, str]  # side word (lower-cased) -> "left" / "right" / "bilateral"
    levels: dict[str, str]  # level word (lower-cased) -> "upper" / "middle" / "lower"
    treatments: re.Pattern[str]  # one named group per plan item or withheld class
    diagnosis_line: re.Pattern[str]  # group 1: what follows "Diagnosis:"
    diagnosis_aliases: list[tuple[re.Pattern[str], str]]


ENGLISH = _Rules(
    clause_break=re.compile(r"(?<!\d)\.(?!\d)|[;!?\n]|\b(?:but|however|although|whereas)\b", re.I),
    negation_before=re.compile(r"\b(?:no|not|without|negative for|absence of|free of)\b", re.I),
    negation_after=re.compile(
        r"\b(?:not\s+(?:seen|present|identified|demonstrated|indicated|needed|required)|absent|resolved)\b",
        re.I,
    ),
    findings=re.compile(
        r"(?P<consolidation>\bconsolidat\w*)"
        r"|(?P<patchy_opacity>\bpatchy(?:[\s-]+(?:ground[- ]glass|airspace|alveolar))?(?:\s+opacit\w*)?"
        r"|\bground[- ]glass(?:\s+opacit\w*)?)"
        r"|(?P<interstitial_opacity>\binterstitial(?:\s+opacit\w*)?)"
        r"|(?P<pleural_effusion>\b(?:pleural\s+)?effusions?\b)"
        r"|(?P<hyperinflation>\bhyperinflat\w*|\bhyperexpan\w*)",
        re.I,
    ),
    lobe=re.compile(r"\b(right|left)\s+(upper|middle|lower)\s+lobe", re.I),
    # a side word that is not the start of a lobe name ("right" in "right lower lobe")
    side=re.compile(r"\b(left|right|bilateral)\b(?!\s+(?:upper|middle|lower)\s+lobe)", re.I),
    sides={"left": "left", "right": "right", "bilateral": "bilateral"},
    levels={"upper": "upper", "middle": "middle", "lower": "lower"},
    treatments=re.compile(
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
    ),
    diagnosis_line=re.compile(r"\bdiagnosis\s*:\s*([^\n]*)", re.I),
    # each label by its full name and by its label in words ("bacterial pneumonia")
    diagnosis_aliases=[
        (re.compile(rf"\b{re.escape(alias)}\b", re.I), label)
        for label, name in DIAGNOSIS_NAMES.items()
        for alias in (name, label.replace("_", " "))
    ],
)
# Chinese: a comma ends a clause too ("双肺未见实变，右肺下叶见斑片状影"); lobes as
# 右肺下叶, 右下叶, 右下肺; sides as 左侧, 右侧, 双侧 / 两侧 / 双肺. English drug names
# and abbreviations among the characters (GGO, Azithromycin) are read too.
CHINESE = _Rules(
    clause_break=re.compile(r"[。；;！？!?\n，,]|但|然而"),
    negation_before=re.compile(r"未见|未发现|未闻及|无需|不需要?|不建议|不推荐|暂不|没有|不伴|排除|否认|无"),
    negation_after=re.compile(r"已?吸收|消失|不明显"),
    findings=re.compile(
        r"(?P<consolidation>实变)"
        r"|(?P<patchy_opacity>斑片(?:状)?(?:模糊|密度增高)?影?|片状(?:密度增高|模糊)?影|磨玻璃(?:密度)?影|GGO)"
        r"|(?P<interstitial_opacity>间质(?:性)?(?:改变|影|浸润)|网格(?:状)?影)"
        r"|(?P<pleural_effusion>胸腔积液|胸水)"
        r"|(?P<hyperinflation>过度充气|过度通气|肺气肿)"
    ),
    lobe=re.compile(r"(右|左)肺?(上|中|下)(?:叶|肺叶|肺)?"),
    side=re.compile(r"(左|右|双|两)(?:侧|肺)?(?!肺?[上中下])"),
    sides={"左": "left", "右": "right", "双": "bilateral", "两": "bilateral"},
    levels={"上": "upper", "中": "middle", "下": "lower"},
    treatments=re.compile(  # drugs also by their English names, as mixed text gives them
        r"(?P<amoxicillin>阿莫西林|(?i:amoxicillin))"
        r"|(?P<cefuroxime>头孢呋辛|(?i:cefuroxime))"
        r"|(?P<ceftriaxone>头孢曲松|(?i:ceftriaxone))"
        r"|(?P<clindamycin>克林霉素|(?i:clindamycin))"
        r"|(?P<azithromycin>阿奇霉素|(?i:azithromycin))"
        r"|(?P<oseltamivir>奥司他韦|(?i:oseltamivir))"
        r"|(?P<paracetamol>对乙酰氨基酚|扑热息痛|(?i:paracetamol|acetaminophen))"
        r"|(?P<oxygen>吸氧|氧疗|给氧)"
        r"|(?P<iv_fluids>静脉补液|静脉输液)"
        r"|(?P<pulse_oximetry>(?:经皮|脉搏)?血氧(?:饱和度)?监测)"
        r"|(?P<nasal_suction>鼻腔吸引|吸痰)"
        r"|(?P<supportive_care>(?:对症)?支持治疗|对症治疗)"
        r"|(?P<antibiotics>抗生素|抗菌药物?)"
        r"|(?P<bronchodilators>支气管扩张剂)"
        r"|(?P<admission>收入院|收住院|住院治疗|入院)"
        r"|(?P<return_advice>及时(?:返院|就诊|复诊))"
        r"|(?P<follow_up>复诊|随访|复查)"
    ),
    diagnosis_line=re.compile(r"(?:初步诊断|出院诊断|诊断)\s*[:：]\s*([^\n]*)"),
    diagnosis_aliases=[
        (re.compile(re.escape(alias)), label)
        for label, aliases in {
            "normal": (DIAGNOSIS_NAMES_ZH["normal"], "未见异常", "正常"),
            "bacterial_pneumonia": (DIAGNOSIS_NAMES_ZH["bacterial_pneumonia"], "细菌性肺炎"),
            "viral_pneumonia": (DIAGNOSIS_NAMES_ZH["viral_pneumonia"],),
            "mycoplasma_pneumonia": (DIAGNOSIS_NAMES_ZH["mycoplasma_pneumonia"], "支原体肺炎"),
            "bronchiolitis": (DIAGNOSIS_NAMES_ZH["bronchiolitis"], "毛细支气管炎"),
        }.items()
        for alias in aliases
    ],
)
# Drug classes are only items when withheld: "antibiotics" alone does not say which.
_WITHHELD = {"antibiotics": "no_antibiotics", "bronchodilators": "no_bronchodilators"}


@dataclass(frozen=True)
class _Mention:
    """A vocabulary term in a clause, with the words around it up to the neighbouring terms."""

    kind: str
    prefix: str  # the clause before the term
    before: str  # from the previous term (or clause start) to this one
    after: str  # from this term to the next one (or clause end)
    clause: str
    rules: _Rules

    @property
    def negated(self) -> bool:
        return bool(
            self.rules.negation_before.search(self.prefix) or self.rules.negation_after.search(self.after)
        )


class VocabularyExtractor:
    """Rule-based `ClinicalExtractor` over the synthetic vocabulary and its paraphrases, in
    English and Chinese (the text's language decides which rules read it)."""

    def findings(self, text: str) -> frozenset[Finding]:
        found: set[Finding] = set()
        for mention in _mentions("findings", text):
            if not mention.negated:
                found.update(_complete(mention))
        return frozenset(found)

    def diagnosis(self, text: str) -> str | None:
        rules = _rules(text)
        line = rules.diagnosis_line.search(text)
        if line is None:
            return None
        hits = [
            (m.start(), label) for alias, label in rules.diagnosis_aliases if (m := alias.search(line[1]))
        ]
        # The name stated first wins ("viral pneumonia rather than bacterial pneumonia").
        return min(hits)[1] if hits else None

    def treatments(self, text: str) -> frozenset[str]:
        items: set[str] = set()
        for mention in _mentions("treatments", text):
            if mention.kind in _WITHHELD:
                if mention.negated:
                    items.add(_WITHHELD[mention.kind])
            elif not mention.negated:
                items.add(mention.kind)
        return frozenset(items)


def _rules(text: str) -> _Rules:
    return CHINESE if text_language(text) == "zh" else ENGLISH


def _mentions(terms: str, text: str) -> Iterator[_Mention]:
    rules = _rules(text)
    pattern: re.Pattern[str] = getattr(rules, terms)
    for clause in rules.clause_break.split(text):
        matches = list(pattern.finditer(clause))
        for i, match in enumerate(matches):
            left = matches[i - 1].end() if i else 0
            right = matches[i + 1].start() if i + 1 < len(matches) else len(clause)
            start, end = match.span()
            yield _Mention(
                match.lastgroup, clause[:start], clause[left:start], clause[end:right], clause, rules
            )


def _complete(mention: _Mention) -> list[Finding]:
    """The findings a mention states, with lobe or side; none when it lacks them (a
    consolidation without a lobe is not a finding the scores can compare)."""
    kind, rules = mention.kind, mention.rules
    if kind in ("interstitial_opacity", "hyperinflation"):
        return [Finding(kind, "bilateral")]
    if kind == "pleural_effusion":
        # The side nearest before it ("small left pleural effusion"), else the first after.
        sides = rules.side.findall(mention.before)[-1:] or rules.side.findall(mention.after)[:1]
        return [Finding(kind, rules.sides[sides[0].lower()])] if sides else []
    # A focal term takes the lobes after it ("consolidation in the right lower lobe"), else
    # those of its clause ("patchy opacities and consolidation in the left lower lobe",
    # "右肺下叶见实变影").
    lobes = rules.lobe.findall(mention.after) or rules.lobe.findall(mention.clause)
    found = []
    for side, level in lobes:
        lobe = f"{rules.sides[side.lower()]}_{rules.levels[level.lower()]}"
        if lobe in LOBES:
            found.append(Finding(kind, lobe_side(lobe), lobe))
    return found
