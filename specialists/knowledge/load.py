"""Loading the graph and the linker with its dense index, each cached on disk under the cache root.

Nothing is kept in memory here: callers hold what they load in a model pool."""

from __future__ import annotations

from pathlib import Path

from medagent.specialists.knowledge.embed import DenseIndex, embedder_id, load_embedder
from medagent.specialists.knowledge.graph import KnowledgeGraph, find_obo, load_graph, release_key
from medagent.specialists.knowledge.link import Linker, dense_cache_folder


def graph_folder(cache_dir: Path, obo_path: Path | None = None) -> Path:
    return cache_dir / "knowledge" / release_key(find_obo(obo_path))


def dense_folder(cache_dir: Path, obo_path: Path | None, embedder_path: Path | None, holdout_share: float,
                 n_terms: int) -> Path:
    """Where the dense index of a linker over `n_terms` terms is cached."""
    return dense_cache_folder(graph_folder(cache_dir, obo_path), embedder_id(embedder_path), holdout_share, n_terms)


def load_linker(
    cache_dir: Path,
    obo_path: Path | None = None,
    holdout_share: float = 0.0,
    dense: bool = True,
    embedder_path: Path | None = None,
    dense_threshold: float = 0.80,
    terms: list[int] | None = None,
    graph: KnowledgeGraph | None = None,
    embedder=None,  # noqa: ANN001 - a SentenceTransformer already loaded
) -> Linker:
    """A linker over the cached graph; the dense index is built on first use and cached beside it.

    `terms` restricts the linker to some terms (tests use a small branch so the index builds in seconds).
    `graph` and `embedder`, when given, are used instead of loading them (a caller's pool holds them).
    """
    graph = graph if graph is not None else load_graph(cache_dir, obo_path)
    linker = Linker(graph, holdout_share=holdout_share, terms=terms, dense_threshold=dense_threshold)
    if dense:
        embedder = embedder if embedder is not None else load_embedder(embedder_path)
        folder = dense_folder(cache_dir, obo_path, embedder_path, holdout_share, len(linker.terms))
        index = DenseIndex.load(folder)
        if index is None:
            forms, form_terms = linker.dense_forms()
            index = DenseIndex.build(embedder, forms, form_terms)
            index.save(folder)
        linker.dense, linker.embedder = index, embedder
    return linker
