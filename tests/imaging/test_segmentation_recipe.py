"""Round trip: the smoke recipe overfits synthetic volumes, writes a bundle, the specialist segments them."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from medagent.specialists.imaging.bundle import build_network, load_bundle, read_state_dict, segment
from medagent.specialists.imaging.ctquant import dice
from medagent.training.segmentation.recipe import main

SMOKE = Path(__file__).resolve().parents[2] / "training" / "segmentation" / "configs" / "smoke.yaml"


def test_smoke_bundle_round_trip_segments_its_volumes(tmp_path: Path) -> None:
    bundle_dir = main(SMOKE, [f"output_dir={tmp_path}", "train.steps=30", "train.val_every=30"])
    assert (bundle_dir / "models" / "model.pt").is_file()
    metadata = json.loads((bundle_dir / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "object"}
    assert set(read_state_dict(bundle_dir / "models" / "model.pt")) == set(
        build_network(load_bundle(bundle_dir)).state_dict()
    )

    bundle = load_bundle(bundle_dir)
    network = build_network(bundle)
    scores = []
    for index in range(4):
        result = segment(bundle, tmp_path / "data" / f"image_{index}.nii.gz", network)
        reference = np.asarray(nib.load(str(tmp_path / "data" / f"label_{index}.nii.gz")).dataobj) == 1
        assert result.labels.shape == reference.shape
        scores.append(dice(result.labels == 1, reference))
        assert result.volumes_ml["object"] == round(float((result.labels == 1).sum()) / 1000, 2)
    assert min(scores) >= 0.8, scores
