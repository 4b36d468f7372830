"""LLM backends behind one interface: OpenAI-compatible HTTP (vLLM, llama.cpp), in-process llama.cpp, transformers."""

from medagent.agent.llm.base import ChatResult, LLMBackend, LLMError, Message
from medagent.agent.llm.factory import make_backend

__all__ = ["ChatResult", "LLMBackend", "LLMError", "Message", "make_backend"]
