"""Orchestration: the LangGraph case graph, planner, reporter, LLM backends and chat sessions.

`medagent.agent.solve(case)` and `medagent.agent.asolve(case)` are the Python API.
"""


def solve(*args, **kwargs):
    from medagent.agent.api import solve as _solve

    return _solve(*args, **kwargs)


async def asolve(*args, **kwargs):
    from medagent.agent.api import asolve as _asolve

    return await _asolve(*args, **kwargs)


__all__ = ["asolve", "solve"]
