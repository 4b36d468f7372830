"""Intake: read case.json, validate it, resolve and sniff every attachment.

Everything here fails fast with one clear line (CaseError) and imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case
from medagent.tools.errors import CaseError
from medagent.tools.medio import FileInfo, sniff, sniff_series, validate_attachment
from medagent.tools.paths import inside
from medagent.tools.safeio import Limits, check_path, current, decode_utf8, load_json, read_limited

# Which sniffed formats each declared kind may hold.
KIND_FORMATS = {
    AttachmentKind.image: {"dicom", "png", "jpeg", "tiff"},
    AttachmentKind.volume: {"dicom", "nifti"},
    AttachmentKind.audio: {"wav", "flac"},
    AttachmentKind.pathology: {"png", "jpeg", "tiff"},
    AttachmentKind.document: {"text", "pdf"},
}


@dataclass
class LoadedCase:
    case: Case
    case_dir: Path
    files: dict[str, FileInfo] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def validation_message(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {where}: {first['msg']}{more}"


def parse_case(raw: dict | str, source: str = "case") -> Case:
    try:
        if isinstance(raw, str):
            raw = load_json(raw, source)
        return Case.model_validate(raw)
    except ValidationError as exc:
        raise CaseError(validation_message(source, exc)) from exc


def read_case_file(path: Path, limits: Limits | None = None) -> Case:
    """case.json, read within the size limit as strict UTF-8 JSON (tools/safeio.py says what is refused)."""
    limits = limits or current()
    data = read_limited(path, limits.case_bytes, "case file")
    raw = load_json(decode_utf8(data, str(path)), str(path), limits)
    if not isinstance(raw, dict):
        raise CaseError(f"{path}: expected a JSON object, found {type(raw).__name__}")
    return parse_case(raw, str(path))


def resolve_attachments(case: Case, case_dir: Path, allow_outside: bool = False) -> LoadedCase:
    """Check every attachment exists, stays inside the case folder, and is what it claims."""
    loaded = LoadedCase(case=case, case_dir=case_dir)
    root = case_dir.resolve()
    updated = []
    for index, attachment in enumerate(case.attachments):
        where = f"attachments.{index} ({attachment.id})"
        try:
            check_path(case_dir / attachment.path)  # before anything resolves or opens it: no FIFO, device, loop
            target = (case_dir / attachment.path).resolve()
        except (CaseError, OSError) as exc:
            raise CaseError(f"{where}: {exc}") from exc
        if not allow_outside and not inside(root, target):
            raise CaseError(
                f"{where}: path '{attachment.path}' leads outside the case folder {root}; "
                "move the file next to the case or pass --allow-outside-paths"
            )
        if target.is_dir() and attachment.series_uid:
            info = _sniff_series(target, attachment.series_uid, where)
        else:
            try:
                info = sniff(target)
            except CaseError as exc:
                raise CaseError(f"{where}: {exc}") from exc
        allowed = KIND_FORMATS[attachment.kind]
        if info.format not in allowed:
            raise CaseError(
                f"{where}: declared kind '{attachment.kind.value}' but the file is {info.format} "
                f"(a {attachment.kind.value} must be one of: {', '.join(sorted(allowed))})"
            )
        if attachment.format and attachment.format != info.format:
            raise CaseError(f"{where}: declared format '{attachment.format}' but the file is {info.format}")
        try:
            loaded.warnings += [f"{attachment.id}: {w}" for w in validate_attachment(info, attachment.series_uid)]
        except CaseError as exc:
            raise CaseError(f"{where}: {exc}") from exc
        modality = attachment.modality
        if info.modality:
            if modality and modality.upper() != info.modality:
                loaded.warnings.append(
                    f"{attachment.id}: case says modality {modality} but the DICOM header says {info.modality}; using {info.modality}"
                )
            modality = info.modality
        elif attachment.kind is AttachmentKind.audio:
            modality = modality or "audio"
        loaded.files[attachment.id] = info
        updated.append(
            attachment.model_copy(
                update={"format": info.format, "modality": modality, "series_uid": attachment.series_uid or info.series_uid}
            )
        )
    loaded.case = case.model_copy(update={"attachments": updated})
    return loaded


def _sniff_series(folder: Path, series_uid: str, where: str) -> FileInfo:
    try:
        return sniff_series(folder, series_uid)
    except CaseError as exc:
        raise CaseError(f"{where}: {exc}") from exc


def load_case(path: Path, allow_outside: bool = False, limits: Limits | None = None) -> LoadedCase:
    case = read_case_file(path, limits)
    return resolve_attachments(case, path.parent, allow_outside)


def intake(case: Case | Path | str, settings: Settings, case_dir: Path | None = None) -> LoadedCase:
    """The one intake every entry point calls (CLI solve, Python API, chat, eval runner): the config's limits
    applied, the case read and validated (a Case is taken as it is, its paths relative to `case_dir`, else the
    current folder), each attachment resolved, checked and sniffed."""
    from medagent.tools.safeio import configure

    configure(settings.agent)
    if isinstance(case, Case):
        return resolve_attachments(case, Path(case_dir or Path.cwd()), settings.agent.allow_outside_paths)
    return load_case(Path(case), settings.agent.allow_outside_paths)
