"""Recipe round trip: smoke-train the real MiniLM on HPO synonym pairs, load it into the linker, rebuild faiss."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "knowledge" / "configs"


def test_smoke_training_round_trip(tmp_path, graph, knowledge_cache):
    from medagent.specialists.knowledge.load import load_linker
    from medagent.training.knowledge.recipe import main

    for name in ("smoke.yaml", "gpu.yaml"):  # both configs parse and name the loss's knobs
        assert {"steps", "batch_size", "lr", "scale"} <= set(yaml.safe_load((CONFIGS / name).read_text())["train"])
    output = main(CONFIGS / "smoke.yaml", [f"output_dir={tmp_path / 'embedder'}", f"cache_dir={knowledge_cache}"])
    metrics = json.loads((output / "metrics.json").read_text())
    assert metrics["held_out_queries"] > 10 and metrics["pairs"] > metrics["held_out_queries"]
    assert metrics["recall_at_1_trained"] >= metrics["recall_at_1_base"], metrics
    branch = [i for i in range(len(graph.term_ids)) if graph.is_ancestor(graph.resolve("HP:0001250"), i)]
    linker = load_linker(knowledge_cache, dense=True, embedder_path=output, terms=branch, holdout_share=0.5,
                         dense_threshold=0.5)  # fmt: skip
    assert linker.dense.index.ntotal == len(linker.dense.forms) > len(branch)
    found = linker.link("She has had repeated epileptic fits since childhood.")
    assert any(m.method == "dense" for m in found), found
