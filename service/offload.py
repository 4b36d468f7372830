"""Run a coroutine on its own event loop in its own thread, awaitable and cancellable from the server's loop.

The engine's nodes do synchronous work between awaits (loading a knowledge graph, building a registry, a rule
planner's linking): on the server's own loop that would stall every other request, the health check and the
event streams included, for as long as it lasts. Each job and each consultation turn therefore runs on a loop
of its own; the server's loop only waits for it. Cancelling the waiter cancels the inner task and waits (a
bounded time) for it to unwind, so that whatever it writes on the way out is written before the caller goes on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
UNWIND_S = 10.0


async def offload(factory: Callable[[], Awaitable[T]], name: str) -> T:
    outer = asyncio.get_running_loop()
    result: asyncio.Future = outer.create_future()
    handle: dict[str, Any] = {}
    started = threading.Event()

    def deliver(outcome: BaseException | None, value: Any = None) -> None:
        if result.done():
            return
        if outcome is None:
            result.set_result(value)
        else:
            result.set_exception(outcome)

    async def main() -> Any:
        handle["loop"], handle["task"] = asyncio.get_running_loop(), asyncio.current_task()
        started.set()
        return await factory()

    def body() -> None:
        try:
            value = asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting loop, which re-raises it
            outer.call_soon_threadsafe(deliver, exc)
        else:
            outer.call_soon_threadsafe(deliver, None, value)

    thread = threading.Thread(target=body, name=name, daemon=True)  # daemon: a stuck tool never blocks exit
    thread.start()
    try:
        return await asyncio.shield(result)
    except asyncio.CancelledError:
        started.wait(UNWIND_S)
        if "task" in handle:
            handle["loop"].call_soon_threadsafe(handle["task"].cancel)
        await asyncio.to_thread(thread.join, UNWIND_S)
        raise
