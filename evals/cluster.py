"""`medagent eval run SUITE --ray [ADDRESS]`: a suite's items spread over a Ray cluster.

Each of `workers` Ray actors holds its own model pool (as a local run's suite pool) and runs one item at a
time through the same `run_item` a local run uses, in a fresh state, into a scratch folder of its own. The
item's files (trace, result, artifacts) come back with its score line, and this process writes them into the
run folder and appends the line to scores.jsonl as each item finishes: the run folder is the local run's, a
run cut off resumes the same way, and the actors' nodes need not share a disk with this one (they do need the
suite's data at the same path, as every built-in suite reads ../shared/data or --data).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medagent.evals.suite import Suite, SuiteItem
from medagent.tools.config import Settings, cache_root
from medagent.tools.errors import MedagentError

START_WAIT_S = 120.0  # how long the actors may take to be placed and to import medagent


class EvalWorker:
    """One Ray actor: runs suite items with the settings it was made with, its models kept between items."""

    def __init__(self, settings: dict[str, Any], available: list[str]) -> None:
        from medagent.tools.pool import ModelPool

        self.settings = Settings.model_validate(settings)
        self.available = set(available)
        self.pool = ModelPool()

    def ready(self) -> bool:
        return True

    def run(self, item: dict[str, Any], suite: dict[str, Any]) -> dict[str, Any]:
        from medagent.evals.runner import run_item

        item_model, suite_model = SuiteItem.model_validate(item), Suite.model_validate(suite)
        with tempfile.TemporaryDirectory(prefix="medagent-eval-") as scratch:
            folder = Path(scratch)
            for sub in ("traces", "results"):
                (folder / sub).mkdir()
            line = asyncio.run(run_item(item_model, suite_model, self.settings, folder, self.available, self.pool))
            files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        return {"line": line, "files": files}


def run_on_cluster(address: str, todo: list[SuiteItem], suite: Suite, settings: Settings, run_dir: Path,
                   available: set[str], workers: int, record: Callable[[SuiteItem, dict[str, Any]], None],
                   num_cpus: float | None = None) -> None:
    """Run `todo` on `workers` actors of the cluster at `address`; `record(item, line)` as each one finishes."""
    import ray
    from ray.util import ActorPool

    from medagent.agent.scale import connect

    connect(address)
    cpus = settings.serve.eval_num_cpus if num_cpus is None else num_cpus
    actor = ray.remote(EvalWorker).options(num_cpus=cpus, max_restarts=1, max_task_retries=1,
                                           runtime_env={"env_vars": {"MEDAGENT_HOME": str(cache_root(settings))}})
    actors = [actor.remote(settings.model_dump(mode="json"), sorted(available)) for _ in range(max(1, workers))]
    actors = _started(actors, cpus, ray)
    by_id = {item.id: item for item in todo}
    payload = suite.model_dump(mode="json")
    try:
        results = ActorPool(actors).map_unordered(lambda a, item: a.run.remote(item.model_dump(mode="json"), payload), todo)
        for answer in results:
            line = answer["line"]
            for relative, data in answer["files"].items():
                target = (run_dir / relative).resolve()
                if not target.is_relative_to(run_dir.resolve()):
                    raise MedagentError(f"an eval worker returned a file outside the run folder: {relative!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            record(by_id[line["id"]], line)
    finally:
        for a in actors:
            ray.kill(a)


def _started(actors: list[Any], cpus: float, ray: Any, wait_s: float = START_WAIT_S) -> list[Any]:
    """The actors the cluster could place within `wait_s`: an item given to one still waiting for CPUs would
    wait with it. Those left are killed and the run goes on with the others; none at all is an error."""
    pings = {a.ready.remote(): a for a in actors}
    ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=wait_s)
    started = [pings[ref] for ref in ready]
    for ref, a in pings.items():
        if ref not in ready:
            ray.kill(a)
    if not started:
        raise MedagentError(f"no eval worker could start on the Ray cluster within {wait_s:g} s (each needs {cpus:g} CPUs: "
                            "[serve] eval_num_cpus; `ray status` shows what is free)")
    if len(started) < len(actors):
        print(f"only {len(started)} of {len(actors)} eval workers could start on the cluster (each needs {cpus:g} "
              "CPUs: [serve] eval_num_cpus); running on those", file=sys.stderr)
    return started
