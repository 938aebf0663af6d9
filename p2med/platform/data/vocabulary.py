"""The clinical vocabulary of P2Med-MD: diagnoses, finding types, lobes and sides.

The synthetic generator draws findings from it, writes them into pixels and reports,
and the evaluation's findings extractor reads reports back into the same terms. A
finding is a (type, lobe, side) triple; diffuse findings have no lobe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from p2med.platform.data.language import Language

Diagnosis = Literal[
    "normal",
    "bacterial_pneumonia",
    "viral_pneumonia",
    "mycoplasma_pneumonia",
    "bronchiolitis",
]
DIAGNOSES: tuple[Diagnosis, ...] = (
    "normal",
    "bacterial_pneumonia",
    "viral_pneumonia",
    "mycoplasma_pneumonia",
    "bronchiolitis",
)
DIAGNOSIS_NAMES: dict[str, str] = {
    "normal": "no acute cardiopulmonary disease",
    "bacterial_pneumonia": "community-acquired bacterial pneumonia",
    "viral_pneumonia": "viral pneumonia",
    "mycoplasma_pneumonia": "Mycoplasma pneumoniae pneumonia",
    "bronchiolitis": "acute bronchiolitis",
}

# As a Chinese report states them (诊断：...).
DIAGNOSIS_NAMES_ZH: dict[str, str] = {
    "normal": "未见急性心肺病变",
    "bacterial_pneumonia": "社区获得性细菌性肺炎",
    "viral_pneumonia": "病毒性肺炎",
    "mycoplasma_pneumonia": "肺炎支原体肺炎",
    "bronchiolitis": "急性毛细支气管炎",
}

FindingType = Literal[
    "consolidation",
    "patchy_opacity",
    "interstitial_opacity",
    "pleural_effusion",
    "hyperinflation",
]
FINDING_TYPES: tuple[FindingType, ...] = (
    "consolidation",
    "patchy_opacity",
    "interstitial_opacity",
    "pleural_effusion",
    "hyperinflation",
)
# Focal findings sit in one lobe; the others are bilateral or pleural (side only).
FOCAL_FINDINGS: frozenset[str] = frozenset({"consolidation", "patchy_opacity"})
FINDING_PHRASES: dict[str, str] = {
    "consolidation": "consolidation",
    "patchy_opacity": "patchy opacities",
    "interstitial_opacity": "interstitial opacities",
    "pleural_effusion": "pleural effusion",
    "hyperinflation": "hyperinflation",
}

FINDING_PHRASES_ZH: dict[str, str] = {
    "consolidation": "实变影",
    "patchy_opacity": "斑片状影",
    "interstitial_opacity": "间质性改变",
    "pleural_effusion": "胸腔积液",
    "hyperinflation": "过度充气",
}

Lobe = Literal["right_upper", "right_middle", "right_lower", "left_upper", "left_lower"]
LOBES: tuple[Lobe, ...] = ("right_upper", "right_middle", "right_lower", "left_upper", "left_lower")
LOBE_PHRASES: dict[str, str] = {
    "right_upper": "right upper lobe",
    "right_middle": "right middle lobe",
    "right_lower": "right lower lobe",
    "left_upper": "left upper lobe",
    "left_lower": "left lower lobe",
}

LOBE_PHRASES_ZH: dict[str, str] = {
    "right_upper": "右肺上叶",
    "right_middle": "右肺中叶",
    "right_lower": "右肺下叶",
    "left_upper": "左肺上叶",
    "left_lower": "左肺下叶",
}

Side = Literal["left", "right", "bilateral"]


def lobe_side(lobe: Lobe) -> Side:
    return "right" if lobe.startswith("right") else "left"


@dataclass(frozen=True, order=True)
class Finding:
    """One imaging finding. `lobe` is set for focal findings and None for the others."""

    type: FindingType
    side: Side
    lobe: Lobe | None = None

    def __post_init__(self) -> None:
        if (self.type in FOCAL_FINDINGS) != (self.lobe is not None):
            raise ValueError(f"finding {self.type!r} {'needs' if self.lobe is None else 'takes no'} lobe")
        if self.lobe is not None and lobe_side(self.lobe) != self.side:
            raise ValueError(f"lobe {self.lobe!r} is not on side {self.side!r}")

    def phrase(self) -> str:
        """How a report names it, e.g. 'consolidation in the right lower lobe'."""
        what = FINDING_PHRASES[self.type]
        if self.lobe is not None:
            return f"{what} in the {LOBE_PHRASES[self.lobe]}"
        if self.side == "bilateral":
            return f"bilateral {what}"
        return f"{self.side} {what}"

    def phrase_zh(self) -> str:
        """How a Chinese report names it, e.g. '右肺下叶实变影', '双肺间质性改变', '左侧胸腔积液'."""
        what = FINDING_PHRASES_ZH[self.type]
        if self.lobe is not None:
            return LOBE_PHRASES_ZH[self.lobe] + what
        if self.type == "pleural_effusion":
            return {"left": "左侧", "right": "右侧", "bilateral": "双侧"}[self.side] + what
        return "双肺" + what


# Every finding a report can state: the label space of stage 2's finding head, in a fixed
# order (focal types in each lobe, effusion by side, the diffuse findings).
FINDING_LABELS: tuple[Finding, ...] = (
    *(Finding(kind, lobe_side(lobe), lobe) for kind in sorted(FOCAL_FINDINGS) for lobe in LOBES),
    *(Finding("pleural_effusion", side) for side in ("right", "left", "bilateral")),
    Finding("interstitial_opacity", "bilateral"),
    Finding("hyperinflation", "bilateral"),
)


def finding_phrases(language: Language) -> list[str]:
    """How reports in `language` name each finding label, in `FINDING_LABELS` order."""
    return [finding.phrase_zh() if language == "zh" else finding.phrase() for finding in FINDING_LABELS]
