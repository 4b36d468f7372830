"""Reading what a user hands medagent without trusting it, and printing what it says without harm.

Every file is checked to be a regular file or a folder before it is opened (FIFOs, devices, sockets and
anything under /proc, /sys or /dev are refused: a FIFO would block the read for ever); a case file is
read within a size limit, decoded as strict UTF-8, and parsed as JSON that refuses duplicate keys,
NaN/Infinity, numbers longer than a limit and nesting deeper than one; every string in it is checked for
length, NUL and lone surrogates (which would pass intake and fail only when result.json is written).
Each refusal is one CaseError line naming the file, the place and the limit with its setting.

`terminal_safe` makes text from a case, a DICOM header or a model harmless on a terminal and in
Markdown files: control characters (escape sequences, carriage returns, backspaces) and bidi overrides
are shown as visible escapes instead of being obeyed.

The limits are documented defaults, configurable in medagent.toml under [agent] (see `Limits`); the CLI
calls `configure(settings.agent)` once, and the readers here and in tools/medio.py use `current()`.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medagent.tools.errors import CaseError

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What intake accepts. Each field names the [agent] setting that overrides it."""

    case_bytes: int = 8 * MB  # max_case_mb: a case.json (or chat script) larger than this is refused unread
    text_chars: int = 200_000  # max_text_chars: any one string in a case (a history), or one chat turn
    json_depth: int = 32  # max_json_depth: nesting of objects and lists (a case needs 4)
    number_chars: int = 40  # max_number_chars: digits (and sign, point, exponent) of one JSON number
    volume_bytes: int = 4096 * MB  # max_volume_mb: a volume's voxels as float32, checked from the header
    image_pixels: int = 200_000_000  # max_image_pixels: width x height of a 2D image, checked before decoding


_current = Limits()


def configure(agent: Any) -> Limits:
    """Set the process's limits from an AgentSettings (the [agent] section)."""
    global _current
    _current = Limits(
        case_bytes=int(agent.max_case_mb * MB),
        text_chars=agent.max_text_chars,
        json_depth=agent.max_json_depth,
        number_chars=agent.max_number_chars,
        volume_bytes=int(agent.max_volume_mb * MB),
        image_pixels=agent.max_image_pixels,
    )
    return _current


def current() -> Limits:
    return _current


# -- files --------------------------------------------------------------------------------------------------

SPECIAL_ROOTS = ("/proc", "/sys", "/dev")
_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_path(path: Path, what: str = "file", folder_ok: bool = True) -> os.stat_result:
    """stat `path` (links followed) and refuse anything medagent must not open: missing, unreadable, a link loop,
    a name too long, a NUL byte, a FIFO, a device, a socket, or anything under /proc, /sys or /dev."""
    try:
        info = os.stat(path)
        real = os.path.realpath(path)
    except ValueError as exc:  # embedded NUL byte
        raise CaseError(f"{what} {str(path)!r}: the path contains a NUL byte") from exc
    except FileNotFoundError as exc:
        raise CaseError(f"{_short(path)}: {what} not found") from exc
    except OSError as exc:  # ELOOP, ENAMETOOLONG, EACCES, ENOTDIR...
        raise CaseError(f"{_short(path)}: {what} cannot be read ({exc.strerror or exc.__class__.__name__})") from exc
    for root in SPECIAL_ROOTS:
        if real == root or real.startswith(root + "/"):
            raise CaseError(f"{_short(path)}: is a system file under {root}; medagent reads only ordinary files and folders")
    for test, kind in _KINDS:
        if test(info.st_mode):
            raise CaseError(f"{_short(path)}: is {kind}, not a file; medagent reads only ordinary files and folders")
    if stat.S_ISDIR(info.st_mode) and not folder_ok:
        raise CaseError(f"{_short(path)}: is a folder; expected a {what}")
    if not stat.S_ISDIR(info.st_mode) and not stat.S_ISREG(info.st_mode):
        raise CaseError(f"{_short(path)}: is not an ordinary file or folder")
    return info


def _short(path: Path, limit: int = 200) -> str:
    """A path for a message: terminal-safe, and a 5,000-character one shortened in the middle."""
    text = terminal_safe(str(path))
    return text if len(text) <= limit else f"{text[: limit // 2]}…{text[-limit // 2 :]}"


def read_limited(path: Path, limit: int, what: str = "file") -> bytes:
    """The bytes of a regular file no larger than `limit` (checked before and while reading)."""
    info = check_path(path, what, folder_ok=False)
    if info.st_size > limit:
        raise CaseError(f"{_short(path)}: {what} is {info.st_size / MB:.1f} MB, over the limit of {limit / MB:g} MB ([agent] max_case_mb)")
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise CaseError(f"{_short(path)}: {what} cannot be read ({exc.strerror or exc.__class__.__name__})") from exc
    if len(data) > limit:
        raise CaseError(f"{_short(path)}: {what} is over the limit of {limit / MB:g} MB ([agent] max_case_mb)")
    return data


_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"), (b"\xff\xfe", "UTF-16"))


def decode_utf8(data: bytes, source: str) -> str:
    """Strict UTF-8 (a UTF-8 byte-order mark is dropped); anything else is refused with what it looks like."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            raise CaseError(f"{source}: is {name} text; save it as UTF-8")
    if data[:2] == b"\x1f\x8b":
        raise CaseError(f"{source}: is gzip-compressed; decompress it first")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 1].hex()
        raise CaseError(f"{source}: is not UTF-8 text (byte 0x{bad} at offset {exc.start}); save it as UTF-8") from exc


# -- JSON ---------------------------------------------------------------------------------------------------

_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def json_depth(text: str) -> int:
    """How deeply objects and lists nest in `text` (strings skipped), without parsing it: json.loads would
    raise RecursionError first."""
    depth = deepest = 0
    for token in _TOKENS.finditer(text):
        char = token.group()[0]
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def load_json(text: str, source: str, limits: Limits | None = None) -> Any:
    """Parse JSON strictly: duplicate keys, NaN/Infinity, over-long numbers and deep nesting are refused,
    then every string is checked (see check_strings). Syntax errors say line and column."""
    limits = limits or current()
    depth = json_depth(text)
    if depth > limits.json_depth:
        raise CaseError(f"{source}: nested {depth} levels deep, over the limit of {limits.json_depth} ([agent] max_json_depth)")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in items:
            if key in seen:
                raise CaseError(f"{source}: key {terminal_safe(key)!r} appears twice in one object; keep one of them")
            seen[key] = value
        return seen

    def number(kind: type) -> Any:
        def parse(literal: str) -> Any:
            if len(literal) > limits.number_chars:
                raise CaseError(f"{source}: a number of {len(literal):,} characters is over the limit of "
                                f"{limits.number_chars} ([agent] max_number_chars)")
            value = kind(literal)
            if isinstance(value, float) and not math.isfinite(value):
                raise CaseError(f"{source}: the number {literal} is out of range")
            return value
        return parse

    def constant(name: str) -> Any:
        raise CaseError(f"{source}: {name} is not a number medagent accepts; leave the value out or write it as text")

    try:
        value = json.loads(text, object_pairs_hook=pairs, parse_int=number(int), parse_float=number(float), parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise CaseError(f"{source}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except RecursionError as exc:  # a nesting the scan above miscounted (it never should)
        raise CaseError(f"{source}: nested too deeply ([agent] max_json_depth)") from exc
    check_strings(value, source, limits)
    return value


def check_strings(value: Any, source: str, limits: Limits | None = None) -> None:
    """Refuse any string (key or value) that is too long, holds a NUL or a lone surrogate. Iterative."""
    limits = limits or current()
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                check_text(key, f"{source}: {where or '(top level)'}: a key", limits)
                shown = key if key.isprintable() else json.dumps(key)  # a key with a newline stays one line
                stack.append((f"{where}.{shown}" if where else shown, inner))
        elif isinstance(item, list):
            stack.extend((f"{where}.{index}" if where else str(index), inner) for index, inner in enumerate(item))
        elif isinstance(item, str):
            check_text(item, f"{source}: {where or '(top level)'}", limits)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def check_text(text: str, where: str, limits: Limits | None = None) -> None:
    """One string from the user: not longer than max_text_chars, no NUL, no lone surrogate."""
    limits = limits or current()
    if len(text) > limits.text_chars:
        raise CaseError(f"{where}: {len(text):,} characters is over the limit of {limits.text_chars:,} ([agent] max_text_chars)")
    if "\0" in text:
        raise CaseError(f"{where}: contains a NUL character (at {text.index(chr(0))}); remove it")
    found = _SURROGATE.search(text)
    if found:
        raise CaseError(f"{where}: contains a lone surrogate (\\u{ord(found.group()):04x} at {found.start()}), "
                        "which is not text; remove it")


# -- output -------------------------------------------------------------------------------------------------

# C0 controls except tab and newline, DEL, C1 controls, bidi embeddings/overrides/isolates, and surrogates.
_UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def terminal_safe(text: str) -> str:
    """`text` with every character a terminal would obey (ESC sequences, CR, BS, bidi overrides) shown as a
    visible escape (\\x1b, \\u202e) instead; newlines and tabs stay."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


def console_safe(text: object) -> str:
    """Text from a case, a file, a user or a model for a rich console: terminal-safe, never read as markup."""
    from rich.markup import escape

    return escape(terminal_safe(str(text)))


def one_line(text: str) -> str:
    """A message as one terminal-safe line (a library's embedded newlines become ' / ')."""
    return " / ".join(part.strip() for part in terminal_safe(str(text)).splitlines() if part.strip())
