"""The model pool: each key loads once however many threads or solves ask, and `close()` frees it all."""

from __future__ import annotations

import ast
import asyncio
import gc
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from medagent.tools.pool import ModelPool

REPO = Path(__file__).resolve().parents[2]

# Module-level state that is not a cache of models, each with why it may stay.
ALLOWED = {
    ("agent/api.py", "_GRAPH"): "the compiled LangGraph topology: nodes and edges, no model",
    ("agent/api.py", "_PROCESS_POOL"): "the Python API's pool: the one owner of its solves' models (process_pool())",
    ("agent/scale.py", "_REMOTES"): "Ray Serve deployment handles and their last health answer, no model (the "
                                    "models live in the replicas' own pools)",
    ("agent/llm/probe.py", "_VERDICTS"): "llama.cpp probe verdicts (a crash must not repeat in a process), no model",
    ("agent/llm/probe.py", "build_record"): "the llama-cpp-python build record, a small JSON file",
    ("agent/llm/probe.py", "cpu_flags"): "the CPU flags from /proc/cpuinfo",
    ("specialists/knowledge/graph.py", "_ONTOLOGY_READY"): "hpo3's Ontology is the library's own singleton; the flag "
                                                            "only spares its second-load warning",
    ("tools/safeio.py", "_current"): "the intake limits in force, no model",
    ("evals/suite.py", "BUILTIN"): "the registry of built-in suite builders (functions), no model",
    ("tools/payloads.py", "payload_models"): "tool name -> payload model class (pydantic classes), no model",
    ("specialists/raddiag/labels.py", "vocabulary"): "RadDiag's 5,569 disorder names and ICD-10 codes, two committed "
                                                     "JSON files, no model",
    ("specialists/raddiag/labels.py", "_name_index"): "name -> column of that vocabulary, no model",
}
CONTAINERS = {"dict", "defaultdict", "OrderedDict", "WeakValueDictionary", "ModelPool"}
CACHE_DECORATORS = {"cache", "lru_cache"}


def _name(node: ast.AST) -> str:
    target = node.func if isinstance(node, ast.Call) else node
    return target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", "")


def module_state(path: Path) -> list[str]:
    """Names of a module's empty containers, cached functions and `global`-assigned names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in tree.body:
        value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
        empty_dict = isinstance(value, ast.Dict) and not value.keys
        if value is not None and (empty_dict or (isinstance(value, ast.Call) and _name(value) in CONTAINERS)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found += [t.id for t in targets if isinstance(t, ast.Name)]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(_name(d) in CACHE_DECORATORS for d in node.decorator_list):
            found.append(node.name)
    found += [name for node in ast.walk(tree) if isinstance(node, ast.Global) for name in node.names]
    return sorted(set(found))


def test_no_module_level_model_caches():
    found = {(str(path.relative_to(REPO)), name)
             for layer in ("agent", "tools", "specialists", "evals") for path in sorted((REPO / layer).rglob("*.py"))
             for name in module_state(path)}  # fmt: skip
    assert found - set(ALLOWED) == set(), "module-level caches: keep models in a ModelPool (tools/pool.py)"
    assert set(ALLOWED) <= found, f"allow-list entries that no longer exist: {sorted(set(ALLOWED) - found)}"


def test_threads_asking_at_once_load_once_and_keys_do_not_wait_for_each_other():
    pool = ModelPool()
    started, release = threading.Event(), threading.Event()
    calls = []

    def slow_index() -> np.ndarray:
        calls.append("index")
        started.set()
        release.wait(30)
        return np.zeros((256, 384), dtype=np.float32)

    barrier = threading.Barrier(8)
    got: list[np.ndarray] = []

    def ask() -> None:
        barrier.wait()
        got.append(pool.get(("index",), slow_index))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    # While the index loads, another key loads at once (only the same key waits).
    other = pool.get(("table",), lambda: np.ones(10, dtype=np.int64))
    assert other.sum() == 10 and not pool.has(("index",))
    release.set()
    for thread in threads:
        thread.join(30)
    assert calls == ["index"] and len(got) == 8 and all(g is got[0] for g in got)
    assert pool.loads == {("index",): 1, ("table",): 1}
    sizes = {entry.key: (entry.bytes, entry.estimate) for entry in pool.loaded()}
    assert sizes == {"index": (256 * 384 * 4, "numpy nbytes"), "table": (80, "numpy nbytes")}


def test_a_failed_load_is_not_kept_and_close_calls_close():
    pool = ModelPool()

    def broken() -> object:
        raise OSError("weights unreadable")

    with pytest.raises(OSError):
        pool.get(("model",), broken)
    assert pool.loaded() == []

    class Runtime:
        closed = False

        def close(self) -> None:
            Runtime.closed = True

    runtime = pool.get(("model",), Runtime)
    assert pool.get(("model",), broken) is runtime  # held: the loader is not called again
    ref = weakref.ref(runtime)
    del runtime
    pool.close()
    gc.collect()
    assert Runtime.closed and ref() is None and pool.loaded() == []


def test_doctor_says_what_a_pool_holds():
    from medagent.agent.doctor import memory_lines
    from medagent.tools.config import Settings

    pool = ModelPool()
    pool.get(("index", "phenotypes"), lambda: np.zeros(2**20, dtype=np.float32))
    lines = memory_lines(Settings(), set(), pool)
    assert lines[0] == "this process's model pool holds 1, about 4.0 MiB:"
    assert lines[1].startswith("  index phenotypes: 4.0 MiB (numpy nbytes), loaded in ")


def test_torch_modules_are_sized_by_their_parameters_and_buffers():
    torch = pytest.importorskip("torch")
    pool = ModelPool()
    layer = pool.get(("layer",), lambda: torch.nn.BatchNorm1d(16))  # 32 parameters, 33 buffer values
    [entry] = pool.loaded()
    assert entry.estimate == "torch parameters+buffers"
    assert entry.bytes == sum(t.numel() * t.element_size() for t in [*layer.parameters(), *layer.buffers()])


def test_concurrent_solves_share_one_pool_and_close_frees_every_model(tmp_path):
    """Two solves at once (rule planner, one pool) load each model once; a third finds them loaded; close frees them."""
    from medagent.agent.api import asolve, run_loaded
    from medagent.tools.config import Settings
    from medagent.tools.intake import load_case
    from medagent.tools.trace import TraceRecorder

    examples = REPO / "examples"
    settings = Settings()
    settings.agent.planner = "rule"
    pool = ModelPool()

    async def both():  # noqa: ANN202
        return await asyncio.gather(
            asolve(examples / "history_case.json", settings=settings, artifacts_dir=tmp_path / "history", pool=pool),
            asolve(examples / "dictation_case.json", settings=settings, artifacts_dir=tmp_path / "dictation", pool=pool),
        )

    history, dictation = asyncio.run(both())
    assert history.differential and dictation.differential
    assert any(e.tool == "speech.transcribe" and not e.error for e in dictation.evidence)
    kinds = {key[0] for key in pool.loads}
    assert {"knowledge.graph", "knowledge.linker", "speech"} <= kinds
    assert set(pool.loads.values()) == {1}, pool.loads

    # A later run given the same pool loads nothing, and its trace ends with what the pool holds.
    loads = dict(pool.loads)
    loaded = load_case(examples / "history_case.json")
    again, trace = asyncio.run(run_loaded(loaded, settings, tmp_path / "again", TraceRecorder("again"), pool=pool))
    assert pool.loads == loads
    assert [c.name for c in again.differential] == [c.name for c in history.differential]
    models = trace.events[-1]
    assert models.event == "models" and models.shared is True
    assert {entry["key"] for entry in models.loaded} == {entry.key for entry in pool.loaded()}
    # Every entry is sized and says how; RSS growth can be 0 in a process that reuses memory it freed earlier.
    assert all(entry["bytes"] is not None and entry["estimate"] for entry in models.loaded), models.loaded
    assert all(entry["bytes"] > 0 for entry in models.loaded if entry["estimate"] != "RSS growth during the load")
    assert any(entry["bytes"] > 0 for entry in models.loaded)

    refs = [weakref.ref(pool.get(key, lambda: None)) for key in pool.loads]
    del history, dictation, again, trace, models
    pool.close()
    gc.collect()
    assert pool.loaded() == [] and all(ref() is None for ref in refs)
