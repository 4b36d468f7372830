"""History taking for chat: which question best separates the leading diagnoses, and when to stop.

The candidates come from the latest `knowledge.rank` evidence, weighted by rank (1, 1/2, 1/3, ...).
For each phenotype annotated to any of them (and not yet known or asked), a yes/no answer splits that
belief: P(yes) = sum of weight × frequency of the feature in each candidate. The question asked is the
one with the largest expected information gain (entropy before minus expected entropy after), so it
targets features that some leading candidates usually show and others do not — not merely rare ones.
Its reason (the frequency in each candidate) is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medagent.tools.contracts import Evidence
from medagent.tools.payloads import RankPayload

TOP_CANDIDATES = 5
ENOUGH_MARGIN = 0.35  # relative lead of the top candidate's score over the second that ends questioning
MIN_PRESENT = 3  # fewer linked present phenotypes than this = a thin case


@dataclass
class Question:
    text: str
    reason: str
    term: str | None = None
    label: str | None = None


def latest_ranking(evidence: Sequence[Evidence]) -> Evidence | None:
    return next((e for e in reversed(evidence) if e.tool == "knowledge.rank" and not e.error), None)


def enough(ranking: Evidence) -> str | None:
    """A sentence saying why no more questions are needed, or None."""
    ranked = RankPayload.of(ranking)
    differential = ranked.differential
    if len(differential) < 2:
        return None
    first, second = differential[0].score or 0.0, differential[1].score or 0.0
    if first > 0 and (first - second) / first >= ENOUGH_MARGIN and len(ranked.present) >= MIN_PRESENT:
        return (f"I have enough to conclude for now: {differential[0].name} leads "
                f"({first:.2f} vs {second:.2f} for {differential[1].name}) [{ranking.id}].")
    return None


def next_question(graph, ranking: Evidence, asked: set[str]) -> Question | None:  # noqa: ANN001 - KnowledgeGraph
    ranked = RankPayload.of(ranking)
    rows, names = [], []
    for candidate in ranked.differential[:TOP_CANDIDATES]:
        code = next((c.id for c in candidate.codes if c.id in graph.disease_index), None)
        if code is not None:
            rows.append(graph.disease_index[code])
            names.append(candidate.name)
    if len(rows) < 2:
        return None
    known = {graph.resolve(t) for t in [*ranked.present, *ranked.excluded]}
    known.discard(None)
    terms = sorted({int(t) for r in rows for t in graph.annotations[r]} - known - {graph.resolve(t) for t in asked})
    # Skip terms that are ancestors of what is already known: they add nothing.
    terms = [t for t in terms if not any(graph.is_ancestor(t, k) for k in known)]
    if not terms:
        return None
    frequencies = graph.closure[rows][:, terms].toarray()  # candidates x terms
    weights = 1.0 / np.arange(1, len(rows) + 1)
    weights /= weights.sum()
    gain = information_gain(weights, frequencies)
    best = int(np.argmax(gain))
    if gain[best] <= 1e-6:
        return None
    term = terms[best]
    label = graph.labels[term]
    reason = f"{label} ({graph.term_ids[term]}) separates the leading candidates: " + ", ".join(
        f"{name} {frequency:.0%}" for name, frequency in zip(names, frequencies[:, best])
    ) + f" [{ranking.id}]"
    return Question(text=f"Does the patient have {label.lower()}?", reason=reason, term=graph.term_ids[term], label=label)


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy (nats) of each column of a matrix of unnormalised weights."""
    total = p.sum(axis=0, keepdims=True)
    q = np.divide(p, total, out=np.zeros_like(p), where=total > 0)
    return -(q * np.log(np.where(q > 0, q, 1.0))).sum(axis=0)


def information_gain(weights: np.ndarray, frequencies: np.ndarray) -> np.ndarray:
    """Expected entropy reduction over the candidates from asking about each feature (one per column)."""
    yes = weights[:, None] * frequencies
    no = weights[:, None] * (1.0 - frequencies)
    p_yes = yes.sum(axis=0)
    prior = _entropy(weights[:, None])[0]
    return prior - (p_yes * _entropy(yes) + (1.0 - p_yes) * _entropy(no))


YES = ("yes", "yeah", "yep", "y", "correct", "true", "she does", "he does", "they do", "present", "positive")
NO = ("no", "nope", "n", "never", "not", "none", "absent", "negative", "denies", "she doesn't", "he doesn't")


def answer_to_history(reply: str, question: Question) -> str | None:
    """A yes/no reply to a phenotype question, as a history sentence the linker reads (None if unclear)."""
    words = reply.strip().lower().rstrip(".!").split(",")[0].strip()
    if question.label is None:
        return None
    if words in YES or words.startswith(("yes ", "yeah ")):
        return f"Reports {question.label.lower()}."
    if words in NO or words.startswith(("no ", "not ", "never ")):
        return f"No {question.label.lower()}."
    return None
