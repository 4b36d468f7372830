"""The audio reader: decoding, 16 kHz mono resampling, bad files, and bounded memory on long recordings."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile

from medagent.specialists.speech.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioStream,
    frame_loudness_dbfs,
    iter_windows,
    read_audio,
)


def test_committed_wav_reads_as_16k_mono(audio_dir: Path) -> None:
    samples = read_audio(audio_dir / "chest_pain.wav")
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert 5.0 < len(samples) / SAMPLE_RATE < 7.0
    assert frame_loudness_dbfs(samples).max() > -30  # speech, not silence


@pytest.mark.parametrize(("rate", "channels"), [(44_100, 2), (8_000, 1), (48_000, 2)])
def test_other_rates_and_stereo_resample_to_the_same_signal(
    audio_dir: Path, tmp_path: Path, rate: int, channels: int
) -> None:
    from scipy.signal import resample_poly

    original = read_audio(audio_dir / "chest_pain.wav")
    converted = resample_poly(original, rate, SAMPLE_RATE).astype(np.float32)
    if channels == 2:  # speech on the left, half as loud on the right: the mix is 0.75×
        converted = np.stack([converted, 0.5 * converted], axis=1)
    path = tmp_path / f"converted_{rate}_{channels}.wav"
    soundfile.write(path, converted, rate, subtype="PCM_16")

    back = read_audio(path)
    assert abs(len(back) - len(original)) <= 2
    n = min(len(back), len(original))
    scale = 0.75 if channels == 2 else 1.0
    correlation = np.corrcoef(back[:n], original[:n])[0, 1]
    # 8 kHz loses everything above 4 kHz, so the match is looser there
    assert correlation > (0.9 if rate == 8_000 else 0.99)
    assert np.std(back) == pytest.approx(scale * np.std(original), rel=0.1 if rate == 8_000 else 0.02)


def test_empty_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.wav: audio file is empty"):
        read_audio(path)


def test_non_audio_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("Patient reports chest pain since this morning.\n" * 20)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file"):
        read_audio(path)


def test_mp3_asks_for_conversion(tmp_path: Path) -> None:
    path = tmp_path / "dictation.mp3"
    path.write_bytes(b"ID3\x04\x00\x00\x00\x00\x00\x00" + bytes(2000))
    with pytest.raises(AudioError, match="MP3 audio needs ffmpeg.*convert it to WAV or FLAC"):
        read_audio(path)


def test_header_only_wav_is_refused(audio_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "header.wav"
    path.write_bytes((audio_dir / "chest_pain.wav").read_bytes()[:44])
    with pytest.raises(AudioError, match="holds no samples"):
        read_audio(path)


def test_truncated_wav_reads_what_is_there_and_says_so(audio_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.wav"
    path.write_bytes((audio_dir / "chest_pain.wav").read_bytes()[:100_000])
    stream = AudioStream(path)
    samples = np.concatenate(list(stream))
    assert stream.truncated
    assert len(samples) == (100_000 - 44) // 2


def test_truncated_flac_keeps_the_decodable_start(audio_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    path.write_bytes((audio_dir / "dyspnoea.flac").read_bytes()[:20_000])
    stream = AudioStream(path)
    samples = np.concatenate(list(stream))
    assert stream.truncated
    assert 0 < len(samples) < stream.facts.frames


def test_windows_are_cut_in_pauses_not_in_speech(tmp_path: Path) -> None:
    # 1 s tone bursts separated by 0.3 s pauses: every cut must fall inside a pause.
    rate = SAMPLE_RATE
    burst = 0.3 * np.sin(2 * np.pi * 220 * np.arange(rate) / rate)
    pause = np.zeros(int(0.3 * rate))
    signal = np.concatenate([np.concatenate([burst, pause]) for _ in range(60)]).astype(np.float32)
    path = tmp_path / "bursts.wav"
    soundfile.write(path, signal, rate)

    windows = list(iter_windows(AudioStream(path), window_s=10.0))
    assert len(windows) >= 7
    assert all(len(w.samples) <= 10 * rate for w in windows)
    assert sum(len(w.samples) for w in windows) == len(signal)
    for window in windows[:-1]:
        cut = int(round(window.end_s * rate))
        assert np.abs(signal[cut - 80 : cut + 80]).max() == 0.0, f"cut at {window.end_s:.2f} s is inside a burst"


def test_long_recording_streams_in_bounded_memory(tmp_path: Path) -> None:
    # 40 minutes at 8 kHz, written block by block (stereo noise with quiet stretches).
    rate, minutes = 8_000, 40
    path = tmp_path / "long.wav"
    rng = np.random.default_rng(0)
    with soundfile.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as out:
        for second in range(minutes * 60):
            level = 0.2 if second % 7 else 0.001
            out.write((level * rng.standard_normal((rate, 2))).astype(np.float32))
    size_mb = path.stat().st_size / 2**20

    tracemalloc.start()
    total, longest, count = 0, 0, 0
    for window in iter_windows(AudioStream(path)):
        total += len(window.samples)
        longest = max(longest, len(window.samples))
        count += 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    assert total == minutes * 60 * SAMPLE_RATE
    assert longest <= 30 * SAMPLE_RATE and count >= minutes * 2
    # the whole file decoded would be ~150 MB of float32 at 16 kHz; the reader holds a few MB
    assert peak / 2**20 < 16, f"peak {peak / 2**20:.1f} MB while streaming a {size_mb:.0f} MB file"
