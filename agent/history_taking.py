"""History taking for chat: which question best separates the leading diagnoses, and when to stop.

The candidates come from the latest `knowledge.rank` evidence. For each phenotype annotated to any of
the top candidates (and not yet known or asked), its separation is the information content of the
term times the spread of its annotation frequency across the candidates, weighted by their rank.
The question with the largest separation is asked, and its reason (the frequencies) is logged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medagent.tools.contracts import Evidence

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
    differential = ranking.payload.get("differential", [])
    if len(differential) < 2:
        return None
    first, second = differential[0].get("score") or 0.0, differential[1].get("score") or 0.0
    if first > 0 and (first - second) / first >= ENOUGH_MARGIN and len(ranking.payload.get("present", [])) >= MIN_PRESENT:
        return (f"I have enough to conclude for now: {differential[0]['name']} leads "
                f"({first:.2f} vs {second:.2f} for {differential[1]['name']}) [{ranking.id}].")
    return None


def next_question(graph, ranking: Evidence, asked: set[str]) -> Question | None:  # noqa: ANN001 - KnowledgeGraph
    differential = ranking.payload.get("differential", [])[:TOP_CANDIDATES]
    rows, names = [], []
    for candidate in differential:
        code = next((c["id"] for c in candidate.get("codes", []) if c["id"] in graph.disease_index), None)
        if code is not None:
            rows.append(graph.disease_index[code])
            names.append(candidate["name"])
    if len(rows) < 2:
        return None
    known = {graph.resolve(t) for t in [*ranking.payload.get("present", []), *ranking.payload.get("excluded", [])]}
    known.discard(None)
    terms = sorted({int(t) for r in rows for t in graph.annotations[r]} - known - {graph.resolve(t) for t in asked})
    # Skip terms that are ancestors of what is already known: they add nothing.
    terms = [t for t in terms if not any(graph.is_ancestor(t, k) for k in known)]
    if not terms:
        return None
    frequencies = graph.closure[rows][:, terms].toarray()  # candidates x terms
    weights = 1.0 / np.arange(1, len(rows) + 1)
    weights /= weights.sum()
    mean = weights @ frequencies
    spread = np.sqrt(weights @ (frequencies - mean) ** 2)
    separation = spread * graph.ic[terms]
    best = int(np.argmax(separation))
    if separation[best] <= 0:
        return None
    term = terms[best]
    label = graph.labels[term]
    reason = f"{label} ({graph.term_ids[term]}) separates the leading candidates: " + ", ".join(
        f"{name} {frequency:.0%}" for name, frequency in zip(names, frequencies[:, best])
    ) + f" [{ranking.id}]"
    return Question(text=f"Does the patient have {label.lower()}?", reason=reason, term=graph.term_ids[term], label=label)


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
