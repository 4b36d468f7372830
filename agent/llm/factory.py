"""Presets, and building the configured backend from `[llm]` in medagent.toml."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medagent.tools.config import LLMSettings, Settings, cache_root
from medagent.tools.errors import ConfigError, ModelFileMissing
from medagent.tools.pool import ModelPool

NOT_VERIFIED = ("not yet verified against a running vLLM (its request bodies, with structured_outputs.json for the"
                " schema, are checked against vLLM 0.33.0's own request models)")

PRESETS: dict[str, dict[str, Any]] = {
    "offline-cpu": {"backend": "llamacpp", "packaged": "qwen2.5-coder-1.5b-instruct-q4_k_m", "template": "chat"},
    "mmed-llama3-8b-vllm": {
        "backend": "http", "dialect": "vllm", "template": "alpaca", "base_url": "http://127.0.0.1:8000",
        "model": "Henrychur/MMed-Llama-3-8B-EnIns",
        "serve": "vllm serve Henrychur/MMed-Llama-3-8B-EnIns --dtype bfloat16 --max-model-len 8192 --enable-prefix-caching --port 8000",
    },
    "pmc-llama-13b-vllm": {
        "backend": "http", "dialect": "vllm", "template": "alpaca", "base_url": "http://127.0.0.1:8000",
        "model": "axiong/PMC_LLaMA_13B",
        "serve": "vllm serve axiong/PMC_LLaMA_13B --dtype float16 --max-model-len 2048 --enable-prefix-caching --port 8000",
    },
    "openai-compatible": {"backend": "http", "dialect": "openai", "template": "chat"},
}
FIELDS = ("backend", "model_path", "packaged", "model", "base_url", "dialect", "template")


def resolved(llm: LLMSettings) -> dict[str, Any]:
    """The preset's values overlaid with whatever the config sets explicitly."""
    values = dict(PRESETS.get(llm.preset, {}))
    for field in FIELDS:
        value = getattr(llm, field)
        if value is not None:
            values[field] = value
    return values


def is_local(url: str) -> bool:
    host = (urlparse(url).hostname or "").lower()
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def check_remote(llm: LLMSettings, base_url: str) -> None:
    """Case content may leave the machine only with `allow_remote = true`, and we say so at start."""
    if is_local(base_url):
        return
    if not llm.allow_remote:
        raise ConfigError(
            f"llm.base_url {base_url} is not on this machine: case content would be sent there. "
            "Set allow_remote = true in [llm] to allow it."
        )
    print(f"medagent: LLM at {base_url} is remote (allow_remote = true): case content leaves this machine.", file=sys.stderr)


def local_gguf(values: dict[str, Any], settings: Settings) -> Path:
    """The GGUF file a llamacpp backend loads: `model_path`, or the packaged model assembled into the cache."""
    path = values.get("model_path")
    if path is None:
        from medagent.agent.llm.assemble import assemble

        return assemble(values.get("packaged") or "qwen2.5-coder-1.5b-instruct-q4_k_m", cache_root(settings))
    if not path.expanduser().is_file():
        raise ModelFileMissing(f"llm.model_path {path}: no such GGUF file")
    return path.expanduser()


def make_backend(settings: Settings, pool: ModelPool | None = None):
    """The configured backend, or raise ConfigError/UnavailableError naming what is missing. In-process
    models (llama.cpp, transformers) are held in `pool`, so runs sharing it load them once; without a pool
    the backend owns its model. HTTP backends are made per call (each run closes its connections)."""
    pool = pool if pool is not None else ModelPool()
    llm = settings.llm
    if not llm.configured:
        raise ConfigError("[llm] preset is 'none': no LLM is configured")
    values = resolved(llm)
    backend = values.get("backend")
    if backend == "llamacpp":
        from medagent.agent.llm.local import LlamaCppBackend

        path = local_gguf(values, settings)
        from medagent.agent.llm.probe import ensure_backend_runs

        name = values.get("packaged") or path.stem
        key = ("llm.llamacpp", str(path), llm.n_ctx, llm.n_threads, name)
        if not pool.has(key):  # native code: proven in a child before it runs here
            ensure_backend_runs(path, llm.n_ctx, llm.n_threads, cache_root(settings))
        return pool.get(key, lambda: LlamaCppBackend(path, n_ctx=llm.n_ctx, n_threads=llm.n_threads, name=name))
    if backend == "http":
        from medagent.agent.llm.http import HTTPBackend

        urls = list(llm.base_urls) or ([values["base_url"]] if values.get("base_url") else [])
        if not urls:
            raise ConfigError(f"[llm] preset '{llm.preset}' needs base_url (e.g. http://127.0.0.1:8000)")
        for url in urls:
            check_remote(llm, url)
        backends = [
            HTTPBackend(
                url, values.get("model") or "default", dialect=values.get("dialect") or "openai",
                template=values.get("template") or "chat", api_key=os.environ.get(llm.api_key_env),
                timeout_s=llm.timeout_s, retries=llm.retries,
            )
            for url in urls
        ]
        if len(backends) == 1:
            return backends[0]
        from medagent.agent.llm.http import FailoverBackend

        return FailoverBackend(backends)
    if backend == "transformers":
        from medagent.agent.llm.local import TransformersBackend

        path = values.get("model_path")
        if path is None or not (path.expanduser() / "config.json").is_file():
            raise ConfigError(f"llm.model_path {path}: not a transformers checkpoint folder (no config.json)")
        adapter = llm.adapter_path.expanduser() if llm.adapter_path else None
        template = values.get("template") or "chat"
        key = ("llm.transformers", str(path.expanduser()), template, str(adapter), llm.dtype, llm.device)
        return pool.get(key, lambda: TransformersBackend(path.expanduser(), template=template, adapter=adapter,
                                                         dtype=llm.dtype, device=llm.device))
    raise ConfigError(f"llm.backend '{backend}' is not one of llamacpp, http, transformers")


def preflight(settings: Settings) -> None:
    """Raise what make_backend would, before anything is printed or built: the GGUF is assembled and
    llama.cpp probed (both cached). For HTTP and transformers backends there is nothing to check early."""
    values = resolved(settings.llm)
    if values.get("backend") != "llamacpp":
        return
    from medagent.agent.llm.probe import ensure_backend_runs

    path = local_gguf(values, settings)
    ensure_backend_runs(path, settings.llm.n_ctx, settings.llm.n_threads, cache_root(settings))


def doctor_lines(settings: Settings) -> list[str]:
    """What `medagent doctor` says about the LLM: preset, model file or server, and what is missing."""
    llm = settings.llm
    if not llm.configured:
        from medagent.agent.llm.assemble import packaged_installed

        hint = " (packaged GGUF installed: set [llm] preset = \"offline-cpu\")" if packaged_installed("qwen2.5-coder-1.5b-instruct-q4_k_m") else ""
        return [f"LLM: none configured; rule planner + template reporter{hint}"]
    values = resolved(llm)
    lines = [f"LLM preset {llm.preset}: backend {values.get('backend')}, template {values.get('template', 'chat')}"]
    if llm.preset.endswith("-vllm"):
        lines.append(f"  {NOT_VERIFIED}; serve it with: {values['serve']}")
    if values.get("backend") == "llamacpp":
        if values.get("model_path"):
            path = values["model_path"].expanduser()
            lines.append(f"  model file {path}: {'found' if path.is_file() else 'MISSING'}")
        else:
            from medagent.agent.llm.assemble import PACKAGED, assembled_path, part_files
            from medagent.tools.errors import UnavailableError

            name = values.get("packaged")
            model = PACKAGED.get(name)
            if model is None:
                lines.append(f"  llm.packaged '{name}' is unknown (known: {', '.join(PACKAGED)})")
            else:
                target = assembled_path(model, cache_root(settings))
                try:
                    part_files(model)
                    lines.append(f"  packaged GGUF {name}: parts installed; assembled at {target}"
                                 f" ({'present' if target.is_file() else 'built by `medagent setup` or on first use'})")
                except UnavailableError as exc:
                    lines.append(f"  {exc}")
    elif values.get("backend") == "http":
        urls = list(llm.base_urls) or [values.get("base_url")]  # base_urls (a failover list) wins, as in make_backend
        for rank, url in enumerate(urls):
            where = "local" if url and is_local(url) else ("remote, allowed" if llm.allow_remote else "remote, NOT allowed (allow_remote = false)")
            role = "" if len(urls) == 1 else (" (first choice)" if rank == 0 else f" (failover {rank})")
            lines.append(f"  server {url or '(base_url not set)'}{role} ({where}), model {values.get('model')}, "
                         f"dialect {values.get('dialect')}, key from ${llm.api_key_env}")
    elif values.get("backend") == "transformers":
        path = values.get("model_path")
        lines.append(f"  checkpoint folder {path}: {'found' if path and (path / 'config.json').is_file() else 'MISSING config.json'}"
                     f", dtype {llm.dtype}, device {llm.device}")
    return lines
