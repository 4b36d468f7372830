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
    if name == "evidence":
        return _evidence_schema()
    schema = models[name].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _evidence_schema() -> dict[str, Any]:
    """Evidence, with each tool's payload model under "payloads" (tool name -> $ref into $defs)."""
    from pydantic.json_schema import models_json_schema

    from medagent.tools.contracts import Evidence
    from medagent.tools.payloads import payload_models

    payloads = payload_models()
    keys, top = models_json_schema([(Evidence, "validation"), *[(m, "validation") for m in payloads.values()]],
                                   ref_template="#/$defs/{model}")
    defs = top["$defs"]
    schema = {**defs.pop("Evidence"), "$defs": defs}
    schema["payloads"] = {tool: keys[(model, "validation")] for tool, model in payloads.items()}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
