"""Case jobs that outlive the server process.

A job lives in its own folder under the jobs root (`[serve] jobs_dir`, default `<cache root>/jobs/<id>/`):

- `job.json`   its status (queued, running, done, failed, cancelled), replaced whole on every change;
- `case/`      the uploaded files and `case.json`, the case as it runs;
- `state.db`   LangGraph's SQLite checkpointer: every node is checkpointed before the next starts;
- `events.jsonl` the progress stream (status, progress lines, report text, every trace event), one numbered
  event per line: the SSE endpoint tails it, so a client can reconnect (Last-Event-ID) and a restart loses nothing;
- `out/`       result.json, report.md, trace.jsonl and artifacts/, as `medagent solve -o` writes them.

A job is `done` only once result.json and report.md are written, so no partial result is ever served as
complete. A server that dies leaves its jobs `queued` or `running`; the next server resumes each from its
last completed node (evidence keeps its ids: they live in the checkpointed state). A job whose checkpoint
cannot be read is marked failed with the reason.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from medagent.agent.sessions import SessionLock
from medagent.service.offload import offload
from medagent.tools.config import Settings, cache_root
from medagent.tools.errors import MedagentError
from medagent.tools.pool import ModelPool
from medagent.tools.trace import TraceEvent, TraceRecorder

JOB_ID = re.compile(r"^[0-9a-f]{16}$")
FINAL = ("done", "failed", "cancelled")
CANCEL_FILE = "cancel-requested"  # a cancel asked of a replica that does not run the job
Status = Literal["queued", "running", "done", "failed", "cancelled"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class JobMeta(BaseModel):
    id: str
    status: Status = "queued"
    reason: str | None = None
    case_id: str = ""
    created: str = ""
    started: str | None = None
    finished: str | None = None
    resumed: int = 0  # times a new server picked this job up again


class QueueFull(MedagentError):
    """More jobs than `max_concurrent_jobs + max_queued_jobs` (HTTP 503 with Retry-After)."""


class UnknownJob(MedagentError):
    """No such job (HTTP 404)."""


class EventLog:
    """A job's numbered event stream in a JSONL file; safe to append from tool threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.count = 0
        if path.exists():  # a server killed mid-write may leave half a line: drop it, keep the rest
            text = path.read_bytes()
            lines = text.split(b"\n")
            if lines and lines[-1]:
                path.write_bytes(b"\n".join(lines[:-1]) + (b"\n" if len(lines) > 1 else b""))
                lines = lines[:-1]
            self.count = sum(1 for line in lines if line.strip())

    def add(self, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.count += 1
            line = json.dumps({"id": self.count, "event": event, "data": data}, ensure_ascii=False, default=str)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")


def read_events(path: Path, after: int, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The complete events after number `after`, read from byte `offset` on; and the offset to read from next."""
    if not path.exists():
        return [], offset
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    complete = data[: data.rfind(b"\n") + 1]  # a line still being written is left for the next read
    events = [event for event in (json.loads(line) for line in complete.splitlines() if line.strip()) if event["id"] > after]
    return events, offset + len(complete)


def streamed(log: EventLog) -> Callable[[TraceEvent], None]:
    """A trace sink that adds every event to the job's event stream."""
    return lambda event: log.add(event.event, event.model_dump(mode="json"))


class JobStore:
    """Job folders and their job.json."""

    def __init__(self, settings: Settings) -> None:
        self.root = (settings.serve.jobs_dir or cache_root(settings) / "jobs").expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def new_id(self) -> str:
        return secrets.token_hex(8)

    def folder(self, job_id: str) -> Path:
        if not JOB_ID.fullmatch(job_id):
            raise UnknownJob(f"no job {job_id[:40]!r} (job ids are 16 hex digits)")
        folder = self.root / job_id
        if folder.is_symlink() or not (folder / "job.json").is_file():
            raise UnknownJob(f"no job {job_id}")
        return folder

    def read(self, job_id: str) -> JobMeta:
        return JobMeta.model_validate_json((self.folder(job_id) / "job.json").read_text(encoding="utf-8"))

    def write(self, folder: Path, meta: JobMeta) -> None:
        partial = folder / "job.json.partial"
        partial.write_text(meta.model_dump_json(indent=2), encoding="utf-8")
        partial.replace(folder / "job.json")

    def all(self) -> list[JobMeta]:
        jobs = []
        for folder in self.root.iterdir():
            if JOB_ID.fullmatch(folder.name) and not folder.is_symlink() and (folder / "job.json").is_file():
                try:
                    jobs.append(JobMeta.model_validate_json((folder / "job.json").read_text(encoding="utf-8")))
                except ValueError:
                    continue  # a job.json medagent did not write
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def prune(self, keep: int) -> None:
        finished = [j for j in self.all() if j.status in FINAL]
        for meta in finished[keep:]:
            shutil.rmtree(self.root / meta.id, ignore_errors=True)


class JobRunner:
    """Runs case jobs on the server's event loop: at most `max_concurrent_jobs` at once, the rest queued."""

    def __init__(self, settings: Settings, store: JobStore, pool: ModelPool) -> None:
        self.settings = settings
        self.store = store
        self.pool = pool
        self.tasks: dict[str, asyncio.Task] = {}
        self.logs: dict[str, EventLog] = {}
        self._slots = asyncio.Semaphore(settings.serve.max_concurrent_jobs)
        # Each job this process runs or queues holds its folder's lock: replicas of the service on Ray Serve
        # share the job store, and a replica starting up takes over only the jobs no live process holds.
        self.locks: dict[str, SessionLock] = {}
        self.stopping = False  # set at shutdown: jobs cut off then stay resumable, never 'cancelled'

    def log(self, job_id: str) -> EventLog:
        if job_id not in self.logs:
            self.logs[job_id] = EventLog(self.store.folder(job_id) / "events.jsonl")
        return self.logs[job_id]

    def _set(self, folder: Path, meta: JobMeta, status: Status, reason: str | None = None) -> None:
        meta.status, meta.reason = status, reason
        if status == "running":
            meta.started = meta.started or now()
        if status in FINAL:
            meta.finished = now()
        self.store.write(folder, meta)
        self.log(meta.id).add("status", {"status": status, "reason": reason})
        if status in FINAL:
            self.log(meta.id).add("end", {"status": status, "reason": reason})

    def active(self) -> int:
        return sum(1 for task in self.tasks.values() if not task.done())

    def create(self, job_id: str, folder: Path, case_id: str) -> JobMeta:
        """Register a job whose case folder is ready; refuses (QueueFull) when the queue is full."""
        limit = self.settings.serve.max_concurrent_jobs + self.settings.serve.max_queued_jobs
        if self.active() >= limit:
            raise QueueFull(f"the server is busy: {self.active()} jobs running or queued (limit {limit}); retry later")
        meta = JobMeta(id=job_id, case_id=case_id, created=now())
        self.claim(job_id)
        self.store.write(folder, meta)
        self.log(job_id).add("status", {"status": "queued", "reason": None})
        self.start(meta)
        return meta

    def claim(self, job_id: str) -> bool:
        """Hold the job's folder lock for this process; False when another live process holds it."""
        if job_id in self.locks:
            return True
        lock = SessionLock(self.store.root / job_id)
        if not lock.try_acquire():
            return False
        self.locks[job_id] = lock
        return True

    def start(self, meta: JobMeta) -> None:
        self.tasks[meta.id] = asyncio.get_running_loop().create_task(self._run(meta), name=f"medagent-job-{meta.id}")

    def recover(self) -> list[str]:
        """Pick up the jobs a dead server left queued or running (called once at start-up)."""
        picked = []
        for meta in reversed(self.store.all()):  # oldest first
            if meta.status in ("queued", "running") and self.claim(meta.id):  # not another live replica's
                meta.resumed += 1
                self.store.write(self.store.root / meta.id, meta)
                self.log(meta.id).add("progress", {"text": "the server restarted; the job resumes from its last completed step"})
                self.start(meta)
                picked.append(meta.id)
        self.store.prune(self.settings.serve.keep_jobs)
        return picked

    def cancel(self, job_id: str) -> JobMeta:
        meta = self.store.read(job_id)
        task = self.tasks.get(job_id)
        if meta.status in FINAL:
            return meta
        if task is not None and not task.done():
            task.cancel()
        elif meta.status not in FINAL:  # running in another replica: it watches for this file
            (self.store.folder(job_id) / CANCEL_FILE).touch()
        return meta

    async def _watch_cancel(self, folder: Path, task: asyncio.Task) -> None:
        while not task.done():
            if (folder / CANCEL_FILE).exists():
                task.cancel()
                return
            await asyncio.sleep(0.5)

    async def _run(self, meta: JobMeta) -> None:
        folder = self.store.root / meta.id
        watcher = asyncio.get_running_loop().create_task(self._watch_cancel(folder, asyncio.current_task()))
        try:
            async with self._slots:
                self._set(folder, meta, "running")
                log = self.log(meta.id)
                await offload(lambda: run_job(folder, meta, self.settings, self.pool, log), f"medagent-job-{meta.id}")
                self._set(folder, meta, "done")
        except asyncio.CancelledError:
            if self.stopping:  # the server is shutting down: the next one resumes the job
                self.log(meta.id).add("progress", {"text": "the server stopped; the job will resume when it starts again"})
                return
            self._set(folder, meta, "cancelled", "cancelled on request")
        except CheckpointUnreadable as exc:
            self._set(folder, meta, "failed", str(exc))
        except MedagentError as exc:
            self._set(folder, meta, "failed", str(exc))
        except Exception as exc:  # a bug: the job fails with a reason, the server goes on
            self._set(folder, meta, "failed", f"internal error ({exc.__class__.__name__}: {exc})")
        finally:
            watcher.cancel()
            self.tasks.pop(meta.id, None)
            lock = self.locks.pop(meta.id, None)
            if lock is not None:
                lock.release()

    async def shutdown(self) -> None:
        self.stopping = True
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)


class CheckpointUnreadable(MedagentError):
    """A job's state.db cannot be read: it is marked failed with this reason."""


async def run_job(folder: Path, meta: JobMeta, settings: Settings, pool: ModelPool, log: EventLog,
                  on_text: Callable[[str], None] | None = None) -> None:
    """Run (or resume) one job's graph with the SQLite checkpointer, then write its outputs."""
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

    from medagent.agent.api import make_run, record_models
    from medagent.agent.graph import build_graph
    from medagent.agent.outputs import write_outputs
    from medagent.agent.sessions import checkpoint_serializer, run_unfinished
    from medagent.tools.intake import intake

    case_dir = folder / "case"
    local = settings.model_copy(deep=True)
    local.agent.allow_outside_paths = False
    loaded = intake(case_dir / "case.json", local)
    out = folder / "out"
    out.mkdir(exist_ok=True)
    trace = TraceRecorder(loaded.case.id, out / "trace.jsonl", on_event=streamed(log))
    run, backend = make_run(local, trace, out / "artifacts", on_progress=lambda text: log.add("progress", {"text": text}),
                            on_text=lambda text: log.add("text", {"text": text}), pool=pool)
    config = {"configurable": {"thread_id": meta.id, "run": run}, "recursion_limit": 4 * run.settings.agent.max_steps + 10}
    try:
        async with AsyncSqliteSaver.from_conn_string(str(folder / "state.db")) as saver:
            saver.serde = checkpoint_serializer()
            graph = build_graph(saver)
            try:
                snapshot = await graph.aget_state(config)
            except Exception as exc:
                raise CheckpointUnreadable(f"the job's checkpoint cannot be read ({exc.__class__.__name__}: {exc})") from exc
            if snapshot.values and not run_unfinished(snapshot):
                values = snapshot.values  # it had finished: only the outputs were missing
            else:
                update = None if snapshot.values else {"case": loaded.case, "case_dir": str(case_dir), "warnings": loaded.warnings}
                # Checkpoint every node before the next starts, so a killed server loses at most the node it was in.
                values = await graph.ainvoke(update, config=config, durability="sync")
    finally:
        record_models(trace, pool, shared=True)
        trace.close()
        if backend is not None:
            await backend.aclose()
    write_outputs(out, values["result"], loaded.case)
