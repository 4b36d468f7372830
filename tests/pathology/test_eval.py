"""The `pathology` eval suite: zero-shot accuracy on a labelled patch folder (committed PNGs, tiny KEP model)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from medagent.evals.pathology import build_items, evaluate, labels_of, main, score, score_run, suite_items
from medagent.evals.runner import run_suite
from medagent.evals.suite import SuiteItem
from medagent.specialists.pathology.infer import KEPClassifier
from medagent.specialists.pathology.labels import resolve
from medagent.specialists.pathology.load import load_kep
from medagent.tools.config import PathologySettings, Settings

PATCHES = Path(__file__).resolve().parents[1] / "data" / "pathology" / "patches"
LABELS = ["adipose tissue", "stroma", "tumor"]


def test_items_come_from_the_class_folders():
    items = build_items(PATCHES)
    assert len(items) == 6 and len({i["id"] for i in items}) == 6
    assert labels_of(PATCHES) == LABELS  # folder adipose_tissue asks for "adipose tissue"
    assert all(
        Path(i["image"]).is_file() and Path(i["image"]).parent.name.replace("_", " ") == i["label"] for i in items
    )
    # A limited run still covers every class (classes take turns).
    assert sorted(i["label"] for i in build_items(PATCHES, limit=3)) == LABELS


def test_score_of_known_predictions():
    truth_predicted = [
        ("tumor", "tumor"), ("tumor", "stroma"), ("stroma", "stroma"),
        ("stroma", "stroma"), ("adipose tissue", "tumor"), ("adipose tissue", "adipose tissue"),
    ]  # fmt: skip
    report = score([{"label": t, "predicted": p} for t, p in truth_predicted], LABELS)
    assert report["n"] == 6 and report["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    assert {k: v["recall"] for k, v in report["per_class"].items()} == {
        "adipose tissue": 0.5,
        "stroma": 1.0,
        "tumor": 0.5,
    }
    assert report["balanced_accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["confusion"]["tumor"] == {"adipose tissue": 0, "stroma": 1, "tumor": 1}
    assert report["confusion"]["adipose tissue"]["tumor"] == 1
    assert report["baselines"] == {
        "chance": pytest.approx(1 / 3, abs=1e-4),
        "majority_class": pytest.approx(1 / 3, abs=1e-4),
    }
    unbalanced = score(
        [{"label": "tumor", "predicted": "tumor"}] * 3 + [{"label": "stroma", "predicted": "tumor"}], LABELS
    )
    assert unbalanced["accuracy"] == 0.75 and unbalanced["balanced_accuracy"] == 0.5
    assert (
        unbalanced["baselines"]["majority_class"] == 0.75
        and unbalanced["per_class"]["adipose tissue"]["recall"] is None
    )


def test_evaluate_scores_the_model_own_predictions(kep32_dir):
    report = evaluate(PATCHES, kep32_dir)
    assert report["model"] == "KEP-kep32" and report["labels"] == LABELS and report["n"] == 6
    assert set(report) >= {"accuracy", "balanced_accuracy", "per_class", "confusion", "baselines", "items", "seconds"}
    # The same predictions, made independently through the specialist, give the reported accuracy.
    classifier = KEPClassifier(load_kep(kep32_dir))
    expected = []
    for item in report["items"]:
        top = classifier.classify(Path(item["image"]), resolve(LABELS)).ranked()[0][0]
        assert item["predicted"] == top and item["correct"] == (top == item["label"])
        expected.append(top == item["label"])
    assert report["accuracy"] == pytest.approx(sum(expected) / 6, abs=1e-4)
    assert sum(row["correct"] for row in report["per_class"].values()) == sum(expected)


def test_command_line_writes_the_report_and_refuses_bad_folders(kep32_dir, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main([str(PATCHES), "--checkpoint", str(kep32_dir), "--limit", "3", "-o", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written["n"] == 3 and "accuracy" in capsys.readouterr().out
    (tmp_path / "only" / "tumor").mkdir(parents=True)
    (tmp_path / "only" / "tumor" / "a.png").write_bytes((PATCHES / "tumor" / "tumor_0.png").read_bytes())
    assert main([str(tmp_path / "only"), "--checkpoint", str(kep32_dir)]) == 2
    assert "need at least two class folders" in capsys.readouterr().err


def test_the_suite_runs_the_tool_and_its_traces_score_the_same(kep32_dir, tmp_path):
    data = tmp_path / "patches"  # the suite file sits in the data root: attachments must stay inside its folder
    shutil.copytree(PATCHES, data)
    rows = suite_items(data)
    for row in rows:
        SuiteItem.model_validate(row)
    suite = data / "pathology.jsonl"
    suite.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    settings = Settings(pathology=PathologySettings(path=kep32_dir))
    run_suite(str(suite), out=tmp_path / "run", settings=settings, quiet=True)
    from_run = score_run(tmp_path / "run", data)
    direct = evaluate(data, kep32_dir)
    assert from_run["failed"] == 0 and from_run["n"] == 6
    assert [r["predicted"] for r in from_run["items"]] == [r["predicted"] for r in direct["items"]]
    assert from_run["accuracy"] == direct["accuracy"]
    # The runner's own report carries the same patch accuracy (scored from the traces by evals/scoring.py).
    scores = [json.loads(line) for line in (tmp_path / "run" / "scores.jsonl").read_text(encoding="utf-8").splitlines()]
    assert sum(s["patch_correct"] for s in scores) / len(scores) == pytest.approx(direct["accuracy"], abs=1e-4)
    report = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    shown = re.search(r"\| patch_accuracy \| ([0-9.]+) \|", report)
    assert shown and float(shown.group(1)) == pytest.approx(direct["accuracy"], abs=1e-3)
