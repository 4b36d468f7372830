"""The openai-whisper runtime: a tiny random-weight Whisper `.pt` through whisper.load_model and the tool."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medagent.specialists.speech.load import tiny_openai_checkpoint
from medagent.specialists.speech.model import tiny_dims
from medagent.tools.config import Settings
from medagent.tools.contracts import Attachment, AttachmentKind, Case
from medagent.tools.errors import UnavailableError
from medagent.tools.registry import Registry, ToolContext
from medagent.tools.speech import TOOLS, TranscribeArgs, transcribe_attachment


@pytest.fixture(scope="module")
def tiny_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_openai_checkpoint(tmp_path_factory.mktemp("whisper") / "tiny.pt")


def _settings(home: Path, checkpoint: Path) -> Settings:
    # A random model rambles: cap the tokens and skip temperature retries to keep the test short.
    return Settings.model_validate(
        {
            "cache_dir": str(home),
            "speech": {
                "runtime": "openai-whisper",
                "checkpoint": str(checkpoint),
                "device": "cpu",
                "temperature_fallback": False,
                "max_tokens": 8,
            },
        }
    )


def _transcribe(settings: Settings, folder: Path, name: str):  # noqa: ANN202
    case = Case(id="c1", attachments=[Attachment(id="a1", kind=AttachmentKind.audio, path=name)])
    ctx = ToolContext(case=case, case_dir=folder, artifacts_dir=folder, settings=settings)
    return transcribe_attachment(TranscribeArgs(attachment="a1"), ctx)


def test_checkpoint_has_the_published_layout(tiny_pt: Path) -> None:
    checkpoint = torch.load(tiny_pt, weights_only=True)
    assert set(checkpoint) == {"dims", "model_state_dict"}
    assert checkpoint["dims"] == tiny_dims()
    keys = checkpoint["model_state_dict"]
    assert "encoder.conv1.weight" in keys and "decoder.token_embedding.weight" in keys
    assert keys["decoder.token_embedding.weight"].shape == (51865, 64)


def test_tiny_checkpoint_transcribes_through_the_tool(tiny_pt: Path, speech_home: Path, audio_dir: Path) -> None:
    settings = _settings(speech_home, tiny_pt)
    assert Registry(settings, TOOLS).unavailable_reason("speech.transcribe") is None
    [evidence] = _transcribe(settings, audio_dir, "chest_pain.wav")
    payload = evidence.payload
    assert not evidence.error
    assert payload["runtime"] == "openai-whisper" and payload["model"] == str(tiny_pt)
    # random weights say nothing sensible, but the language was detected and times and confidences are sane
    assert isinstance(payload["language"], str) and 0 < payload["language_probability"] <= 1
    for segment in payload["segments"]:
        assert 0 <= segment["start"] <= segment["end"] <= payload["duration_s"] + 0.01
        assert 0 <= segment["confidence"] <= 1
    assert payload["transcript"] == " ".join(s["text"] for s in payload["segments"])


def test_missing_checkpoint_makes_the_tool_unavailable(tmp_path: Path) -> None:
    settings = _settings(tmp_path, tmp_path / "nowhere.pt")
    reason = Registry(settings, TOOLS).unavailable_reason("speech.transcribe")
    assert reason is not None and "nowhere.pt does not exist" in reason


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not a torch file at all", "not an openai-whisper checkpoint"),
        ({"model_state_dict": {}}, "not an openai-whisper checkpoint .*dims"),
    ],
)
def test_wrong_files_are_refused_with_the_path(tmp_path: Path, audio_dir: Path, content: object, expected: str) -> None:
    path = tmp_path / "model.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(UnavailableError, match=f"{path}: {expected}"):
        _transcribe(_settings(tmp_path, path), audio_dir, "chest_pain.wav")
