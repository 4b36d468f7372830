"""evals/sat.py: Dice against a hand computation, the reference's self-score, a shifted / eroded reference scoring
below 1, and the harness end to end (the `sat-totalseg` suite through the eval runner) on a tiny SAT. The data is a
crop of the committed TotalSegmentator pair (examples/data/ct_small.nii.gz + tests/data/imaging/example_seg.nii.gz),
never ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medagent.evals import sat as sat_eval

ROOT = Path(__file__).resolve().parents[2]
CT = ROOT / "examples" / "data" / "ct_small.nii.gz"  # = example_ct_sm.nii.gz
SEG = ROOT / "tests" / "data" / "imaging" / "example_seg.nii.gz"  # its TotalSegmentator v2 segmentation
CROP = (slice(28, 92), slice(18, 82), slice(None))  # 64 x 64 x 30 voxels of 3 mm, abdomen


def hand_dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = sum(1 for x, y in zip(a.ravel(), b.ravel(), strict=True) if x and y)
    return 2 * inter / (sum(map(bool, a.ravel())) + sum(map(bool, b.ravel())))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("totalseg")
    for source, name in ((CT, "example_ct_sm.nii.gz"), (SEG, "example_seg.nii.gz")):
        image = nib.load(str(source))
        cropped = image.slicer[CROP]
        out = nib.Nifti1Image(np.asarray(cropped.dataobj), cropped.affine, image.header)  # keeps the label table
        nib.save(out, str(folder / name))
    return folder


def test_dice_matches_a_hand_computation_on_built_masks():
    a = np.zeros((12, 12, 12), bool)
    a[1:11, 1:11, 1:11] = True  # a 10^3 cube
    shifted = np.roll(a, 2, axis=0)  # 8 of 10 slabs overlap: 2 * 800 / 2000
    eroded = np.zeros_like(a)
    eroded[2:10, 2:10, 2:10] = True  # 8^3 inside: 2 * 512 / 1512
    assert sat_eval.dice(a, a) == 1.0
    assert sat_eval.dice(a, shifted) == pytest.approx(0.8) == pytest.approx(hand_dice(a, shifted))
    assert sat_eval.dice(a, eroded) == pytest.approx(1024 / 1512) == pytest.approx(hand_dice(a, eroded))
    assert sat_eval.dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_the_reference_scores_one_and_a_shifted_copy_less(data_dir):
    plans = sat_eval.plan_pairs(data_dir)
    assert [p.pair.name for p in plans] == ["ct-sm"]
    organs = plans[0].organs
    assert {o.term for o in organs} >= {"liver", "spleen"} and all(o.label in sat_eval.TOTALSEG_V2 for o in organs)
    scores = sat_eval.self_scores(plans)["ct-sm"]
    assert scores and set(scores.values()) == {1.0}
    labels, _ = sat_eval.canonical(data_dir / "example_seg.nii.gz")
    liver = labels == next(o.label for o in organs if o.term == "liver")
    moved = np.roll(liver, 3, axis=1)
    assert sat_eval.dice(moved, liver) < 1.0
    assert sat_eval.dice(moved, liver) == pytest.approx(hand_dice(moved, liver))


def test_the_tables_agree_with_the_label_table_embedded_in_the_reference():
    embedded = sat_eval.embedded_labels(SEG)
    assert all(embedded[i] == name for i, (name, _) in sat_eval.TOTALSEG_V2.items())
    from medagent.specialists.sat import load_vocabulary

    vocabulary = load_vocabulary()
    for table, modality in ((sat_eval.TOTALSEG_V2, "CT"), (sat_eval.TOTAL_MR, "MR")):
        for _, term in table.values():
            if term is not None:
                assert vocabulary.resolve(term, modality).term == term


def test_the_harness_runs_the_suite_end_to_end_on_a_tiny_sat(tmp_path, data_dir, tiny_dir, capsys):
    config = tmp_path / "medagent.toml"
    config.write_text(
        f'cache_dir = "{tmp_path / "cache"}"\n[agent]\nplanner = "rule"\n[knowledge]\nenabled = false\n'
        f'[sat]\npath = "{tiny_dir}"\ndevice = "cpu"\nwindow = [96, 96, 32]\n'
    )
    run, report_path = tmp_path / "run", tmp_path / "report.json"
    code = sat_eval.main(["--config", str(config), "--data-dir", str(data_dir), "--out", str(run), "-o", str(report_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "reference vs itself" in printed and "TINY RANDOM test model" in printed
    report = json.loads(report_path.read_text())
    model = report["model"]
    organs = {o.term: o.label for o in sat_eval.plan_pairs(data_dir)[0].organs}
    assert not model["failed"] and set(model["scores"]["ct-sm"]) == set(organs)
    assert all(0.0 <= s <= 1.0 for s in model["scores"]["ct-sm"].values())
    # One organ checked independently: the mask artifact against the reference, Dice by hand.
    mask = next(run.rglob("sat_scan_liver.nii.gz"))
    predicted = np.asarray(nib.load(str(mask)).dataobj) > 0
    reference = np.asarray(nib.load(str(data_dir / "example_seg.nii.gz")).dataobj) == organs["liver"]
    expected = hand_dice(predicted, reference) if predicted.any() or reference.any() else 1.0
    assert model["scores"]["ct-sm"]["liver"] == pytest.approx(expected)
