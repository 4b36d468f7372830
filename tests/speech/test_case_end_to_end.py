"""A case whose only history is a dictation: solved end to end, the transcript cited in report.md."""

from __future__ import annotations

from pathlib import Path

from medagent.agent.api import solve
from medagent.agent.render import render_markdown
from medagent.tools.config import Settings
from medagent.tools.intake import read_case_file

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_dictation_case_cites_the_transcript(speech_home: Path, tmp_path: Path) -> None:
    # Knowledge linking is covered by its own tests; here the run stays on the speech path.
    settings = Settings.model_validate(
        {"cache_dir": str(speech_home), "knowledge": {"enabled": False}, "speech": {"beam_size": 5}}
    )
    result = solve(EXAMPLES / "dictation_case.json", settings=settings, artifacts_dir=tmp_path)
    [transcript] = [e for e in result.evidence if e.tool == "speech.transcribe"]
    assert not transcript.error, transcript.summary
    assert "chest pain" in transcript.payload["transcript"].lower()
    assert "speech.transcribe" in result.models and "whisper-base" in result.models["speech.transcribe"]

    report = render_markdown(result, read_case_file(EXAMPLES / "dictation_case.json"))
    # the evidence row quotes the words and the time span
    row = next(line for line in report.splitlines() if line.startswith(f"| {transcript.id} | speech.transcribe"))
    assert "chest pain" in row.lower() and " s–" in row and "dictation" in row
    # and the report cites it
    assert f"[{transcript.id}]" in report
