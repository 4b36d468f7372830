"""Uploads: files a request sends become a case folder under the server's data folder, or are refused.

Every name is checked before anything is written: a file name is one plain component (no '/', '\\', '..', no
leading '.', no control characters); a zip member is a relative path of such components, never a link, and
the zip as a whole stays within the file-count, unpacked-size and compression-ratio limits (a zip bomb is
refused from its directory before a byte is unpacked, and counted again while unpacking in case the directory
lies). Nothing from a request is read from any path outside the upload folder: a case.json sent along may
name only the files sent with it.
"""

from __future__ import annotations

import json
import re
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from medagent.tools.config import Settings
from medagent.tools.contracts import Attachment, AttachmentKind
from medagent.tools.errors import CaseError, MedagentError
from medagent.tools.intake import LoadedCase, intake, parse_case
from medagent.tools.medio import sniff
from medagent.tools.paths import inside

CHUNK = 1 << 20
_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f/\\:]")


class UploadError(MedagentError):
    """A request's files or fields cannot become a case (HTTP 400, or 413 when `too_large`)."""

    def __init__(self, message: str, too_large: bool = False) -> None:
        super().__init__(message)
        self.too_large = too_large


@dataclass
class Incoming:
    """One uploaded file: its client-side name and an open binary stream (a spooled multipart part)."""

    name: str
    stream: BinaryIO


def plain_name(name: str | None, what: str = "file name") -> str:
    """A client-sent name as one safe path component, or a refusal naming it."""
    if not name:
        raise UploadError(f"a {what} is empty")
    if len(name) > 255 or name in (".", "..") or name.startswith(".") or _BAD_CHARS.search(name):
        raise UploadError(f"{what} {name[:80]!r} is not a plain file name (no '/', '\\', ':', control characters or leading '.')")
    return name


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath:
    raw = info.filename
    if "\\" in raw or raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise UploadError(f"zip member {raw[:80]!r} has an absolute or Windows path; only relative paths are unpacked")
    parts = [p for p in PurePosixPath(raw).parts if p != "."]
    if not parts:
        raise UploadError(f"zip member {raw[:80]!r} has no name")
    for part in parts:
        if part == "..":
            raise UploadError(f"zip member {raw[:80]!r} climbs out of the archive ('..'); refused")
        plain_name(part, "zip member name")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UploadError(f"zip member {raw[:80]!r} is a symbolic link; links are never unpacked")
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # no type bits: a plain file
        raise UploadError(f"zip member {raw[:80]!r} is not a regular file")
    return PurePosixPath(*parts)


class Budget:
    """Bytes and files an upload may still use."""

    def __init__(self, settings: Settings) -> None:
        self.bytes_left = int(settings.serve.max_unzipped_mb * 1e6)
        self.files_left = settings.serve.max_files
        self.ratio = settings.serve.max_zip_ratio

    def take_file(self, what: str) -> None:
        self.files_left -= 1
        if self.files_left < 0:
            raise UploadError(f"{what}: more files than the server's limit ([serve] max_files)", too_large=True)

    def take_bytes(self, n: int, what: str) -> None:
        self.bytes_left -= n
        if self.bytes_left < 0:
            raise UploadError(f"{what}: the upload unpacks to more than [serve] max_unzipped_mb", too_large=True)


def _copy(source: BinaryIO, target: Path, budget: Budget, what: str, declared: int | None = None) -> None:
    written = 0
    with target.open("xb") as out:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            budget.take_bytes(len(chunk), what)
            if declared is not None and written > declared:
                raise UploadError(f"{what}: unpacks to more bytes than the zip declares; refused")
            out.write(chunk)


def unpack_zip(source: BinaryIO, folder: Path, budget: Budget, name: str) -> None:
    """Unpack a zip into `folder` (which must not exist), after checking its whole directory."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UploadError(f"{name}: not a readable zip file ({exc})") from exc
    with archive:
        members = []
        declared = 0
        for info in archive.infolist():
            path = _member_path(info)
            if info.is_dir():
                continue
            budget.take_file(name)
            declared += info.file_size
            if info.file_size > CHUNK and info.file_size > budget.ratio * max(info.compress_size, 1):
                raise UploadError(f"{name}: member {info.filename[:80]!r} is compressed {info.file_size / max(info.compress_size, 1):.0f}:1 "
                                  f"(over [serve] max_zip_ratio {budget.ratio:g}); a zip bomb is refused", too_large=True)
            if info.flag_bits & 0x1:
                raise UploadError(f"{name}: member {info.filename[:80]!r} is encrypted")
            members.append((info, path))
        if declared > budget.bytes_left:
            raise UploadError(f"{name}: unpacks to {declared / 1e6:.0f} MB, over [serve] max_unzipped_mb", too_large=True)
        seen: set[PurePosixPath] = set()
        for info, path in members:
            if path in seen:
                raise UploadError(f"{name}: member {info.filename[:80]!r} appears twice")
            seen.add(path)
            target = folder.joinpath(*path.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not inside(folder, target) or target.exists():
                raise UploadError(f"{name}: member {info.filename[:80]!r} would overwrite or leave the upload folder")
            try:
                with archive.open(info) as member:
                    _copy(member, target, budget, name, declared=info.file_size)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
                raise UploadError(f"{name}: member {info.filename[:80]!r} cannot be unpacked ({exc})") from exc
    # A zip of one folder (what "compress this folder" makes) is that folder.
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (folder / "case.json").exists():
        inner = entries[0]
        staging = folder.with_name(folder.name + ".inner")
        inner.rename(staging)
        folder.rmdir()
        staging.rename(folder)


def _is_zip(stream: BinaryIO) -> bool:
    head = stream.read(4)
    stream.seek(0)
    return head == b"PK\x03\x04"


def store_files(files: list[Incoming], folder: Path, settings: Settings) -> list[str]:
    """Write uploads into `folder` (created here); a zip is unpacked into a folder named after it (without
    .zip). Returns the names written, in the order sent."""
    budget = Budget(settings)
    folder.mkdir(parents=True, exist_ok=False)
    names: list[str] = []
    for item in files:
        name = plain_name(item.name)
        if _is_zip(item.stream):
            stem = name[:-4] if name.lower().endswith(".zip") else name + ".unzipped"
            target = folder / plain_name(stem)
            if target.exists():
                raise UploadError(f"two uploads are both named {stem!r}")
            target.mkdir()
            unpack_zip(item.stream, target, budget, name)
            names.append(stem)
        else:
            target = folder / name
            if target.exists():
                raise UploadError(f"two uploads are both named {name!r}")
            budget.take_file(name)
            _copy(item.stream, target, budget, name)
            names.append(name)
    return names


def _kinds(raw: str | None) -> dict[str, str]:
    if not raw:
        return {}
    try:
        kinds = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UploadError(f"field 'kinds' is not JSON ({exc.msg})") from exc
    if not isinstance(kinds, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in kinds.items()):
        raise UploadError("field 'kinds' must be a JSON object of file name -> kind")
    return kinds


def build_case(folder: Path, names: list[str], settings: Settings, fields: dict[str, Any], default_id: str) -> LoadedCase:
    """The case of an upload: the sent case.json (field `case`), a case.json inside a single uploaded zip, or
    a case built from the fields (history, question, case_id) with one attachment per uploaded file. The case
    is checked by the same intake as `medagent solve`, with attachments confined to the upload folder."""
    local = settings.model_copy(deep=True)
    local.agent.allow_outside_paths = False  # a request never names a path outside its own upload
    text = fields.get("case")
    if text:
        case = parse_case(text, "field 'case'")
        return intake(case, local, folder)
    if len(names) == 1 and (folder / names[0] / "case.json").is_file():
        case_dir = folder / names[0]
        loaded = intake(case_dir / "case.json", local)
        if not inside(folder, loaded.case_dir):
            raise UploadError("the uploaded case.json resolves outside its upload")
        return loaded
    kinds = _kinds(fields.get("kinds"))
    unknown = set(kinds) - set(names)
    if unknown:
        raise UploadError(f"field 'kinds' names {sorted(unknown)[0]!r}, which was not uploaded")
    attachments = []
    for number, name in enumerate(names, start=1):
        try:
            info = sniff(folder / name)
            kind = AttachmentKind(kinds.get(name) or info.kind_hint)
        except ValueError as exc:
            raise UploadError(f"{name}: unknown kind {kinds.get(name)!r} (image, volume, audio, pathology or document)") from exc
        except CaseError as exc:
            raise UploadError(str(exc).replace(str(folder) + "/", "")) from exc
        attachments.append(Attachment(id=f"a{number}", kind=kind, path=name, modality=fields.get("modality") or None))
    raw: dict[str, Any] = {"id": fields.get("case_id") or default_id, "attachments": [a.model_dump(exclude_none=True) for a in attachments]}
    for key in ("history", "question"):
        if fields.get(key):
            raw[key] = fields[key]
    if not attachments and not raw.get("history"):
        raise UploadError("nothing to examine: send files, a history, or a case")
    return intake(parse_case(raw, "the uploaded case"), local, folder)


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
