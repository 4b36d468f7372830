"""The contract with the world: cases, attachments, tools, evidence, medical file I/O."""

from medagent.tools.contracts import (
    RESEARCH_NOTICE,
    Attachment,
    AttachmentKind,
    Case,
    DiagnosisCandidate,
    Evidence,
    EvidenceDraft,
    Result,
    ToolCall,
    ToolSpec,
)
from medagent.tools.errors import CaseError, ConfigError, MedagentError, ToolError

__all__ = [
    "RESEARCH_NOTICE",
    "Attachment",
    "AttachmentKind",
    "Case",
    "CaseError",
    "ConfigError",
    "DiagnosisCandidate",
    "Evidence",
    "EvidenceDraft",
    "MedagentError",
    "Result",
    "ToolCall",
    "ToolError",
    "ToolSpec",
]
