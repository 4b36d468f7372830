"""Knowledge recipe: contrastive fine-tuning of the entity-linking embedder (MiniLM) on HPO.

Read top to bottom: config -> graph -> pairs -> model -> loop -> save -> held-out recall.

Pairs are (synonym, label) and (definition, label) of HPO terms; a batch's other labels are the
negatives (sentence-transformers' MultipleNegativesRankingLoss). The synonyms that the
phenopackets evaluation paraphrases with (the linker's `holdout_share`) never enter training:
they are the test. Terms come from the tune split's cases (`data.ids_file`), or from an HPO branch.

Output folder = a sentence-transformers model that `[knowledge] embedder = "<folder>"` loads into
the linker (its faiss index is rebuilt under a new cache key), plus `metrics.json` with top-1
recall on held-out synonyms for the base and the trained embedder.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medagent.specialists.knowledge.embed import DenseIndex, load_embedder
from medagent.specialists.knowledge.graph import load_graph
from medagent.specialists.knowledge.link import held_out, phenotype_terms
from medagent.tools.errors import ConfigError
from medagent.training.common import setup
from medagent.training.config import load_config

# ---------------------------------------------------------------------------------------------- config


# ---------------------------------------------------------------------------------------------- data


def select_terms(graph, data: dict[str, Any]) -> list[int]:  # noqa: ANN001
    """The terms to train on: those of the tune split's cases (and their parents), or one HPO branch."""
    candidates = set(phenotype_terms(graph))
    if data.get("ids_file"):
        folder = Path(data["phenopackets"]).expanduser()
        ids = set((folder / data["ids_file"]).read_text().split())
        chosen: set[int] = set()
        for line in (folder / "dev.jsonl").read_text().splitlines():
            record = json.loads(line)
            if record["id"] in ids:
                for term in record["present_hpo"] + record["excluded_hpo"]:
                    i = graph.resolve(term)
                    if i is not None:
                        chosen.update([i, *graph.parents[i]])
        terms = sorted(chosen & candidates)
    else:
        root = graph.resolve(data["branch"])
        terms = sorted(i for i in candidates if graph.is_ancestor(root, i))
    terms = [i for i in terms if graph.synonyms[i] or graph.definitions[i]]
    return terms[: data["max_terms"]] if data.get("max_terms") else terms


def make_pairs(graph, terms: list[int], share: float) -> tuple[list[tuple[str, str]], list[tuple[str, int]]]:  # noqa: ANN001
    """Training pairs (anchor, label) and held-out queries (synonym, term) for the evaluation."""
    pairs, queries = [], []
    for i in terms:
        label = graph.labels[i]
        for text, _scope, kind in graph.synonyms[i]:
            if kind == "obsolete_synonym":
                continue
            if held_out(graph.term_ids[i], text, share):
                queries.append((text, i))
            else:
                pairs.append((text, label))
        if graph.definitions[i]:
            pairs.append((graph.definitions[i], label))
    return pairs, queries


def held_out_recall(model, graph, terms: list[int], queries: list[tuple[str, int]], share: float) -> float:  # noqa: ANN001
    """Top-1 recall of held-out synonyms against an index of labels and kept synonyms (as the linker builds it)."""
    from medagent.specialists.knowledge.embed import encode

    forms, owners = [], []
    for i in terms:
        forms.append(graph.labels[i])
        owners.append(i)
        for text, _scope, kind in graph.synonyms[i]:
            if kind != "obsolete_synonym" and not held_out(graph.term_ids[i], text, share):
                forms.append(text)
                owners.append(i)
    index = DenseIndex.build(model, forms, owners)
    _scores, rows = index.search(encode(model, [q for q, _ in queries]), 1)
    hits = [owners[r] == i for r, (_, i) in zip(rows[:, 0], queries, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


# ---------------------------------------------------------------------------------------------- main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 - read only
    cfg = load_config(config, overrides)
    run = setup(cfg)  # seed and device (training/common.py)
    if run.distributed:
        raise ConfigError("the knowledge recipe runs in one process (MiniLM fits one GPU); launch it without torchrun")
    device = str(run.device)
    output = Path(cfg["output_dir"]).expanduser()
    output.mkdir(parents=True, exist_ok=True)
    share = cfg["data"]["holdout_share"]

    # Graph and pairs.
    cache = Path(cfg["cache_dir"]).expanduser() if cfg.get("cache_dir") else None
    if cache is None:
        from medagent.tools.config import cache_root

        cache = cache_root()
    graph = load_graph(cache, Path(cfg["data"]["hpo_obo"]) if cfg["data"].get("hpo_obo") else None)
    terms = select_terms(graph, cfg["data"])
    pairs, queries = make_pairs(graph, terms, share)
    print(f"{len(terms)} terms, {len(pairs)} training pairs, {len(queries)} held-out synonyms")

    # Model and the base embedder's recall (the number to beat).
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = load_embedder(Path(cfg["model"]["base"]) if cfg["model"].get("base") else None, device)
    if cfg["model"].get("max_seq_length"):
        # Definitions run to a hundred tokens; labels and synonyms to ten. A cap keeps CPU steps short.
        model.max_seq_length = int(cfg["model"]["max_seq_length"])
    before = held_out_recall(model, graph, terms, queries, share)
    loss_fn = MultipleNegativesRankingLoss(model, scale=cfg["train"]["scale"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["train"]["lr"], weight_decay=cfg["train"]["weight_decay"])
    steps = cfg["train"]["steps"]
    warmup = max(1, int(cfg["train"]["warmup_ratio"] * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (steps - s) / max(1, steps - warmup))
    )

    # Loop: in-batch negatives, so a batch never holds the same label twice.
    model.train()
    batch_size = cfg["train"]["batch_size"]
    started = time.perf_counter()
    for step in range(steps):
        random.shuffle(pairs)
        batch, labels = [], set()
        for anchor, label in pairs:
            if label not in labels:
                batch.append((anchor, label))
                labels.add(label)
            if len(batch) == batch_size:
                break
        features = [model.preprocess([a for a, _ in batch]), model.preprocess([b for _, b in batch])]
        features = [{k: v.to(model.device) if torch.is_tensor(v) else v for k, v in f.items()} for f in features]
        loss = loss_fn(features, None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        if step % cfg["train"]["log_every"] == 0 or step == steps - 1:
            print(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - started:.0f} s)")
    run.finished("knowledge", steps, loss.item())
    model.eval()

    # Save in the format the linker loads, then measure the held-out recall again.
    model.save(str(output))
    after = held_out_recall(load_embedder(output, device), graph, terms, queries, share)
    metrics = {"terms": len(terms), "pairs": len(pairs), "held_out_queries": len(queries),
               "recall_at_1_base": before, "recall_at_1_trained": after, "steps": steps}  # fmt: skip
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(f"held-out synonym recall@1: base {before:.3f} -> trained {after:.3f}")
    return output
