"""The published JSON Schemas (`medagent schema NAME`)."""

from __future__ import annotations

from typing import Any

from medagent.tools.errors import MedagentError


def json_schema(name: str) -> dict[str, Any]:
    from medagent.tools import config, contracts, trace

    models = {
        "case": contracts.Case,
        "result": contracts.Result,
        "evidence": contracts.Evidence,
        "toolspec": contracts.ToolSpec,
        "config": config.Settings,
    }
    if name == "trace":
        return trace.trace_json_schema()
    if name == "suite-item":
        from medagent.evals.suite import SuiteItem

        return SuiteItem.model_json_schema()
    if name not in models:
        raise MedagentError(f"unknown schema '{name}'; choose one of: {', '.join([*models, 'trace', 'suite-item'])}")
    schema = models[name].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
