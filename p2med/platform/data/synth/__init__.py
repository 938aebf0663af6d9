"""Deterministic synthetic P2Med-MD: pediatric patients with chest X-ray and CT DICOMs,
radiology reports and outpatient / inpatient records whose findings agree.

Entry point: `generate(SynthConfig(...), resolve("data/raw"))`.
"""

from p2med.platform.data.synth.generator import SynthConfig, SynthSummary, generate

__all__ = ["SynthConfig", "SynthSummary", "generate"]
