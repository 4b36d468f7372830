"""A direct speech item is scored by word error rate from its trace alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from medagent.evals.runner import run_suite, score_traces

AUDIO = Path(__file__).resolve().parents[2] / "examples" / "audio"


def test_direct_transcription_item_gets_wer_and_rtf(tmp_path):
    shutil.copy(AUDIO / "chest_pain.wav", tmp_path / "chest_pain.wav")
    spoken = json.loads((AUDIO / "transcripts.json").read_text())["chest_pain.wav"]
    item = {
        "id": "dictation", "mode": "direct",
        "case": {"id": "dictation", "attachments": [{"id": "a", "kind": "audio", "path": "chest_pain.wav"}]},
        "steps": [{"tool": "speech.transcribe", "arguments": {"attachment": "a"}}],
        "expected": {"transcript": spoken, "required_tools": ["speech.transcribe"]},
    }
    suite = tmp_path / "speech.jsonl"
    suite.write_text(json.dumps(item) + "\n")
    run = tmp_path / "run"
    run_suite(str(suite), out=run)
    score = json.loads((run / "scores.jsonl").read_text().splitlines()[0])
    assert 0.0 <= score["wer"] < 0.3, score  # whisper-base on clear synthetic speech
    assert score["rtf"] > 0
    assert "| wer |" in score_traces(run, str(suite))  # the trace alone carries the transcript
