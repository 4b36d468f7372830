"""`pathology.classify` as the agent calls it: availability, arguments, evidence, artifacts, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from medagent.tools.config import PathologySettings, Settings
from medagent.tools.contracts import Case, Evidence, ToolCall
from medagent.tools.errors import CaseError, ToolError, UnavailableError
from medagent.tools.pathology import TOOLS, candidate_labels
from medagent.tools.registry import Registry, ToolContext

TOOL = TOOLS[0]


def _case(tmp_path: Path, tiles_dir: Path) -> Case:
    for name in ("tumor.png", "slide.png"):
        (tmp_path / name).write_bytes((tiles_dir / name).read_bytes())
    (tmp_path / "note.png").write_text("dictated note, not an image")
    Image.new("LA", (300, 300), (128, 0)).save(tmp_path / "grey_alpha.png")
    return Case.model_validate(
        {
            "id": "path-1",
            "history": "Colonic mass on colonoscopy; biopsy.",
            "attachments": [
                {"id": "he1", "kind": "pathology", "path": "tumor.png", "modality": "pathology"},
                {"id": "slide", "kind": "pathology", "path": "slide.png", "modality": "pathology"},
                {"id": "bad", "kind": "pathology", "path": "note.png", "modality": "pathology"},
                {"id": "ga", "kind": "pathology", "path": "grey_alpha.png", "modality": "pathology"},
                {"id": "ct", "kind": "image", "path": "tumor.png", "modality": "CT"},
            ],
        }
    )


def _ctx(case: Case, tmp_path: Path, settings: Settings) -> ToolContext:
    return ToolContext(case=case, case_dir=tmp_path, artifacts_dir=tmp_path / "out" / "artifacts", settings=settings)


def test_unavailable_without_weights_and_says_where_they_come_from(tmp_path):
    reason = TOOL.check(Settings())
    assert "not on a model hub" in reason and "MAGIC-AI4Med/KEP" in reason and "[pathology] path" in reason
    assert "Astaxanthin/KEEP" in reason and "medagent never downloads" in reason
    assert not Registry(Settings(), TOOLS).available()
    empty = Settings(pathology=PathologySettings(path=tmp_path))
    assert "no KEP weights found" in TOOL.check(empty)
    assert any("unavailable" in line for line in TOOL.doctor(empty))


def test_classify_with_user_labels_and_default_set(tmp_path, tiles_dir, kep32_dir):
    settings = Settings(pathology=PathologySettings(path=kep32_dir, tile_size=200, top_tiles=2))
    registry = Registry(settings, TOOLS)
    assert TOOL.check(settings) is None and [t.name for t in registry.available()] == ["pathology.classify"]
    case = _case(tmp_path, tiles_dir)
    labels = ["colon adenocarcinoma", "benign colonic tissue", "adipose tissue"]
    args, reason = registry.validate(
        ToolCall(call_id="c1", tool="pathology.classify", arguments={"attachment": "he1", "labels": labels}), case
    )
    assert reason is None
    (evidence,) = TOOL.run(args, _ctx(case, tmp_path, settings))
    assert TOOL.checked(evidence) == evidence  # the payload matches PathologyPayload as written
    ranked = evidence.payload["ranked"]
    assert sorted(r["label"] for r in ranked) == sorted(labels)
    assert sum(r["probability"] for r in ranked) == pytest.approx(1.0, abs=1e-3)
    assert evidence.payload["top_label"] in evidence.summary and evidence.confidence == ranked[0]["probability"]
    assert not evidence.payload["tiled"]

    args, _ = registry.validate(
        ToolCall(call_id="c2", tool="pathology.classify", arguments={"attachment": "slide"}), case
    )
    (slide,) = TOOL.run(args, _ctx(case, tmp_path, settings))
    assert TOOL.checked(slide) == slide
    assert slide.payload["label_set"] == "general" and slide.payload["tiled"]
    assert "tiles of 200 px" in slide.summary
    assert len(slide.artifacts) == 2
    for artifact in slide.artifacts:
        with Image.open(tmp_path / "out" / artifact) as tile:
            assert tile.format == "PNG" and tile.size == (200, 200)


def test_bad_calls_are_refused_with_reasons(tmp_path, tiles_dir, kep32_dir):
    settings = Settings(pathology=PathologySettings(path=kep32_dir))
    registry = Registry(settings, TOOLS)
    case = _case(tmp_path, tiles_dir)
    _, reason = registry.validate(
        ToolCall(call_id="c1", tool="pathology.classify", arguments={"attachment": "ct"}), case
    )
    assert reason == "pathology.classify does not examine image CT attachments"
    ctx = _ctx(case, tmp_path, settings)
    args = TOOL.args(attachment="he1", labels=[])
    with pytest.raises(ToolError, match="labels: need at least two"):
        TOOL.run(args, ctx)
    with pytest.raises(CaseError, match="attachment 'bad': .*note.png: not a readable image"):
        TOOL.run(TOOL.args(attachment="bad"), ctx)
    # A grey image with an alpha channel is classified (alpha laid over white glass).
    (grey,) = TOOL.run(TOOL.args(attachment="ga", label_set="lung"), ctx)
    assert len(grey.payload["ranked"]) == 3
    broken = Settings(pathology=PathologySettings(path=kep32_dir, variant="ctp"))
    with pytest.raises(UnavailableError, match="configured variant 'ctp'"):
        TOOL.run(TOOL.args(attachment="he1"), _ctx(case, tmp_path, broken))


def _candidate(name: str) -> dict:
    return {"name": name, "codes": [], "score": 0.5, "rationale": "", "evidence": [], "phenotypes": []}


def test_follow_up_rule_passes_ranked_diagnoses_as_labels(tmp_path, tiles_dir):
    case = _case(tmp_path, tiles_dir)
    ranked = Evidence(
        id="E1",
        tool="knowledge.rank",
        call_id="c1",
        summary="ranked",
        payload={"differential": [_candidate("colon adenocarcinoma"), _candidate("colonic lymphoma")],
                 "present": ["HP:0100834"], "excluded": [], "conflicts": []},
    )
    proposals = candidate_labels(case, TOOLS, [ranked], [])
    assert {p[1]["attachment"] for p in proposals} == {"he1", "slide", "bad", "ga"}
    assert all(p[1]["labels"] == ["colon adenocarcinoma", "colonic lymphoma"] for p in proposals)
    assert candidate_labels(case, [], [ranked], []) == []


def test_keep_checkpoint_serves_the_tool(tmp_path, tiles_dir, tokenizer_dir, checkpoint_factory):
    folder = checkpoint_factory(tmp_path / "keep", tokenizer_dir, "keep")
    settings = Settings(pathology=PathologySettings(path=folder, variant="keep"))
    assert TOOL.check(settings) is None and "KEP/KEEP checkpoint at" in TOOL.doctor(settings)[0]
    case = _case(tmp_path, tiles_dir)
    (evidence,) = TOOL.run(TOOL.args(attachment="he1", label_set="colon"), _ctx(case, tmp_path, settings))
    assert evidence.payload["model"] == "KEEP" and evidence.summary.startswith("KEEP zero-shot")
    assert {r["label"] for r in evidence.payload["ranked"]} == {"benign colonic tissue", "colon adenocarcinoma"}
