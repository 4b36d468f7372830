"""The one interface every LLM backend implements, and the prompt templates they share.

A backend is async: `chat` returns one completion (optionally constrained to a JSON Schema),
`stream` yields text pieces
as they are decoded (with the same optional schema). Messages are OpenAI-style `{"role", "content"}` dicts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from medagent.tools.errors import UnavailableError

Message = dict[str, str]

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)


class LLMError(UnavailableError):
    """The LLM could not answer: server down, timed out, refused the request, or returned no usable text."""


class LLMUnreachable(LLMError):
    """The server could not be reached: connection failed, no answer in time, or it stayed overloaded
    (HTTP 408/429/502/503/504) through every retry. The one failure a failover list moves on from."""


@dataclass
class ChatResult:
    text: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float = 0.0
    server: str | None = None  # which server answered (HTTP backends)

    def json_is_complete(self) -> bool:
        try:
            self.json()
        except LLMError:
            return False
        return True

    def json(self, salvage: bool = False) -> Any:
        """The completion parsed as JSON (a constrained completion is JSON by construction, unless the
        token limit cut it: with `salvage`, the complete values written before the cut are kept)."""
        import json

        text = self.text.strip()
        if text.startswith("```"):
            # Unconstrained models like to fence JSON in Markdown.
            text = text.strip("`")
            text = text[text.find("\n") + 1 :] if "\n" in text else text
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            kept = salvage_truncated_json(text) if salvage else None
            if kept is not None:
                return kept
            raise LLMError(f"the LLM ({self.model}) returned text that is not JSON: {self.text[:120]!r}") from exc


def salvage_truncated_json(text: str) -> Any | None:
    """JSON cut off mid-way, closed after its last complete object or array element; None if nothing is complete.

    Closing after a `}` or `]` keeps whole items only: a half-written sentence is dropped, never shown cut.
    """
    import json

    stack: list[str] = []
    cuts: list[tuple[int, str]] = []  # (end of a complete value, the closers it then needs)
    in_string = escaped = False
    for index, char in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            stack.append("}" if char == "{" else "]")
        elif char in "}]":
            if not stack:
                return None
            stack.pop()
            cuts.append((index + 1, "".join(reversed(stack))))
    for end, closers in reversed(cuts):
        try:
            return json.loads(text[:end] + closers)
        except json.JSONDecodeError:
            continue
    return None


class LLMBackend(Protocol):
    name: str
    template: str  # "chat" (the model's own chat template) or "alpaca"

    async def chat(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> ChatResult: ...

    def stream(
        self,
        messages: list[Message],
        *,
        schema: dict[str, Any] | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


def render_alpaca(messages: list[Message]) -> str:
    """PMC-LLaMA / MMed-Llama-3's Alpaca template: system → instruction, user turns → input."""
    instruction = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    parts = [ALPACA_PREAMBLE, "", "### Instruction:", instruction]
    for message in messages:
        if message["role"] == "user":
            parts += ["", "### Input:", message["content"]]
        elif message["role"] == "assistant":
            parts += ["", "### Response:", message["content"]]
    parts += ["", "### Response:", ""]
    return "\n".join(parts)
