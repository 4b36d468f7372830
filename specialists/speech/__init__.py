"""Speech recognition: Whisper on two runtimes (faster-whisper, openai-whisper) and the audio reader.

Public API, for evals (tools/ and training/ build on the submodules themselves): the names below.
"""

from medagent.specialists._exports import lazy_exports

_WHERE = {
    "DecodeOptions": "model",
    "assemble_packaged_base": "load",
    "load_runtime": "load",
    "transcribe": "infer",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
