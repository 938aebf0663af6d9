"""Sampling one synthetic patient: fake identity, diagnosis, findings, vitals and labs.

Each patient depends only on (seed, index), so any worker can make any patient and the
output does not depend on how the work was split. Symptoms and labs point at the
diagnosis but never at the lobe or side of a finding: only the images show those.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from p2med.platform.data.vocabulary import DIAGNOSES, LOBES, Diagnosis, Finding, lobe_side

# A fixed reference keeps dates deterministic; visits fall in the two years before it.
REFERENCE_DATE = dt.date(2025, 6, 30)

GIVEN_NAMES = {
    "M": [
        "Liam",
        "Noah",
        "Oliver",
        "Elijah",
        "Lucas",
        "Mason",
        "Ethan",
        "Aiden",
        "Leo",
        "Mateo",
        "Wei",
        "Hao",
        "Arjun",
        "Omar",
        "Yusuf",
        "Felix",
        "Jonas",
        "Hugo",
        "Kai",
        "Samuel",
    ],
    "F": [
        "Olivia",
        "Emma",
        "Amelia",
        "Sophia",
        "Mia",
        "Isla",
        "Chloe",
        "Aria",
        "Lily",
        "Zoe",
        "Mei",
        "Xiu",
        "Priya",
        "Aisha",
        "Leila",
        "Clara",
        "Freya",
        "Ines",
        "Nora",
        "Hannah",
    ],
}
FAMILY_NAMES = [
    "Smith",
    "Garcia",
    "Chen",
    "Nguyen",
    "Patel",
    "Kowalski",
    "Okafor",
    "Muller",
    "Rossi",
    "Haddad",
    "Tanaka",
    "Johansson",
    "Silva",
    "O'Brien",
    "Kim",
    "Novak",
    "Ivanova",
    "Mensah",
    "Dubois",
    "Larsen",
    "Wang",
    "Li",
    "Zhang",
    "Liu",
]
ADULT_GIVEN = [
    "Anna",
    "David",
    "Maria",
    "James",
    "Sarah",
    "Michael",
    "Elena",
    "Robert",
    "Fatima",
    "Thomas",
    "Julia",
    "Daniel",
    "Grace",
    "Peter",
    "Laura",
    "Ahmed",
]
STREETS = [
    "Maple Avenue",
    "Station Road",
    "Harbor Street",
    "Elm Close",
    "Garden Lane",
    "Mill Road",
    "Park Crescent",
    "Willow Way",
    "Church Street",
    "River Drive",
]
CITIES = ["Springfield", "Riverton", "Lakeside", "Oakridge", "Fairview", "Brookfield"]
# Institution -> its address (fake, but identifying all the same).
INSTITUTIONS = {
    "St. Mary's Children's Hospital": "12 Cathedral Square, Springfield",
    "Riverton Pediatric Center": "400 Harbor Street, Riverton",
    "Lakeside University Children's Hospital": "1 University Avenue, Lakeside",
    "Oakridge General Hospital": "88 Hospital Road, Oakridge",
}

# Diagnosis -> age range in days (bronchiolitis is a disease of infants, Mycoplasma of school age).
AGE_RANGE_DAYS = {
    "normal": (30, 14 * 365),
    "bacterial_pneumonia": (60, 14 * 365),
    "viral_pneumonia": (30, 14 * 365),
    "mycoplasma_pneumonia": (3 * 365, 14 * 365),
    "bronchiolitis": (30, 2 * 365),
}


@dataclass(frozen=True)
class Identity:
    """Fake identifying data, present in the raw store so that ingest must remove it."""

    given_name: str
    family_name: str
    mrn: str
    birth_date: dt.date
    guardian_name: str
    address: str
    phone: str
    institution: str
    institution_address: str
    attending: str
    referring_physician: str
    radiologist: str
    accession_xray: str
    accession_ct: str

    @property
    def full_name(self) -> str:
        return f"{self.given_name} {self.family_name}"


@dataclass(frozen=True)
class Vitals:
    temperature_c: float
    heart_rate: int
    respiratory_rate: int
    spo2: int


@dataclass(frozen=True)
class Labs:
    wbc: float  # 10^9/L
    neutrophil_pct: int
    lymphocyte_pct: int
    crp: float  # mg/L
    procalcitonin: float  # ng/mL
    mycoplasma_igm: bool
    rsv: bool
    influenza: bool


@dataclass(frozen=True)
class Case:
    """One synthetic patient with one chest X-ray and, for some, a chest CT."""

    index: int
    identity: Identity
    sex: str  # "M" | "F"
    age_days: int
    weight_kg: float
    diagnosis: Diagnosis
    findings: tuple[Finding, ...]
    symptoms: tuple[str, ...]
    symptom_days: int
    vitals: Vitals
    labs: Labs
    penicillin_allergy: bool
    admitted: bool
    length_of_stay_days: int
    has_ct: bool
    visit_date: dt.date

    @property
    def age_years(self) -> float:
        return self.age_days / 365.25

    @property
    def age_phrase(self) -> str:
        """As a clinician writes it: '7-month-old' under two years, else '4-year-old'."""
        if self.age_days < 730:
            return f"{self.age_days // 30}-month-old"
        return f"{int(self.age_years)}-year-old"


def make_case(seed: int, index: int, prevalence: dict[str, float], ct_fraction: float) -> Case:
    """The patient number `index` of the data set generated with `seed`."""
    rng = np.random.default_rng([seed, index, 0])
    p = np.array([prevalence.get(d, 0.0) for d in DIAGNOSES], dtype=float)
    diagnosis: Diagnosis = DIAGNOSES[int(rng.choice(len(DIAGNOSES), p=p / p.sum()))]
    lo, hi = AGE_RANGE_DAYS[diagnosis]
    # Skew towards young children, as pediatric pneumonia is.
    age_days = int(lo + (hi - lo) * rng.beta(1.3, 2.2))
    sex = "M" if rng.random() < 0.52 else "F"
    weight = _weight_kg(age_days) * float(rng.uniform(0.88, 1.12))
    vitals, labs, symptoms, symptom_days = _clinical_picture(diagnosis, age_days, rng)
    findings = _findings(diagnosis, rng)
    severe = vitals.spo2 < 92 or (diagnosis != "normal" and age_days < 90)
    severe = severe or (diagnosis == "bacterial_pneumonia" and labs.crp > 150)
    admitted = severe or (diagnosis != "normal" and rng.random() < 0.1)
    visit_date = REFERENCE_DATE - dt.timedelta(days=int(rng.integers(0, 730)))
    return Case(
        index=index,
        identity=_identity(seed, index, sex, age_days, visit_date, rng),
        sex=sex,
        age_days=age_days,
        weight_kg=round(weight, 1),
        diagnosis=diagnosis,
        findings=findings,
        symptoms=symptoms,
        symptom_days=symptom_days,
        vitals=vitals,
        labs=labs,
        penicillin_allergy=bool(rng.random() < 0.08),
        admitted=bool(admitted),
        length_of_stay_days=int(rng.integers(2, 8)) if admitted else 0,
        has_ct=bool(rng.random() < ct_fraction),
        visit_date=visit_date,
    )


def _weight_kg(age_days: int) -> float:
    months = age_days / 30.4
    if months < 12:
        return 3.5 + 0.55 * months
    years = age_days / 365.25
    return 2.0 * years + 8.0 if years < 10 else 3.0 * years - 2.0


def _findings(diagnosis: Diagnosis, rng: np.random.Generator) -> tuple[Finding, ...]:
    def lobe(weights: tuple[float, ...] = (1, 1, 1, 1, 1)):
        w = np.array(weights, dtype=float)
        return LOBES[int(rng.choice(len(LOBES), p=w / w.sum()))]

    found: list[Finding] = []
    if diagnosis == "bacterial_pneumonia":
        where = lobe()
        found.append(Finding("consolidation", lobe_side(where), where))
        if rng.random() < 0.35:
            found.append(Finding("pleural_effusion", lobe_side(where)))
    elif diagnosis == "viral_pneumonia":
        found.append(Finding("interstitial_opacity", "bilateral"))
        if rng.random() < 0.4:
            where = lobe()
            found.append(Finding("patchy_opacity", lobe_side(where), where))
    elif diagnosis == "mycoplasma_pneumonia":
        where = lobe((1, 0.8, 1.6, 1, 1.6))  # lower lobes are favoured
        kind = "consolidation" if rng.random() < 0.3 else "patchy_opacity"
        found.append(Finding(kind, lobe_side(where), where))
        if rng.random() < 0.15:
            found.append(Finding("pleural_effusion", lobe_side(where)))
    elif diagnosis == "bronchiolitis":
        found.append(Finding("hyperinflation", "bilateral"))
        if rng.random() < 0.4:
            found.append(Finding("interstitial_opacity", "bilateral"))
    return tuple(sorted(found))


@dataclass(frozen=True)
class ClinicalProfile:
    """Ranges that vitals and labs are drawn from, and the presenting symptoms."""

    temperature_c: tuple[float, float]
    spo2: tuple[float, float]
    wbc: tuple[float, float]
    neutrophil_pct: tuple[float, float]
    crp: tuple[float, float]
    procalcitonin: tuple[float, float]
    symptoms: tuple[str, ...]  # the first is the chief complaint
    symptom_days: tuple[int, int]


PROFILES = {
    "bacterial_pneumonia": ClinicalProfile(
        (38.8, 40.2), (89, 98), (15, 28), (70, 88), (60, 240), (1, 10),
        ("fever", "productive cough", "tachypnea", "chest pain"), (2, 6),
    ),
    "viral_pneumonia": ClinicalProfile(
        (37.8, 39.5), (90, 98), (4, 11), (30, 55), (2, 25), (0.05, 0.4),
        ("fever", "dry cough", "rhinorrhea", "myalgia"), (2, 7),
    ),
    "mycoplasma_pneumonia": ClinicalProfile(
        (37.8, 39.5), (93, 99), (5, 12), (50, 70), (10, 50), (0.05, 0.5),
        ("persistent dry cough", "fever", "headache", "sore throat"), (7, 15),
    ),
    "bronchiolitis": ClinicalProfile(
        (37.2, 38.5), (86, 97), (6, 13), (25, 45), (1, 15), (0.05, 0.3),
        ("wheezing", "cough", "poor feeding", "nasal congestion"), (2, 6),
    ),
    "normal": ClinicalProfile(
        (36.5, 38.0), (97, 100), (5, 11), (40, 60), (0, 8), (0.02, 0.1),
        ("mild cough", "runny nose"), (1, 5),
    ),
}  # fmt: skip


def _clinical_picture(diagnosis: Diagnosis, age_days: int, rng: np.random.Generator):
    """Vitals, labs, symptoms (chief complaint first) and their duration in days."""
    p = PROFILES[diagnosis]
    u = rng.uniform
    n = int(rng.integers(2, len(p.symptoms) + 1))
    others = sorted(rng.choice(p.symptoms[1:], size=n - 1, replace=False).tolist())
    infant = age_days < 365
    vitals = Vitals(
        temperature_c=round(float(u(*p.temperature_c)), 1),
        heart_rate=int(u(110, 170) if infant else u(80, 140)),
        respiratory_rate=int(u(35, 65) if infant else u(18, 40)) + (6 if diagnosis != "normal" else 0),
        spo2=int(min(100, u(*p.spo2))),
    )
    neutrophils = u(*p.neutrophil_pct)
    labs = Labs(
        wbc=round(float(u(*p.wbc)), 1),
        neutrophil_pct=int(neutrophils),
        lymphocyte_pct=int(min(95 - neutrophils, u(20, 70))),
        crp=round(float(u(*p.crp)), 1),
        procalcitonin=round(float(u(*p.procalcitonin)), 2),
        mycoplasma_igm=diagnosis == "mycoplasma_pneumonia",
        rsv=diagnosis == "bronchiolitis" and bool(rng.random() < 0.75),
        influenza=diagnosis == "viral_pneumonia" and bool(rng.random() < 0.4),
    )
    return vitals, labs, (p.symptoms[0], *others), int(rng.integers(*p.symptom_days))


def _unique_number(seed: int, index: int, stream: int) -> int:
    """An 8-digit number that looks random but is unique per patient within a data set:
    `index -> (a * index + b) mod 10^8` is one-to-one because `a` is coprime to 10^8."""
    multiplier = (7_919_251, 3_141_593)[stream]
    offset = int(np.random.default_rng([seed, 0xC0DE, stream]).integers(10**8))
    return (multiplier * index + offset) % 10**8


def _identity(
    seed: int, index: int, sex: str, age_days: int, visit: dt.date, rng: np.random.Generator
) -> Identity:
    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    def physician() -> str:
        return f"{pick(ADULT_GIVEN)} {pick(FAMILY_NAMES)}"

    family = pick(FAMILY_NAMES)
    accession = _unique_number(seed, index, 1)
    institution = pick(list(INSTITUTIONS))
    return Identity(
        given_name=pick(GIVEN_NAMES[sex]),
        family_name=family,
        mrn=f"MRN{_unique_number(seed, index, 0):08d}",
        birth_date=visit - dt.timedelta(days=age_days),
        guardian_name=f"{pick(ADULT_GIVEN)} {family}",
        address=f"{int(rng.integers(1, 400))} {pick(STREETS)}, {pick(CITIES)}",
        phone=f"555-{int(rng.integers(100, 1000))}-{int(rng.integers(1000, 10000))}",
        institution=institution,
        institution_address=INSTITUTIONS[institution],
        attending=physician(),
        referring_physician=physician(),
        radiologist=physician(),
        accession_xray=f"ACC{accession:08d}X",
        accession_ct=f"ACC{accession:08d}C",
    )
