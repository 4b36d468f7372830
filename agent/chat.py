"""Chat consultations: multi-turn sessions on the same graph and tools as `solve`.

A session lives in its own folder under `<cache root>/sessions/<id>/`: `state.db` (LangGraph's SQLite
checkpointer, one thread per session), `files/` (copies of every attached file, so the session stands
alone), `artifacts/`, `trace.jsonl`, `turns.jsonl` (what was said) and `session.json`. A lock file
keeps a second process out. Deleting a session deletes its folder, and with it all its data.
"""

from __future__ import annotations

import enum
import fcntl
import inspect
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medagent.tools.config import Settings, cache_root
from medagent.tools.contracts import Attachment, AttachmentKind, Case, Evidence, Result
from medagent.tools.errors import CaseError, MedagentError
from medagent.tools.intake import intake
from medagent.tools.medio import sniff
from medagent.tools.paths import child, inside
from medagent.tools.payloads import LinkPayload

SESSION_ID = "^[A-Za-z0-9_-]{1,64}$"
COMMANDS = {
    "/attach PATH [kind] [modality]": "attach a file or DICOM folder (kind: image, volume, audio, pathology, document)",
    "/evidence": "list the evidence gathered so far",
    "/report": "the current differential and report",
    "/sessions": "list sessions",
    "/export [DIR]": "write report.md, result.json and trace.jsonl",
    "/help": "this list",
    "/quit": "leave (the session is saved; resume with --session ID)",
}


def sessions_root(settings: Settings) -> Path:
    return cache_root(settings) / "sessions"


def session_folder(settings: Settings, session_id: str) -> Path:
    """The folder of a session: `session_id` must be an id, never a path, and the folder stays in the sessions root."""
    if not re.fullmatch(SESSION_ID, session_id):
        raise MedagentError(f"{session_id!r} is not a session id (1-64 letters, digits, _ or -); medagent chat --list shows them")
    return child(sessions_root(settings), session_id, "session id")


class SessionMeta(BaseModel):
    """What session.json holds (other keys, such as the questions asked, are kept as they are)."""

    model_config = ConfigDict(extra="allow")
    id: str = ""
    created: str = ""
    updated: str = ""
    turns: int = 0
    case_id: str = ""
    attachments: list[str] = Field(default_factory=list)


def read_meta(folder: Path) -> tuple[dict[str, Any], str | None]:
    """A session's metadata, or what is wrong with its session.json (a damaged session is listed, never a crash)."""
    path = folder / "session.json"
    if path.is_symlink() or not path.is_file():
        return {}, "session.json is not a regular file"
    try:
        return SessionMeta.model_validate(json.loads(path.read_text(encoding="utf-8"))).model_dump(), None
    except OSError as exc:
        return {}, f"session.json cannot be read ({exc.strerror})"
    except UnicodeDecodeError:
        return {}, "session.json is not UTF-8 text"
    except json.JSONDecodeError:
        return {}, "session.json is not valid JSON"
    except ValidationError:
        return {}, "session.json does not hold a session's details"


def _serializer():
    """Checkpoint serializer that may rebuild exactly our contract types (and nothing else of ours)."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    from medagent.tools import contracts

    allowed = [
        (contracts.__name__, name)
        for name, value in vars(contracts).items()
        if inspect.isclass(value) and value.__module__ == contracts.__name__ and issubclass(value, (BaseModel, enum.Enum))
    ]
    return JsonPlusSerializer(allowed_msgpack_modules=allowed)


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
        sessions.append({**meta, "id": folder.name} if problem is None else {"id": folder.name, "damaged": problem})
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
    with _SessionLock(folder):
        shutil.rmtree(folder)
    return folder


class _SessionLock:
    """An exclusive, non-blocking lock on a session folder (released when the process dies)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "lock"
        self.handle = None

    def __enter__(self) -> _SessionLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        self.handle = self.path.open("a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            self.handle.close()
            self.handle = None
            raise MedagentError(f"session {self.path.parent.name} is open in another process; close it there first") from exc
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


@dataclass
class Reply:
    """What the assistant answers to one user turn."""

    text: str
    new_evidence: list[Evidence] = field(default_factory=list)
    question: str | None = None
    done: bool = False
    done_taking_history: bool = False


class ChatSession:
    """One open consultation. Use as a context manager: it holds the session lock while open."""

    def __init__(self, settings: Settings, session_id: str | None = None, case_file: Path | None = None,
                 on_progress: Callable[[str], None] | None = None, on_text: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.on_progress = on_progress
        self.on_text = on_text  # the LLM reporter's sentences, streamed as they are written
        self._loaded = None
        if session_id is None:
            if case_file is not None:  # a bad case is refused before the session folder exists
                self._loaded = intake(case_file, settings)
            session_id = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)
            self.folder = session_folder(settings, session_id)
            self.folder.mkdir(parents=True)
            self._new = True
        else:
            if case_file is not None:
                raise MedagentError("--case starts a new session; it cannot be combined with --session")
            self.folder = session_folder(settings, session_id)
            if not self.folder.is_dir() or not os.path.lexists(self.folder / "session.json"):
                known = ", ".join(s["id"] for s in list_sessions(settings)[:10]) or "none"
                raise MedagentError(f"no session '{session_id}' (recent sessions: {known})")
            problem = read_meta(self.folder)[1]
            if problem is not None:
                raise MedagentError(f"session {session_id} is damaged: {problem}; medagent chat --delete {session_id} removes it")
            self._new = False
        self.id = session_id
        self._lock = _SessionLock(self.folder)
        self._saver_cm = None
        self.graph = None
        self.interrupted = False

    # -- lifecycle -------------------------------------------------------------------------------
    async def __aenter__(self) -> ChatSession:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        from medagent.agent.graph import build_graph

        self._lock.acquire()
        try:
            (self.folder / "files").mkdir(exist_ok=True)
            self._saver_cm = AsyncSqliteSaver.from_conn_string(str(self.folder / "state.db"))
            saver = await self._saver_cm.__aenter__()
            saver.serde = _serializer()
            self.graph = build_graph(saver)
            if self._new:
                case = self._initial_case()
                self._write_meta(case)
                await self.graph.aupdate_state(self._config(), {"case": case, "case_dir": str(self.folder), "warnings": []}, as_node="report")
            snapshot = await self.graph.aget_state(self._config())
            self.interrupted = bool(snapshot.next)
        except BaseException:
            await self.__aexit__(None, None, None)
            if self._new:  # a session that could not be started leaves nothing behind
                shutil.rmtree(self.folder, ignore_errors=True)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._saver_cm is not None:
            await self._saver_cm.__aexit__(None, None, None)
            self._saver_cm = None
        self._lock.release()

    def _config(self, run: Any = None) -> dict[str, Any]:
        configurable: dict[str, Any] = {"thread_id": self.id}
        if run is not None:
            configurable["run"] = run
        return {"configurable": configurable, "recursion_limit": 4 * self.settings.agent.max_steps + 10}

    def _initial_case(self) -> Case:
        if self._loaded is None:
            return Case(id=f"chat-{self.id}", question="What is the most likely diagnosis?")
        attachments = [self._copy_in(self._loaded.case_dir / a.path, a) for a in self._loaded.case.attachments]
        return self._loaded.case.model_copy(update={"attachments": attachments})

    def _copy_in(self, source: Path, attachment: Attachment) -> Attachment:
        folder = child(self.folder / "files", attachment.id, "attachment id")
        target = folder / (source.name if source.name not in ("", "..") else source.resolve().name or "root")
        if not inside(folder, target):
            raise CaseError(f"{attachment.id}: {source} cannot be copied into the session: {target} resolves outside {folder}")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
        return attachment.model_copy(update={"path": str(target.relative_to(self.folder))})

    def _write_meta(self, case: Case, turn: bool = False) -> None:
        meta_path = self.folder / "session.json"
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {
            "id": self.id, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "turns": 0}
        meta["turns"] = meta.get("turns", 0) + (1 if turn else 0)
        meta.update(updated=datetime.now(timezone.utc).isoformat(timespec="seconds"), case_id=case.id,
                    attachments=[a.id for a in case.attachments])
        meta_path.write_text(json.dumps(meta, indent=2), encoding="utf-8")

    # -- state ------------------------------------------------------------------------------------
    async def state(self) -> dict[str, Any]:
        return (await self.graph.aget_state(self._config())).values

    async def evidence(self) -> list[Evidence]:
        return list((await self.state()).get("evidence", []))

    async def result(self) -> Result | None:
        return (await self.state()).get("result")

    async def case(self) -> Case:
        return (await self.state())["case"]

    # -- turns ------------------------------------------------------------------------------------
    def _log_turn(self, role: str, text: str, **extra: Any) -> None:
        with (self.folder / "turns.jsonl").open("a", encoding="utf-8") as handle:
            handle.write(json.dumps({"role": role, "text": text, "ts": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra}) + "\n")

    async def _run(self, update: dict[str, Any] | None) -> Result:
        from medagent.agent.api import make_planner, make_reporter, prepare_run
        from medagent.agent.state import RunContext
        from medagent.tools.trace import TraceRecorder

        case = (await self.state())["case"]
        trace = TraceRecorder(case.id, self.folder / "trace.jsonl")
        backend, settings, registry, notes = prepare_run(self.settings, on_progress=self.on_progress)
        run = RunContext(settings=settings, registry=registry, trace=trace,
                         artifacts_dir=self.folder / "artifacts", planner=make_planner(settings, trace, backend),
                         reporter=make_reporter(settings, trace, backend, self.on_text), on_progress=self.on_progress,
                         notes=notes)
        run.artifacts_dir.mkdir(exist_ok=True)
        try:
            # Checkpoint every node before moving on, so a killed process loses at most the node it was in.
            values = await self.graph.ainvoke(update, config=self._config(run), durability="sync")
        finally:
            trace.close()
            if backend is not None:
                await backend.aclose()
        self.interrupted = False
        self._write_meta(values["case"], turn=True)
        return values["result"]

    async def examine(self) -> Reply:
        """Run the graph over the case as it stands (a new session started from a case file)."""
        before = len(await self.evidence())
        return self._reply(await self._run({"warnings": []}), before, "Examined the case.")

    async def resume(self) -> Reply:
        """Finish a turn that a killed process left half-done, from its last checkpoint."""
        before = len(await self.evidence())
        result = await self._run(None)
        return self._reply(result, before, "Resumed the interrupted turn.")

    async def say(self, text: str) -> Reply:
        text = text.strip()
        if text.startswith("/"):
            return await self.command(text)
        if not text:
            return Reply(text="")
        self._log_turn("user", text)
        meta = self._meta()
        pending = meta.get("pending_question")
        sentence = None
        if pending:
            from medagent.agent.history_taking import Question, answer_to_history

            sentence = answer_to_history(text, Question(**pending))
        case = await self.case()
        addition = sentence or text
        history = f"{case.history}\n{addition}".strip() if case.history else addition
        before = len(await self.evidence())
        result = await self._run({"case": case.model_copy(update={"history": history}), "warnings": []})
        reply = self._reply(result, before)
        self._take_history(reply, result)
        self._log_turn("assistant", reply.text, evidence=[e.id for e in reply.new_evidence], question=reply.question)
        return reply

    def _meta(self) -> dict[str, Any]:
        return json.loads((self.folder / "session.json").read_text(encoding="utf-8"))

    def _save_meta(self, meta: dict[str, Any]) -> None:
        (self.folder / "session.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def _take_history(self, reply: Reply, result: Result) -> None:
        """Ask the one question that best separates the leading diagnoses, or say there is enough."""
        from medagent.agent.history_taking import enough, latest_ranking, next_question

        meta = self._meta()
        asked = meta.setdefault("asked", [])
        meta["pending_question"] = None
        ranking = latest_ranking(result.evidence)
        limit = self.settings.agent.max_questions
        if ranking is None:
            linked = any(e.tool == "knowledge.link" and not e.error and LinkPayload.of(e).present for e in result.evidence)
            if not linked and len(asked) < limit and "knowledge.link" in self._available_tools():
                reply.question = "Tell me more about the main complaint: what it is, since when, and what else you noticed."
                meta["asked"].append("open:complaint")
                self._log_turn("assistant", reply.question, kind="question", reason="no phenotype could be linked yet")
        elif (why := enough(ranking)) is not None:
            reply.text += "\n" + why
            reply.done_taking_history = True
        elif len(asked) >= limit:
            reply.text += f"\nI have asked {len(asked)} questions; concluding with the current differential [{ranking.id}]."
            reply.done_taking_history = True
        else:
            question = None
            try:
                from medagent.tools.knowledge import knowledge_graph

                question = next_question(knowledge_graph(self.settings), ranking, {a for a in asked if a.startswith("HP:")})
            except Exception as exc:  # history taking is an aid: its failure must not end the turn
                self._log_turn("assistant", "", kind="question_error", reason=f"{exc.__class__.__name__}: {exc}")
            if question is not None:
                reply.question = question.text
                meta["asked"].append(question.term)
                meta["pending_question"] = question.__dict__
                self._log_turn("assistant", question.text, kind="question", reason=question.reason, term=question.term)
        self._save_meta(meta)

    def _available_tools(self) -> set[str]:
        from medagent.tools.registry import Registry

        return {tool.name for tool in Registry(self.settings).available()}

    def _reply(self, result: Result, before: int, lead: str = "") -> Reply:
        new = result.evidence[before:]
        lines = [lead] if lead else []
        if new:
            lines.append("New evidence:")
            lines += [f"  [{e.id}] {'(error) ' if e.error else ''}{e.summary}" for e in new]
        else:
            lines.append("No new evidence from this turn.")
        flagged = [s for s in result.report.sentences if s.verdict.value not in ("supported", "not_checked")]
        if flagged:
            lines.append("Flagged report sentences (their cited evidence does not support them):")
            lines += [f"  ! {s.text} [{', '.join(s.citations) or 'no citation'}] ({s.verdict.value})" for s in flagged]
        if result.differential:
            lines.append("Differential so far:")
            lines += [f"  {c.rank}. {c.name} [{', '.join(c.evidence)}]" for c in result.differential[:5]]
        else:
            lines.append(result.differential_note)
        return Reply(text="\n".join(line for line in lines if line), new_evidence=new)

    async def attach(self, path: Path, kind: str | None = None, modality: str | None = None, description: str | None = None) -> Reply:
        path = path.expanduser()
        try:
            info = sniff(path)  # refuses a FIFO, a device, a link loop... before anything opens it
        except CaseError as exc:
            raise CaseError(f"/attach: {exc}") from exc
        try:
            chosen = AttachmentKind(kind) if kind else AttachmentKind(info.kind_hint)
        except ValueError as exc:
            raise CaseError(f"/attach: unknown kind '{kind}' (use image, volume, audio, pathology or document)") from exc
        case = await self.case()
        number = len(case.attachments) + 1
        attachment_id = f"a{number}"
        while case.attachment(attachment_id) is not None:
            number += 1
            attachment_id = f"a{number}"
        attachment = self._copy_in(path, Attachment(id=attachment_id, kind=chosen, path=path.name, modality=modality, description=description))
        candidate = case.model_copy(update={"attachments": [*case.attachments, attachment]})
        try:
            loaded = intake(candidate, self.settings, self.folder)
        except CaseError:
            shutil.rmtree(self.folder / "files" / attachment_id, ignore_errors=True)
            raise
        self._log_turn("user", f"/attach {path.name} as {attachment_id} ({chosen.value})")
        before = len(await self.evidence())
        result = await self._run({"case": loaded.case, "warnings": loaded.warnings})
        reply = self._reply(result, before, f"Attached {path.name} as {attachment_id} ({chosen.value}{', ' + loaded.case.attachments[-1].modality if loaded.case.attachments[-1].modality else ''}).")
        self._log_turn("assistant", reply.text, evidence=[e.id for e in reply.new_evidence])
        return reply

    async def export(self, out: Path) -> Path:
        from medagent.agent.outputs import output_folder, write_outputs

        result = await self.result()
        if result is None:
            raise MedagentError("nothing to export yet: say something or attach a file first")
        # Exporting again replaces an earlier export; a folder medagent did not write is refused, never merged into.
        with output_folder(out, True, [self.folder], "chat /export") as staging:
            if (self.folder / "trace.jsonl").exists():
                shutil.copy(self.folder / "trace.jsonl", staging / "trace.jsonl")
            if (self.folder / "artifacts").exists():
                shutil.copytree(self.folder / "artifacts", staging / "artifacts")
            write_outputs(staging, result, await self.case())
        return out

    async def command(self, line: str) -> Reply:
        import shlex

        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise MedagentError(f"{line}: {exc}") from exc
        name, args = words[0], words[1:]
        if name == "/attach":
            if not args:
                raise MedagentError("/attach needs a path: /attach PATH [kind] [modality]")
            return await self.attach(Path(args[0]), *(args[1:3]))
        if name == "/evidence":
            evidence = await self.evidence()
            if not evidence:
                return Reply(text="No evidence yet.")
            return Reply(text="Evidence so far:\n" + "\n".join(f"[{e.id}] {e.tool} {e.attachment or ''}: {'(error) ' if e.error else ''}{e.summary}" for e in evidence))
        if name == "/report":
            from medagent.agent.render import render_markdown

            result = await self.result()
            return Reply(text=render_markdown(result, await self.case()) if result else "No report yet.")
        if name == "/sessions":
            return Reply(text="\n".join(describe_session(s) for s in list_sessions(self.settings)) or "No sessions.")
        if name == "/export":
            target = Path(args[0]) if args else Path("out") / f"session-{self.id}"
            return Reply(text=f"Exported to {await self.export(target)}")
        if name == "/help":
            return Reply(text="\n".join(f"{k:32} {v}" for k, v in COMMANDS.items()))
        if name in ("/quit", "/exit"):
            return Reply(text=f"Session {self.id} saved. Resume with: medagent chat --session {self.id}", done=True)
        raise MedagentError(f"unknown command {name}; /help lists them")

