"""The in-process llama.cpp backend lives in the run's model pool: runs sharing the pool share one model."""

from __future__ import annotations

import asyncio
import gc
import weakref

from medagent.agent.llm.factory import make_backend
from medagent.tools.config import LLMSettings, Settings
from medagent.tools.pool import ModelPool


def test_runs_sharing_a_pool_load_the_gguf_once_and_close_frees_it(small_gguf):
    settings = Settings(llm=LLMSettings(preset="offline-cpu", model_path=small_gguf, n_ctx=1024))
    pool = ModelPool()
    first, second = make_backend(settings, pool), make_backend(settings, pool)
    assert first is second and set(pool.loads.values()) == {1}
    reply = asyncio.run(first.chat([{"role": "user", "content": "Say OK."}], max_tokens=4))
    assert reply.completion_tokens
    [entry] = pool.loaded()
    assert (entry.bytes, entry.estimate) == (small_gguf.stat().st_size, "model file size")
    ref = weakref.ref(first.llama)
    del first, second
    pool.close()
    gc.collect()
    assert ref() is None and pool.loaded() == []
