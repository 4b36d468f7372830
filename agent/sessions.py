"""The session store of chat consultations: where sessions live, their typed metadata, the lock.

A session lives in its own folder under `<cache root>/sessions/<id>/`: `state.db` (LangGraph's SQLite
checkpointer, one thread per session), `files/` (copies of every attached file, so the session stands
alone), `artifacts/`, `trace.jsonl`, `turns.jsonl` (what was said) and `session.json` (SessionMeta). A
lock file keeps a second process out. Deleting a session deletes its folder, and with it all its data.
"""

from __future__ import annotations

import enum
import fcntl
import inspect
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medagent.tools.config import Settings, cache_root
from medagent.tools.errors import MedagentError
from medagent.tools.paths import child

SESSION_ID = "^[A-Za-z0-9_-]{1,64}$"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sessions_root(settings: Settings) -> Path:
    return cache_root(settings) / "sessions"


def session_folder(settings: Settings, session_id: str) -> Path:
    """The folder of a session: `session_id` must be an id, never a path, and the folder stays in the sessions root."""
    if not re.fullmatch(SESSION_ID, session_id):
        raise MedagentError(f"{session_id!r} is not a session id (1-64 letters, digits, _ or -); medagent chat --list shows them")
    return child(sessions_root(settings), session_id, "session id")


class AskedQuestion(BaseModel):
    """A history question waiting for its answer (agent/history_taking.py Question)."""

    text: str
    reason: str
    term: str | None = None
    label: str | None = None


class SessionMeta(BaseModel):
    """What session.json holds. Unknown keys (from a newer medagent) are kept as they are."""

    model_config = ConfigDict(extra="allow")
    id: str = ""
    created: str = ""
    updated: str = ""
    turns: int = 0
    case_id: str = ""
    attachments: list[str] = Field(default_factory=list)
    asked: list[str] = Field(default_factory=list, description="HPO ids (or 'open:...') asked about, in order")
    pending_question: AskedQuestion | None = None


def read_meta(folder: Path) -> tuple[SessionMeta | None, str | None]:
    """A session's metadata, or what is wrong with its session.json (a damaged session is listed, never a crash)."""
    path = folder / "session.json"
    if path.is_symlink() or not path.is_file():
        return None, "session.json is not a regular file"
    try:
        return SessionMeta.model_validate(json.loads(path.read_text(encoding="utf-8"))), None
    except OSError as exc:
        return None, f"session.json cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        return None, "session.json is not UTF-8 text"
    except json.JSONDecodeError:
        return None, "session.json is not valid JSON"
    except ValidationError:
        return None, "session.json does not hold a session's details"


def write_meta(folder: Path, meta: SessionMeta) -> None:
    """session.json, replaced whole (a killed process leaves the old one, never half a file)."""
    partial = folder / "session.json.partial"
    partial.write_text(meta.model_dump_json(indent=2), encoding="utf-8")
    partial.replace(folder / "session.json")


def checkpoint_serializer():  # noqa: ANN201 - JsonPlusSerializer
    """Checkpoint serializer that may rebuild exactly our contract types (and nothing else of ours)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from medagent.tools import contracts

    allowed = [
        (contracts.__name__, name)
        for name, value in vars(contracts).items()
        if inspect.isclass(value) and value.__module__ == contracts.__name__ and issubclass(value, (BaseModel, enum.Enum))
    ]
    return JsonPlusSerializer(allowed_msgpack_modules=allowed)


def run_unfinished(snapshot) -> bool:  # noqa: ANN001 - langgraph StateSnapshot
    """True when a checkpointed run has more to do. `next` alone is not enough: a process killed after a
    node's writes were saved but before the next checkpoint leaves `next` empty with that node among
    `tasks` (its writes pending); invoking with None applies them and goes on."""
    return bool(snapshot.next or snapshot.tasks)


def list_sessions(settings: Settings) -> list[dict[str, Any]]:
    """The sessions in the sessions root, newest first; one whose session.json is unusable has a `damaged` reason."""
    root = sessions_root(settings)
    sessions = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.is_symlink() or not folder.is_dir() or not re.fullmatch(SESSION_ID, folder.name):
            continue  # not a folder medagent made for a session
        if not os.path.lexists(folder / "session.json"):
            continue
        meta, problem = read_meta(folder)
        sessions.append({**meta.model_dump(), "id": folder.name} if meta is not None else {"id": folder.name, "damaged": problem})
    return sorted(sessions, key=lambda s: s.get("updated", ""), reverse=True)


def describe_session(session: dict[str, Any]) -> str:
    """One line of `chat --list` and `/sessions`."""
    if "damaged" in session:
        return f"{session['id']}  damaged: {session['damaged']} (medagent chat --delete {session['id']} removes it)"
    return (f"{session['id']}  {session['turns']} turns  updated {session['updated']}  case {session['case_id']}  "
            f"attachments: {', '.join(session['attachments']) or '-'}")


def delete_session(settings: Settings, session_id: str) -> Path:
    folder = session_folder(settings, session_id)
    if not folder.is_dir() or not os.path.lexists(folder / "session.json"):
        raise MedagentError(f"no session '{session_id}' in {sessions_root(settings)}")
    with SessionLock(folder):
        shutil.rmtree(folder)
    return folder


class SessionBusy(MedagentError):
    """Another process (or another client of the server) has the session open (HTTP 409)."""


class SessionLock:
    """An exclusive, non-blocking lock on a session (or job) folder, released when the process dies."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "lock"
        self.handle = None

    def __enter__(self) -> SessionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if not self.try_acquire():
            raise SessionBusy(f"session {self.path.parent.name} is open in another process or client; close it there first")

    def try_acquire(self) -> bool:
        """Take the lock if no process holds it (the service's job folders use the same lock)."""
        self.handle = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            self.handle = None
            return False
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return True

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None
