"""Layers point down only: cli → service → agent → tools → specialists; evals and training beside, using agent/tools.

Every import in the tree is read with `ast` (function-level imports included, which is where this
project keeps its heavy ones) and judged against one table. A specialist's public API is its package
(`medagent.specialists.knowledge`), whose __init__ lists what others may use; its submodules are its own.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("cli", "service", "agent", "tools", "specialists", "evals", "training")
# layer -> the layers it may import. "specialists.public": only `medagent.specialists.<name>` itself.
ALLOWED = {
    "cli": set(LAYERS),
    "service": {"service", "agent", "tools"},
    "agent": {"agent", "tools"},
    "tools": {"tools", "specialists"},
    "specialists": {"specialists"},
    "evals": {"evals", "agent", "tools", "specialists.public"},
    "training": {"training", "agent", "tools", "specialists"},
}


def imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = module.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            # `from medagent.specialists.speech import x`: x is judged too (a submodule, or a name of the public API)
            if name in {"medagent", "medagent.specialists"} or name.startswith("medagent.specialists."):
                found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]
    return found


def public_names(root: Path, package: str) -> set[str]:
    """The names a specialist's __init__ lists in `__all__` (built from its `_WHERE` table, or literal)."""
    init = root / "specialists" / package / "__init__.py"
    if not init.is_file():
        return set()
    tree = ast.parse(init.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") in {"_WHERE", "__all__"} for t in node.targets):
            value = ast.literal_eval(node.value)
            return set(value)
    return set()


def violations(root: Path = REPO) -> list[str]:
    problems = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            module = "medagent." + ".".join(path.relative_to(root).with_suffix("").parts)
            for line, name in imported_modules(ast.parse(path.read_text(encoding="utf-8")), module):
                parts = name.split(".")
                if parts[0] != "medagent" or len(parts) < 2 or parts[1] not in LAYERS:
                    continue
                target = parts[1]
                allowed = ALLOWED[layer]
                if target in allowed:
                    continue
                if target == "specialists" and "specialists.public" in allowed:
                    if len(parts) <= 3 or (len(parts) == 4 and parts[3] in public_names(root, parts[2])):
                        continue
                where = f"{path.relative_to(root)}:{line}"
                if problems and problems[-1].startswith(f"{where}: ") and name.startswith(problems[-1].split(" imports ")[1] + "."):
                    continue  # `from medagent.x import y` once, not again for y
                problems.append(f"{where}: {layer} imports {name}")
    return problems


def test_no_layer_imports_upward_or_sideways():
    assert not violations(), "\n".join(violations())


def test_the_check_sees_an_upward_import(tmp_path):
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "tools" / "bad.py").write_text("def f():\n    from medagent.agent.api import solve\n")
    (tmp_path / "evals" / "deep.py").write_text("from medagent.specialists.knowledge.graph import load_graph\n")
    (tmp_path / "specialists" / "knowledge").mkdir()
    (tmp_path / "specialists" / "knowledge" / "__init__.py").write_text('_WHERE = {"load_graph": "graph"}\n')
    (tmp_path / "evals" / "ok.py").write_text("from medagent.specialists.knowledge import load_graph\n")
    (tmp_path / "evals" / "sub.py").write_text("from medagent.specialists.knowledge import graph\n")
    (tmp_path / "agent" / "up.py").write_text("import medagent.evals.runner\n")
    assert sorted(violations(tmp_path)) == [
        "agent/up.py:1: agent imports medagent.evals.runner",
        "evals/deep.py:1: evals imports medagent.specialists.knowledge.graph",
        "evals/sub.py:1: evals imports medagent.specialists.knowledge.graph",
        "tools/bad.py:2: tools imports medagent.agent.api",
    ]
