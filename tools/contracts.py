"""The typed contracts every layer shares: cases, attachments, tool specs, evidence, results.

These pydantic models are the only things that cross layer boundaries. Their JSON Schemas are
published with `medagent schema NAME`. Change them deliberately, in this one place.
"""

from __future__ import annotations

import math
import re
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

RESEARCH_NOTICE = (
    "Research use only. medagent is not a medical device; its output is not a diagnosis "
    "and must not guide patient care."
)
EVIDENCE_ID = re.compile(r"^E[1-9][0-9]*$")
ONTOLOGY_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*:[A-Za-z0-9_.-]+$")
# Case and attachment ids name folders (out/<case id>, a session's files/<attachment id>/): no separators
# and no leading dot, so never '.', '..' or a hidden name.
CASE_ID = r"^[A-Za-z0-9_:-][A-Za-z0-9_.:-]{0,127}$"
ATTACHMENT_ID = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"


def _plain_id(value: object, pattern: str, rule: str) -> object:
    """The same check as the Field pattern (which the JSON Schema publishes), with a message that says the rule."""
    if isinstance(value, str) and not re.fullmatch(pattern, value):
        raise ValueError(f"{value!r} is not a valid id: {rule}, not starting with '.'")
    return value


def _number(value: object) -> object:
    """JSON's true/false are not numbers (pydantic would read true as 1), and NaN or infinity is no measurement."""
    if isinstance(value, bool):
        raise ValueError("expected a number, found true/false")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"expected a finite number, found {value}")
    return value


class Strict(BaseModel):
    """Base for contracts: unknown fields are an error, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class AttachmentKind(str, Enum):
    image = "image"
    volume = "volume"
    audio = "audio"
    pathology = "pathology"
    document = "document"


class Sex(str, Enum):
    female = "female"
    male = "male"
    other = "other"
    unknown = "unknown"


class Patient(Strict):
    """What the case says about the patient. Deliberately no name, birth date or record number."""

    age_years: float | None = Field(default=None, ge=0, le=130, description="Age in years.")
    sex: Sex = Sex.unknown

    @field_validator("age_years", mode="before")
    @classmethod
    def _age(cls, value: object) -> object:
        return _number(value)


class Measurement(Strict):
    """A structured finding: a vital sign or lab value with its unit."""

    name: str = Field(min_length=1, description="e.g. 'haemoglobin', 'heart rate'")
    value: float | str
    unit: str | None = None
    reference_range: str | None = Field(default=None, description="As reported, e.g. '12-16 g/dL'")

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, value: object) -> object:
        return _number(value)


class Phenotypes(Strict):
    """Coded phenotypes kept from structured sources (phenopackets, FHIR): ontology ids."""

    present: list[str] = Field(default_factory=list, description="e.g. ['HP:0001250']")
    excluded: list[str] = Field(default_factory=list)

    @field_validator("present", "excluded")
    @classmethod
    def _ids(cls, ids: list[str]) -> list[str]:
        for term in ids:
            if not ONTOLOGY_ID.match(term):
                raise ValueError(f"'{term}' is not an ontology id like 'HP:0001250'")
        return ids


class Attachment(Strict):
    """A file that belongs to the case. `path` is relative to the case file's folder."""

    id: str = Field(pattern=ATTACHMENT_ID, description="Unique within the case, e.g. 'ct1'")
    kind: AttachmentKind
    path: str = Field(min_length=1)
    modality: str | None = Field(
        default=None,
        description="CT, MR, CR, DX, US, PT, XA, MG, pathology, audio, ... (a DICOM's own tag wins)",
    )
    format: Literal["dicom", "nifti", "png", "jpeg", "tiff", "wav", "flac", "text", "pdf"] | None = Field(
        default=None, description="Sniffed at intake when absent."
    )
    series_uid: str | None = Field(default=None, description="Needed when a DICOM folder holds several series.")
    description: str | None = None

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: object) -> object:
        return _plain_id(value, ATTACHMENT_ID, "1-64 letters, digits or _.-")

    @field_validator("modality")
    @classmethod
    def _modality(cls, value: str | None) -> str | None:
        return value.strip().upper() if value and value.strip().lower() not in {"pathology", "audio"} else value


class Case(Strict):
    """One clinical case, as `case.json` holds it."""

    schema_version: Literal[1] = 1
    id: str = Field(pattern=CASE_ID, description="Names the default output folder out/<id>")
    patient: Patient = Field(default_factory=Patient)
    history: str = Field(default="", description="Free-text history, symptoms, examination.")
    findings: list[Measurement] = Field(default_factory=list)
    phenotypes: Phenotypes = Field(default_factory=Phenotypes)
    question: str = Field(default="What is the most likely diagnosis?")
    attachments: list[Attachment] = Field(default_factory=list)

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, value: object) -> object:
        return _plain_id(value, CASE_ID, "1-128 letters, digits or _.:-")

    @model_validator(mode="after")
    def _unique_attachment_ids(self) -> Case:
        seen: set[str] = set()
        for attachment in self.attachments:
            if attachment.id in seen:
                raise ValueError(f"attachment id '{attachment.id}' is used twice")
            seen.add(attachment.id)
        return self

    def attachment(self, attachment_id: str) -> Attachment | None:
        return next((a for a in self.attachments if a.id == attachment_id), None)


class ToolSpec(Strict):
    """What the planner sees of a tool, and what the orchestrator checks calls against."""

    name: str = Field(pattern=r"^[a-z]+\.[a-z_]+$", description="area.action")
    purpose: str
    arguments: dict[str, Any] = Field(description="JSON Schema of the arguments object")
    attachment_kinds: list[AttachmentKind] = Field(
        default_factory=list, description="Kinds it examines; empty = it takes no attachment"
    )
    modalities: list[str] | None = Field(default=None, description="Accepted modalities; None = any")
    available: bool = True
    unavailable_reason: str | None = None


class CallOrigin(str, Enum):
    llm = "llm"
    guard = "guard"
    repair = "repair"
    rule = "rule"


class ToolCall(Strict):
    """One call the planner asked for."""

    call_id: str
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    origin: CallOrigin = CallOrigin.rule
    reason: str | None = Field(default=None, description="Why the planner made this call")


class Code(Strict):
    system: str = Field(description="OMIM, ORPHA, ICD-10-CM, HPO, ...")
    id: str
    label: str | None = None


class EvidenceDraft(Strict):
    """What a tool returns; the orchestrator gives it an id when it is recorded."""

    summary: str = Field(description="One sentence a clinician can read")
    attachment: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict, description="Structured, tool-specific")
    artifacts: list[str] = Field(default_factory=list, description="Files written, relative to the output folder")
    confidence: float | None = Field(default=None, ge=0, le=1)
    error: bool = False
    derived: bool = Field(default=False, description="Inferred from other evidence rather than observed")


class Evidence(EvidenceDraft):
    id: str = Field(description="E1, E2, ... in the order recorded; never reused")
    tool: str
    call_id: str

    @field_validator("id")
    @classmethod
    def _evidence_id(cls, value: str) -> str:
        if not EVIDENCE_ID.match(value):
            raise ValueError(f"'{value}' is not an evidence id like E1")
        return value


class DiagnosisCandidate(Strict):
    rank: int = Field(ge=1)
    name: str
    codes: list[Code] = Field(default_factory=list)
    score: float | None = None
    rationale: str = ""
    evidence: list[str] = Field(default_factory=list, description="Evidence ids that support it")
    proposed_by: Literal["tools", "llm"] = Field(
        "tools", description="'tools': a tool ranked it; 'llm': only the LLM proposed it (listed after the tools' candidates, unverified)")
    findings: list[str] = Field(
        default_factory=list, description="For an LLM candidate: the findings it rests on, each found in the case or the evidence")


class Finding(Strict):
    statement: str
    evidence: list[str] = Field(min_length=1)


class GroundingVerdict(str, Enum):
    supported = "supported"
    unsupported = "unsupported"
    no_citation = "no_citation"
    unknown_citation = "unknown_citation"
    not_checked = "not_checked"


class ReportSentence(Strict):
    text: str
    citations: list[str] = Field(default_factory=list)
    verdict: GroundingVerdict = GroundingVerdict.not_checked
    reason: str | None = None


class GroundingSummary(Strict):
    status: Literal["not_run", "checked"] = "not_run"
    checker: str | None = None
    sentences: int = 0
    supported: int = 0
    flagged: int = 0
    note: str = ""


class Report(Strict):
    sentences: list[ReportSentence] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=list, description="What could not be examined, and why")
    conflicts: list[str] = Field(
        default_factory=list, description="Where sources disagreed about a finding, and which one was kept (with evidence ids)"
    )

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)


class Timings(Strict):
    total_s: float = 0.0
    nodes_s: dict[str, float] = Field(default_factory=dict)
    tools_s: dict[str, float] = Field(default_factory=dict, description="call_id -> seconds")


class Result(Strict):
    """Everything `medagent solve` concludes about one case."""

    schema_version: Literal[1] = 1
    case_id: str
    question: str
    differential: list[DiagnosisCandidate] = Field(default_factory=list)
    differential_note: str = ""
    findings: list[Finding] = Field(default_factory=list)
    report: Report = Field(default_factory=Report)
    evidence: list[Evidence] = Field(default_factory=list)
    calls: list[ToolCall] = Field(default_factory=list)
    grounding: GroundingSummary = Field(default_factory=GroundingSummary)
    timings: Timings = Field(default_factory=Timings)
    models: dict[str, str] = Field(default_factory=dict, description="component -> model/version used")
    notice: str = RESEARCH_NOTICE

    def evidence_by_id(self) -> dict[str, Evidence]:
        return {e.id: e for e in self.evidence}
