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
from medagent.tools.safeio import check_text, configure, console_safe, current, decode_utf8, read_limited, terminal_safe

ECHO_CHARS = 2_000  # a long turn is echoed shortened; the whole of it goes to the session




def run_chat(config: Path | None, session_id: str | None, case_file: Path | None, script: Path | None,
             list_only: bool, delete: str | None) -> int:
    from medagent.agent.chat import ChatSession
    from medagent.agent.sessions import delete_session, describe_session, list_sessions

    settings = load_settings(config)
    configure(settings.agent)
    console = Console(highlight=False)
    if list_only:
        for session in list_sessions(settings):
            console.print(terminal_safe(describe_session(session)), markup=False)
        return 0
    if delete is not None:  # `--delete ""` is refused as no session id, never taken for "no --delete"
        console.print(f"deleted session {delete} ({delete_session(settings, delete)})", markup=False)
        return 0
    if script is None and not sys.stdin.isatty():
        script = Path("-")
    lines = None
    if script is not None:
        text = _read_stdin() if str(script) == "-" else _read_script(script)
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]

    async def main() -> int:
        progress = lambda message: console.print(f"  [dim]{console_safe(message)}[/dim]")  # noqa: E731
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
                    shown = line if len(line) <= ECHO_CHARS else f"{line[:ECHO_CHARS]}… ({len(line):,} characters)"
                    console.print(f"[bold cyan]you>[/bold cyan] {console_safe(shown)}")
                else:
                    try:
                        line = await asyncio.to_thread(console.input, "[bold cyan]you>[/bold cyan] ")
                    except EOFError:
                        line = "/quit"
                try:
                    check_text(line, "this turn")  # too long, a NUL or a lone surrogate: refused before any work
                    reply = await session.say(line)
                except MedagentError as exc:
                    console.print(f"[red]error:[/red] {console_safe(' / '.join(str(exc).splitlines()))}")
                    if turns is not None:
                        continue
                    continue
                draft.end_turn()
                _show(console, reply)
                if reply.done:
                    return 0

    return asyncio.run(main())


def _read_script(path: Path) -> str:
    """A script of turns: an ordinary file within the case-file size limit, strict UTF-8."""
    return decode_utf8(read_limited(path, current().case_bytes, "script file"), str(path))


def _read_stdin() -> str:
    limit = current().case_bytes
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise MedagentError(f"the turns on standard input are over the limit of {limit // 2**20} MB ([agent] max_case_mb)")
    return decode_utf8(data, "standard input")


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
        self.console.print(terminal_safe(piece), end="", markup=False, highlight=False, soft_wrap=True)
        self.console.file.flush()

    def end_turn(self) -> None:
        if self.open and not self.line_start:
            self.console.print()
        self.open = False


def _show(console: Console, reply) -> None:
    if not reply.text:
        return
    if reply.text.startswith("# "):
        console.print(Markdown(terminal_safe(reply.text)))
    else:
        console.print(f"[bold green]medagent>[/bold green] {console_safe(reply.text)}")
    if reply.question:
        console.print(f"[bold green]medagent asks>[/bold green] {console_safe(reply.question)}")
