"""The recipe's smoke round trip: train the tiny model on synthetic volumes of two disorders, reload it through
the specialist's loader, and check that each volume's own disorder comes first of the 5,569."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.raddiag.infer import diagnose
from medagent.specialists.raddiag.load import LoadedRadDiag, load_raddiag
from medagent.specialists.raddiag.model import RadDiagConfig, build_model
from medagent.specialists.raddiag.preprocess import prepare_case
from medagent.tools.errors import MedagentError
from medagent.training.raddiag.recipe import main, read_cases, read_scan

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "training" / "raddiag" / "configs" / "smoke.yaml"


def _own_label_first(loaded: LoadedRadDiag, rows: list[dict], folder: Path) -> int:
    hits = 0
    for row in rows:
        scan = read_scan(folder / row["scans"][0]["path"], "CT")
        (top,) = diagnose(loaded, prepare_case([scan], loaded.config), top=1)
        hits += top.disorder == row["labels"][0]
    return hits


def test_smoke_recipe_learns_both_disorders_and_reloads_strictly(tmp_path: Path) -> None:
    out = main(SMOKE, [f"output_dir={tmp_path}"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"] / 5
    saved = torch.load(out / "pytorch_model.bin", weights_only=True)
    assert not any(k.startswith("module.") for k in saved) and "fc.2.weight" in saved
    trained = load_raddiag(out)
    assert trained.absent_optional == []
    folder = tmp_path / "synthetic"
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {r["labels"][0] for r in rows} == {"Pneumothorax", "Meningioma"}
    assert _own_label_first(trained, rows, folder) >= 7
    config = RadDiagConfig.from_dict(json.loads((out / "raddiag_config.json").read_text()))
    torch.manual_seed(0)
    untrained = LoadedRadDiag(model=build_model(config).eval(), config=config, weights=out)
    assert _own_label_first(untrained, rows, folder) <= 3


def test_a_label_outside_the_vocabulary_is_named(tmp_path: Path) -> None:
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    manifest = tmp_path / "train.jsonl"
    manifest.write_text(json.dumps({"scans": [{"path": "scan.nii.gz"}], "labels": ["Pneumothorax", "Dragon pox"]}))
    with pytest.raises(MedagentError, match="train.jsonl:1: label 'Dragon pox' is not one of RadDiag's 5,569"):
        read_cases(manifest, tmp_path)
