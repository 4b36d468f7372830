"""Free text -> HPO terms with the span each came from, present or excluded.

Steps: exact and synonym matching of token sequences (longest match wins; then the same words in
another order; a qualifier after a comma read in front, "intellectual disability, severe"; two
modifiers sharing a head, "sparse or thin eyebrows"; then word variants that HPO's own forms use
interchangeably, "decreased"/"reduced", British spellings, word families "thinning"/"thin",
"dystonic"/"dystonia", and a one-letter slip in a long word no form uses, "hypertelorsim"),
negation scoped to its clause ("no fever", "denies chest pain", "X was
absent"; a cue in the middle of a list of findings reaches only its own item, and words inside a
linked finding are never cues), and dense retrieval with the MiniLM embedder over labels and synonyms for the phrases the
dictionary left unexplained (a less sure one backs off to what its close neighbours share).

A fixed, deterministic share of each term's synonyms can be held out of the dictionary and the
dense index (`holdout_share`): the phenopacket evaluation paraphrases with exactly those forms,
so it measures linking rather than string lookup.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medagent.specialists.knowledge.graph import PHENOTYPIC_ABNORMALITY, KnowledgeError, KnowledgeGraph

_TOKEN = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
# Clause ends: negation never crosses them.
_CLAUSE = re.compile(r"[.;:!?\n]|\b(?:but|however|although|though|except|whereas)\b", re.IGNORECASE)
_NEG_BEFORE = [
    "no", "not", "without", "denies", "denied", "deny", "denying", "negative for", "absence of", "free of",
    "ruled out", "rules out", "no evidence of", "no signs of", "no sign of", "never", "nor",
]  # fmt: skip
# Cues that deny only the words right after them ("non-motor seizure", "normal hearing, seizures").
_NEG_LOCAL = ["non", "normal"]
_NEG_AFTER = ["was absent", "were absent", "is absent", "are absent", "was not observed", "were not observed",
              "not present", "was excluded", "were excluded", "was ruled out", "were ruled out", "absent"]  # fmt: skip
_SEGMENT = re.compile(r",|\band\b|\bor\b|\bwith\b|\bpresents?\b|\bpresenting\b|\bhas\b|\bhad\b", re.IGNORECASE)
_STOP = {
    "a", "an", "the", "of", "in", "on", "at", "to", "is", "was", "were", "are", "be", "and", "or", "with", "his",
    "her", "their", "he", "she", "they", "patient", "year", "old", "man", "woman", "boy", "girl", "child", "male",
    "female", "infant", "presents", "present", "also", "some", "mild", "severe", "history", "no", "not",
}  # fmt: skip
_ENGLISH_HINTS = {"the", "with", "and", "of", "no", "a", "in", "has", "was", "is", "presents", "patient", "pain", "he",
                  "she", "for", "since", "on", "an", "her", "his", "had", "denies", "without", "at"}  # fmt: skip
# Function words of the languages clinicians most often write in besides English.
_FOREIGN_HINTS = {
    "der", "die", "das", "und", "mit", "seit", "unter", "ist", "nicht", "kein", "keine", "ein", "eine", "le", "la",
    "les", "et", "avec", "est", "une", "pas", "depuis", "el", "los", "las", "con", "y", "es", "una", "desde", "il",
    "della", "che", "sono", "ed", "em", "com", "uma", "não", "het", "een", "niet", "och", "med", "ikke",
}  # fmt: skip


def stem(token: str) -> str:
    """Lower case and a light plural fold, applied to dictionary and text alike."""
    token = token.lower()
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def tokens(text: str) -> list[tuple[str, int, int]]:
    return [(stem(m.group()), m.start(), m.end()) for m in _TOKEN.finditer(text)]


def form_key(text: str) -> tuple[str, ...]:
    return tuple(t for t, _, _ in tokens(text))


def held_out(term_id: str, synonym: str, share: float) -> bool:
    """Whether a synonym is reserved for evaluation: a stable hash, the same on every machine."""
    if share <= 0:
        return False
    digest = hashlib.sha1(f"{term_id}|{' '.join(form_key(synonym))}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < share


@dataclass
class Mention:
    id: str
    label: str
    span: tuple[int, int]
    text: str
    # "exact", "synonym", "word set", "coordinated", "inverted", "word variant", "dense", "dense (common ancestor)"
    method: str
    score: float
    negated: bool

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "span": [self.span[0], self.span[1]],
            "text": self.text,
            "method": self.method,
            "score": round(self.score, 3),
        }


def phenotype_terms(graph: KnowledgeGraph) -> list[int]:
    root = graph.index[PHENOTYPIC_ABNORMALITY]
    return [i for i in range(len(graph.term_ids)) if i != root and graph.is_ancestor(root, i)]


def surface_forms(graph: KnowledgeGraph, terms: list[int], holdout_share: float) -> list[tuple[str, int, str]]:
    """(form, term, kind) for labels and the synonyms not held out; obsolete synonyms left out."""
    forms = []
    for i in terms:
        forms.append((graph.labels[i], i, "exact"))
        for text, _scope, kind in graph.synonyms[i]:
            if kind == "obsolete_synonym" or held_out(graph.term_ids[i], text, holdout_share):
                continue
            forms.append((text, i, "synonym"))
    return forms


class Linker:
    """Dictionary + negation + dense retrieval over one graph (and optionally one embedder)."""

    def __init__(
        self,
        graph: KnowledgeGraph,
        holdout_share: float = 0.0,
        terms: list[int] | None = None,
        dense=None,  # noqa: ANN001 - DenseIndex or None
        embedder=None,  # noqa: ANN001 - SentenceTransformer or None
        dense_threshold: float = 0.80,
    ) -> None:
        self.graph = graph
        self.holdout_share = holdout_share
        self.terms = terms if terms is not None else phenotype_terms(graph)
        self.dictionary: dict[tuple[str, ...], tuple[int, str]] = {}
        forms = surface_forms(graph, self.terms, holdout_share)
        for text, i, kind in forms:
            key = form_key(text)
            if not key or (len(key) == 1 and (len(key[0]) < 3 or key[0] in _STOP)):
                continue
            # A label beats a synonym that another term shares; first come otherwise.
            if key not in self.dictionary or (kind == "exact" and self.dictionary[key][1] != "exact"):
                self.dictionary[key] = (i, kind)
        self.max_len = max(len(k) for k in self.dictionary)
        # Word order varies between wordings ("nail hypoplasia" / "hypoplasia of the nails"): a second
        # dictionary keyed by the set of content words catches those; exact keys are tried first.
        self.bags: dict[tuple[str, ...], int] = {}
        for key, (i, _kind) in self.dictionary.items():
            bag = _bag(key)
            if len(bag) >= 2:
                self.bags.setdefault(bag, i)
        # Word variants learnt from the kept forms themselves ("decreased"/"reduced", "tumour"/"tumor",
        # "hepatic"/"liver"): a third dictionary keyed by each word's variant class catches a wording
        # that differs from a known form only in such words. A key two terms share is dropped (ambiguous).
        # Three pairs and classes of four (not 4 and 3) were chosen on dev_tune_ids.txt: +1.2 points paraphrased F1,
        # precision unchanged.
        self.variants = word_variants(forms, min_pairs=3, max_class=4)
        self._near: dict[str, set[str]] | None = None  # one-deletion index of long form words, built on first use
        self._canon_words: set[str] | None = None
        self.canonical: dict[tuple[str, ...], int] = {}
        self.canonical_bags: dict[tuple[str, ...], int] = {}
        ambiguous: set[tuple[str, ...]] = set()
        ambiguous_bags: set[tuple[str, ...]] = set()
        for key, (i, _kind) in self.dictionary.items():
            ckey = self.canon(key)
            if self.canonical.setdefault(ckey, i) != i:
                ambiguous.add(ckey)
            cbag = _bag(ckey)
            if len(cbag) >= 2 and self.canonical_bags.setdefault(cbag, i) != i:
                ambiguous_bags.add(cbag)
        for ckey in ambiguous:
            del self.canonical[ckey]
        for cbag in ambiguous_bags:
            del self.canonical_bags[cbag]
        self.dense = dense
        self.embedder = embedder
        self.dense_threshold = dense_threshold
        self._vocabulary: set[str] | None = None
        self._vectors: dict[str, np.ndarray] = {}
        self._terms_set: set[int] | None = None
        self.backoff_below = 0.10  # how far under the threshold the common-ancestor vote reaches (0: off)
        self.backoff_margin = 0.03  # neighbours within this of the best one vote
        self.backoff_min_ic = 4.0  # a common ancestor less informative than this is not linked

    def dense_forms(self) -> tuple[list[str], list[int]]:
        forms = surface_forms(self.graph, self.terms, self.holdout_share)
        return [f for f, _, _ in forms], [i for _, i, _ in forms]

    # ---------------------------------------------------------------- linking
    def link(self, text: str) -> list[Mention]:
        if not text or not text.strip():
            raise KnowledgeError("no text to link (the history is empty)")
        words = tokens(text)
        english = sum(w in _ENGLISH_HINTS for w, _, _ in words)
        foreign = sum(w in _FOREIGN_HINTS for w, _, _ in words)
        if len(words) >= 5 and foreign >= 2 and foreign > english:
            raise KnowledgeError("the text does not look like English; the HPO linker only reads English")
        clause_ends = [m.start() for m in _CLAUSE.finditer(text)] + [len(text)]
        mentions: list[Mention] = []
        covered = np.zeros(len(text), dtype=bool)
        canonical: list[str] | None = None  # each word's variant class, worked out once when first needed
        k = 0
        while k < len(words):
            shared = self._coordinated(words, k, text)
            if shared is not None:  # "low or weak muscle tone": "low muscle tone", then "weak muscle tone"
                n, term = shared
                mentions.append(self._mention(term, words[k][1], words[k + n - 1][2], text, "coordinated", 1.0))
                covered[words[k][1] : words[k + n - 1][2]] = True
                k += 2
                continue
            hit = None
            for n in range(min(self.max_len, len(words) - k), 0, -1):
                key = tuple(w for w, _, _ in words[k : k + n])
                if key in self.dictionary:
                    spans_list = n > 1 and _PUNCT.search(text, words[k][1], words[k + n - 1][2])
                    if spans_list and not _ends_item(words, k + n, text):
                        continue  # "pharyngitis, recurrent pneumonia": the qualifier belongs to the next finding
                    hit = (n, *self.dictionary[key])
                    break
            if hit is None:
                for n in range(min(self.max_len + 2, len(words) - k), 1, -1):
                    if words[k][0] in _STOP or words[k + n - 1][0] in _STOP:
                        continue
                    if any(w in _BREAKS for w, _, _ in words[k : k + n]) or _PUNCT.search(
                        text, words[k][1], words[k + n - 1][2]
                    ):
                        continue  # a word set never spans two listed findings
                    bag = _bag(tuple(w for w, _, _ in words[k : k + n]))
                    if len(bag) >= 2 and bag in self.bags:
                        hit = (n, self.bags[bag], "word set")
                        break
            if hit is None:  # "philtrum, smooth": no term for the head alone, one for both
                head = next((n for n in range(1, min(self.max_len, len(words) - k - 1) + 1)
                             if text[words[k + n - 1][2] : words[k + n][1]].strip() == ","), None)  # fmt: skip
                if head and words[k][0] not in _STOP and not any(w in _BREAKS for w, _, _ in words[k : k + head]):
                    hit = self._inverted(words, k, (head, -1, ""), text)
            if hit is None:
                if canonical is None:
                    near = [self.near_word(spelling(w)) for w, _, _ in words]
                    canonical = [self.canon_word(w) for w in near]
                    single = [self.canon((w,))[0] for w in near]
                hit = self._variant_hit(words, canonical, k, text, single)
            else:
                hit = self._inverted(words, k, hit, text) or hit
            if hit is None:
                k += 1
                continue
            n, term, kind = hit
            start, end = words[k][1], words[k + n - 1][2]
            mentions.append(self._mention(term, start, end, text, kind, 1.0))
            covered[start:end] = True
            k += n
        if self.dense is not None and self.embedder is not None:
            mentions += self._dense(text, covered)
        # Words inside a linked phenotype are not cues: "partial absence of eyelashes, ..., hand tremor"
        # does not deny the tremor, nor does "milestones not achieved" the findings listed after it.
        linked = np.zeros(len(text), dtype=bool)
        starts = [m.span[0] for m in mentions]
        for mention in mentions:
            linked[mention.span[0] : mention.span[1]] = True
        for mention in mentions:
            mention.negated = _negated(text, mention.span, clause_ends, linked, starts)
        mentions.sort(key=lambda m: m.span)
        return mentions

    def canon_word(self, word: str) -> str:
        """A word's variant class: spelling folded, the class HPO's forms put it in, then its word family."""
        word = spelling(word)
        root = family(self.variants.get(word, word))
        return self.variants.get(root, root)

    def canon(self, key: tuple[str, ...]) -> tuple[str, ...]:
        if len(key) == 1:  # one word is read by its spelling only: "mouth" is not "mouthing"
            word = spelling(key[0])
            return (word,)
        return tuple(map(self.canon_word, key))

    def near_word(self, word: str) -> str:
        """A long word (spelling folded) no dictionary form uses, read as the one form word a single letter away
        (added, dropped, changed or two swapped: "hypertelorsim", "microcephally"); unchanged when there is none
        or more than one."""
        if self._canon_words is None:
            self._canon_words = {spelling(w) for key in self.dictionary for w in key}
            self._near = {}
            for w in self._canon_words:
                if len(w) >= _NEAR_MIN - 1 and w.isalpha():
                    for cut in {w[:i] + w[i + 1 :] for i in range(len(w))} | {w}:
                        self._near.setdefault(cut, set()).add(w)
        if len(word) < _NEAR_MIN or not word.isalpha() or word in self._canon_words:
            return word
        found = set(self._near.get(word, ()))
        for cut in {word[:i] + word[i + 1 :] for i in range(len(word))}:
            found |= self._near.get(cut, set())
        found = {w for w in found if w[0] == word[0]}
        return found.pop() if len(found) == 1 else word

    def _coordinated(self, words: list[tuple[str, int, int]], k: int, text: str) -> tuple[int, int] | None:
        """Two modifiers sharing one head, "A or B C" / "A and B C": the term "A C" names, over the whole span
        (the loop then reads "B C" on its own)."""
        if k + 3 >= len(words) or words[k + 1][0] not in ("or", "and") or words[k][0] in _STOP | _NEG_WORDS:
            return None
        if _PUNCT.search(text, words[k][1], words[k + 2][2]) or words[k + 2][0] in _STOP | _NEG_WORDS:
            return None
        for n in range(min(self.max_len - 1, len(words) - k - 3), 0, -1):
            tail = words[k + 3 : k + 3 + n]
            if any(w in _BREAKS for w, _, _ in tail) or _PUNCT.search(text, words[k + 2][1], tail[-1][2]):
                continue
            key = (words[k][0],) + tuple(w for w, _, _ in tail)
            if key in self.dictionary:
                return n + 3, self.dictionary[key][0]
        return None

    def _inverted(
        self, words: list[tuple[str, int, int]], k: int, hit: tuple[int, int, str], text: str
    ) -> tuple[int, int, str] | None:
        """A finding followed by its qualifier after a comma ("intellectual disability, severe", "philtrum, smooth"),
        the way indexes and code lists write it: the qualifier read in front names a more precise term. The
        qualifier is one or two words that end their list item, so "ataxia, severe hypotonia" is left alone."""
        n = hit[0]
        j = k + n
        if j >= len(words) or text[words[j - 1][2] : words[j][1]].strip() != ",":
            return None
        head = tuple(w for w, _, _ in words[k:j])
        for m in (2, 1):
            if j + m > len(words) or any(w in _BREAKS or w in _NEG_WORDS for w, _, _ in words[j : j + m]):
                continue
            if _PUNCT.search(text, words[j][1], words[j + m - 1][2]):
                continue
            if not _ends_item(words, j + m, text):
                continue  # the qualifier does not end its item: it belongs to the next finding
            qualifier = tuple(w for w, _, _ in words[j : j + m])
            if qualifier in self.dictionary or self.canon(qualifier) in self.canonical:
                continue  # "tremor, ataxia": a list of two findings, not a qualified one
            key = qualifier + head
            if key in self.dictionary:
                return n + m, self.dictionary[key][0], "inverted"
            ckey = self.canon(key)
            if ckey in self.canonical:
                return n + m, self.canonical[ckey], "inverted"
        return None

    def _variant_hit(
        self, words: list[tuple[str, int, int]], canonical: list[str], k: int, text: str, single: list[str]
    ) -> tuple[int, int, str] | None:
        """The longest run from word k whose variant classes (in order, or as a set) name one term."""
        for n in range(min(self.max_len + 2, len(words) - k), 0, -1):
            run = words[k : k + n]
            if run[0][0] in _STOP or run[-1][0] in _STOP or (n == 1 and len(run[0][0]) < 4):
                continue
            if n > 1 and (any(w in _BREAKS for w, _, _ in run) or _PUNCT.search(text, run[0][1], run[-1][2])):
                continue
            ckey = tuple(canonical[k : k + n]) if n > 1 else (single[k],)
            if ckey in self.canonical:
                return n, self.canonical[ckey], "word variant"
            cbag = _bag(ckey)
            if len(cbag) >= 2 and cbag in self.canonical_bags:
                return n, self.canonical_bags[cbag], "word variant"
        return None

    def _mention(self, term: int, start: int, end: int, text: str, method: str, score: float) -> Mention:
        return Mention(self.graph.term_ids[term], self.graph.labels[term], (start, end), text[start:end], method,
                       score, False)  # fmt: skip

    def vocabulary(self) -> set[str]:
        """Every token of the dictionary's forms (held-out forms are not in the dictionary)."""
        if self._vocabulary is None:
            self._vocabulary = {w for key in self.dictionary for w in key}
        return self._vocabulary

    def _encode(self, phrases: list[str]) -> np.ndarray:
        """One encode call for all phrases not seen before; seen ones come from a bounded cache."""
        from medagent.specialists.knowledge.embed import encode

        new = list(dict.fromkeys(p for p in phrases if p not in self._vectors))
        if new:
            for phrase, vector in zip(new, encode(self.embedder, new), strict=True):
                if len(self._vectors) >= _VECTOR_CACHE:
                    self._vectors.pop(next(iter(self._vectors)))  # oldest first
                self._vectors[phrase] = vector
        return np.stack([self._vectors[p] for p in phrases])

    def _dense(self, text: str, covered: np.ndarray) -> list[Mention]:
        """Embed the phrases no dictionary form explained, and keep confident nearest terms."""
        phrases = []
        bounds = [0] + [m.end() for m in _CLAUSE.finditer(text)] + [len(text)]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            cuts = [lo] + [x for m in _SEGMENT.finditer(text, lo, hi) for x in (m.start(), m.end())] + [hi]
            for a, b in zip(cuts[::2], cuts[1::2], strict=True):
                piece = text[a:b]
                words = [(w, s, e) for w, s, e in tokens(piece) if not covered[a + s : a + e].any()]
                content = [w for w in words if w[0] not in _STOP and w[0] not in _NEG_WORDS and not w[0].isdigit()]
                if not content or all(w[0] in _FILLER for w in content):
                    continue  # "examination showed", "there": nothing a phenotype could be
                if len(content) == 1 and content[0][0] not in self.vocabulary():
                    continue  # one word no HPO form uses: its embedding lands anywhere (and costs time)
                if any(w[0].isdigit() for w in words):
                    continue  # measurements are read by value (findings.py), not by what they sound like
                while content and content[0][0] in _FILLER:  # "noted", "revealed": the frame, not the finding
                    content = content[1:]
                while content and content[-1][0] in _FILLER:
                    content = content[:-1]
                if not content:
                    continue
                start, end = a + content[0][1], a + content[-1][2]
                phrases.append((start, end, len(content)))
        if not phrases:
            return []
        vectors = self._encode([text[s:e] for s, e, _ in phrases])
        scores, rows = self.dense.search(vectors, _DENSE_K)
        found = []
        for (start, end, size), row_scores, row_ids in zip(phrases, scores, rows, strict=True):
            # One word carries little context ("crying" lands near "bloody tears"): ask for more similarity.
            needed = self.dense_threshold if size > 1 else max(self.dense_threshold, 0.85)
            sign = polarity(text[start:end])
            # Embeddings hardly see direction ("increased width of the forehead" lands on "Narrow
            # forehead"): a neighbour whose wording points the other way is passed over.
            near = [(float(score), self.dense.terms[row]) for score, row in zip(row_scores, row_ids, strict=True)
                    if row >= 0 and not (sign and polarity(self.dense.forms[row]) == -sign)]  # fmt: skip
            if not near:
                continue
            best, term = near[0]
            if best >= needed:
                found.append(self._mention(term, start, end, text, "dense", best))
                continue
            if best < needed - self.backoff_below or size == 1:
                continue  # one word is too little to vote on ("muscles" -> "Firm muscles")
            # Less sure: the neighbours close to the best one vote, and their most informative common
            # ancestor is linked (a sibling's guess becomes its parent, which is still true).
            close = {t for score, t in near if score >= best - self.backoff_margin}
            common = self._common_ancestor(close)
            if common is not None and self.graph.ic[common] >= self.backoff_min_ic:
                found.append(self._mention(common, start, end, text, "dense (common ancestor)", best))
        return found

    def _common_ancestor(self, terms: set[int]) -> int | None:
        shared = None
        for t in terms:
            anc = set(self.graph.ancestors(t).tolist())
            shared = anc if shared is None else shared & anc
        shared = (shared or set()) & self._phenotype_set()
        return max(shared, key=lambda i: self.graph.ic[i]) if shared else None

    def _phenotype_set(self) -> set[int]:
        if self._terms_set is None:
            self._terms_set = set(self.terms)
        return self._terms_set


_BREAKS = {"and", "or", "with", "but", "no", "not", "without", "nor"}
# Words of the narrative's frame, never a phenotype on their own: phrases of only these are not embedded.
_FILLER = {
    "examination", "exam", "show", "showed", "shows", "shown", "found", "reveal", "revealed", "reveals", "report",
    "reported", "reports", "result", "laboratory", "lab", "test", "tests", "there", "both", "noticed", "confirmed",
    "episode", "episodes", "finding", "findings", "observed", "noted", "note", "since", "age", "month", "week", "day",
    "brother", "sister", "mother", "father", "parent", "family", "son", "daughter", "she", "he", "her", "his", "it",
    "this", "that", "these", "those", "who", "which", "when", "after", "before", "during", "had", "have", "has",
}  # fmt: skip
_DENSE_K = 8  # neighbours looked at per phrase (the first one of the same direction is taken)
_UP = {"increased", "increase", "elevated", "high", "higher", "raised", "large", "larger", "enlarged", "enlargement",
       "big", "broad", "wide", "widely", "widened", "long", "tall", "excessive", "excess", "thick", "thickened", "prominent",
       "deep", "accelerated", "hyperplasia", "hypertrophy", "overgrowth", "macro", "more"}  # fmt: skip
_DOWN = {"decreased", "decrease", "reduced", "reduction", "low", "lower", "small", "smaller", "narrow", "narrowed",
         "short", "thin", "close", "closely", "diminished", "shallow", "underdeveloped", "underdevelopment", "hypoplasia", "hypoplastic",
         "deficiency", "deficient", "loss", "lack", "fewer", "less", "micro", "atrophy", "absent", "absence"}  # fmt: skip


def polarity(text: str) -> int:
    """+1 if a wording says more/larger, -1 if less/smaller, 0 if neither or both.

    Greek and Latin prefixes count too: "hypertelorism" says more, "microphthalmia" says less.
    """
    words = {w for w, _, _ in tokens(text)}
    up = bool(words & _UP) or any(w.startswith(_UP_PREFIX) or w.endswith("megaly") for w in words)
    down = bool(words & _DOWN) or any(w.startswith(_DOWN_PREFIX) for w in words)
    return 0 if up == down else 1 if up else -1


_UP_PREFIX = ("hyper", "macro", "mega")
_DOWN_PREFIX = ("hypo", "micro", "oligo")


def spelling(word: str) -> str:
    """British to American spelling, on text and dictionary alike: "oedema", "haemorrhage", "generalised"."""
    if len(word) < 5:
        return word
    word = re.sub(r"(?<=[a-z])ae(?=[a-z])|^ae(?=[a-z]{3})", "e", word)
    word = re.sub(r"(?<=[a-z])oe(?=[a-z]{2})|^oe(?=[a-z]{3})", "e", word)
    word = re.sub(r"(?<=[a-z]{3})oea$", "ea", word)  # diarrhoea, dyspnoea, apnoea
    word = re.sub(r"(?<=[a-z]{4})ae$", "a", word)  # Latin plurals: patellae, vertebrae, pinnae
    word = re.sub(r"(?<=[a-z])(f|t)ee(th|t)$", r"\1oo\2", word)  # clubfeet, (wisdom)teeth: irregular plurals
    word = re.sub(r"is(e|ed|ing|ation)$", r"iz\1", word)
    return re.sub(r"([^aeiou])our$", r"\1or", word)


_FAMILY = ("ations", "ation", "ments", "ment", "ings", "ing", "ical", "ed", "ic", "ia", "y")
_GREEK = (("plastic", "plasia", "plas"), ("otic", "osis", "os"), ("etic", "esis", "es"))
_NEAR_MIN = 8  # letters a word needs before a one-letter slip is forgiven (shorter words are too alike)


def family(word: str) -> str:
    """The stem a word shares with its derivatives: "thinning"/"thin", "dystonic"/"dystonia", "atrophic"/"atrophy",
    "hypoplastic"/"hypoplasia", "fibrotic"/"fibrosis".

    Only on the variant path, and keys two terms come to share are dropped there, so a stem that joins two
    meanings costs a link, not a wrong one."""
    if len(word) < 6 or not word.isalpha():
        return word
    # Greek pairs an adjective and its noun by a changed ending: hypoplastic/hypoplasia, fibrotic/fibrosis.
    for adjective, noun, root in _GREEK:
        for ending in (adjective, noun):
            if word.endswith(ending) and len(word) - len(ending) >= 3:
                return word[: -len(ending)] + root
    for suffix in _FAMILY:
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            base = word[: -len(suffix)]
            if base[-1] == base[-2] and base[-1] not in "aeiouls":
                base = base[:-1]  # thinning -> thin, not thinn
            return base
    return word


def word_variants(forms: list[tuple[str, int, str]], min_pairs: int = 4, max_class: int = 3) -> dict[str, str]:
    """Word -> its variant class's representative, learnt from forms of one term that differ in one word.

    Two words are variants when at least `min_pairs` terms have two forms that differ only there
    ("Decreased X" / "Reduced X") and no form uses both. Words of opposite direction ("increased" / "decreased") are never
    joined, and a class whose words point different ways is not formed.
    """
    from collections import Counter, defaultdict
    from itertools import combinations

    keys: dict[int, set[tuple[str, ...]]] = defaultdict(set)
    for text, term, _kind in forms:
        key = tuple(map(spelling, form_key(text)))
        if key:
            keys[term].add(key)
    pairs: Counter = Counter()
    for term_keys in keys.values():
        for a, b in combinations(sorted(term_keys), 2):
            if len(a) == len(b):
                diff = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
                if len(diff) == 1:
                    pairs[tuple(sorted(diff[0]))] += 1
    # Variants stand in for each other: words that one form uses together ("fractured ... bone") are not.
    used_in: dict[str, set[int]] = defaultdict(set)
    for n, key in enumerate(key for term_keys in keys.values() for key in term_keys):
        for w in key:
            used_in[w].add(n)
    for pair in [p for p, c in pairs.items() if c >= min_pairs]:
        if used_in[pair[0]] & used_in[pair[1]] or polarity(pair[0]) * polarity(pair[1]) == -1:
            del pairs[pair]
    parent: dict[str, str] = {}

    def find(w: str) -> str:
        while parent.get(w, w) != w:
            w = parent[w]
        return w

    frequency = Counter(w for term_keys in keys.values() for key in term_keys for w in key)
    size: Counter = Counter()
    for (a, b), count in pairs.most_common():
        if count < min_pairs:
            break
        ra, rb = find(a), find(b)
        # Strongest pairs first, and small classes: chains of weak pairs drift ("small" - "short" - "thin").
        if ra != rb and polarity(ra) * polarity(rb) != -1 and size[ra] + size[rb] + 2 <= max_class:
            keep, drop = (ra, rb) if frequency[ra] >= frequency[rb] else (rb, ra)
            parent[drop] = keep
            size[keep] += size[drop] + 1
    return {w: find(w) for w in parent}


_VECTOR_CACHE = 20000  # phrase embeddings kept (about 30 MB)
_PUNCT = re.compile(r"[,;:.()!?]")


def _ends_item(words: list[tuple[str, int, int]], j: int, text: str) -> bool:
    """Whether the words before `j` end a listed finding: the text ends, or punctuation or a joining word follows."""
    return j >= len(words) or bool(_PUNCT.search(text, words[j - 1][2], words[j][1])) or words[j][0] in _BREAKS


def _bag(key: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({w for w in key if w not in _STOP}))


_NEG_KEYS = [form_key(t) for t in _NEG_BEFORE]
_NEG_AFTER_KEYS = [form_key(t) for t in _NEG_AFTER]
_NEG_WORDS = {w for phrase in _NEG_BEFORE + _NEG_AFTER + _NEG_LOCAL for w in phrase.split()}


def _negated(text: str, span: tuple[int, int], clause_ends: list[int], linked: np.ndarray, starts: list[int]) -> bool:
    """Whether a cue denies the mention at `span`. A cue that opens its clause ("no fever, rash or cough")
    reaches the clause's end; one in the middle of a list of findings ("seizures, no speech, hypotonia")
    reaches only to the next comma."""
    start, end = span
    clause_start = max([0] + [c + 1 for c in clause_ends if c < start])
    clause_end = min(c for c in clause_ends if c >= end)
    kept = [(w, clause_start + s) for w, s, _ in tokens(text[clause_start:start]) if not linked[clause_start + s]]
    words = [w for w, _ in kept]
    for cue in _NEG_KEYS:
        for i in range(len(words) - len(cue) + 1):
            if tuple(words[i : i + len(cue)]) == cue:
                at = kept[i][1]
                opens = not any(clause_start <= s < at for s in starts)
                if opens or "," not in text[at:start]:
                    return True
    before = " ".join(words)
    after = " ".join(w for w, s, _ in tokens(text[end:clause_end]) if not linked[end + s])
    before_pad, after_pad = f" {before} ", f" {after} "
    if any(before_pad.endswith(f" {t} ") for t in _NEG_LOCAL):
        return True
    return any(after_pad.startswith(f" {' '.join(cue)} ") for cue in _NEG_AFTER_KEYS)


def dense_cache_folder(graph_folder: Path, embedder_key: str, holdout_share: float, n_terms: int) -> Path:
    return graph_folder / f"dense_{embedder_key}_holdout{holdout_share:.2f}_{n_terms}terms_hnsw"


def split_mentions(
    mentions: list[Mention], graph: KnowledgeGraph | None = None
) -> tuple[list[Mention], list[Mention]]:
    """Present and excluded mentions; a term both affirmed and negated counts as present.

    Given the graph, an excluded term that a present one implies (its ancestor: "no seizures" beside
    "myoclonic seizures") is dropped too: the text contradicts itself there, and the finding stated
    affirmatively is kept, as for the same term.
    """
    present = [m for m in mentions if not m.negated]
    kept = set(consistent_excluded(graph, [m.id for m in present], [m.id for m in mentions if m.negated]))
    excluded = [m for m in mentions if m.negated and m.id in kept]
    return present, excluded


def consistent_excluded(graph: KnowledgeGraph | None, present: list[str], excluded: list[str]) -> list[str]:
    """The excluded ids that no present id equals or implies (is below)."""
    ids = set(present)
    left = [t for t in dict.fromkeys(excluded) if t not in ids]
    if graph is None:
        return left
    implied = {int(a) for t in present if (i := graph.resolve(t)) is not None for a in graph.ancestors(i)}
    return [t for t in left if graph.resolve(t) not in implied]
