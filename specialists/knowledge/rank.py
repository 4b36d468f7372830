"""Phenotypes -> ranked diseases, by information-content-weighted similarity with frequencies.

In the spirit of Phenomizer and LIRICAL: each present term q earns a disease the information
content of the most informative term it shares with the disease's annotations (q itself, when the
disease is annotated with q or something more specific; otherwise an ancestor), adjusted by the
log of how often the disease shows that feature. Excluded terms cost a disease that usually shows
them; diseases with very many annotations pay a small size penalty, since they match anything.
Every candidate keeps the per-term matches that explain its score: that is its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medagent.specialists.knowledge.graph import KnowledgeError, KnowledgeGraph


@dataclass(frozen=True)
class RankParams:
    alpha: float = 0.3  # weight of log(frequency) beside the information content
    gamma: float = 0.15  # penalty per excluded term: -gamma * ln(1 - frequency of x in the disease)
    beta: float = 0.5  # discount of a match through a shared ancestor rather than the term itself
    delta: float = 0.0  # size penalty: delta * log(number of the disease's annotations)
    min_frequency: float = 0.02  # floor so a rare feature still counts as a match
    exact_bonus: float = 1.0  # added per present term the disease is annotated with exactly (not below it)
    excluded_from: float = 0.95  # an excluded feature costs only diseases that show it at least this often


@dataclass
class Match:
    term: str
    label: str
    matched: str
    matched_label: str
    kind: str  # "exact", "more specific in disease", "shared ancestor", "excluded but typical"
    frequency: float
    contribution: float


@dataclass
class Candidate:
    disease_id: str
    name: str
    score: float
    matches: list[Match]


def check_terms(graph: KnowledgeGraph, present: list[str], excluded: list[str]) -> tuple[list[int], list[int]]:
    """Resolve ids (alt ids included); unknown or contradictory ones are a clear error."""
    unknown = [t for t in present + excluded if graph.resolve(t) is None]
    if unknown:
        raise KnowledgeError(f"unknown HPO term id(s): {', '.join(unknown)} (expected ids like HP:0001250)")
    p = list(dict.fromkeys(graph.resolve(t) for t in present))  # type: ignore[misc]
    x = list(dict.fromkeys(graph.resolve(t) for t in excluded))  # type: ignore[misc]
    clashes = [graph.term_ids[i] for i in x if any(graph.is_ancestor(i, j) for j in p)]
    if clashes:
        raise KnowledgeError(
            "contradictory phenotypes: "
            + ", ".join(f"{t} ({graph.labels[graph.index[t]]})" for t in clashes)
            + " excluded but present (itself or a more specific term)"
        )
    return p, x  # type: ignore[return-value]


def _term_scores(graph: KnowledgeGraph, q: int, params: RankParams, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best score per disease for present term q, and which ancestor column gave it."""
    ancestors = graph.ancestors(q)
    block = graph.closure[:, ancestors].toarray()[rows]  # diseases x ancestors, frequency or 0
    with np.errstate(divide="ignore"):
        values = graph.ic[ancestors][None, :] + params.alpha * np.log(np.maximum(block, params.min_frequency))
    values = np.where(block > 0, np.maximum(values, 0.0), 0.0)
    values[:, ancestors != q] *= params.beta
    best = values.argmax(axis=1)
    score = values[np.arange(len(rows)), best]
    if params.exact_bonus:
        score = score + params.exact_bonus * (graph.direct()[:, [q]].toarray()[rows, 0] > 0)
    return score, ancestors[best]


def _excluded_penalty(frequency: np.ndarray, params: RankParams) -> np.ndarray:
    # LIRICAL's excluded-feature ratio (1 - f) / (1 - background), background ~ 0: only features a
    # disease (nearly) always shows cost much; a cohort's occasional feature barely counts.
    # Measured on the tune split: penalising occasional features hurts, because case reports list as
    # "excluded" exactly the features a disease is known for in other patients.
    penalty = -params.gamma * np.log(1.0 - np.minimum(frequency, 0.95))
    return np.where(frequency >= params.excluded_from, penalty, 0.0)


def rank(
    graph: KnowledgeGraph,
    present: list[str],
    excluded: list[str] = [],  # noqa: B006 - read only
    top: int = 10,
    sources: tuple[str, ...] = ("OMIM", "ORPHA"),
    params: RankParams = RankParams(),
) -> list[Candidate]:
    """Rank diseases of the given sources for these present and excluded HPO ids."""
    p, x = check_terms(graph, present, excluded)
    if not p:
        raise KnowledgeError("no present phenotypes to rank diseases by (only excluded ones were given)")
    rows = np.array([i for i, d in enumerate(graph.disease_ids) if d.split(":")[0] in sources], dtype=np.int64)
    sizes = np.array([len(graph.annotations[r]) for r in rows], dtype=np.float32)
    total = -params.delta * np.log(np.maximum(sizes, 1.0))
    per_term = []
    for q in p:
        score, matched = _term_scores(graph, q, params, rows)
        total = total + score
        per_term.append((q, score, matched))
    penalties = []
    for xi in x:
        freq = graph.closure[:, [xi]].toarray()[rows, 0]
        penalty = _excluded_penalty(freq, params)
        total = total - penalty
        penalties.append((xi, penalty, freq))
    order = np.argsort(-total, kind="stable")[:top]
    candidates = []
    for k in order:
        d = int(rows[k])
        direct = set(graph.annotations[d].tolist())
        matches = []
        for q, score, matched in per_term:
            if score[k] <= 0:
                continue
            m = int(matched[k])
            kind = "exact" if m == q and q in direct else "more specific in disease" if m == q else "shared ancestor"
            matches.append(
                Match(
                    term=graph.term_ids[q],
                    label=graph.labels[q],
                    matched=graph.term_ids[m],
                    matched_label=graph.labels[m],
                    kind=kind,
                    frequency=round(float(graph.closure[d, m]), 3),
                    contribution=round(float(score[k]), 3),
                )
            )
        for xi, penalty, freq in penalties:
            if penalty[k] > 0:
                matches.append(
                    Match(
                        term=graph.term_ids[xi],
                        label=graph.labels[xi],
                        matched=graph.term_ids[xi],
                        matched_label=graph.labels[xi],
                        kind="excluded but typical",
                        frequency=round(float(freq[k]), 3),
                        contribution=-round(float(penalty[k]), 3),
                    )
                )
        matches.sort(key=lambda m: -m.contribution)
        candidates.append(Candidate(graph.disease_ids[d], graph.disease_names[d], round(float(total[k]), 3), matches))
    return candidates


def rank_all_scores(
    graph: KnowledgeGraph,
    present: list[str],
    excluded: list[str],
    rows: np.ndarray,
    params: RankParams = RankParams(),
) -> np.ndarray:
    """Scores for every disease row (evaluation: the rank of the right answer is wanted)."""
    p, x = check_terms(graph, present, excluded)
    sizes = np.array([len(graph.annotations[r]) for r in rows], dtype=np.float32)
    total = -params.delta * np.log(np.maximum(sizes, 1.0))
    for q in p:
        total = total + _term_scores(graph, q, params, rows)[0]
    for xi in x:
        total = total - _excluded_penalty(graph.closure[:, [xi]].toarray()[rows, 0], params)
    return total
