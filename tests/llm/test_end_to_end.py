"""One end-to-end solve with the offline preset (the packaged 1.5B GGUF, in-process llama.cpp)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from medagent.agent.api import run_loaded
from medagent.agent.render import render_markdown
from medagent.tools.config import load_settings
from medagent.tools.contracts import CallOrigin, GroundingVerdict
from medagent.tools.intake import load_case

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_offline_preset_plans_and_writes_a_checked_report(tmp_path, large_gguf):
    settings = load_settings(REPO / "examples" / "medagent-offline.toml")
    settings = settings.model_copy(update={"llm": settings.llm.model_copy(update={"reflect": False, "n_ctx": 2048})})
    case_dir = tmp_path / "case"
    shutil.copytree(REPO / "examples" / "data", case_dir / "data")
    shutil.copy(REPO / "examples" / "ct_nifti_case.json", case_dir / "case.json")
    loaded = load_case(case_dir / "case.json")
    result, trace = asyncio.run(run_loaded(loaded, settings, tmp_path / "out"))

    assert result.models["planner"].startswith("llm:") and result.models["reporter"].startswith("llm:")
    turns = [e for e in trace.events if e.event == "llm_turn"]
    assert {t.role for t in turns} == {"planner", "reporter"}
    assert all(t.prompt_tokens and t.completion_tokens and t.seconds > 0 for t in turns)
    origins = {c.origin for c in result.calls}
    assert origins <= {CallOrigin.llm, CallOrigin.guard, CallOrigin.repair, CallOrigin.rule}
    assert any(c.tool == "imaging.ct_quant" or c.tool == "imaging.describe" for c in result.calls)  # the CT is examined
    assert result.grounding.status == "checked" and result.grounding.sentences == len(result.report.sentences) > 0
    assert all(s.verdict != GroundingVerdict.not_checked for s in result.report.sentences)
    markdown = render_markdown(result)
    flagged = [s for s in result.report.sentences if s.verdict != GroundingVerdict.supported]
    assert all(s.text in markdown for s in result.report.sentences)  # flagged sentences are kept, not dropped
    print(f"end to end: {result.grounding.supported}/{result.grounding.sentences} sentences supported, {len(flagged)} flagged; "
          f"calls by origin {[c.origin.value for c in result.calls]}; {sum(t.seconds for t in turns):.0f} s in {len(turns)} LLM turns")
