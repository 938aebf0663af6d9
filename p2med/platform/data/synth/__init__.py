"""Deterministic synthetic P2Med-MD: pediatric patients with chest X-ray and CT DICOMs,
radiology reports and outpatient / inpatient records whose findings agree.

Entry point: `generate(SynthSettings(...), resolve("data/raw"))`.
"""

from p2med.platform.data.synth.generator import SynthSummary, generate
from p2med.platform.data.synth.settings import SynthSettings

__all__ = ["SynthSettings", "SynthSummary", "generate"]
