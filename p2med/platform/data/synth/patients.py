"""Patient i of a synthetic data set: its case and chest layout, and the key its UIDs derive
from. The generator writes patients from these; the fault maker builds its broken inputs
from the same functions, so they look like the rest of the store.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

from p2med.platform.data.synth.anatomy import ChestLayout, sample_layout
from p2med.platform.data.synth.cases import Case, make_case
from p2med.platform.data.synth.identity_zh import ChineseIdentity, chinese_identity
from p2med.platform.data.synth.settings import SynthSettings


def dataset_key(config: SynthSettings) -> str:
    """What makes patient i what it is: every field but the patient count and workers.
    UIDs derive from it, so a larger set with the same settings extends a smaller one."""
    settings = config.model_dump(exclude={"patients", "workers", "faults"})
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def patient_case(config: SynthSettings, index: int) -> Case:
    return make_case(config.seed, index, config.prevalence.model_dump(), config.ct_fraction)


def patient_layout(config: SynthSettings, case: Case) -> ChestLayout:
    """The chest geometry shared by the patient's X-ray and CT."""
    hyper = any(f.type == "hyperinflation" for f in case.findings)
    return sample_layout(np.random.default_rng([config.seed, case.index, 4]), hyper)


def patient_identity_zh(config: SynthSettings, case: Case) -> ChineseIdentity:
    """The patient's Chinese identity (language zh), born on the same day as its English one."""
    rng = np.random.default_rng([config.seed, case.index, 7])
    return chinese_identity(rng, case.sex, case.identity.birth_date, case.index)
