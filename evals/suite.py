"""Suites: a JSONL of items, each a case (or a reference to one) plus what is expected.

An item runs in one of four modes: `agent` (the whole graph, fresh state per item), `direct`
(one tool called directly), `pipeline` (a fixed sequence of tools, no LLM), or `dialogue`
(a multi-turn chat with a simulated user). Built-in suites register a builder in `BUILTIN`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from medagent.tools.contracts import Case
from medagent.tools.errors import MedagentError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class Step(BaseModel):
    """One tool call of a `direct` or `pipeline` item. String arguments of the form
    `$prev.<key>` are replaced by that field of the previous step's last evidence payload; the key must
    be a field of the previous tool's payload model (tools/payloads.py), checked when the suite loads."""

    model_config = ConfigDict(extra="forbid")
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class Expected(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer_ids: list[str] = Field(default_factory=list, description="e.g. OMIM ids of the diagnosis")
    answer_labels: list[str] = Field(default_factory=list, description="names/synonyms that count as correct")
    options: list[str] | None = Field(default=None, description="multiple-choice options")
    answer_idx: int | None = None
    required_tools: list[str] = Field(default_factory=list)
    forbidden_tools: list[str] = Field(default_factory=list)
    forbidden_calls: list[dict[str, str]] = Field(
        default_factory=list, description='a tool forbidden on one attachment only: {"tool": ..., "attachment": ...}'
    )
    findings: list[str] = Field(default_factory=list, description="phrases the evidence must mention")
    transcript: str | None = Field(default=None, description="the words spoken in the item's audio (for WER)")
    vqa_answer: str | None = Field(default=None, description="reference answer of a visual question (VQA-RAD)")
    vqa_closed: bool = Field(default=False, description="closed question (yes/no, short choice): exact-start match")
    patch_label: str | None = Field(default=None, description="the label a pathology patch shows (zero-shot classification)")


class SuiteItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    mode: Literal["agent", "direct", "pipeline", "dialogue"] = "agent"
    case: Case | None = None
    case_path: str | None = Field(default=None, description="case.json path, relative to the suite file")
    steps: list[Step] = Field(default_factory=list, description="direct: one step; pipeline: several")
    turns: list[str] = Field(default_factory=list, description="dialogue: scripted user turns")
    expected: Expected = Field(default_factory=Expected)
    group: str | None = Field(default=None, description="for grouped reporting, e.g. a PMID or category")
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> SuiteItem:
        if self.case is None and self.case_path is None:
            raise ValueError("an item needs `case` or `case_path`")
        if self.mode == "direct" and len(self.steps) != 1:
            raise ValueError("a direct item has exactly one step")
        if self.mode == "pipeline" and not self.steps:
            raise ValueError("a pipeline item needs steps")
        _check_prev(self)
        return self


def _check_prev(item: SuiteItem) -> None:
    """Every `$prev.<key>` names a field of the previous step's payload model."""
    from medagent.tools.payloads import fields_of, payload_models

    for number, step in enumerate(item.steps, start=1):
        for name, value in step.arguments.items():
            if not (isinstance(value, str) and value.startswith("$prev.")):
                continue
            where = f"item {item.id}, step {number} ({step.tool}), argument {name}='{value}'"
            if number == 1:
                raise ValueError(f"{where}: there is no previous step")
            previous = item.steps[number - 2].tool
            model = payload_models().get(previous)
            if model is None:
                continue  # an unknown tool is rejected when the step runs
            fields = fields_of(model)
            if value[len("$prev."):] not in fields:
                raise ValueError(f"{where}: the payload of {previous} ({model.__name__}) has no field "
                                 f"'{value[len('$prev.'):]}'; its fields: {', '.join(fields)}")


class Suite(BaseModel):
    name: str
    items: list[SuiteItem]
    base_dir: Path
    default_limit: int | None = None
    description: str = ""
    # Settings the suite's measurement depends on ({"knowledge": {"holdout_share": 0.5}}), applied over the
    # run's settings and recorded in run.json with them.
    settings: dict[str, dict[str, Any]] = {}


SuiteBuilder = Callable[[Path | None, int | None], Suite]
BUILTIN: dict[str, SuiteBuilder] = {}


def register(name: str) -> Callable[[SuiteBuilder], SuiteBuilder]:
    def wrap(builder: SuiteBuilder) -> SuiteBuilder:
        BUILTIN[name] = builder
        return builder

    return wrap


def shared_data_dir(explicit: Path | None) -> Path | None:
    """The development data: an explicit --data path, or ../shared/data beside the repo when present."""
    if explicit is not None:
        if not explicit.is_dir():
            raise MedagentError(f"{explicit}: data folder not found")
        return explicit
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def dev_file(data_dir: Path | None, folder: str) -> Path:
    """`<folder>/dev.jsonl` of the development data; `data_dir` may be that folder itself or the data root."""
    base = shared_data_dir(data_dir)
    if base is None:
        raise FileNotFoundError(f"no {folder} data: pass the folder that holds {folder}/dev.jsonl")
    for candidate in (base / "dev.jsonl", base / folder / "dev.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{base}: no dev.jsonl or {folder}/dev.jsonl")


def load_suite_file(path: Path) -> Suite:
    if not path.is_file():
        raise MedagentError(f"{path}: suite file not found")
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(SuiteItem.model_validate(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise MedagentError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise MedagentError(f"{path}:{number}: {where}: {first['msg']}") from exc
    if not items:
        raise MedagentError(f"{path}: suite holds no items")
    return Suite(name=path.stem, items=items, base_dir=path.parent)


def load_suite(name_or_path: str, data_dir: Path | None = None, limit: int | None = None) -> Suite:
    import medagent.evals.builtin  # noqa: F401  (registers the built-in suites)
    import medagent.evals.dialogue  # noqa: F401

    if name_or_path in BUILTIN:
        return BUILTIN[name_or_path](data_dir, limit)
    path = Path(name_or_path)
    if path.suffix == ".jsonl" or path.exists():
        return load_suite_file(path)
    raise MedagentError(f"unknown suite '{name_or_path}'; built-in: {', '.join(sorted(BUILTIN))}, or give a .jsonl file")
