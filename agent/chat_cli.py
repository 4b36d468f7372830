"""The terminal side of `medagent chat`: interactive (rich) or scripted (turns from a file or stdin)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from rich.console import Console
from rich.markdown import Markdown

from medagent.tools.config import load_settings
from medagent.tools.contracts import RESEARCH_NOTICE
from medagent.tools.errors import MedagentError


def run_chat(config: Path | None, session_id: str | None, case_file: Path | None, script: Path | None,
             list_only: bool, delete: str | None) -> int:
    from medagent.agent.chat import ChatSession, delete_session, describe_session, list_sessions

    settings = load_settings(config)
    console = Console(highlight=False)
    if list_only:
        for session in list_sessions(settings):
            console.print(describe_session(session), markup=False)
        return 0
    if delete is not None:  # `--delete ""` is refused as no session id, never taken for "no --delete"
        console.print(f"deleted session {delete} ({delete_session(settings, delete)})")
        return 0
    if script is None and not sys.stdin.isatty():
        script = Path("-")
    lines = None
    if script is not None:
        text = sys.stdin.read() if str(script) == "-" else _read_script(script)
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    async def main() -> int:
        progress = lambda message: console.print(f"  [dim]{message}[/dim]")  # noqa: E731
        draft = _DraftWriter(console)
        async with ChatSession(settings, session_id, case_file, on_progress=progress, on_text=draft) as session:
            console.print(f"[bold]medagent chat[/bold] — session {session.id}. /help lists commands. [dim]{RESEARCH_NOTICE}[/dim]")
            if session.interrupted:
                console.print("The last turn was interrupted; finishing it from its last checkpoint.")
                reply = await session.resume()
                draft.end_turn()
                _show(console, reply)
            elif case_file is not None:
                reply = await session.examine()
                draft.end_turn()
                _show(console, reply)
            turns = iter(lines) if lines is not None else None
            while True:
                if turns is not None:
                    line = next(turns, None)
                    if line is None:
                        console.print(f"Session {session.id} saved. Resume with: medagent chat --session {session.id}")
                        return 0
                    console.print(f"[bold cyan]you>[/bold cyan] {line}")
                else:
                    try:
                        line = await asyncio.to_thread(console.input, "[bold cyan]you>[/bold cyan] ")
                    except EOFError:
                        line = "/quit"
                try:
                    reply = await session.say(line)
                except MedagentError as exc:
                    console.print(f"[red]error:[/red] {exc}")
                    if turns is not None:
                        continue
                    continue
                draft.end_turn()
                _show(console, reply)
                if reply.done:
                    return 0

    return asyncio.run(main())


def _read_script(path: Path) -> str:
    if not path.is_file():
        raise MedagentError(f"{path}: script file not found")
    return path.read_text(encoding="utf-8")


class _DraftWriter:
    """Prints the LLM reporter's sentences as they are decoded, one per line; grounding verdicts follow in the reply."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.open = False  # the draft header was printed this turn
        self.line_start = True

    def __call__(self, piece: str) -> None:
        if not self.open:
            self.console.print("[bold green]medagent (draft report, checked below)>[/bold green]")
            self.open, self.line_start = True, True
        if piece == "\n":
            if not self.line_start:
                self.console.print()
            self.line_start = True
            return
        if self.line_start:
            self.console.print("  ", end="")
            self.line_start = False
        self.console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def end_turn(self) -> None:
        if self.open and not self.line_start:
            self.console.print()
        self.open = False


def _show(console: Console, reply) -> None:
    if not reply.text:
        return
    if reply.text.startswith("# "):
        console.print(Markdown(reply.text))
    else:
        console.print(f"[bold green]medagent>[/bold green] {reply.text}")
    if reply.question:
        console.print(f"[bold green]medagent asks>[/bold green] {reply.question}")
