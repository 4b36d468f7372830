"""Structured findings (vitals, labs with units) -> HPO phenotypes, by adult reference ranges.

A deliberately small table. Ranges are common adult reference intervals as printed in the Merck
Manual Professional "Normal Laboratory Values" tables and, for haemoglobin, the WHO anaemia
thresholds (WHO/NMH/NHD/MNM/11.1, 2011; women 12 g/dL, men 13 g/dL; 12 is used when sex is unknown).
Vital-sign limits: fever >= 38.0 C, tachycardia > 100/min, bradycardia < 60/min, tachypnoea > 20/min,
hypertension >= 140 mmHg systolic, hypotension < 90 mmHg systolic, hypoxaemia SpO2 < 94 %.
Every phenotype found this way is marked as derived.

A value outside its range also argues *against* the opposite abnormality (`argues_against`): a haemoglobin below
range against polycythaemia (HP:0001901, the parent of increased haemoglobin: a disease of high red-cell mass),
platelets below range against thrombocytosis, glucose below range against hyperglycaemia, and so on. The ranker
lowers diseases that show that term (specialists/knowledge/rank.py, `against`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    names: tuple[str, ...]
    units: dict[str, float]  # accepted unit -> factor to the canonical unit
    low: float | None
    high: float | None
    below: str | None  # HPO id when below range
    above: str | None  # HPO id when above range
    source: str
    # HPO id a value below range argues against; None = `above` (haemoglobin: polycythaemia, the broader term)
    against_low: str | None = None


TABLE = [
    Range(("haemoglobin", "hemoglobin", "hb", "hgb"), {"g/dl": 1.0, "g/l": 0.1}, 12.0, 17.5, "HP:0001903", "HP:0001900", "WHO 2011; Merck", "HP:0001901"),  # noqa: E501
    Range(("white blood cells", "wbc", "leukocytes", "white cell count"), {"10^9/l": 1.0, "x10^9/l": 1.0, "/ul": 0.001, "/mm3": 0.001, "10^3/ul": 1.0}, 4.0, 11.0, "HP:0001882", "HP:0001974", "Merck"),  # noqa: E501
    Range(("platelets", "platelet count", "plt"), {"10^9/l": 1.0, "x10^9/l": 1.0, "/ul": 0.001, "/mm3": 0.001, "10^3/ul": 1.0}, 150.0, 450.0, "HP:0001873", "HP:0001894", "Merck"),  # noqa: E501
    Range(("sodium", "na"), {"mmol/l": 1.0, "meq/l": 1.0}, 135.0, 145.0, "HP:0002902", "HP:0003228", "Merck"),
    Range(("potassium", "k"), {"mmol/l": 1.0, "meq/l": 1.0}, 3.5, 5.0, "HP:0002900", "HP:0002153", "Merck"),
    Range(("glucose", "blood glucose"), {"mg/dl": 1.0, "mmol/l": 18.0}, 70.0, 140.0, "HP:0001943", "HP:0003074", "Merck (random)"),  # noqa: E501
    Range(("creatinine",), {"mg/dl": 1.0, "umol/l": 1 / 88.4, "µmol/l": 1 / 88.4}, None, 1.3, None, "HP:0003259", "Merck"),  # noqa: E501
    Range(("temperature", "body temperature", "temp"), {"c": 1.0, "°c": 1.0, "celsius": 1.0}, None, 37.9, None, "HP:0001945", "fever >= 38.0 C"),  # noqa: E501
    Range(("heart rate", "pulse", "hr"), {"/min": 1.0, "bpm": 1.0, "beats/min": 1.0}, 60.0, 100.0, "HP:0001662", "HP:0001649", "adult resting"),  # noqa: E501
    Range(("respiratory rate", "rr"), {"/min": 1.0, "breaths/min": 1.0}, None, 20.0, None, "HP:0002789", "adult resting"),  # noqa: E501
    Range(("systolic blood pressure", "systolic bp", "sbp"), {"mmhg": 1.0}, 90.0, 139.0, "HP:0002615", "HP:0000822", "ESC/ESH 2018 grade 1 >= 140"),  # noqa: E501
    Range(("oxygen saturation", "spo2", "sao2"), {"%": 1.0}, 94.0, None, "HP:0012418", None, "hypoxaemia < 94 %"),
]


def _number(value: float | str) -> float | None:
    if isinstance(value, (int, float)):
        return float(value)
    match = re.search(r"-?\d+(?:\.\d+)?", value.replace(",", "."))
    return float(match.group()) if match else None


def _outside(name: str, value: float | str, unit: str | None, age_years: float | None) -> tuple[Range, str, str] | None:
    """(range entry, "below" or "above", reason) when this measurement lies outside its range, else None.

    The ranges are for adults: a child's measurement (under 16 years) is never judged."""
    if age_years is not None and age_years < 16:
        return None
    key = name.strip().lower()
    number = _number(value)
    if number is None:
        return None
    for entry in TABLE:
        if key not in entry.names:
            continue
        unit_key = (unit or "").strip().lower().replace(" ", "")
        if unit_key not in entry.units:
            return None  # an unknown unit is never guessed
        canonical = number * entry.units[unit_key]
        if entry.low is not None and canonical < entry.low:
            return entry, "below", f"{name} {value} {unit or ''} below {entry.low} ({entry.source})".replace("  ", " ")
        if entry.high is not None and canonical > entry.high:
            return entry, "above", f"{name} {value} {unit or ''} above {entry.high} ({entry.source})".replace("  ", " ")
        return None
    return None


def derive(name: str, value: float | str, unit: str | None, age_years: float | None = None) -> tuple[str, str] | None:
    """(HPO id, reason) when this measurement lies outside its range; None when normal or unknown.

    The ranges are for adults: a child's measurement (under 16 years) is never turned into a phenotype.
    """
    found = _outside(name, value, unit, age_years)
    if found is None:
        return None
    entry, direction, reason = found
    term = entry.below if direction == "below" else entry.above
    return (term, reason) if term else None


def argues_against(name: str, value: float | str, unit: str | None, age_years: float | None = None) -> tuple[str, str] | None:
    """(HPO id, reason) of the opposite abnormality that this out-of-range measurement argues against, or None."""
    found = _outside(name, value, unit, age_years)
    if found is None:
        return None
    entry, direction, reason = found
    term = (entry.against_low or entry.above) if direction == "below" else entry.below
    return (term, reason) if term else None
