"""OpenAI-compatible HTTP backend (vLLM, llama.cpp's server, any OpenAI-style endpoint) over httpx.

Dialects differ only in how a JSON Schema constraint is sent:
- `llamacpp`: `response_format={"type": "json_object", "schema": S}` (grammar-enforced; its server
  rejects OpenAI's `json_schema` form with HTTP 500; measured, ../shared/ENV.md);
- `vllm`: `structured_outputs={"json": S}`, vLLM's own extra field, the same on `/v1/chat/completions`
  and `/v1/completions` (vLLM docs, features/structured_outputs; `guided_json` was removed in vLLM 0.12
  and is now ignored with a warning, leaving the output unconstrained). The bodies are checked against
  vLLM 0.33.0's own request models (tests/llm/test_backends.py), not yet against a running vLLM;
- `openai`: `response_format={"type": "json_schema", "json_schema": {...}}`.
Models with the Alpaca template (PMC-LLaMA, MMed-Llama-3) go through `/v1/completions` with the
prompt rendered here, because they ship no chat template.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from medagent.agent.llm.base import ChatResult, LLMError, LLMUnreachable, Message, render_alpaca

RETRY_STATUS = {408, 429, 502, 503, 504}


class HTTPBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        dialect: str = "llamacpp",
        template: str = "chat",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        connect_timeout_s: float = 5.0,
        retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        if dialect not in {"llamacpp", "vllm", "openai"}:
            raise LLMError(f"llm.dialect '{dialect}' is not one of llamacpp, vllm, openai")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.dialect = dialect
        self.template = template
        self.name = f"{model}@{self.base_url}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # One pooled client per backend: connections are reused across planning and reporting turns.
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
        )

    def _constraint(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.dialect == "llamacpp":
            return {"response_format": {"type": "json_object", "schema": schema}}
        if self.dialect == "vllm":
            return {"structured_outputs": {"json": schema}}
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "medagent", "schema": schema, "strict": True}}}

    def _request(self, messages: list[Message], schema: dict[str, Any] | None, max_tokens: int, temperature: float, stream: bool) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature, "stream": stream}
        if self.template == "alpaca":
            path, body["prompt"] = "/v1/completions", render_alpaca(messages)
            body["stop"] = ["### Instruction:", "### Input:"]
        else:
            path, body["messages"] = "/v1/chat/completions", messages
        if schema is not None:
            body.update(self._constraint(schema))
        return path, body

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = await self._client.post(path, json=body)
            except httpx.ConnectError as exc:
                last = f"cannot connect ({exc.__class__.__name__}); is the server running?"
                continue
            except httpx.TimeoutException:
                last = f"no answer within {self.timeout_s:g} s"
                continue
            except httpx.HTTPError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
                continue
            if response.status_code in RETRY_STATUS:
                last = f"HTTP {response.status_code}"
                continue
            if response.status_code >= 400:
                raise LLMError(f"LLM server {self.base_url}{path} refused the request: HTTP {response.status_code}: {response.text[:200]}")
            try:
                return response.json()
            except json.JSONDecodeError as exc:
                raise LLMError(f"LLM server {self.base_url}{path} answered with non-JSON: {response.text[:120]!r}") from exc
        raise LLMUnreachable(f"LLM server {self.base_url}{path}: {last} (after {self.retries + 1} tries)")

    async def chat(self, messages: list[Message], *, schema: dict[str, Any] | None = None, max_tokens: int = 256, temperature: float = 0.0) -> ChatResult:
        path, body = self._request(messages, schema, max_tokens, temperature, stream=False)
        started = time.monotonic()
        answer = await self._post(path, body)
        try:
            choice = answer["choices"][0]
            text = choice["text"] if self.template == "alpaca" else choice["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"LLM server {self.base_url}{path} answered without a completion: {str(answer)[:160]}") from exc
        usage = answer.get("usage") or {}
        return ChatResult(
            text=text or "",
            model=answer.get("model") or self.model,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            seconds=time.monotonic() - started,
            server=self.base_url,
        )

    async def stream(self, messages: list[Message], *, schema: dict[str, Any] | None = None, max_tokens: int = 256,
                     temperature: float = 0.0) -> AsyncIterator[str]:
        path, body = self._request(messages, schema, max_tokens, temperature, stream=True)
        try:
            async with self._client.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise LLMError(f"LLM server {self.base_url}{path} refused the request: HTTP {response.status_code}: {response.text[:200]}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    choice = (json.loads(data).get("choices") or [{}])[0]
                    piece = choice.get("text") if self.template == "alpaca" else (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        except httpx.ConnectError as exc:
            raise LLMUnreachable(f"LLM server {self.base_url}: cannot connect ({exc.__class__.__name__}); is the server running?") from exc
        except httpx.TimeoutException as exc:
            raise LLMUnreachable(f"LLM server {self.base_url}: no answer within {self.timeout_s:g} s") from exc

    async def models(self) -> list[str]:
        """The model ids the server offers (`GET /v1/models`): a cheap readiness probe."""
        try:
            response = await self._client.get("/v1/models")
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise LLMError(f"LLM server {self.base_url}: /v1/models failed ({exc.__class__.__name__})") from exc
        return [m["id"] for m in response.json().get("data", [])]

    async def aclose(self) -> None:
        await self._client.aclose()


class FailoverBackend:
    """Several servers of one model, in order: each request goes to the first one that can be reached
    (LLMUnreachable moves on to the next; any other error is the answer, as with one server). No load
    spreading: that is the serving engine's job (vLLM --data-parallel-size, Ray Serve LLM) behind one URL."""

    def __init__(self, backends: list[HTTPBackend]) -> None:
        if not backends:
            raise LLMError("a failover list needs at least one server")
        self.backends = backends
        self.template = backends[0].template
        self.name = "failover(" + ", ".join(b.name for b in backends) + ")"

    async def chat(self, messages: list[Message], **options: Any) -> ChatResult:
        failures = []
        for backend in self.backends:
            try:
                return await backend.chat(messages, **options)
            except LLMUnreachable as exc:
                failures.append(str(exc))
        raise LLMUnreachable("no LLM server could be reached: " + "; ".join(failures))

    async def stream(self, messages: list[Message], **options: Any) -> AsyncIterator[str]:
        failures = []
        for backend in self.backends:
            started = False
            try:
                async for piece in backend.stream(messages, **options):
                    started = True
                    yield piece
                return
            except LLMUnreachable as exc:
                if started:  # cut off mid-answer: moving on would repeat what was already shown
                    raise
                failures.append(str(exc))
        raise LLMUnreachable("no LLM server could be reached: " + "; ".join(failures))

    async def aclose(self) -> None:
        for backend in self.backends:
            await backend.aclose()
