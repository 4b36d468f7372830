"""Chat consultations: the conversation loop, multi-turn sessions on the same graph and tools as `solve`.

The session store (folders, typed session.json, lock) is agent/sessions.py; the slash commands are
agent/chat_commands.py; history taking (which question to ask next) is agent/history_taking.py.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medagent.agent.chat_commands import run_command
from medagent.agent.sessions import (
    AskedQuestion,
    SessionLock,
    SessionMeta,
    checkpoint_serializer,
    list_sessions,
    now,
    read_meta,
    run_unfinished,
    session_folder,
    write_meta,
)
from medagent.tools.config import Settings
from medagent.tools.contracts import Attachment, AttachmentKind, Case, Evidence, Result
from medagent.tools.errors import CaseError, MedagentError
from medagent.tools.intake import intake
from medagent.tools.medio import sniff
from medagent.tools.paths import child, inside
from medagent.tools.payloads import LinkPayload
from medagent.tools.pool import ModelPool
from medagent.tools.trace import TraceEvent


@dataclass
class Reply:
    """What the assistant answers to one user turn."""

    text: str
    new_evidence: list[Evidence] = field(default_factory=list)
    question: str | None = None
    done: bool = False
    done_taking_history: bool = False


class ChatSession:
    """One open consultation. Use as a context manager: it holds the session lock while open. Its turns load
    models into `pool` (a process serving many sessions passes one); without one the session's own pool is
    closed when the session closes."""

    def __init__(self, settings: Settings, session_id: str | None = None, case_file: Path | None = None,
                 on_progress: Callable[[str], None] | None = None, on_text: Callable[[str], None] | None = None,
                 pool: ModelPool | None = None, on_event: Callable[[TraceEvent], None] | None = None) -> None:
        self.settings = settings
        self._own_pool = pool is None
        self.pool = pool if pool is not None else ModelPool()
        self.on_progress = on_progress
        self.on_text = on_text  # the LLM reporter's sentences, streamed as they are written
        self.on_event = on_event  # every trace event of a turn, as it is recorded
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
        self._lock = SessionLock(self.folder)
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
            saver.serde = checkpoint_serializer()
            self.graph = build_graph(saver)
            if self._new:
                case = self._initial_case()
                self._write_meta(case)
                await self.graph.aupdate_state(self._config(), {"case": case, "case_dir": str(self.folder), "warnings": []}, as_node="report")
            snapshot = await self.graph.aget_state(self._config())
            self.interrupted = run_unfinished(snapshot)
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
        if self._own_pool:
            self.pool.close()
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
        meta = self._meta() if os.path.lexists(self.folder / "session.json") else SessionMeta(id=self.id, created=now())
        meta.turns += 1 if turn else 0
        meta.updated, meta.case_id, meta.attachments = now(), case.id, [a.id for a in case.attachments]
        write_meta(self.folder, meta)

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
        from medagent.agent.api import make_run, record_models
        from medagent.tools.trace import TraceRecorder

        case = (await self.state())["case"]
        trace = TraceRecorder(case.id, self.folder / "trace.jsonl", on_event=self.on_event)
        run, backend = make_run(self.settings, trace, self.folder / "artifacts", on_progress=self.on_progress,
                                on_text=self.on_text, pool=self.pool)
        try:
            # Checkpoint every node before moving on, so a killed process loses at most the node it was in.
            values = await self.graph.ainvoke(update, config=self._config(run), durability="sync")
        finally:
            record_models(trace, self.pool, shared=True)  # the session's pool outlives the turn
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
        pending = self._meta().pending_question
        sentence = None
        if pending is not None:
            from medagent.agent.history_taking import Question, answer_to_history

            sentence = answer_to_history(text, Question(**pending.model_dump()))
        case = await self.case()
        addition = sentence or text
        history = f"{case.history}\n{addition}".strip() if case.history else addition
        before = len(await self.evidence())
        result = await self._run({"case": case.model_copy(update={"history": history}), "warnings": []})
        reply = self._reply(result, before)
        self._take_history(reply, result)
        self._log_turn("assistant", reply.text, evidence=[e.id for e in reply.new_evidence], question=reply.question)
        return reply

    def _meta(self) -> SessionMeta:
        meta, problem = read_meta(self.folder)
        if meta is None:
            raise MedagentError(f"session {self.id} is damaged: {problem}; medagent chat --delete {self.id} removes it")
        return meta

    def _take_history(self, reply: Reply, result: Result) -> None:
        """Ask the one question that best separates the leading diagnoses, or say there is enough."""
        from medagent.agent.history_taking import enough, latest_ranking, next_question

        meta = self._meta()
        asked = meta.asked
        meta.pending_question = None
        ranking = latest_ranking(result.evidence)
        limit = self.settings.agent.max_questions
        if ranking is None:
            linked = any(e.tool == "knowledge.link" and not e.error and LinkPayload.of(e).present for e in result.evidence)
            if not linked and len(asked) < limit and "knowledge.link" in self._available_tools():
                reply.question = "Tell me more about the main complaint: what it is, since when, and what else you noticed."
                asked.append("open:complaint")
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

                question = next_question(knowledge_graph(self.settings, self.pool), ranking, {a for a in asked if a.startswith("HP:")})
            except Exception as exc:  # history taking is an aid: its failure must not end the turn
                self._log_turn("assistant", "", kind="question_error", reason=f"{exc.__class__.__name__}: {exc}")
            if question is not None:
                reply.question = question.text
                asked.append(question.term)
                meta.pending_question = AskedQuestion(**question.__dict__)
                self._log_turn("assistant", question.text, kind="question", reason=question.reason, term=question.term)
        write_meta(self.folder, meta)

    def _available_tools(self) -> set[str]:
        from medagent.agent.api import placed_tools
        from medagent.tools.registry import Registry

        return {tool.name for tool in Registry(self.settings, placed_tools(self.settings), pool=self.pool).available()}

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
        return await run_command(self, line)
