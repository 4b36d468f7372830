"""Audio for Whisper: decode with soundfile, mix to mono, resample to 16 kHz, stream long files in windows.

No ffmpeg: WAV, FLAC (and the other formats libsndfile reads) are decoded in-process; formats that
need ffmpeg (MP3, M4A/AAC, WebM...) get a message saying so. Long recordings never sit in memory
whole: `iter_windows` reads ~10 s source blocks, resamples each with a little context on both sides
(so block edges leave no clicks), and cuts ≤ 30 s windows at the quietest 20 ms inside the last
seconds of each window, so a cut rarely splits a word. Peak memory stays a few MB for any length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from math import ceil, gcd
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # what every Whisper model hears
# Plausible recordings: a header outside these is damaged or hostile (a WAV claiming 1 Hz would take hours
# of resampling to "decode"); telephone audio is 8 kHz, studio audio at most 384 kHz.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE, MAX_CHANNELS = 4_000, 768_000, 64
FRAME = SAMPLE_RATE // 50  # 20 ms, the unit for loudness and cut points

# Containers soundfile cannot open without ffmpeg, recognised by their first bytes.
NEEDS_FFMPEG = {
    b"ID3": "MP3",
    b"\xff\xfb": "MP3",
    b"\xff\xf3": "MP3",
    b"\xff\xf2": "MP3",
    b"\x1aE\xdf\xa3": "WebM/Matroska",
}


class AudioError(ValueError):
    """The file cannot be used as audio; the message names the file and what is wrong."""


@dataclass
class AudioFacts:
    """What a file holds, from its header."""

    path: Path
    sample_rate: int
    channels: int
    frames: int
    format: str
    subtype: str
    declared_frames: int | None = None  # what a WAV header announces, when it says

    @property
    def cut_short(self) -> bool:
        return self.declared_frames is not None and self.declared_frames > self.frames

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass
class Window:
    """A stretch of 16 kHz mono audio and where it starts in the recording."""

    start_s: float
    samples: np.ndarray  # float32, 16 kHz mono

    @property
    def end_s(self) -> float:
        return self.start_s + len(self.samples) / SAMPLE_RATE


def _ffmpeg_format(path: Path) -> str | None:
    with path.open("rb") as handle:
        head = handle.read(12)
    for magic, name in NEEDS_FFMPEG.items():
        if head.startswith(magic):
            return name
    if head[4:8] == b"ftyp":
        return "MP4/M4A"
    if path.suffix.lower() in {".mp3", ".m4a", ".aac", ".wma", ".webm", ".mp4", ".opus"}:
        return path.suffix.lower().lstrip(".").upper()
    return None


def probe(path: Path) -> AudioFacts:
    """Read the header; raise AudioError for missing, empty, non-audio or sample-less files."""
    import soundfile

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: audio file is empty (0 bytes)")
    try:
        info = soundfile.info(str(path))
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        needs = _ffmpeg_format(path)
        if needs:
            raise AudioError(f"{path}: {needs} audio needs ffmpeg to decode; convert it to WAV or FLAC first") from exc
        raise AudioError(f"{path}: not a readable audio file (expected WAV or FLAC): {exc}") from exc
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(f"{path}: audio file holds no samples (header only, or truncated before the audio data)")
    if not MIN_SAMPLE_RATE <= info.samplerate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{path}: the header gives a sample rate of {info.samplerate} Hz; recordings have "
                         f"{MIN_SAMPLE_RATE:,}-{MAX_SAMPLE_RATE:,} Hz, so the file is damaged")
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise AudioError(f"{path}: the header gives {info.channels} channels (1-{MAX_CHANNELS} are plausible)")
    facts = AudioFacts(path, int(info.samplerate), int(info.channels), int(info.frames), info.format, info.subtype)
    facts.declared_frames = _wav_declared_frames(path, facts)
    return facts


def _wav_declared_frames(path: Path, facts: AudioFacts) -> int | None:
    """Frames the WAV 'data' chunk announces; libsndfile silently reads a cut file as a shorter one."""
    if facts.format != "WAV" or not facts.subtype.startswith("PCM_"):
        return None
    with path.open("rb") as handle:
        head = handle.read(4096)
    at = head.find(b"data", 12)
    if at < 0:
        return None
    declared = int.from_bytes(head[at + 4 : at + 8], "little")
    width = int(facts.subtype.split("_")[1]) // 8 * facts.channels if facts.subtype.split("_")[1].isdigit() else 0
    # 0 and 0xFFFFFFFF mean "unknown length" (streamed recordings): nothing to compare.
    return declared // width if width and 0 < declared < 0xFFFFFFFF else None


class AudioStream:
    """16 kHz mono blocks of one file, read block by block. `truncated` is set when the file ends early."""

    def __init__(self, path: Path, block_s: float = 10.0) -> None:
        self.facts = probe(path)
        self.block_s = block_s
        self.truncated = self.facts.cut_short
        self.samples_read = 0  # at 16 kHz

    def __iter__(self) -> Iterator[np.ndarray]:
        import soundfile
        from scipy.signal import resample_poly

        rate = self.facts.sample_rate
        common = gcd(rate, SAMPLE_RATE)
        up, down = SAMPLE_RATE // common, rate // common
        # Blocks and context are whole multiples of `down`, so every block maps to an exact
        # integer number of output samples and the pieces join without drift.
        block = max(1, round(self.block_s * rate / down)) * down
        context = max(1, ceil(0.05 * rate / down)) * down
        total = self.facts.frames
        with soundfile.SoundFile(str(self.facts.path)) as handle:
            start = 0
            while start < total:
                lo, hi = max(0, start - context), min(total, start + block + context)
                raw = self._read(handle, lo, hi - lo)
                wanted = min(block, total - start)
                got = max(0, min(wanted, raw.shape[0] - (start - lo)))
                if got < wanted:
                    self.truncated = True
                if got == 0:
                    break
                mono = raw.mean(axis=1, dtype=np.float32)
                if up == down:
                    out = mono[start - lo : start - lo + got]
                else:
                    resampled = resample_poly(mono, up, down).astype(np.float32)
                    head = (start - lo) * up // down
                    out = resampled[head : head + ceil(got * up / down)]
                self.samples_read += len(out)
                yield np.ascontiguousarray(out, dtype=np.float32)
                if got < wanted:
                    break
                start += block
        if self.samples_read == 0:
            raise AudioError(f"{self.facts.path}: no audio could be decoded (the file is damaged or truncated)")

    def _read(self, handle: object, start: int, frames: int) -> np.ndarray:
        """Frames from `start`; a damaged stretch ends the read early (kept: what decoded before it)."""
        import soundfile

        pieces, step = [], max(1, self.facts.sample_rate // 10)
        try:
            handle.seek(start)
            return handle.read(frames, dtype="float32", always_2d=True)
        except (RuntimeError, soundfile.LibsndfileError):
            pass
        # Salvage in 100 ms reads up to the first undecodable one (e.g. a FLAC cut mid-frame).
        self.truncated = True
        for offset in range(0, frames, step):
            try:
                handle.seek(start + offset)
                pieces.append(handle.read(min(step, frames - offset), dtype="float32", always_2d=True))
            except (RuntimeError, soundfile.LibsndfileError):
                break
        return np.concatenate(pieces) if pieces else np.zeros((0, self.facts.channels), dtype=np.float32)


def frame_loudness_dbfs(samples: np.ndarray) -> np.ndarray:
    """RMS level of each 20 ms frame in dBFS (full scale = 0 dB)."""
    frames = len(samples) // FRAME
    if frames == 0:
        return np.array([20 * np.log10(max(float(np.sqrt(np.mean(samples**2))) if len(samples) else 0.0, 1e-10))])
    power = np.mean(samples[: frames * FRAME].reshape(frames, FRAME).astype(np.float64) ** 2, axis=1)
    return 10 * np.log10(np.maximum(power, 1e-20))


def _quiet_cut(samples: np.ndarray, search_s: float) -> int:
    """Where to end a full window: the middle of its quietest 20 ms frame within the last `search_s`."""
    search = min(len(samples), int(search_s * SAMPLE_RATE)) // FRAME * FRAME
    if search < FRAME:
        return len(samples)
    tail = samples[len(samples) - search :]
    loudness = frame_loudness_dbfs(tail)
    # Ties go to the latest frame so windows stay as long as possible.
    quietest = len(loudness) - 1 - int(np.argmin(loudness[::-1]))
    return len(samples) - search + quietest * FRAME + FRAME // 2


def iter_windows(stream: AudioStream, window_s: float = 30.0, search_s: float = 2.0) -> Iterator[Window]:
    """Consecutive windows of at most `window_s`, cut at quiet points; memory ≈ one window plus one block."""
    size = int(window_s * SAMPLE_RATE)
    buffer = np.zeros(0, dtype=np.float32)
    emitted = 0
    for block in stream:
        buffer = np.concatenate([buffer, block]) if len(buffer) else block
        while len(buffer) >= size:
            cut = _quiet_cut(buffer[:size], search_s)
            yield Window(emitted / SAMPLE_RATE, buffer[:cut].copy())
            buffer = buffer[cut:]
            emitted += cut
    if len(buffer):
        yield Window(emitted / SAMPLE_RATE, buffer)


def read_audio(path: Path, max_seconds: float | None = 600.0) -> np.ndarray:
    """A whole (short) recording as 16 kHz mono float32. Long files belong to `iter_windows`."""
    stream = AudioStream(path)
    if max_seconds is not None and stream.facts.seconds > max_seconds:
        raise AudioError(
            f"{path}: {stream.facts.seconds:.0f} s of audio is too long to read whole (limit {max_seconds:.0f} s); "
            "stream it in windows instead"
        )
    blocks = list(stream)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
