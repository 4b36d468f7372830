"""`medagent serve`: the HTTP API (FastAPI, OpenAPI at /docs) and the web page, on the engine `solve` and `chat` use.

- Case jobs (service/jobs.py) survive a restart; their progress is a numbered event stream served as SSE.
- Consultations are the sessions of `medagent chat` (agent/chat.py, agent/sessions.py): one store and one lock,
  both ways in; a second writer gets 409.
- Security: loopback by default; any other address needs a bearer token, checked on every API route (the
  static page itself carries no data and loads without one, so it can ask for the token); request bodies are
  bounded as they arrive; uploads are confined to the server's data folder (service/uploads.py); the Host
  header must name this server (a web page elsewhere cannot reach it by DNS rebinding); CORS is off unless
  `[serve] cors_origins` lists origins. Errors are one-line JSON, never a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from medagent.agent.sessions import SessionBusy, list_sessions, read_meta, session_folder
from medagent.service.access import LOOPBACK_NAMES, api_token, is_loopback
from medagent.service.jobs import FINAL, JobRunner, JobStore, QueueFull, UnknownJob, read_events
from medagent.service.offload import offload
from medagent.service.uploads import Incoming, UploadError, build_case, plain_name, remove, store_files
from medagent.tools.config import Settings, cache_root
from medagent.tools.contracts import RESEARCH_NOTICE
from medagent.tools.errors import MedagentError
from medagent.tools.paths import inside
from medagent.tools.pool import ModelPool
from medagent.tools.safeio import one_line

STATIC = Path(__file__).resolve().parent / "static"
POLL_S = 0.02  # how often a stream looks for new events (a stat and a short read)


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


class Guard:
    """Pure ASGI middleware: the Host check, the bearer token, and the request-body limit (counted as the body
    arrives, so a chunked upload without Content-Length is cut off too)."""

    def __init__(self, app: Any, settings: Settings, hosts: set[str]) -> None:
        self.app = app
        self.token = api_token(settings)
        self.limit = int(settings.serve.max_upload_mb * 1e6)
        self.hosts = hosts

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").startswith("[") else headers["host"].split("]")[0] + "]"
        if self.hosts and host not in self.hosts:
            return await error(421, f"this server does not answer for host {host!r}")(scope, receive, send)
        path = scope["path"]
        if self.token and not (path == "/" or path.startswith("/static/")):
            given = headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else _cookie(headers.get("cookie", ""), "medagent_token")
            if not token or not hmac.compare_digest(token.encode(), self.token.encode()):
                return await error(401, "missing or wrong API token (send 'Authorization: Bearer <token>')",
                                   {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.limit:
            return await error(413, f"request body of {int(length) / 1e6:.0f} MB is over [serve] max_upload_mb")(scope, receive, send)
        received = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if not started:
                await error(413, "request body is over [serve] max_upload_mb")(scope, receive, send)


class BodyTooLarge(Exception):
    pass


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _incoming(files: list[UploadFile]) -> list[Incoming]:
    return [Incoming(name=f.filename or "", stream=f.file) for f in files]


def create_app(settings: Settings, bound_host: str = "127.0.0.1") -> FastAPI:
    store = JobStore(settings)
    pool = ModelPool()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runner = JobRunner(settings, store, pool)
        state["runner"] = runner
        runner.recover()
        try:
            yield
        finally:
            await runner.shutdown()
            pool.close()

    app = FastAPI(title="medagent", version=_version(), lifespan=lifespan,
                  description=f"Cases, consultations and their evidence. {RESEARCH_NOTICE}")
    hosts = set() if bound_host in ("0.0.0.0", "::") else ({bound_host, f"[{bound_host}]"} | (LOOPBACK_NAMES if is_loopback(bound_host) else set()))
    app.add_middleware(Guard, settings=settings, hosts=hosts)
    if settings.serve.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.serve.cors_origins, allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type", "Last-Event-ID"])
    data_root = cache_root(settings)
    uploads_root = data_root / "uploads"

    def scrub(message: str) -> str:  # server paths stay on the server
        for root in (store.root, data_root):
            message = message.replace(f"{root}/", "").replace(str(root), "<data>")
        return message

    @app.exception_handler(MedagentError)
    async def _medagent_error(request: Request, exc: MedagentError) -> JSONResponse:
        if isinstance(exc, UnknownJob):
            return error(404, str(exc))
        if isinstance(exc, QueueFull):
            return error(503, str(exc), {"Retry-After": "30"})
        if isinstance(exc, SessionBusy):
            return error(409, str(exc))
        if isinstance(exc, UploadError) and exc.too_large:
            return error(413, scrub(str(exc)))
        if str(exc).startswith("no session"):
            return error(404, scrub(str(exc)))
        return error(400, scrub(str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({exc.__class__.__name__}); the server log has the details")

    # -- page and health ----------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> Response:
        index = STATIC / "index.html"
        if not index.is_file():
            return PlainTextResponse("medagent API: the page is not installed; see /docs", status_code=200)
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    if STATIC.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC, follow_symlink=False), name="static")

    @app.get("/api/health")
    async def health() -> dict[str, Any]:
        runner: JobRunner = state["runner"]
        return {"status": "ok", "version": _version(), "notice": RESEARCH_NOTICE, "jobs_active": runner.active()}

    @app.get("/api/tools")
    async def tools() -> list[dict[str, Any]]:
        from medagent.agent.api import placed_tools
        from medagent.tools.registry import Registry

        placed = await asyncio.to_thread(placed_tools, settings)  # remote tools: as their deployments answer
        return [s.model_dump(mode="json") for s in Registry(settings, placed, pool=pool).specs()]

    # -- case jobs ------------------------------------------------------------------------------------
    @app.post("/api/jobs", status_code=202)
    async def submit(
        files: list[UploadFile] = File(default=[]),  # noqa: B008 - FastAPI's declaration style
        case: str | None = Form(default=None, description="case.json text; its attachment paths name uploaded files"),
        history: str | None = Form(default=None),
        question: str | None = Form(default=None),
        case_id: str | None = Form(default=None),
        kinds: str | None = Form(default=None, description="JSON object: uploaded file name -> attachment kind"),
        modality: str | None = Form(default=None),
    ) -> dict[str, Any]:
        runner: JobRunner = state["runner"]
        job_id = store.new_id()
        folder = store.root / job_id
        try:
            names = await asyncio.to_thread(store_files, await _incoming(files), folder / "case", settings)
            fields = {"case": case, "history": history, "question": question, "case_id": case_id, "kinds": kinds, "modality": modality}
            loaded = await asyncio.to_thread(build_case, folder / "case", names, settings, fields, f"job-{job_id}")
            run_dir = loaded.case_dir
            case_obj = loaded.case
            if run_dir != folder / "case":  # a zipped case folder: its case.json names paths relative to it
                case_obj = case_obj.model_copy(update={"attachments": [
                    a.model_copy(update={"path": str((run_dir / a.path).relative_to(folder / "case"))}) for a in case_obj.attachments]})
            (folder / "case" / "case.json").write_text(case_obj.model_dump_json(indent=2, exclude_none=True), encoding="utf-8")
            meta = runner.create(job_id, folder, case_obj.id)
        except BaseException:
            remove(folder)
            raise
        return {"id": meta.id, "status": meta.status, "case_id": meta.case_id, "events": f"/api/jobs/{job_id}/events"}

    @app.get("/api/jobs")
    async def jobs() -> dict[str, Any]:
        return {"jobs": [j.model_dump() for j in store.all()]}

    @app.get("/api/jobs/{job_id}")
    async def job(job_id: str) -> dict[str, Any]:
        return store.read(job_id).model_dump()

    @app.post("/api/jobs/{job_id}/cancel", status_code=202)
    async def cancel(job_id: str) -> dict[str, Any]:
        runner: JobRunner = state["runner"]
        meta = runner.cancel(job_id)
        return {"id": job_id, "status": meta.status if meta.status in FINAL else "cancelling"}

    def finished_file(job_id: str, name: str) -> Path:
        meta = store.read(job_id)
        if meta.status != "done":
            raise StarletteHTTPException(409, f"job {job_id} is {meta.status}{': ' + meta.reason if meta.reason else ''}; "
                                              "its result is served once it is done")
        return store.folder(job_id) / "out" / name

    @app.get("/api/jobs/{job_id}/result")
    async def result(job_id: str) -> Response:
        return FileResponse(finished_file(job_id, "result.json"), media_type="application/json")

    @app.get("/api/jobs/{job_id}/fhir")
    async def fhir(job_id: str) -> Response:
        """The result as a FHIR R4 Bundle (DiagnosticReport, evidence Observations, provisional Conditions)."""
        from medagent.tools.contracts import Case, Result
        from medagent.tools.fhir import result_bundle

        result_ = Result.model_validate_json(finished_file(job_id, "result.json").read_text(encoding="utf-8"))
        case = Case.model_validate_json((store.folder(job_id) / "case" / "case.json").read_text(encoding="utf-8"))
        return Response(json.dumps(result_bundle(result_, case)), media_type="application/fhir+json")

    @app.get("/api/jobs/{job_id}/report")
    async def report(job_id: str) -> Response:
        return FileResponse(finished_file(job_id, "report.md"), media_type="text/markdown; charset=utf-8")

    @app.get("/api/jobs/{job_id}/trace")
    async def trace(job_id: str) -> Response:
        path = store.folder(job_id) / "out" / "trace.jsonl"
        if not path.is_file():
            raise StarletteHTTPException(404, f"job {job_id} has no trace yet")
        return FileResponse(path, media_type="application/x-ndjson")

    @app.get("/api/jobs/{job_id}/case")
    async def job_case(job_id: str) -> Response:
        return FileResponse(store.folder(job_id) / "case" / "case.json", media_type="application/json")

    @app.get("/api/jobs/{job_id}/files/{path:path}")
    async def job_file(job_id: str, path: str) -> Response:
        return FileResponse(_file_under(store.folder(job_id) / "out", path))

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> Response:
        folder = store.folder(job_id)
        after = _last_event_id(request)
        log_path = folder / "events.jsonl"

        async def stream():
            seen, offset = after, 0
            while True:
                batch, offset = read_events(log_path, seen, offset)
                for event in batch:
                    seen = event["id"]
                    yield {"id": str(event["id"]), "event": event["event"], "data": json.dumps(event["data"], ensure_ascii=False)}
                    if event["event"] == "end":
                        return
                if not batch:
                    if store.read(job_id).status in FINAL and not read_events(log_path, seen, offset)[0]:
                        return  # finished, and every event (its 'end' included) has been sent
                    await asyncio.sleep(POLL_S)

        return EventSourceResponse(stream(), ping=15)

    @app.get("/api/jobs/{job_id}/volumes/{attachment_id}")
    async def volume_info(job_id: str, attachment_id: str) -> dict[str, Any]:
        voxels = await asyncio.to_thread(volumes.get, store.folder(job_id) / "case", attachment_id, settings)
        return {"slices": int(voxels.shape[2]), "axis": "axial", "shape": list(voxels.shape)}

    @app.get("/api/jobs/{job_id}/volumes/{attachment_id}/{index}.png")
    async def volume_slice(job_id: str, attachment_id: str, index: int) -> Response:
        voxels = await asyncio.to_thread(volumes.get, store.folder(job_id) / "case", attachment_id, settings)
        if not 0 <= index < voxels.shape[2]:
            raise StarletteHTTPException(404, f"slice {index} is outside 0..{voxels.shape[2] - 1}")
        return Response(_slice_png(voxels, index), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    # -- consultations ------------------------------------------------------------------------------
    turns = SessionTurns(settings, pool)

    @app.post("/api/sessions", status_code=201)
    async def new_session() -> dict[str, Any]:
        from medagent.agent.chat import ChatSession

        async with ChatSession(settings, pool=pool) as session:
            meta, _ = read_meta(session.folder)
        return meta.model_dump()

    @app.get("/api/sessions")
    async def sessions() -> dict[str, Any]:
        return {"sessions": list_sessions(settings)}

    @app.get("/api/sessions/{session_id}")
    async def session(session_id: str) -> dict[str, Any]:
        folder = _session(settings, session_id)
        meta, problem = read_meta(folder)
        if meta is None:
            raise MedagentError(f"session {session_id} is damaged: {problem}")
        turns_file = folder / "turns.jsonl"
        said = [json.loads(line) for line in turns_file.read_text(encoding="utf-8").splitlines() if line.strip()] if turns_file.is_file() else []
        result = await session_result(folder, session_id)
        return {"meta": meta.model_dump(), "turns": said, "result": result.model_dump(mode="json") if result else None}

    @app.delete("/api/sessions/{session_id}")
    async def delete(session_id: str) -> dict[str, Any]:
        from medagent.agent.sessions import delete_session

        _session(settings, session_id)
        await asyncio.to_thread(delete_session, settings, session_id)
        return {"deleted": session_id}

    @app.post("/api/sessions/{session_id}/messages")
    async def message(session_id: str, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise StarletteHTTPException(415, "send the message as JSON: {\"text\": \"...\"}")
        try:
            body = await request.json()
        except ValueError as exc:
            raise StarletteHTTPException(400, "the body is not valid JSON") from exc
        if not isinstance(body, dict) or not isinstance(body.get("text"), str) or not body["text"].strip():
            raise StarletteHTTPException(400, "the body must be {\"text\": \"...\"} with non-empty text")
        if len(body["text"]) > settings.agent.max_text_chars:
            raise StarletteHTTPException(413, f"the message is longer than [agent] max_text_chars ({settings.agent.max_text_chars})")
        _session(settings, session_id)
        return await turns.stream(session_id, lambda s: s.say(body["text"]))

    @app.post("/api/sessions/{session_id}/files")
    async def attach(session_id: str, file: UploadFile = File(...), kind: str | None = Form(default=None),  # noqa: B008
                     modality: str | None = Form(default=None), description: str | None = Form(default=None)) -> Response:
        _session(settings, session_id)
        upload = uploads_root / secrets.token_hex(8)  # store_files creates it, and refuses one that exists
        names = await asyncio.to_thread(store_files, await _incoming([file]), upload, settings)
        path = upload / names[0]

        async def act(s):
            try:
                return await s.attach(path, kind, modality, description)
            finally:
                remove(upload)

        try:
            return await turns.stream(session_id, act)
        except BaseException:
            remove(upload)
            raise

    @app.get("/api/sessions/{session_id}/files/{path:path}")
    async def session_file(session_id: str, path: str) -> Response:
        return FileResponse(_file_under(_session(settings, session_id), path, top="artifacts"))

    @app.get("/api/sessions/{session_id}/export")
    async def export(session_id: str) -> Response:
        from medagent.agent.chat import ChatSession

        _session(settings, session_id)
        scratch = Path(tempfile.mkdtemp(prefix="medagent-export-"))
        try:
            async with ChatSession(settings, session_id, pool=pool) as chat:
                await chat.export(scratch / "export")
            archive = scratch / f"{session_id}.zip"
            await asyncio.to_thread(_zip_folder, scratch / "export", archive)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        from starlette.background import BackgroundTask

        return FileResponse(archive, media_type="application/zip", filename=f"{session_id}.zip",
                            background=BackgroundTask(shutil.rmtree, scratch, True))

    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medagent")
    except PackageNotFoundError:
        return "0+unknown"


def _last_event_id(request: Request) -> int:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
    if not raw.isdigit():
        raise StarletteHTTPException(400, f"Last-Event-ID {raw[:20]!r} is not an event number")
    return int(raw)


def _session(settings: Settings, session_id: str) -> Path:
    folder = session_folder(settings, session_id)
    if not folder.is_dir() or not os.path.lexists(folder / "session.json"):
        raise StarletteHTTPException(404, f"no session {session_id}")
    return folder


def _file_under(root: Path, path: str, top: str = "artifacts") -> Path:
    """A file a response may serve: under root/<top>/, every component plain, no link on the way."""
    parts = path.split("/")
    if not parts or parts[0] != top or len(parts) < 2:
        raise StarletteHTTPException(404, f"no file {path[:80]!r} (files are evidence artifacts: {top}/...)")
    for part in parts:
        try:
            plain_name(part, "path component")
        except UploadError as exc:
            raise StarletteHTTPException(400, str(exc)) from exc
    target = root.joinpath(*parts)
    walk = root
    for part in parts:
        walk = walk / part
        if walk.is_symlink():
            raise StarletteHTTPException(404, f"no file {path[:80]!r}")
    if not target.is_file() or not inside(root, target):
        raise StarletteHTTPException(404, f"no file {path[:80]!r}")
    return target


def _zip_folder(folder: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name != ".medagent-output":
                out.write(path, path.relative_to(folder).as_posix())


async def session_result(folder: Path, session_id: str):  # noqa: ANN201 - Result | None
    """A session's latest result, read from its checkpoint without taking the session's lock."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from medagent.agent.graph import build_graph
    from medagent.agent.sessions import checkpoint_serializer

    if not (folder / "state.db").is_file():
        return None
    async with AsyncSqliteSaver.from_conn_string(f"file:{folder / 'state.db'}?mode=ro") as saver:
        saver.serde = checkpoint_serializer()
        snapshot = await build_graph(saver).aget_state({"configurable": {"thread_id": session_id}})
    return snapshot.values.get("result") if snapshot.values else None


class SessionTurns:
    """One consultation turn as an SSE stream: progress lines, report text and the turn's trace events as they
    happen, then the reply. The turn runs as its own task holding the session lock: a client that disconnects
    mid-stream does not cut it short (its reply is in the session when it reconnects)."""

    def __init__(self, settings: Settings, pool: ModelPool) -> None:
        self.settings = settings
        self.pool = pool
        self.running: set[asyncio.Task] = set()

    async def stream(self, session_id: str, action) -> Response:  # noqa: ANN001 - Callable[[ChatSession], Awaitable[Reply]]
        from medagent.agent.chat import ChatSession

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def push(event: str, data: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (event, data))

        chat = ChatSession(self.settings, session_id, pool=self.pool,
                           on_progress=lambda text: push("progress", {"text": text}), on_text=lambda text: push("text", {"text": text}),
                           on_event=lambda event: push(event.event, event.model_dump(mode="json")))
        opened: asyncio.Future = loop.create_future()

        async def turn() -> None:  # on a loop of its own (service/offload.py)
            try:
                await chat.__aenter__()
            except BaseException as exc:
                failure = exc
                loop.call_soon_threadsafe(lambda: opened.done() or opened.set_exception(failure))
                return
            loop.call_soon_threadsafe(lambda: opened.done() or opened.set_result(None))
            ending = {"status": "done", "reason": None}
            try:
                if chat.interrupted:
                    await chat.resume()
                reply = await action(chat)
                push("reply", {"text": reply.text, "question": reply.question, "done_taking_history": reply.done_taking_history,
                               "new_evidence": [e.model_dump(mode="json") for e in reply.new_evidence]})
            except MedagentError as exc:
                ending = {"status": "failed", "reason": one_line(str(exc))}
            except Exception as exc:
                ending = {"status": "failed", "reason": f"internal error ({exc.__class__.__name__})"}
            finally:
                await chat.__aexit__(None, None, None)  # released before 'end': the client's next request finds it free
                push("end", ending)

        task = loop.create_task(offload(turn, f"medagent-turn-{session_id}"))
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        await opened  # SessionBusy (409) is raised here, before any stream starts
        async def events():
            number = 0
            while True:
                event, data = await queue.get()
                number += 1
                yield {"id": str(number), "event": event, "data": json.dumps(data, ensure_ascii=False, default=str)}
                if event == "end":
                    return

        return EventSourceResponse(events(), ping=15)


class VolumeCache:
    """The last few volumes the slice scroller showed, as arrays (reading a CT for every slice would be slow)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.items: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, case_dir: Path, attachment_id: str, settings: Settings):  # noqa: ANN201 - np.ndarray
        import numpy as np

        from medagent.tools.contracts import AttachmentKind
        from medagent.tools.intake import intake
        from medagent.tools.medio import read_volume

        key = (str(case_dir), attachment_id)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        local = settings.model_copy(deep=True)
        local.agent.allow_outside_paths = False
        loaded = intake(case_dir / "case.json", local)
        attachment = loaded.case.attachment(attachment_id)
        if attachment is None or attachment.kind != AttachmentKind.volume:
            raise StarletteHTTPException(404, f"no volume attachment {attachment_id!r} in this job")
        info = loaded.files[attachment_id]
        volume = read_volume(loaded.case_dir / attachment.path, info.format, attachment.modality, info.series_uid)
        voxels = np.asarray(volume.voxels, dtype=np.float32)
        if voxels.ndim == 4:
            voxels = voxels[..., 0]
        low, high = (-160.0, 240.0) if volume.units == "HU" else tuple(np.percentile(voxels, [1, 99]).tolist())
        scaled = np.clip((voxels - low) / max(high - low, 1e-6), 0, 1)
        self.items[key] = (scaled * 255).astype(np.uint8)
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return self.items[key]


volumes = VolumeCache()


def _slice_png(voxels: Any, index: int) -> bytes:
    """Axial slice `index` in radiological view (patient's right on the left, anterior up) of a RAS+ array."""
    import io

    from PIL import Image

    plane = voxels[::-1, ::-1, index].T
    buffer = io.BytesIO()
    Image.fromarray(plane.copy()).save(buffer, format="PNG")
    return buffer.getvalue()


def run_server(settings: Settings, host: str | None, port: int | None) -> int:
    """Serve until stopped. A non-loopback address without a token is refused (exit 2)."""
    import uvicorn

    host = host or settings.serve.host
    port = settings.serve.port if port is None else port
    if not is_loopback(host) and not api_token(settings):
        raise MedagentError(f"--host {host} is not a loopback address: set an API token first "
                            f"([serve] token or ${settings.serve.token_env}), every request must then carry it")
    app = create_app(settings, host)
    print(f"medagent serve: http://{host}:{port}/ (API docs at /docs). {RESEARCH_NOTICE}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    return 0
