"""Measurements outside adult reference ranges become phenotypes; units are never guessed."""

from __future__ import annotations

from medagent.specialists.knowledge.findings import derive


def test_out_of_range_measurements_become_phenotypes():
    assert derive("Haemoglobin", 8.9, "g/dL")[0] == "HP:0001903"
    assert derive("hemoglobin", 89, "g/L")[0] == "HP:0001903"
    assert derive("temperature", "38.6", "C")[0] == "HP:0001945"
    assert derive("heart rate", 130, "bpm")[0] == "HP:0001649"
    assert derive("sodium", 128, "mmol/L")[0] == "HP:0002902"


def test_normal_unknown_unit_and_child_give_nothing():
    assert derive("haemoglobin", 14, "g/dL") is None
    assert derive("haemoglobin", 8.9, "furlongs") is None
    assert derive("heart rate", 120, "/min", age_years=0.7) is None
    assert derive("mystery marker", 3, "U/L") is None
