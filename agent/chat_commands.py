"""Chat's slash commands: `/attach`, `/evidence`, `/report`, `/sessions`, `/export`, `/help`, `/quit`."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

from medagent.agent.sessions import describe_session, list_sessions
from medagent.tools.errors import MedagentError

if TYPE_CHECKING:
    from medagent.agent.chat import ChatSession, Reply

COMMANDS = {
    "/attach PATH [kind] [modality]": "attach a file or DICOM folder (kind: image, volume, audio, pathology, document)",
    "/evidence": "list the evidence gathered so far",
    "/report": "the current differential and report",
    "/sessions": "list sessions",
    "/export [DIR]": "write report.md, result.json and trace.jsonl",
    "/help": "this list",
    "/quit": "leave (the session is saved; resume with --session ID)",
}


async def run_command(session: ChatSession, line: str) -> Reply:
    """One slash command on an open session; an unknown or malformed one is a MedagentError naming it."""
    from medagent.agent.chat import Reply

    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise MedagentError(f"{line}: {exc}") from exc
    name, args = words[0], words[1:]
    if name == "/attach":
        if not args:
            raise MedagentError("/attach needs a path: /attach PATH [kind] [modality]")
        return await session.attach(Path(args[0]), *(args[1:3]))
    if name == "/evidence":
        evidence = await session.evidence()
        if not evidence:
            return Reply(text="No evidence yet.")
        return Reply(text="Evidence so far:\n" + "\n".join(
            f"[{e.id}] {e.tool} {e.attachment or ''}: {'(error) ' if e.error else ''}{e.summary}" for e in evidence))
    if name == "/report":
        from medagent.agent.render import render_markdown

        result = await session.result()
        return Reply(text=render_markdown(result, await session.case()) if result else "No report yet.")
    if name == "/sessions":
        return Reply(text="\n".join(describe_session(s) for s in list_sessions(session.settings)) or "No sessions.")
    if name == "/export":
        target = Path(args[0]) if args else Path("out") / f"session-{session.id}"
        return Reply(text=f"Exported to {await session.export(target)}")
    if name == "/help":
        return Reply(text="\n".join(f"{k:32} {v}" for k, v in COMMANDS.items()))
    if name in ("/quit", "/exit"):
        return Reply(text=f"Session {session.id} saved. Resume with: medagent chat --session {session.id}", done=True)
    raise MedagentError(f"unknown command {name}; /help lists them")
