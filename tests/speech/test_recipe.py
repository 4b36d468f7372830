"""Recipe round trip: the smoke run overfits three espeak-ng phrases; HF, openai-whisper .pt and CTranslate2 agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medagent.specialists.speech.audio import read_audio
from medagent.specialists.speech.load import FasterWhisperRuntime, OpenAIWhisperRuntime
from medagent.specialists.speech.model import DecodeOptions

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "training" / "speech" / "configs" / "smoke.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medagent.training.speech.recipe import main

    return main(SMOKE, [f"output_dir={tmp_path_factory.mktemp('speech-smoke')}"])


def test_smoke_run_learns_and_exports_both_formats(trained: Path) -> None:
    log = [json.loads(line) for line in (trained / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"] / 10
    assert (trained / "whisper.pt").is_file() and (trained / "ct2" / "model.bin").is_file()
    assert (trained / "ct2" / "tokenizer.json").is_file()  # faster-whisper needs no download for it
    checkpoint = torch.load(trained / "whisper.pt", weights_only=True)
    assert set(checkpoint) == {"dims", "model_state_dict"} and checkpoint["dims"]["n_text_state"] == 64


def test_three_runtimes_give_the_training_text(trained: Path, audio_dir: Path, spoken: dict[str, str]) -> None:
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast

    from medagent.training.speech.recipe import greedy_hf

    constants = json.loads((trained / "export.json").read_text())["constants"]
    hf = WhisperForConditionalGeneration.from_pretrained(str(trained / "hf"))
    tokenizer = WhisperTokenizerFast.from_pretrained(str(trained / "hf"))
    extractor = WhisperFeatureExtractor.from_pretrained(str(trained / "hf"))
    openai_runtime = OpenAIWhisperRuntime(trained / "whisper.pt", device="cpu")
    ct2_runtime = FasterWhisperRuntime(trained / "ct2", device="cpu", compute_type="float32")
    greedy = DecodeOptions(language="en", temperature_fallback=False, without_timestamps=True, max_tokens=20)

    for name in ("phrase_chest_pain.flac", "phrase_no_fever.flac", "phrase_cough.flac"):
        audio = read_audio(audio_dir / name)
        features = torch.from_numpy(extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0])
        hf_text = tokenizer.decode(greedy_hf(hf, features, constants)).strip()
        openai_text = " ".join(s.text.strip() for s in openai_runtime.transcribe_window(audio, greedy, None).segments)
        ct2_text = " ".join(s.text.strip() for s in ct2_runtime.transcribe_window(audio, greedy, None).segments)
        assert hf_text == spoken[name], f"{name}: HF says {hf_text!r}"
        assert openai_text == hf_text, f"{name}: openai-whisper says {openai_text!r}, HF {hf_text!r}"
        assert ct2_text == hf_text, f"{name}: CTranslate2 says {ct2_text!r}, HF {hf_text!r}"
