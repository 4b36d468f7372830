"""Where medagent may write: ids become path components only as plain names, every path built from one
stays inside its root, and output folders are staged beside their target and published with a marker.

`--overwrite` replaces only a folder whose `.medagent-output` marker says medagent wrote it and that holds
nothing else; never the current folder or a parent of it, an input or a folder holding one, a symbolic
link, or a path whose `..` passes a link and so lands somewhere other than it reads. Each refusal is a
MedagentError (one line, exit code 2), raised before any work runs and before anything is created.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from medagent.tools.errors import MedagentError

MARKER = ".medagent-output"
_staging: set[Path] = set()  # staging folders of this process not yet published (an interrupt removes them)


def inside(root: Path, path: Path) -> bool:
    """True when `path`, with every link and `..` resolved, is `root` or lies below it (resolved alike)."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())


def child(root: Path, name: str, what: str) -> Path:
    """`root / name` for an id that is one plain path component and stays inside `root`; else a refusal."""
    if not name or name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise MedagentError(f"{what} {name!r} cannot name a folder: it must be a plain name (no '/', no leading '.')")
    path = Path(root) / name
    if path.is_symlink() or not inside(root, path):
        raise MedagentError(f"{what} {name!r}: {path} is a symbolic link or resolves outside {root}")
    return path


def check_output(out: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output folder medagent must not write (or, existing, must not replace). Creates nothing."""
    if out.name in ("", ".", ".."):  # Path("") is Path("."): `-o ""` names the current folder too
        raise MedagentError(f"{out}: names the current folder or a parent of it; give the output a folder of its own, e.g. -o out/case1")
    try:
        os.lstat(out)
    except (FileNotFoundError, NotADirectoryError):
        pass  # nothing there yet (or a file on the way: creating it says so)
    except OSError as exc:  # a name too long, a link loop, no permission
        raise MedagentError(f"{out}: cannot be used as the output folder ({exc.strerror or exc.__class__.__name__})") from exc
    except ValueError as exc:
        raise MedagentError(f"{out!r}: the output path contains a NUL byte") from exc
    if out.is_symlink():
        raise MedagentError(f"{out}: is a symbolic link (to {os.readlink(out)}); medagent writes only into a folder it makes itself")
    target = out.resolve()
    as_written = Path(os.path.normpath(os.path.abspath(out))).resolve()
    if target != as_written:
        raise MedagentError(f"{out}: a '..' in it passes a symbolic link, so it resolves to {target}, not {as_written}; write the path without it")
    if Path.cwd().resolve().is_relative_to(target):
        raise MedagentError(f"{out}: is the current folder or a parent of it; give the output a folder of its own, e.g. -o out/case1")
    for source in inputs:
        if Path(source).resolve().is_relative_to(target):
            raise MedagentError(f"{out}: is (or holds) the input {source}; choose an output folder outside the input")
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise MedagentError(f"{out}: exists and is not a folder; choose another output folder")
    why_not = _not_replaceable(out)
    if why_not is not None:
        raise MedagentError(f"{out}: exists and {why_not}; --overwrite replaces only a folder medagent wrote, so choose another output folder")
    if not overwrite:
        raise MedagentError(f"{out}: output folder exists; pass --overwrite to replace it")


def _not_replaceable(folder: Path) -> str | None:
    """Why `folder` is not medagent's own output (None when it is, or when it is empty: nothing to lose)."""
    try:
        entries = set(os.listdir(folder))
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not entries:
        return None
    marker = folder / MARKER
    if marker.is_symlink() or not marker.is_file():
        return f"was not written by medagent (it has no {MARKER} marker)"
    try:
        written = json.loads(marker.read_text(encoding="utf-8"))["files"]
        if not isinstance(written, list) or not all(isinstance(name, str) for name in written):
            raise TypeError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return f"has a damaged {MARKER} marker"
    others = sorted(entries - set(written) - {MARKER})
    if others:
        return f"holds files medagent did not write ({', '.join(others[:3])}{', …' if len(others) > 3 else ''})"
    return None


def prepare_output(out: Path, overwrite: bool, inputs: Iterable[Path] = ()) -> Path:
    """Check `out` (see check_output), then make a fresh staging folder beside it; publish_output moves it into place."""
    check_output(out, overwrite, inputs)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.partial-{os.getpid()}-{int(time.time() * 1000)}"
        staging.mkdir()
    except OSError as exc:
        raise MedagentError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    _staging.add(staging)
    return staging


def abandon_staging() -> list[Path]:
    """Remove every staging folder this process made and did not publish (after an interrupt); returns them."""
    left = sorted(_staging)
    for staging in left:
        shutil.rmtree(staging, ignore_errors=True)
    _staging.clear()
    return left


def publish_output(staging: Path, out: Path, overwrite: bool, command: str) -> None:
    """Write the marker into `staging` and move it to `out`, replacing (with overwrite) medagent's own earlier output."""
    names = sorted(os.listdir(staging))
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    (staging / MARKER).write_text(json.dumps({"written_by": f"medagent {command}", "written": stamp, "files": names}, indent=2) + "\n", encoding="utf-8")
    try:
        if not os.path.lexists(out):
            staging.rename(out)
            _staging.discard(staging)
            return
        check_output(out, overwrite)  # again: the folder may have changed while the case ran
        replaced = out.parent / f".{out.name}.replaced-{os.getpid()}-{int(time.time() * 1000)}"
        out.rename(replaced)
        try:
            staging.rename(out)
            _staging.discard(staging)
        except OSError:
            replaced.rename(out)  # the earlier output stays as it was
            raise
    except OSError as exc:
        raise MedagentError(f"{out}: cannot move the output into place ({exc.strerror})") from exc
    shutil.rmtree(replaced)
