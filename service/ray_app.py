"""`medagent serve` as a Ray Serve application: the same FastAPI app (service/http.py) behind Ray Serve's
HTTP proxy, `[serve] service_replicas` replicas of it.

The replicas share one node's disk: the job store (`[serve] jobs_dir`) and the session store under the cache
root are plain folders with SQLite checkpoints, and what must be exclusive is guarded by file locks
(`flock`): a consultation is open in one replica at a time (agent/sessions.SessionLock), a job runs in the
replica that holds its lock (service/jobs.py). A replica that dies releases its locks with its process: the
next message of a consultation, routed by Ray Serve to a live replica, finds the history in the session's
checkpoint; a job it was running is picked up by the replica Ray Serve starts in its place. Stores shared
across nodes (a network file system's locks, a database) are out of scope: run the service's replicas on
one node (the tools they call may be anywhere on the cluster).
"""

from __future__ import annotations

import os
from typing import Any

from medagent.tools.config import Settings, cache_root, load_settings
from medagent.tools.errors import MedagentError

SETTINGS_ENV = "MEDAGENT_SERVICE_SETTINGS"
APP_NAME = "medagent-service"


def build_asgi():  # noqa: ANN201 - FastAPI; evaluated on each replica (Ray Serve's ingress builder)
    from medagent.service.http import create_app

    settings = Settings.model_validate_json(os.environ[SETTINGS_ENV])
    return create_app(settings, settings.serve.host)


def service_application(settings: Settings):  # noqa: ANN201 - ray.serve.Application
    """The service's Ray Serve application (ingress: the FastAPI app, built on each replica)."""
    from ray import serve

    class ServiceReplica:
        """One replica of the HTTP service; its routes are service/http.py's."""

    from medagent.service.access import api_token, is_loopback

    host = settings.serve.host
    if not is_loopback(host) and not api_token(settings):  # as `medagent serve` refuses it
        raise MedagentError(f"[serve] host {host} is not a loopback address: set an API token first "
                            f"([serve] token or ${settings.serve.token_env}), every request must then carry it")
    ingress = serve.ingress(build_asgi)(ServiceReplica)
    env = {SETTINGS_ENV: settings.model_dump_json(), "MEDAGENT_HOME": str(cache_root(settings))}
    if os.environ.get(settings.serve.token_env):  # the replicas check requests against the same token
        env[settings.serve.token_env] = os.environ[settings.serve.token_env]
    deployment = serve.deployment(ingress).options(
        name="service", num_replicas=settings.serve.service_replicas,
        ray_actor_options={"num_cpus": settings.serve.service_num_cpus, "runtime_env": {"env_vars": env}},
        max_ongoing_requests=64)
    return deployment.bind()


def app_builder(args: dict[str, Any]):  # noqa: ANN201 - import_path medagent.service.ray_app:app_builder
    """`serve deploy` entry point; `args: {config: path to medagent.toml}`."""
    from pathlib import Path

    config = args.get("config")
    return service_application(load_settings(Path(config) if config else None))


def deploy(settings: Settings, with_service: bool, say=print) -> list[str]:  # noqa: ANN001 - a print-like callable
    """`medagent scale deploy`: the tools application (and, with `with_service`, the HTTP service on Ray
    Serve's proxy at [serve] host:port) on the cluster at [serve] ray_address; returns the health lines."""
    from ray import serve

    from medagent.agent.scale import connect, tools_application

    address = settings.serve.ray_address or "auto"
    connect(address)
    serve.start(http_options={"host": settings.serve.host, "port": settings.serve.port})
    say(f"deploying {settings.serve.ray_app} ({', '.join(settings.serve.deployments)}) on {address} …")
    serve.run(tools_application(settings), name=settings.serve.ray_app, route_prefix=None)
    if with_service:
        say(f"deploying {APP_NAME} ({settings.serve.service_replicas} replicas) …")
        serve.run(service_application(settings), name=APP_NAME, route_prefix="/")
        say(f"the service answers at http://{settings.serve.host}:{settings.serve.port}/ (Ray Serve's proxy)")
    return health_lines(settings)


def health_lines(settings: Settings) -> list[str]:
    """One line per tool of every deployment: available, or why not; then the applications' states."""
    from ray import serve

    from medagent.agent.scale import RemoteTool, connect, deployment_name, first_line

    connect(settings.serve.ray_address or "auto")
    lines = []
    for group, spec in settings.serve.deployments.items():
        label = f"{settings.serve.ray_app}/{deployment_name(group)}"
        try:
            answer = RemoteTool(settings, group).health(timeout_s=30)
        except Exception as exc:  # noqa: BLE001 - not deployed, or no replica could start
            lines.append(f"✗ {label}: not answering ({first_line(exc)})")
            continue
        for name in spec.tools:
            reason = answer["tools"].get(name)
            lines.append(f"{'✓' if reason is None else '–'} {name} on {label}: "
                         f"{answer['versions'].get(name, '') if reason is None else 'unavailable: ' + reason}")
    for name, app in serve.status().applications.items():
        states = ", ".join(f"{d}: {info.status.value if hasattr(info.status, 'value') else info.status} "
                           f"{dict(info.replica_states)}" for d, info in app.deployments.items())
        lines.append(f"  {name}: {app.status.value if hasattr(app.status, 'value') else app.status} ({states})")
    return lines


def down(settings: Settings) -> list[str]:
    """`medagent scale down`: delete the tools application and the service (the cluster stays up)."""
    from ray import serve

    from medagent.agent.scale import connect

    connect(settings.serve.ray_address or "auto")
    gone = []
    for name in (settings.serve.ray_app, APP_NAME):
        if name in serve.status().applications:
            serve.delete(name)
            gone.append(f"deleted {name}")
    return gone or ["nothing of medagent's was deployed"]
