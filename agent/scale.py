"""Model-backed tools on Ray Serve: one generic deployment serves any tool by name, and a tool runs here or
there by configuration only.

On the cluster, `ToolServer` is the deployment class: each deployment of the tools application (one per model
family by default: `[serve.deployments]`) serves the tools it names, with its own CPUs, GPUs (fractions too),
replicas or autoscaling. A replica holds its own model pool, so its models stay loaded between calls.
`ToolCatalogue` is the application's ingress: it holds a handle to every deployment and answers their health.

In a run, `place` swaps the `Tool`s named by `[serve] remote_tools` for copies whose calls go to the cluster.
The planner, the validation, the evidence numbering and the trace stay in `agent/execute.py`, unchanged;
the trace's `tool_result` says where each call ran (`ran_on`). A call ships the attachment it examines (its
bytes: the cluster's nodes need not share a disk with the caller) plus the case and the evidence so far,
and gets back the evidence drafts and the artifacts the tool wrote. A replica that dies during a call (Ray
Serve starts another) is retried once; a second death, or no answer within the tool's time, is error evidence.

Why no home-made transport: Ray Serve gives replicas, fractional GPUs, autoscaling, health checks and the
routing to live replicas; this module only maps medagent's `Tool` contract onto a deployment handle.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from medagent.tools.config import DeploymentSettings, Settings, cache_root
from medagent.tools.contracts import Case, Evidence, EvidenceDraft
from medagent.tools.errors import ConfigError, MedagentError, ToolError, UnavailableError
from medagent.tools.registry import Tool, ToolContext

# Files one call may ship to the cluster (an attachment: a volume, a DICOM series, a recording).
MAX_SHIPPED_BYTES = 4 << 30


def deployment_name(group: str) -> str:
    return f"tools-{group}"


class RemoteToolFailure(Exception):  # noqa: N818 - it stands for the replica's exception, named by `kind`
    """A tool raised on a replica something other than a medagent error: the executor reports it under the
    exception's own class name, as it would a local crash."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- on the cluster -------------------------------------------------------------------------------------


def _replica_id() -> str:
    try:
        from ray import serve

        replica = serve.get_replica_context().replica_id
        return getattr(replica, "unique_id", None) or str(replica)
    except Exception:  # noqa: BLE001 - outside a replica (a direct test of the class)
        return f"pid{os.getpid()}"


CALL_PREFIX = "medagent-call-"


def sweep_stale_calls(folder: Path | None = None) -> list[str]:
    """Remove the scratch folders of calls whose replica process is gone (a replica killed mid-call cannot clean
    up after itself); returns their names. Each folder is named medagent-call-<pid>-<random>."""
    import shutil

    root = Path(folder or tempfile.gettempdir())
    removed = []
    for path in root.glob(f"{CALL_PREFIX}*-*"):
        pid = path.name[len(CALL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or Path(f"/proc/{pid}").exists():
            continue  # not ours to judge, this process's own, or its process still runs
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


class ToolServer:
    """The deployment class: serves the tools it is given by name, with the settings it was deployed with.

    Construction never fails for a missing model: the tools that cannot run here are reported unavailable by
    `health` (as `medagent doctor` says), so Ray Serve does not restart the replica in a loop."""

    def __init__(self, settings: dict[str, Any], tools: list[str]) -> None:
        from medagent.agent.setup import ensure_built
        from medagent.tools.pool import ModelPool
        from medagent.tools.registry import Registry, all_tools

        self.settings = Settings.model_validate(settings)
        self.pool = ModelPool()
        known = {tool.name: tool for tool in all_tools()}
        self.registry = Registry(self.settings, [known[name] for name in tools if name in known], self.pool)
        self.registry.block(ensure_built(self.settings, None, self.pool))
        self.missing = [name for name in tools if name not in known]
        self.replica = _replica_id()
        sweep_stale_calls()  # what a killed predecessor on this node left behind

    def health(self) -> dict[str, Any]:
        """{"replica": id, "tools": {name: reason unavailable or None}, "versions": {name: version}}."""
        reasons = {name: self.registry.unavailable_reason(name) for name in self.registry.tools}
        reasons.update({name: f"no tool named {name} in this medagent version" for name in self.missing})
        versions = {name: tool.version(self.settings) for name, tool in self.registry.tools.items() if reasons[name] is None}
        return {"replica": self.replica, "pid": os.getpid(), "tools": reasons, "versions": versions}

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one tool call; never raises for a tool's own failure (it comes back as `error`)."""
        return await asyncio.to_thread(self._call, request)

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        name = request["tool"]
        answer: dict[str, Any] = {"replica": self.replica, "pid": os.getpid()}

        def failed(kind: str, medagent: bool, message: str) -> dict[str, Any]:
            return {**answer, "error": {"kind": kind, "medagent": medagent, "message": message}}

        tool = self.registry.tools.get(name)
        reason = self.registry.unavailable_reason(name) if tool is not None else f"this deployment does not serve {name}"
        if reason is not None:
            return failed("UnavailableError", True, reason)
        with tempfile.TemporaryDirectory(prefix=f"{CALL_PREFIX}{os.getpid()}-") as scratch:
            case_dir = Path(scratch) / "case"
            artifacts = Path(scratch) / request["artifacts_name"]
            for relative, data in request["files"].items():
                target = case_dir / relative
                if ".." in Path(relative).parts or Path(relative).is_absolute():
                    return failed("ToolError", True, f"bad file name {relative!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            case_dir.mkdir(exist_ok=True)
            case = Case.model_validate(request["case"])
            for attachment in case.attachments:  # where the shipped files are on this replica
                if attachment.id in request["paths"]:
                    attachment.path = request["paths"][attachment.id]
            ctx = ToolContext(case=case, case_dir=case_dir, artifacts_dir=artifacts,
                              settings=self.settings, pool=self.pool,
                              evidence_so_far=[Evidence.model_validate(e) for e in request["evidence"]])
            started = time.perf_counter()
            try:
                drafts = tool.run(tool.args.model_validate(request["arguments"]), ctx)
            except Exception as exc:  # noqa: BLE001 - reported to the caller, which turns it into error evidence
                return failed(exc.__class__.__name__, isinstance(exc, MedagentError), str(exc))
            written = {p.name: p.read_bytes() for p in sorted(artifacts.iterdir()) if p.is_file()} if artifacts.is_dir() else {}
        return {**answer, "drafts": [d.model_dump(mode="json") for d in drafts], "artifacts": written,
                "compute_s": time.perf_counter() - started}


class ToolCatalogue:
    """The tools application's ingress: the health of every deployment, by group."""

    def __init__(self, **handles: Any) -> None:
        self.handles = handles

    async def __call__(self, request: Any) -> dict[str, Any]:  # noqa: ARG002 - GET <route_prefix>: the health, as JSON
        return await self.health()

    async def health(self) -> dict[str, Any]:
        answers = await asyncio.gather(*(h.health.remote() for h in self.handles.values()), return_exceptions=True)
        return {group: (a if not isinstance(a, BaseException) else {"error": f"{a.__class__.__name__}: {a}"})
                for group, a in zip(self.handles, answers, strict=True)}


def _deployment_options(group: str, spec: DeploymentSettings, env: dict[str, str]) -> dict[str, Any]:
    if spec.threads is not None:
        env = {**env, "OMP_NUM_THREADS": str(spec.threads)}
    actor: dict[str, Any] = {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus, "runtime_env": {"env_vars": env}}
    if spec.memory_gib:
        actor["memory"] = int(spec.memory_gib * (1 << 30))
    options: dict[str, Any] = {"name": deployment_name(group), "ray_actor_options": actor,
                               "max_ongoing_requests": spec.max_ongoing_requests}
    if spec.max_replicas is not None:
        options["autoscaling_config"] = {"min_replicas": spec.min_replicas if spec.min_replicas is not None else 1,
                                         "max_replicas": spec.max_replicas,
                                         "target_ongoing_requests": spec.target_ongoing_requests}
    else:
        options["num_replicas"] = spec.replicas
    return options


def replica_env(settings: Settings) -> dict[str, str]:
    """What a replica's process needs from the deployer's environment: the same cache root."""
    return {"MEDAGENT_HOME": str(cache_root(settings))}


def tools_application(settings: Settings):  # noqa: ANN201 - ray.serve.Application
    """The Ray Serve application of the tools: one `ToolServer` deployment per `[serve.deployments]` entry."""
    from ray import serve

    check_deployments(settings)
    payload = settings.model_dump(mode="json")
    env = replica_env(settings)
    handles = {}
    for group, spec in settings.serve.deployments.items():
        deployment = serve.deployment(ToolServer).options(**_deployment_options(group, spec, env))
        handles[group] = deployment.bind(payload, list(spec.tools))
    catalogue = serve.deployment(ToolCatalogue).options(name="catalogue", num_replicas=1,
                                                        ray_actor_options={"num_cpus": 0})
    return catalogue.bind(**handles)


def app_builder(args: dict[str, Any]):  # noqa: ANN201 - for Ray Serve config files: import_path medagent.agent.scale:app_builder
    """`serve deploy` entry point; `args: {config: path to medagent.toml}` (unset: $MEDAGENT_CONFIG, defaults)."""
    from medagent.tools.config import load_settings

    config = args.get("config")
    return tools_application(load_settings(Path(config) if config else None))


def check_deployments(settings: Settings) -> None:
    """Every tool in at most one deployment; the tools named exist."""
    from medagent.tools.registry import all_tools

    known = {tool.name for tool in all_tools()}
    seen: dict[str, str] = {}
    for group, spec in settings.serve.deployments.items():
        for name in spec.tools:
            if name not in known:
                raise ConfigError(f"[serve.deployments.{group}] tools: no tool named '{name}' (see `medagent tools`)")
            if name in seen:
                raise ConfigError(f"[serve.deployments.{group}] tools: '{name}' is also in [serve.deployments.{seen[name]}]")
            seen[name] = group


# -- in the caller ---------------------------------------------------------------------------------------

_CONNECT_LOCK = threading.Lock()


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (once per process). An address nothing answers on is one clear line."""
    import ray

    with _CONNECT_LOCK:
        if ray.is_initialized():
            return
        _reachable(address)
        try:
            ray.init(address=address, namespace="medagent", ignore_reinit_error=True, log_to_driver=False,
                     logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"[serve] ray_address {address}: no Ray cluster answered ({first_line(exc)})") from exc


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:200]


def _reachable(address: str) -> None:
    """A quick TCP check of HOST:PORT (Ray's own connect retries for a minute before it gives up)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"[serve] ray_address {address}: expected 'auto', 'HOST:PORT' or 'ray://HOST:PORT'")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=3):
            pass
    except OSError as exc:
        raise ConfigError(f"[serve] ray_address {address}: no Ray cluster answered ({exc.strerror or exc})") from exc


def remote_names(settings: Settings, names: list[str]) -> list[str]:
    """The tools `[serve] remote_tools` selects (patterns like 'knowledge.*'), in `names` order."""
    patterns = settings.serve.remote_tools
    unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        raise ConfigError(f"[serve] remote_tools: '{unmatched[0]}' names no tool (see `medagent tools`)")
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


class RemoteTool:
    """How the executor calls one tool on its deployment: `call(args, ctx, timeout_s) -> (drafts, ran_on)`."""

    def __init__(self, settings: Settings, group: str) -> None:
        self.settings = settings
        self.group = group
        self.label = f"ray:{settings.serve.ray_app}/{deployment_name(group)}"
        self._handle = None
        self._reasons: dict[str, str | None] | None = None
        self._asked = 0.0

    def handle(self):  # noqa: ANN201 - ray.serve.handle.DeploymentHandle
        if self._handle is None:
            from ray import serve

            connect(self.settings.serve.ray_address or "auto")
            self._handle = serve.get_deployment_handle(deployment_name(self.group), app_name=self.settings.serve.ray_app)
        return self._handle

    def health(self, timeout_s: float = 60.0) -> dict[str, Any]:
        # In a thread of its own: Ray Serve refuses a blocking wait on a handle inside a running event loop
        # (a run prepares its registry in one).
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medagent-ray-health") as thread:
            return thread.submit(lambda: self.handle().health.remote().result(timeout_s=timeout_s)).result()

    def reasons(self, max_age_s: float = 10.0) -> dict[str, str | None]:
        """{tool: reason unavailable or None} as the deployment answers (asked again after `max_age_s`). An
        application that is not deployed makes every tool of the group unavailable with the reason: the run
        goes on with the others."""
        if self._reasons is None or time.monotonic() - self._asked > max_age_s:
            try:
                self._reasons = self.health()["tools"]
            except MedagentError:
                raise
            except Exception as exc:  # noqa: BLE001 - a missing deployment, a replica that cannot start
                reason = f"{self.label} is not running on the cluster ({first_line(exc)}); `medagent scale deploy` starts it"
                self._reasons = dict.fromkeys(self.settings.serve.deployments[self.group].tools, reason)
            self._asked = time.monotonic()
        return self._reasons

    def call(self, tool: str, args: BaseModel, ctx: ToolContext, timeout_s: float) -> tuple[list[EvidenceDraft], str]:
        """The call's evidence drafts (its artifacts written into `ctx.artifacts_dir`) and where it ran."""
        return self.answer(tool, args, ctx, timeout_s)[:2]

    def answer(self, tool: str, args: BaseModel, ctx: ToolContext, timeout_s: float) -> tuple[list[EvidenceDraft], str, float]:
        """`call`, plus the seconds the tool itself ran on the replica (the rest of the wall time is transport)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

        request = {
            "tool": tool, "arguments": args.model_dump(mode="json"), "case": ctx.case.model_dump(mode="json"),
            "evidence": [e.model_dump(mode="json") for e in ctx.evidence_so_far],
            "artifacts_name": ctx.artifacts_dir.name,
        }
        request["files"], request["paths"] = shipped_files(args, ctx)
        deadline = time.monotonic() + timeout_s
        deaths: list[str] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            try:
                answer = self.handle().call.remote(request).result(timeout_s=left)
                break
            except GetTimeoutError as exc:
                raise TimeoutError from exc
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                deaths.append(first_line(exc))
                if len(deaths) > 1:  # retried once already
                    raise ToolError(f"the replica of {deployment_name(self.group)} died during the call twice "
                                    f"({deaths[-1]})") from exc
        where = f"{self.label}#{answer.get('replica', '?')}"
        if deaths:  # the trace says so: the first replica died during the call
            where += f" (retried: the first replica died: {deaths[0][:120]})"
        if "error" in answer:
            error = answer["error"]
            if error["medagent"]:
                raise (UnavailableError if error["kind"] == "UnavailableError" else ToolError)(error["message"])
            raise RemoteToolFailure(error["kind"], error["message"])
        ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
        for name, data in answer["artifacts"].items():
            if Path(name).name != name or name.startswith("."):
                raise ToolError(f"{deployment_name(self.group)} returned an artifact with a path in its name: {name!r}")
            (ctx.artifacts_dir / name).write_bytes(data)
        return [EvidenceDraft.model_validate(d) for d in answer["drafts"]], where, answer["compute_s"]


def shipped_files(args: BaseModel, ctx: ToolContext) -> tuple[dict[str, bytes], dict[str, str]]:
    """The bytes of the attachment a call examines (a file, or every file of a folder: a DICOM series) and the
    path the case gives it on the replica: `<attachment id>/<its file or folder name>`, so nothing the caller's
    case says about paths reaches the replica's disk. Nothing for a call on no attachment."""
    attachment_id = getattr(args, "attachment", None)
    if attachment_id is None:
        return {}, {}
    attachment, path = ctx.attachment(attachment_id)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.is_dir() else [path]
    total = sum(p.stat().st_size for p in files)
    if total > MAX_SHIPPED_BYTES:
        raise ToolError(f"attachment {attachment_id} is {total / 1e9:.1f} GB: too large to send to the cluster "
                        f"(at most {MAX_SHIPPED_BYTES / 1e9:.1f} GB); run {attachment.kind.value} tools locally")
    there = f"{attachment.id}/{path.name}"
    if path.is_dir():
        return {f"{there}/{p.relative_to(path).as_posix()}": p.read_bytes() for p in files}, {attachment.id: there}
    return {there: path.read_bytes()}, {attachment.id: there}


def place(settings: Settings, tools: list[Tool]) -> list[Tool]:
    """`tools` with those `[serve] remote_tools` names swapped for remote ones. Each remote tool's availability is
    its deployment's answer (a deployment whose weights are missing says so, like `medagent doctor`)."""
    if not settings.serve.remote_tools:
        return tools
    if not settings.serve.ray_address:
        raise ConfigError("[serve] remote_tools needs ray_address (e.g. 'auto' or '127.0.0.1:6379')")
    check_deployments(settings)
    group_of = {name: group for group, spec in settings.serve.deployments.items() for name in spec.tools}
    chosen = remote_names(settings, [t.name for t in tools])
    for name in chosen:
        if name not in group_of:
            raise ConfigError(f"[serve] remote_tools: {name} is in no [serve.deployments] entry")
    remotes = {group: _remote(settings, group) for group in {group_of[n] for n in chosen}}
    reasons = {group: remote.reasons() for group, remote in remotes.items()}
    placed = []
    for tool in tools:
        if tool.name not in chosen:
            placed.append(tool)
            continue
        remote = remotes[group_of[tool.name]]
        reason = reasons[remote.group].get(tool.name, f"{remote.label} does not serve {tool.name}")
        placed.append(replace(tool, remote=remote, check=lambda _s, reason=reason: reason,
                              version=lambda s, tool=tool, remote=remote: f"{tool.version(s)} @ {remote.label}"))
    return placed


_REMOTES: dict[tuple[str, str, str], RemoteTool] = {}


def _remote(settings: Settings, group: str) -> RemoteTool:
    """One RemoteTool (its handle, its last health answer) per cluster, application and deployment in a process."""
    key = (settings.serve.ray_address or "auto", settings.serve.ray_app, group)
    if key not in _REMOTES:
        _REMOTES[key] = RemoteTool(settings, group)
    return _REMOTES[key]
