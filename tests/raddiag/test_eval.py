"""The RadDiag eval: top-k and AUC on labelled scans (hand-made scores; committed synthetic volumes, tiny model)."""

from __future__ import annotations

import json
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from medagent.evals.raddiag import evaluate, main, score
from medagent.specialists.raddiag.labels import vocabulary
from medagent.tools.errors import MedagentError

from .conftest import DATA

SUITE = DATA / "suite" / "suite.jsonl"


def _probs(**by_name: float) -> np.ndarray:
    probs = np.zeros(len(vocabulary()), np.float32)
    for name, p in by_name.items():
        probs[vocabulary().index(name.replace("_", " "))] = p
    return probs


def test_top_k_and_auc_of_hand_made_scores() -> None:
    cases = [
        {"labels": ["Pneumothorax"], "probs": _probs(Pneumothorax=0.9, Meningioma=0.2)},
        {"labels": ["Meningioma"], "probs": _probs(Pneumothorax=0.5, Meningioma=0.4)},
        {"labels": ["Pneumothorax"], "probs": _probs(Pneumothorax=0.4, Meningioma=0.8)},
        {"labels": ["Meningioma"], "probs": _probs(Pneumothorax=0.1, Meningioma=0.7)},
    ]
    report = score(cases, [1, 2])
    # top-1: cases 1 and 4 right; top-2: both named disorders lead every ranking, so all four
    assert report["top_k"] == {"1": 0.5, "2": 1.0}
    # Pneumothorax: positives 0.9, 0.4 against negatives 0.5, 0.1 -> 3 of 4 pairs ordered; Meningioma likewise
    # (positives 0.4, 0.7 against 0.2, 0.8 -> 2 of 4)
    assert report["auc"] == {"Meningioma": 0.5, "Pneumothorax": 0.75}
    assert report["macro_auc"] == pytest.approx(0.625)
    assert report["chance_top_k"]["1"] == pytest.approx(1 / 5569)
    # An ICD-10-CM label scores at its best disorder: J93 (pneumothorax and its kin) ranks first for case 1.
    coded = score([{"labels": ["J93"], "probs": cases[0]["probs"]}], [1])
    assert coded["top_k"] == {"1": 1.0} and coded["auc"] == {}


def test_committed_suite_through_the_tiny_model(early_dir: Path) -> None:
    report = evaluate(SUITE, early_dir, [1, 5])
    assert report["cases"] == 4 and len(report["items"]) == 4
    # Every label has positive and negative cases (J93 and D32 label case 4 only).
    assert set(report["auc"]) == {"Pneumothorax", "Meningioma", "J93", "D32"}
    # Each label's AUC recomputed by hand from the per-case scores the report lists.
    for label, auc in report["auc"].items():
        pos = [i["label_scores"][label] for i in report["items"] if label in i["labels"]]
        neg = [i["label_scores"][label] for i in report["items"] if label not in i["labels"]]
        pairs = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in product(pos, neg)]
        assert auc == pytest.approx(sum(pairs) / len(pairs), abs=1e-5)
    assert all(0 <= v <= 1 for v in report["top_k"].values())


def test_a_label_outside_the_vocabulary_is_named(tmp_path: Path, early_dir: Path, capsys) -> None:
    bad = tmp_path / "suite.jsonl"
    bad.write_text(json.dumps({"id": "x", "scans": [{"path": "x.nii.gz"}], "labels": ["Dragon pox"]}) + "\n")
    with pytest.raises(MedagentError, match="label 'Dragon pox' is neither a RadDiag disorder nor one of its ICD-10"):
        evaluate(bad, early_dir, [1])
    assert main([str(bad), "--checkpoint", str(early_dir)]) == 2
    assert "Dragon pox" in capsys.readouterr().err
