"""Counter-evidence counts: a laboratory value in the opposite direction of a disease's hallmark lowers that disease,
with the reason in its rationale. Three cases written by hand for this test (tests/knowledge/data/counter/README.md),
each the classic picture of a disease of a high value beside a low one; the demo is not among them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medagent.tools.config import KnowledgeSettings, Settings
from medagent.tools.contracts import Case, Evidence
from medagent.tools.knowledge import TOOLS
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Registry, ToolContext

CASES = Path(__file__).resolve().parent / "data" / "counter"
POOL = ModelPool()  # one graph and linker for every run here


def _differential(raw: dict, counter: float = 2.0) -> list[dict]:
    settings = Settings(knowledge=KnowledgeSettings(dense=False, counter=counter))
    registry = Registry(settings, TOOLS, pool=POOL)
    case = Case.model_validate(raw)

    def run(name: str, arguments: dict, evidence: list[Evidence]) -> dict:
        tool = registry.tools[name]
        [draft] = tool.run(tool.args.model_validate(arguments), ToolContext(case, CASES, CASES, settings, evidence_so_far=evidence, pool=POOL))
        return draft.model_dump()

    link = run("knowledge.link", {"text": case.history}, [])
    cited = Evidence(id="E1", tool="knowledge.link", call_id="C1", **link)
    ids = link["payload"]
    return run("knowledge.rank", {"present": ids["present_ids"], "excluded": ids["excluded_ids"], "evidence": ["E1"]},
               [cited])["payload"]["differential"]  # fmt: skip


def _rank(differential: list[dict], name: str) -> int:
    """1-based rank; 11 when it is not in the top 10."""
    return next((i for i, d in enumerate(differential, 1) if d["name"] == name), 11)


@pytest.mark.parametrize(
    ("file", "disease", "lab", "argued", "falls_from_top3"),
    [
        ("low_haemoglobin_ruddy.json", "Polycythemia vera", "haemoglobin 9.8 g/dL below", "Polycythemia", True),
        ("low_platelets_erythromelalgia.json", "Essential thrombocythemia", "platelets 80.0 10^9/L below", "Thrombocytosis", True),
        # Diabetes's hyperglycaemia has no stated frequency in the annotations (counted as 50 %), so it weighs less.
        ("low_glucose_polyuria.json", "Diabetes mellitus, insulin-dependent-1", "glucose 48.0 mg/dL below", "Hyperglycemia", False),
    ],
)
def test_a_lab_value_against_the_hallmark_lowers_the_disease_and_says_why(graph, file, disease, lab, argued, falls_from_top3):
    raw = json.loads((CASES / file).read_text())
    with_lab = _differential(raw)
    ignored = _differential(raw, counter=0.0)  # the same lab, counter-evidence switched off
    without_lab = _differential({**raw, "findings": []})
    assert _rank(with_lab, disease) > _rank(ignored, disease), [d["name"] for d in with_lab]
    if falls_from_top3:
        assert _rank(without_lab, disease) <= 3, [d["name"] for d in without_lab]
        assert _rank(with_lab, disease) >= _rank(without_lab, disease) + 3, [d["name"] for d in with_lab]
    for candidate in with_lab:  # every candidate lowered says by what, citing the link that read the lab
        if any(p["kind"] == "argued against by a measurement" for p in candidate["phenotypes"]):
            assert f"against: {argued} (shown by" in candidate["rationale"] and lab in candidate["rationale"]
            assert "[E1]" in candidate["rationale"]
    assert not any("argued against" in str(d["phenotypes"]) for d in without_lab)
