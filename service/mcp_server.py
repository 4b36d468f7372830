"""`medagent mcp`: the engine's tools, and whole solves, for any MCP client (stdio or streamable HTTP).

Every available tool of the registry becomes an MCP tool under its own name (`knowledge.link`: the MCP spec,
SEP-986, allows letters, digits, `_`, `-` and `.`, so no mapping is needed) with its own JSON Schema plus one
argument, `case_path`: the case.json the tool examines, read and resolved by the same intake as
`medagent solve`. A call runs through the engine's one execution path (agent/execute.py `execute`: argument
and attachment checks, prechecks, the per-tool timeout, crash -> error evidence, numbering, trace), so an MCP
call and a solve can never disagree about what a tool accepts. `solve_case` runs the whole graph
(agent/api.py `asolve`). Models load once per server process, into the process pool (`process_pool()`).

Bad input (no such case file, an invalid case, an attachment the case does not have, a rejected argument) is
an MCP tool error (isError) with one line saying what is wrong; the server keeps serving.

The HTTP transport binds loopback unless a token is configured; with a token every request must carry
`Authorization: Bearer <token>` (a small ASGI gate in front of the SDK's app, because the SDK's own auth is
OAuth, which a local research tool does not need).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import shutil
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from medagent.service.access import api_token, is_loopback
from medagent.tools.config import Settings
from medagent.tools.contracts import RESEARCH_NOTICE, Case, ToolCall
from medagent.tools.errors import ConfigError, MedagentError
from medagent.tools.registry import Registry, Tool
from medagent.tools.safeio import one_line  # errors reach the client as one line, as the CLI prints them

log = logging.getLogger("medagent.mcp")

SOLVE_TOOL = "solve_case"
CASE_PATH = "case_path"
DEFAULT_PORT = 8001  # beside `medagent serve`'s 8000, so both can run at once
HTTP_PATH = "/mcp"

INSTRUCTIONS = (
    f"{RESEARCH_NOTICE} "
    "medagent examines clinical cases: a case.json on the server's machine with its history, findings, coded "
    "phenotypes and attachments (images, volumes, audio, pathology). Each tool takes its own arguments plus "
    f"`{CASE_PATH}`, the path of that case.json (absolute, or relative to the server's working folder); "
    "attachment ids name the case's attachments. A tool returns its evidence as JSON (summary, payload, "
    f"artifacts, error). `{SOLVE_TOOL}` runs the whole agent on a case and returns its result.json."
)

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------- the tools


class McpTools:
    """The server's tool table and the calls behind it; knows nothing of the transport."""

    def __init__(self, settings: Settings) -> None:
        from medagent.agent.api import placed_tools, process_pool

        self.settings = settings
        self.pool = process_pool()  # models load once per server process and stay for the next call
        self.registry = Registry(settings, placed_tools(settings), pool=self.pool)  # [serve] remote_tools on Ray
        # MCP names are the medagent names: SEP-986 allows dots, so `knowledge.link` needs no mapping.
        self.tools: dict[str, Tool] = {t.name: t for t in self.registry.available()}
        self._limit: asyncio.Semaphore | None = None  # made on the server's loop, on first use

    # ---- listing

    def listing(self) -> list[Any]:
        """MCP tool definitions: each available tool with its schema plus `case_path`, then `solve_case`."""
        import mcp.types as types

        hints = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
        listed = [types.Tool(name=name, description=self._describe(tool), input_schema=self._schema(tool),
                             annotations=hints) for name, tool in self.tools.items()]
        listed.append(types.Tool(
            name=SOLVE_TOOL,
            description=(
                "Run the whole medagent agent on one case (plan, examine every attachment, rank diagnoses, write a "
                "report with evidence ids) and return result.json: differential, findings, report, evidence E1..., "
                f"calls, timings. The full output folder (result.json, report.md, trace.jsonl, artifacts/) is kept "
                f"under the server's cache and named in the reply. {RESEARCH_NOTICE}"
            ),
            input_schema={
                "type": "object",
                "properties": {CASE_PATH: self._case_path_schema(required=True)},
                "required": [CASE_PATH],
                "additionalProperties": False,
            },
            annotations=hints,
        ))
        return listed

    @staticmethod
    def _case_path_schema(required: bool) -> Json:
        need = "required" if required else "optional: without it the tool runs on an empty case"
        return {
            "type": "string",
            "description": (f"Path of a case.json on the server's machine (absolute, or relative to the server's working "
                            f"folder); its attachments are resolved beside it, as `medagent solve` does ({need})"),
        }

    def _schema(self, tool: Tool) -> Json:
        schema = json.loads(json.dumps(tool.args.model_json_schema()))  # a copy: the SDK may not own ours
        properties = schema.setdefault("properties", {})
        if CASE_PATH in properties:  # a tool argument of that name would be shadowed: refuse at startup
            raise ConfigError(f"tool {tool.name} has an argument named {CASE_PATH!r}, which the MCP server reserves")
        needs_case = bool(tool.attachment_kinds)
        properties[CASE_PATH] = self._case_path_schema(needs_case)
        if needs_case:
            schema["required"] = [*schema.get("required", []), CASE_PATH]
        return schema

    @staticmethod
    def _describe(tool: Tool) -> str:
        kinds = ", ".join(k.value for k in tool.attachment_kinds)
        if tool.modalities:
            kinds += f" ({', '.join(tool.modalities)})"
        examines = (f"Examines {kinds} attachments: give `{CASE_PATH}` and the attachment id."
                    if kinds else f"Takes no attachment; `{CASE_PATH}` is optional (the case the call is about).")
        return (f"{tool.purpose} {examines} Returns JSON: the evidence items (summary, payload, artifacts, error) and "
                f"the folder holding the call's trace and any artifacts. {RESEARCH_NOTICE}")

    # ---- calling

    async def call(self, name: str, arguments: Json | None) -> Any:
        """One tools/call: the JSON reply, or an error result with one line. Never raises: a bad call must not
        take the server down, and an internal error is reported to the caller and logged here with its traceback."""
        import mcp.types as types

        if self._limit is None:
            self._limit = asyncio.Semaphore(self.settings.serve.max_concurrent_jobs)
        arguments = dict(arguments or {})
        try:
            if name == SOLVE_TOOL:
                work: Callable[[], Coroutine[Any, Any, Json]] = lambda: self._solve(arguments)  # noqa: E731
            elif name in self.tools:
                work = lambda: self._run_tool(self.tools[name], arguments)  # noqa: E731
            else:
                known = ", ".join([*self.tools, SOLVE_TOOL])
                raise MedagentError(f"unknown tool '{name}' (tools: {known})")
            async with self._limit:
                reply = await _in_own_loop(work)
        except MedagentError as exc:
            return _error_result(one_line(str(exc)))
        except Exception as exc:  # noqa: BLE001 - a bug in one call is that call's error, not the server's end
            log.exception("tool %s failed", name)
            return _error_result(one_line(f"{name}: internal error ({exc.__class__.__name__}: {exc})"))
        failed = bool(reply.pop("_failed", False))
        text = json.dumps(reply, ensure_ascii=False)
        return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=reply, is_error=failed)

    def _case_file(self, arguments: Json, required: bool, what: str) -> Path | None:
        """The case.json `case_path` names (taken out of the tool's own arguments), checked to exist."""
        path = arguments.pop(CASE_PATH, None)
        if path is None:
            if required:
                raise MedagentError(f"{what}: {CASE_PATH} is required (the path of a case.json on the server's machine)")
            return None
        if not isinstance(path, str) or not path.strip():
            raise MedagentError(f"{what}: {CASE_PATH} must be the path of a case.json, got {path!r}")
        case_file = Path(path).expanduser()
        if not case_file.exists():
            raise MedagentError(f"{what}: case file {case_file}: not found")
        return case_file.resolve()

    async def _run_tool(self, tool: Tool, arguments: Json) -> Json:
        """One scripted call through `execute`, with the rules in charge: no LLM backend opens for a tool call,
        so a configured LLM neither loads nor answers here (the MCP client is the one planning)."""
        from medagent.agent.api import make_run
        from medagent.agent.execute import execute
        from medagent.tools.intake import intake
        from medagent.tools.trace import TraceRecorder

        case_file = self._case_file(arguments, bool(tool.attachment_kinds), tool.name)
        # The intake every entry point uses (limits, validation, attachments resolved beside the case file).
        loaded = intake(case_file, self.settings) if case_file else intake(Case(id="mcp-call"), self.settings, Path.cwd())
        settings = self.settings.model_copy(deep=True)
        settings.agent.planner = "rule"
        folder = self._output_folder(tool.name)
        trace = TraceRecorder(loaded.case.id, folder / "trace.jsonl")
        try:
            run, _ = make_run(settings, trace, folder / "artifacts", pool=self.pool, coverage_guard=False)
            call = ToolCall(call_id="C1", tool=tool.name, arguments=arguments, reason="MCP client call")
            batch = await execute(run, loaded.case, loaded.case_dir, [call], [], [])
        finally:
            trace.close()
        artifacts = folder / "artifacts"
        if artifacts.is_dir() and not any(artifacts.iterdir()):
            artifacts.rmdir()
        if batch.rejected:  # bad arguments, an unknown attachment, an unavailable tool: the caller's to fix
            shutil.rmtree(folder, ignore_errors=True)
            raise MedagentError(batch.rejected[0].reason)
        return {
            "tool": tool.name,
            "case_id": loaded.case.id,
            "evidence": [e.model_dump(mode="json") for e in batch.evidence],
            "output_dir": str(folder),  # artifact paths are relative to it
            "notes": [*run.notes, *loaded.warnings],
            "notice": RESEARCH_NOTICE,
            "_failed": bool(batch.evidence) and all(e.error for e in batch.evidence),
        }

    async def _solve(self, arguments: Json) -> Json:
        """The whole agent on one case, as `medagent solve -o` runs it; the reply is result.json's content."""
        from medagent.agent.api import asolve

        case_file = self._case_file(arguments, True, SOLVE_TOOL)
        if arguments:
            raise MedagentError(f"{SOLVE_TOOL}: unknown argument '{next(iter(arguments))}' (it takes only {CASE_PATH})")
        out = self._output_folder("solve", create=False)  # asolve publishes the folder itself, once the case is valid
        result = await asolve(case_file, settings=self.settings, out=out, pool=self.pool)
        reply = result.model_dump(mode="json")
        reply["output_dir"] = str(out)
        return reply

    def _output_folder(self, what: str, create: bool = True) -> Path:
        """A fresh folder under <cache>/mcp/ for one call's trace and artifacts; the oldest beyond
        [serve] keep_jobs are deleted, so a long-running server does not fill the disk."""
        root = self.settings.cache_root / "mcp"
        folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}-{what}"
        root.mkdir(parents=True, exist_ok=True)
        if create:
            folder.mkdir()
        kept = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        for old in kept[: max(0, len(kept) - self.settings.serve.keep_jobs)]:
            shutil.rmtree(old, ignore_errors=True)
        return folder


async def _in_own_loop(work: Callable[[], Coroutine[Any, Any, Json]]) -> Json:
    """Run one call's engine work on its own event loop in a worker thread. The engine does blocking work on its
    loop (prechecks load models, the rule planner and reporter are synchronous); here that must not stall the
    server's loop, which answers other clients and pings meanwhile."""
    return await asyncio.to_thread(lambda: asyncio.run(work()))


def _error_result(line: str) -> Any:
    import mcp.types as types

    return types.CallToolResult(content=[types.TextContent(text=line)], is_error=True)


# ---------------------------------------------------------------------------------------------- the server


def build_server(settings: Settings) -> Any:
    """The low-level MCP server over `McpTools` (the low-level API, because the tools' schemas exist already:
    MCPServer would derive them again from Python signatures)."""
    import mcp.types as types
    from mcp.server import Server

    tools = McpTools(settings)
    listing = tools.listing()
    schemas = {t.name: t.input_schema for t in listing}

    async def on_list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def on_call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await tools.call(params.name, params.arguments)

    server = Server(
        "medagent",
        version=_version(),
        title="medagent (research use only, not a medical device)",
        description=f"medagent's clinical-case tools. {RESEARCH_NOTICE}",
        instructions=INSTRUCTIONS,
        get_tool_input_schema=schemas.get,
        on_list_tools=on_list_tools,
        on_call_tool=on_call_tool,
    )
    return server


def _version() -> str:
    import importlib.metadata as metadata

    try:
        return metadata.version("medagent")
    except metadata.PackageNotFoundError:
        return "dev"


class BearerGate:
    """ASGI middleware: every HTTP request must carry `Authorization: Bearer <token>`, else 401.
    Compared in constant time, so the token cannot be guessed byte by byte from response times."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Json, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if hmac.compare_digest(given, self.expected):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or wrong bearer token: send Authorization: Bearer <token>"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="medagent"')]})
        await send({"type": "http.response.body", "body": body})


def http_app(settings: Settings, host: str, token: str | None) -> Any:
    """The streamable-HTTP ASGI app at /mcp (behind the bearer gate when a token is set). On loopback the SDK
    also checks Host and Origin headers, so a web page cannot reach the server through DNS rebinding."""
    app = build_server(settings).streamable_http_app(streamable_http_path=HTTP_PATH, host=host)
    return BearerGate(app, token) if token else app


def check_binding(settings: Settings, host: str) -> str | None:
    """Refuse to expose the tools beyond this machine without a token: the reason (exit code 2), or None."""
    if is_loopback(host) or api_token(settings):
        return None
    return (f"--host {host} is not a loopback address and no token is configured: set [serve] token or the env var "
            f"{settings.serve.token_env} (clients then send Authorization: Bearer <token>), or bind 127.0.0.1")


def run_mcp(settings: Settings, transport: str, host: str | None = None, port: int | None = None) -> int:
    """Serve MCP until the client disconnects (stdio) or the process is stopped (http); returns the exit code."""
    import anyio

    from medagent.agent.api import process_pool

    if transport not in ("stdio", "http"):
        raise ConfigError(f"--transport {transport!r}: use stdio or http")
    try:
        if transport == "stdio":
            anyio.run(_serve_stdio, settings)
        else:
            host = host or settings.serve.host
            port = DEFAULT_PORT if port is None else port
            reason = check_binding(settings, host)
            if reason is not None:
                raise ConfigError(reason)
            _serve_http(settings, host, port)
    finally:
        process_pool().close()
    return 0


async def _serve_stdio(settings: Settings) -> None:
    from mcp.server.stdio import stdio_server

    server = build_server(settings)
    # While serving, the SDK points fd 1 at stderr: a library's stray print cannot corrupt the protocol stream.
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def _serve_http(settings: Settings, host: str, port: int) -> None:
    import uvicorn

    token = api_token(settings)
    app = http_app(settings, host, token)
    shown = f"[{host}]" if ":" in host else host
    line = (f"medagent mcp: streamable HTTP at http://{shown}:{port}{HTTP_PATH}"
            f"{' (bearer token required)' if token else ''}. {RESEARCH_NOTICE}")

    class Announcing(uvicorn.Server):
        """Says where it listens once the socket is bound, not before (a taken port would make that line a lie)."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                print(line, file=sys.stderr, flush=True)

    server = Announcing(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits when it cannot bind, after logging why
        if exc.code:
            raise MedagentError(f"cannot serve on {host}:{port} (the line above says why)") from exc
