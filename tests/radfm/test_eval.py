"""The VQA-RAD suite harness: items of one fold, the two scores, the baselines, a run with the tiny model."""

from __future__ import annotations

from pathlib import Path

from medagent.evals.radfm import baselines, build_items, closed_correct, format_report, run, score, token_recall


def test_scores_and_baselines_on_known_answers(radfm_data: Path) -> None:
    folder = radfm_data / "vqa_rad"
    val = build_items(folder, fold="val")
    train = build_items(folder, fold="train")
    assert len(val) == 3 and len(train) == 13
    assert {Path(i["image"]).name for i in val}.isdisjoint({Path(i["image"]).name for i in train})
    assert closed_correct("Yes, it is.", "yes") and not closed_correct("no", "Yes")
    assert token_recall("the right hemisphere", "Right hemisphere") == 1.0
    assert token_recall("left hemisphere", "Right hemisphere") == 0.5
    perfect = score(val, {i["id"]: i["answer"] for i in val})
    assert perfect["closed_accuracy"] == 1.0 and perfect["open_token_recall"] == 1.0
    base = baselines(val, train)
    assert base["majority"]["answers"]["closed"] == "yes"
    assert 0.0 <= base["always_yes"]["closed_accuracy"] <= 1.0
    assert base["always_yes"]["open_token_recall"] == score(val, {i["id"]: "yes" for i in val})["open_token_recall"]


def test_harness_runs_with_the_tiny_model(tiny, radfm_data: Path) -> None:
    report = run(tiny, radfm_data / "vqa_rad", fold="val")
    assert report["items"] == 3 and set(report["predictions"]) == {i["id"] for i in build_items(radfm_data / "vqa_rad")}
    text = format_report(report)
    assert "radfm" in text and "majority" in text and "always_yes" in text
    assert 0.0 <= report["radfm"]["closed_accuracy"] <= 1.0
