"""Parse request bodies with vLLM's own OpenAI request models; run as a child process by test_backends.py.

vLLM cannot run on a CPU machine, but its request models (pydantic) import without CUDA once the wheel's
Python code and a few small packages are on the path: `make setup-dev` puts them in
<venv>/share/medagent/vllm, which the test passes as PYTHONPATH. Reads a JSON list of [path, body] on
stdin; prints one JSON line: per body, what vLLM makes of it (the sampling parameters its engine would
get) or the one-line error it answers with. With `--compile` (run once by `make setup-dev`), it byte-compiles
the modules of that folder that it imports, and only those (about 800 of its 5,400), so that each
test run need not.
"""

from __future__ import annotations

import json
import py_compile
import sys
from importlib.metadata import version
from importlib.util import cache_from_source
from pathlib import Path


def request_models() -> dict:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest

    return {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


def compile_imported() -> None:
    import vllm

    request_models()
    folder = Path(vllm.__file__).resolve().parents[1]
    files = {Path(m.__file__).resolve() for m in list(sys.modules.values()) if getattr(m, "__file__", None)}
    mine = sorted(f for f in files if f.suffix == ".py" and folder in f.parents)
    for source in mine:
        py_compile.compile(str(source), cfile=cache_from_source(str(source)), doraise=True)
    print(f"byte-compiled {len(mine)} modules under {folder}")


def main() -> None:
    models = request_models()

    parsed = []
    for path, body in json.load(sys.stdin):
        try:
            request = models[path].model_validate(body)
            max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens
            params = request.to_sampling_params(max_tokens, {})  # what the server hands its engine
        except Exception as exc:  # vLLM answers these with HTTP 400
            parsed.append({"error": f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}"})
            continue
        constraint = params.structured_outputs
        parsed.append({
            "model": request.__class__.__name__,
            "ignored": sorted(request.model_extra or {}),  # extra="allow": fields vLLM silently drops
            "json": constraint.json if constraint else None,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "stop": params.stop,
            "stream": request.stream,
        })
    print(json.dumps({"vllm": version("vllm"), "parsed": parsed}))


if __name__ == "__main__":
    compile_imported() if sys.argv[1:] == ["--compile"] else main()
