"""Tools: a spec the planner sees, a typed argument model, and a run function.

Adapters live in tools/ (one module per area) and each exports `TOOLS`. Importing an adapter
must stay cheap: heavy libraries (torch, models) are imported inside `run` or `check`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medagent.tools.config import Settings
from medagent.tools.contracts import Attachment, AttachmentKind, Case, Evidence, EvidenceDraft, ToolCall, ToolSpec
from medagent.tools.errors import ToolError
from medagent.tools.payloads import NoPayload, dump, first_error
from medagent.tools.pool import ModelPool

# Every adapter module; a new tool area adds its module here.
ADAPTER_MODULES = ("medagent.tools.describe", "medagent.tools.imaging", "medagent.tools.speech", "medagent.tools.pathology",
                   "medagent.tools.radfm", "medagent.tools.pmcclip", "medagent.tools.raddiag", "medagent.tools.sat",
                   "medagent.tools.knowledge")


class AttachmentArgs(BaseModel):
    """Arguments of a tool that examines one attachment."""

    model_config = ConfigDict(extra="forbid")
    attachment: str = Field(description="id of the case attachment to examine")


@dataclass
class ToolContext:
    """What a running tool may see: the case, where its files are, where to write artifacts, the run's model pool."""

    case: Case
    case_dir: Path
    artifacts_dir: Path
    settings: Settings
    evidence_so_far: list = field(default_factory=list)
    pool: ModelPool = field(default_factory=ModelPool)  # without one given, models load for this context only

    def attachment(self, attachment_id: str) -> tuple[Attachment, Path]:
        attachment = self.case.attachment(attachment_id)
        if attachment is None:
            raise ToolError(f"no attachment '{attachment_id}' in case {self.case.id}")
        return attachment, (self.case_dir / attachment.path)


@dataclass
class Tool:
    name: str
    purpose: str
    args: type[BaseModel]
    run: Callable[[BaseModel, ToolContext], list[EvidenceDraft]]
    # The model of the payload `run` writes (tools/payloads.py); readers parse payloads with it.
    payload: type[BaseModel] = NoPayload
    attachment_kinds: tuple[AttachmentKind, ...] = ()
    modalities: tuple[str, ...] | None = None
    check: Callable[[Settings], str | None] = lambda settings: None  # reason unavailable, or None
    version: Callable[[Settings], str] = lambda settings: "builtin"
    # Lines for `medagent doctor`: which model files are used or looked for, and where.
    doctor: Callable[[Settings], list[str]] = lambda settings: []
    # (what, file or folder) of each model a run would load, for doctor's memory estimate (its size on disk).
    model_files: Callable[[Settings], list[tuple[str, Path]]] = lambda settings: []
    # What the tool would refuse, found before it runs (a term no catalogue knows): the reason, or None.
    # A rejected call goes back to the planner with that reason; error evidence is for tools that fail
    # on valid input. It gets the run's model pool to load what it needs.
    precheck: Callable[[BaseModel, Case, Settings, ModelPool], str | None] | None = None
    # The values an LLM planner may give the tool's free-text arguments: {field: allowed values} drawn only
    # from the case's coded data and the tools' evidence, never from patient free text. The planner's
    # grammar offers just these (a list field: just these items; no values: the LLM cannot make the call,
    # the adapters' rules do), and an LLM call naming anything else is rejected. So an instruction hidden
    # in a history or transcript can never become a tool argument. None: no free-text arguments.
    grounded: Callable[[Case, Sequence[Evidence]], dict[str, list[str]]] | None = None
    # Where calls run when not in this process: an object with `label` and `call(name, args, ctx, timeout_s)
    # -> (drafts, where)` (agent/scale.py's RemoteTool, set by `[serve] remote_tools`); None runs `run` here.
    remote: Any = None

    def spec(self, settings: Settings) -> ToolSpec:
        reason = self.check(settings)
        return ToolSpec(
            name=self.name,
            purpose=self.purpose,
            arguments=self.args.model_json_schema(),
            attachment_kinds=list(self.attachment_kinds),
            modalities=list(self.modalities) if self.modalities is not None else None,
            available=reason is None,
            unavailable_reason=reason,
        )

    def checked(self, draft: EvidenceDraft) -> EvidenceDraft:
        """The draft with its payload as the tool's model dumps it (the keys the tool set), or an error draft
        naming the first field that does not match. An error draft with an empty payload passes as it is."""
        if draft.error and not draft.payload:
            return draft
        try:
            payload = self.payload.model_validate(draft.payload)
        except ValidationError as exc:
            return EvidenceDraft(
                summary=f"{self.name} returned a payload that does not match {self.payload.__name__}: {first_error(exc)}",
                attachment=draft.attachment,
                error=True,
            )
        return draft.model_copy(update={"payload": dump(payload)})

    def ungrounded(self, arguments: dict, case: Case, evidence: Sequence[Evidence]) -> str | None:
        """Why an LLM call's arguments are not grounded (see `grounded`), or None."""
        if self.grounded is None:
            return None
        for name, allowed in self.grounded(case, evidence).items():
            value = arguments.get(name)
            values = value if isinstance(value, list) else [] if value is None else [value]
            outside = [v for v in values if v not in allowed]
            if outside:
                return (f"{self.name}: {name} {outside[0]!r} is not something the case or the tools named "
                        f"(planner arguments come from the case's codes and the evidence)")
        return None

    def fits(self, attachment: Attachment) -> bool:
        if attachment.kind not in self.attachment_kinds:
            return False
        return self.modalities is None or (attachment.modality or "").upper() in self.modalities


@dataclass(frozen=True)
class Build:
    """A one-time build an adapter's tools need (a graph, an index, an assembled model), done by
    `medagent setup` or, bounded, before the first run that finds it missing (agent/setup.py)."""

    name: str  # what the progress line says
    tools: tuple[str, ...]  # tools that cannot run without it
    wanted: Callable[[Settings], bool]  # whether these settings use it at all
    ready: Callable[[Settings, ModelPool], bool]  # cheap: is it in the cache already? (the pool holds what it reads)
    build: Callable[[Settings, ModelPool], str]  # builds it; returns a short note


def adapter_builds() -> list[Build]:
    """The builds adapter modules declare (`BUILDS` in tools/<area>.py), in module order."""
    return [b for name in ADAPTER_MODULES for b in getattr(importlib.import_module(name), "BUILDS", [])]


def all_tools(extra_modules: tuple[str, ...] = ()) -> list[Tool]:
    tools: list[Tool] = []
    for module_name in ADAPTER_MODULES + extra_modules:
        tools.extend(importlib.import_module(module_name).TOOLS)
    return tools


class Registry:
    """The tools of one run, with their availability under the given settings."""

    def __init__(self, settings: Settings, tools: list[Tool] | None = None, pool: ModelPool | None = None) -> None:
        self.settings = settings
        self.pool = pool if pool is not None else ModelPool()  # what prechecks load
        self.tools = {tool.name: tool for tool in (tools if tools is not None else all_tools())}
        self._reasons = {name: tool.check(settings) for name, tool in self.tools.items()}

    def block(self, reasons: dict[str, str]) -> None:
        """Mark tools unavailable for this run (e.g. a one-time build they need failed)."""
        for name, reason in reasons.items():
            if name in self.tools and self._reasons[name] is None:
                self._reasons[name] = reason

    def available(self) -> list[Tool]:
        return [t for name, t in self.tools.items() if self._reasons[name] is None]

    def unavailable_reason(self, name: str) -> str | None:
        if name not in self.tools:
            return f"unknown tool '{name}'"
        return self._reasons[name]

    def specs(self) -> list[ToolSpec]:
        return [tool.spec(self.settings) for tool in self.tools.values()]

    def validate(self, call: ToolCall, case: Case) -> tuple[BaseModel | None, str | None]:
        """Parse a call's arguments; return (args, None) or (None, reason it is rejected)."""
        reason = self.unavailable_reason(call.tool)
        if reason is not None:
            return None, reason
        tool = self.tools[call.tool]
        try:
            args = tool.args.model_validate(call.arguments)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "arguments"
            return None, f"{call.tool}: {where}: {first['msg']}"
        attachment_id = getattr(args, "attachment", None)
        if attachment_id is not None:
            attachment = case.attachment(attachment_id)
            if attachment is None:
                known = ", ".join(a.id for a in case.attachments) or "none"
                return None, f"{call.tool}: no attachment '{attachment_id}' (attachments: {known})"
            if not tool.fits(attachment):
                return None, (
                    f"{call.tool} does not examine {attachment.kind.value}"
                    f"{' ' + attachment.modality if attachment.modality else ''} attachments"
                )
        if tool.precheck is not None:
            try:
                reason = tool.precheck(args, case, self.settings, self.pool)
            except ToolError as exc:
                reason = str(exc)
            except Exception:  # noqa: BLE001 - a precheck that cannot decide lets the tool run and say what failed
                reason = None
            if reason is not None:
                return None, reason
        return args, None
