"""What to generate: the settings of a synthetic P2Med-MD data set."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from p2med.platform.config import Settings


class Prevalence(Settings):
    """Relative weight of each diagnosis among generated patients (normalised to sum 1)."""

    normal: float = Field(1.0, ge=0)
    """Weight of patients without acute disease."""
    bacterial_pneumonia: float = Field(1.0, ge=0)
    """Weight of community-acquired bacterial pneumonia (lobar consolidation)."""
    viral_pneumonia: float = Field(1.0, ge=0)
    """Weight of viral pneumonia (bilateral interstitial opacities)."""
    mycoplasma_pneumonia: float = Field(1.0, ge=0)
    """Weight of Mycoplasma pneumoniae pneumonia (patchy opacities, school age)."""
    bronchiolitis: float = Field(1.0, ge=0)
    """Weight of acute bronchiolitis (hyperinflation, infants)."""

    @model_validator(mode="after")
    def _some_weight(self) -> Prevalence:
        if sum(self.model_dump().values()) <= 0:
            raise ValueError("at least one diagnosis needs a weight above 0")
        return self


class SynthSettings(Settings):
    """What to generate. Same config and seed, same bytes."""

    patients: int = Field(200, gt=0, le=10_000_000)
    """Number of patients; each gets an X-ray, an outpatient record, a report per study."""
    seed: int = Field(0, ge=0)
    """Random seed; the data set is a pure function of the config."""
    prevalence: Prevalence = Prevalence()
    """Relative weight of each diagnosis."""
    ct_fraction: float = Field(0.3, ge=0, le=1)
    """Share of patients who also get a chest CT series."""
    xray_size: int = Field(512, ge=64, le=4096)
    """X-ray height in pixels (width is 82-100% of it, as detector plates vary)."""
    ct_slices: int = Field(32, ge=8, le=1024)
    """Axial slices per CT series, covering the lungs."""
    ct_size: int = Field(160, ge=32, le=1024)
    """CT slice width and height in pixels."""
    workers: int = Field(0, ge=0)
    """Worker processes; 0 uses every CPU core."""
    language: Literal["en", "zh", "mixed"] = "en"
    """Language of reports and records, and whose identities the headers and texts carry:
    "zh" writes them as a Chinese children's hospital does (Chinese names in characters
    and pinyin, resident ID numbers, Chinese dates and addresses); "mixed" as "zh", with
    English drug names and abbreviations among the Chinese as many doctors write them
    (`synth.mixing`). The same patient, seed and settings have the same clinical content
    and labels in every language."""
    faults: bool = False
    """Mix in one broken input of each kind the ingest must quarantine (listed in the manifest)."""
