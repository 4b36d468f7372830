"""In-process backends: llama.cpp (llama-cpp-python, the offline CPU default) and transformers.

llama.cpp keeps the evaluated tokens of the previous call and reuses the longest common prefix,
so prompts that start with the same system prompt and tool catalogue only prefill the case part.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from medagent.agent.llm.base import ChatResult, LLMError, Message, render_alpaca

_DONE = object()


async def _drain(produce: Callable[[Callable[[str], None]], None]) -> AsyncIterator[str]:
    """Run a blocking generator loop in a thread and yield what it puts, as it puts it (errors re-raised)."""
    queue: asyncio.Queue = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def run() -> None:
        try:
            produce(lambda piece: loop.call_soon_threadsafe(queue.put_nowait, piece))
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, _DONE)

    task = asyncio.ensure_future(asyncio.to_thread(run))
    while (piece := await queue.get()) is not _DONE:
        yield piece
    await task  # raises what the producer raised


def load_llama(path: Path, n_ctx: int, n_threads: int | None) -> Any:
    """A llama.cpp model; callers keep one per (file, context, threads) in their model pool."""
    from llama_cpp import Llama

    if not path.is_file():
        raise LLMError(f"GGUF model file {path} does not exist (llm.model_path)")
    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads, verbose=False)


class LlamaCppBackend:
    """Loads its model when made: the factory keeps one per model pool, so runs share it (and its lock)."""

    template = "chat"

    def __init__(self, path: Path, *, n_ctx: int = 4096, n_threads: int | None = None, name: str | None = None) -> None:
        self.path = path
        self.model_path = str(path)  # the pool's memory estimate: the GGUF's size
        self.name = name or path.stem
        self.llama = load_llama(path, n_ctx, n_threads)
        self._lock = threading.Lock()  # one context: calls take turns

    @staticmethod
    def _options(schema: dict[str, Any] | None, max_tokens: int, temperature: float) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
        if schema is not None:  # a grammar built from the schema: the output is valid JSON of that shape
            kwargs["response_format"] = {"type": "json_object", "schema": schema}
        return kwargs

    def _chat_sync(self, messages: list[Message], schema: dict[str, Any] | None, max_tokens: int, temperature: float) -> ChatResult:
        kwargs = self._options(schema, max_tokens, temperature)
        started = time.monotonic()
        with self._lock:
            try:
                answer = self.llama.create_chat_completion(messages=messages, **kwargs)
            except ValueError as exc:  # e.g. the prompt does not fit n_ctx
                raise LLMError(f"llama.cpp ({self.name}): {exc}") from exc
        usage = answer.get("usage") or {}
        return ChatResult(
            text=answer["choices"][0]["message"].get("content") or "",
            model=self.name,
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            seconds=time.monotonic() - started,
        )

    async def chat(self, messages: list[Message], *, schema: dict[str, Any] | None = None, max_tokens: int = 256, temperature: float = 0.0) -> ChatResult:
        return await asyncio.to_thread(self._chat_sync, messages, schema, max_tokens, temperature)

    async def stream(self, messages: list[Message], *, schema: dict[str, Any] | None = None, max_tokens: int = 256,
                     temperature: float = 0.0) -> AsyncIterator[str]:
        def produce(put: Callable[[str], None]) -> None:
            with self._lock:
                try:
                    chunks = self.llama.create_chat_completion(messages=messages, stream=True, **self._options(schema, max_tokens, temperature))
                    for chunk in chunks:
                        piece = chunk["choices"][0]["delta"].get("content")
                        if piece:
                            put(piece)
                except ValueError as exc:
                    raise LLMError(f"llama.cpp ({self.name}): {exc}") from exc

        async for piece in _drain(produce):
            yield piece

    def reset_cache(self) -> None:
        """Forget the evaluated prefix (benchmarks measure prefill with and without it)."""
        with self._lock:
            self.llama.reset()

    async def aclose(self) -> None:
        return None  # the model stays loaded for the pool's next run; `close()` frees it

    def close(self) -> None:
        close = getattr(self.llama, "close", None)  # llama-cpp-python >= 0.2.7x frees the context and weights
        if callable(close):
            close()
        self.llama = None


def resolve_placement(dtype: str = "auto", device: str = "auto") -> tuple[Any, str]:
    """(torch dtype, device) for `[llm] dtype` and `device`: auto is the first CUDA GPU when torch sees one,
    in bfloat16 where the GPU supports it (compute capability 8+), else float16; float32 on CPU."""
    import torch

    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LLMError(f"llm.device = '{device}', but torch sees no CUDA GPU here (set device = 'cpu' or 'auto')")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise LLMError(f"llm.device = '{device}', but torch sees {torch.cuda.device_count()} CUDA GPU(s)")
        device = f"cuda:{index}"
    if dtype == "auto":
        if device == "cpu":
            return torch.float32, device
        major, _ = torch.cuda.get_device_capability(device)
        return (torch.bfloat16 if major >= 8 else torch.float16), device
    return getattr(torch, dtype), device


class TransformersBackend:
    """Any local HF causal-LM checkpoint folder, loaded straight onto `device` in `dtype` (see
    `resolve_placement`). With a schema, decoding is constrained to it (agent/llm/enforce.py)."""

    def __init__(self, path: Path, *, template: str = "chat", device: str = "auto", dtype: str = "auto",
                 name: str | None = None, adapter: Path | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (path / "config.json").is_file():
            raise LLMError(f"transformers model folder {path} has no config.json (llm.model_path)")
        self.path = path
        self.name = name or path.name
        self.template = template
        self.dtype, self.device = resolve_placement(dtype, device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        # device_map puts the weights on the device as they are read: no float32 copy in host memory first.
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=self.dtype, device_map=self.device)
        if adapter is not None:  # a LoRA adapter from training/planner
            from peft import PeftModel

            if not (adapter / "adapter_config.json").is_file():
                raise LLMError(f"LoRA adapter folder {adapter} has no adapter_config.json (llm.adapter_path)")
            model = PeftModel.from_pretrained(model, str(adapter)).to(self.device)
            self.name = f"{self.name}+{adapter.name}"
        self.model = model.eval()
        self._lock = threading.Lock()
        self._vocabulary: Any = None  # the enforcer's view of the tokenizer: built on the first schema, kept

    def prompt(self, messages: list[Message]) -> str:
        if self.template == "alpaca" or not getattr(self.tokenizer, "chat_template", None):
            return render_alpaca(messages)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _constraint(self, schema: dict[str, Any], prompt_length: int) -> Any:
        """The logits processor that keeps decoding inside `schema` (the vocabulary table is built once)."""
        from medagent.agent.llm.enforce import SchemaLogitsProcessor, tokenizer_data

        if self._vocabulary is None:
            ends = self.model.generation_config.eos_token_id
            ends = [ends] if isinstance(ends, int) else list(ends or [])
            eos = sorted({*ends, self.tokenizer.eos_token_id} - {None})
            self._vocabulary = tokenizer_data(self.tokenizer, self.model.config.vocab_size, eos)
        return SchemaLogitsProcessor(self._vocabulary, schema, prompt_length)

    def _generate_args(self, messages: list[Message], schema: dict[str, Any] | None, max_tokens: int,
                       temperature: float) -> dict[str, Any]:
        """`generate()` keyword arguments: the encoded prompt, the token limit, greedy or sampled decoding,
        and with a schema the processor that constrains decoding to it. Callers hold the lock."""
        from transformers import LogitsProcessorList

        encoded = self.tokenizer(self.prompt(messages), return_tensors="pt").to(self.device)
        sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
        arguments = {**encoded, "max_new_tokens": max_tokens,
                     "pad_token_id": self.tokenizer.pad_token_id or self.tokenizer.eos_token_id, **sampling}
        if schema is not None:
            arguments["logits_processor"] = LogitsProcessorList([self._constraint(schema, encoded["input_ids"].shape[1])])
        return arguments

    def _chat_sync(self, messages: list[Message], schema: dict[str, Any] | None, max_tokens: int, temperature: float) -> ChatResult:
        import torch

        started = time.monotonic()
        with self._lock, torch.no_grad():
            arguments = self._generate_args(messages, schema, max_tokens, temperature)
            prompt_tokens = int(arguments["input_ids"].shape[1])
            try:
                output = self.model.generate(**arguments)
            except Exception as exc:  # e.g. the enforcer meets a schema feature it lacks mid-way
                raise LLMError(f"transformers ({self.name}): {exc}") from exc
        new = output[0, prompt_tokens:]
        return ChatResult(
            text=self.tokenizer.decode(new, skip_special_tokens=True),
            model=self.name,
            prompt_tokens=prompt_tokens,
            completion_tokens=int(new.shape[0]),
            seconds=time.monotonic() - started,
        )

    async def chat(self, messages: list[Message], *, schema: dict[str, Any] | None = None, max_tokens: int = 256, temperature: float = 0.0) -> ChatResult:
        # With a schema the reply is JSON of that shape unless max_tokens cuts it; callers still validate it.
        return await asyncio.to_thread(self._chat_sync, messages, schema, max_tokens, temperature)

    async def stream(self, messages: list[Message], *, schema: dict[str, Any] | None = None, max_tokens: int = 256,
                     temperature: float = 0.0) -> AsyncIterator[str]:
        # Constrained as in `chat`; the pieces join to the same text.
        from transformers import TextIteratorStreamer

        def produce(put: Callable[[str], None]) -> None:
            streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
            failure: list[BaseException] = []

            def generate() -> None:
                try:
                    self.model.generate(**arguments, streamer=streamer)  # generate() is itself no-grad
                except BaseException as exc:  # noqa: BLE001 - re-raised below, in the relaying thread
                    failure.append(exc)
                    streamer.end()  # else the relay below would wait for text forever

            with self._lock:
                arguments = self._generate_args(messages, schema, max_tokens, temperature)
                # generate() feeds the streamer from a second thread; this one relays its pieces.
                worker = threading.Thread(target=generate)
                worker.start()
                for piece in streamer:
                    if piece:
                        put(piece)
                worker.join()
            if failure:
                raise LLMError(f"transformers ({self.name}): {failure[0]}") from failure[0]

        async for piece in _drain(produce):
            yield piece

    async def aclose(self) -> None:
        return None
