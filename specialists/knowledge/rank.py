"""Phenotypes -> ranked diseases, by information-content-weighted similarity with frequencies.

In the spirit of Phenomizer and LIRICAL: each present term q earns a disease the information
content of the most informative term it shares with the disease's annotations (q itself, when the
disease is annotated with q or something more specific; otherwise an ancestor), adjusted by the
log of how often the disease shows that feature. Excluded terms cost a disease that usually shows
them. The other direction counts too (Phenomizer's symmetric similarity): the share of the disease's
own, frequency-weighted features that the query explains (`reverse`, with a log-size term `delta`
that keeps large, well-described diseases from losing only for being large); fitted on the tune split.
Excluded terms that a disease (nearly) always shows cost it, LIRICAL-style (`gamma`).

An optional "pertinent negative" signal (`pertinent_negative`, off by default) does the opposite: an
excluded feature that a disease is known to show counts *for* it. Case reports state the absence of
exactly the features the suspected diseases are known for, so on the phenopacket tune split
(dev_tune_ids.txt) it is the strongest single signal (top-1 54.6 % -> 64.0 %). It is off because it
rewards a feature's absence: in a clinical note, "denies chest pain" would raise every disease with
chest pain. It measures how published cases are written, not medicine; the evaluation reports it as a
separate, labelled variant (`python -m medagent.evals.knowledge --pertinent-negative 25`).
Beside that sum, a hypergeometric enrichment term (how unlikely it is that a disease with this many
annotated terms shares this many of the query's terms by chance; hpo3's own baseline method) is
blended in with weight `hypergeom`: it normalises for annotation size in a calibrated way.
The patient's age and sex, when given, weigh the disease's annotated onset and mode of inheritance (a
three-year-old is not yet showing an adult-onset disease; a woman rarely an X-linked recessive one), as LIRICAL
weighs them; size and reverse coverage count only the disease's phenotypic features (not its inheritance or onset).
Every candidate keeps the per-term matches that explain its score: that is its evidence.

All diseases are scored at once with numpy over one dense slice of the closure matrix (the union of
the query terms' ancestors), so ten terms rank in a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse
from scipy.special import gammaln, logsumexp

from medagent.specialists.knowledge.graph import PHENOTYPIC_ABNORMALITY, KnowledgeError, KnowledgeGraph


@dataclass(frozen=True)
class RankParams:
    """Weights tuned on dev_tune_ids.txt only (listwise softmax fit of the linear blend, then a grid check)."""

    alpha: float = 0.6  # weight of log(frequency) beside the information content
    gamma: float = 0.15  # penalty per excluded term: -gamma * ln(1 - frequency of x in the disease)
    beta: float = 0.5  # discount of a match through a shared ancestor rather than the term itself
    delta: float = -3.0  # size term: -delta * log(number of the disease's annotations); paired with `reverse`
    reverse: float = 15.0  # weight of the reverse coverage: how much of the disease the query explains
    min_frequency: float = 0.02  # floor so a rare feature still counts as a match
    exact_bonus: float = 0.54  # added per present term the disease is annotated with exactly (not below it)
    # An excluded feature costs (gamma) only diseases that show it at least this often. LIRICAL counts every frequency:
    # measured on dev_tune_ids.txt that costs top-1 58.3 -> 57.8 % (at 0.17, "occasional" and up), and no penalty at all
    # would gain 0.2 %: case reports state absent the features the suspected diseases are known for. Kept at 0.95, so
    # that a hallmark stated absent still counts against a disease, as it must in a clinical note.
    excluded_from: float = 0.95
    hypergeom: float = 0.17  # weight of -ln p of the hypergeometric enrichment of the query in the disease
    pertinent_negative: float = 0.0  # bonus x share of the excluded terms the disease shows (off: see module docstring)
    # Weight of a measurement's counter-evidence: -counter * ln(1 - frequency) for every disease that shows the term a
    # measurement argues against (a low haemoglobin against polycythaemia), at any frequency: a lab value is an
    # observation, not a case report's choice of what to mention. Set by reasoning, not tuned: the phenopacket tune
    # split has no lab values. At 2.0 a hallmark (frequency >= 0.95: 6.0) weighs about one matched specific term.
    counter: float = 2.0
    negative_below: float = 1.01  # ... counted for features shown less often than this (1.01: all of them)
    # The patient's age and sex against the disease's onset and mode of inheritance (annotated in hpo3 under
    # HP:0003674 "Onset" and HP:0000005 "Mode of inheritance"): log likelihood ratios, tuned on dev_tune_ids.txt.
    # Measured on dev_tune_ids.txt (few cases are decided by age or sex; onset annotations are coarse): onset 0.5 leaves
    # top-1 and MRR unchanged (top-10 -0.1 %; 8 costs 0.1 % top-1), x_linked_female 1.0 adds 0.1 % top-1 (flat from 1
    # to 8), x_dominant_male costs 0.1 % top-1 at 2 and stays off. Set at modest log ratios the split does not contradict.
    onset: float = 0.5  # cost when the patient is younger than the disease's earliest annotated onset
    x_linked_female: float = 1.0  # cost for a girl or woman of a disease inherited only X-linked recessively / Y-linked
    x_dominant_male: float = 0.0  # cost for a boy or man of a disease inherited only X-linked dominantly


@dataclass
class Match:
    term: str
    label: str
    matched: str
    matched_label: str
    kind: str  # "exact", "more specific in disease", "shared ancestor", "excluded but typical", "pertinent negative",
    # "argued against by a measurement"
    frequency: float
    contribution: float


@dataclass
class Candidate:
    disease_id: str
    name: str
    score: float
    matches: list[Match]
    coverage: float = 0.0  # share of the disease's (frequency-weighted) features the query explains


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


# Earliest age (years) at which each HPO onset term begins, from the terms' definitions (antenatal ones: before 0).
ONSET_YEARS = {
    "HP:0030674": -0.75, "HP:0011460": -0.75, "HP:0011461": -0.75, "HP:0034199": -0.75, "HP:0034198": -0.6,
    "HP:0034197": -0.3, "HP:0003577": 0.0, "HP:0003623": 0.0, "HP:0003593": 28 / 365, "HP:0410280": 28 / 365,
    "HP:0011463": 1.0, "HP:0003621": 5.0, "HP:0003581": 16.0, "HP:0011462": 16.0, "HP:0025708": 16.0,
    "HP:0025709": 19.0, "HP:0025710": 25.0, "HP:0003596": 40.0, "HP:0003584": 60.0,
}  # fmt: skip
X_RECESSIVE, X_DOMINANT, Y_LINKED, X_LINKED = "HP:0001419", "HP:0001423", "HP:0001450", "HP:0001417"
MENDELIAN = ("HP:0000006", "HP:0000007", X_LINKED, X_RECESSIVE, X_DOMINANT, Y_LINKED, "HP:0001427")


@dataclass
class _Rows:
    """The closure and direct annotations restricted to the ranked diseases, built once per source set."""

    rows: np.ndarray
    closure: sparse.csc_matrix
    direct: sparse.csc_matrix
    log_size: np.ndarray  # ln(number of direct phenotypic annotations)
    terms_per_disease: np.ndarray  # closure entries per disease (hypergeometric "successes")
    population: float  # all closure entries (hypergeometric population)
    weighted: sparse.csr_matrix  # diseases x terms: frequency of each direct annotation
    weighted_ic: np.ndarray  # per disease: sum of frequency x information content of its annotations
    earliest_onset: np.ndarray  # per disease: earliest annotated onset in years (inf: none annotated)
    x_recessive_only: np.ndarray  # per disease: its only Mendelian modes are X-linked recessive / Y-linked
    x_dominant_only: np.ndarray  # per disease: its only Mendelian mode is X-linked dominant


def _rows_for(graph: KnowledgeGraph, sources: tuple[str, ...]) -> _Rows:
    cache = getattr(graph, "_rank_rows", None)
    if cache is None:
        cache = graph._rank_rows = {}  # type: ignore[attr-defined]
    if sources not in cache:
        rows = np.array([i for i, d in enumerate(graph.disease_ids) if d.split(":")[0] in sources], dtype=np.int64)
        closure = graph.closure.tocsr()[rows].tocsc()
        per_disease = np.diff(graph.closure.tocsr().indptr).astype(np.float64)
        # Size and reverse coverage count the disease's phenotypic features only: its mode of inheritance, onset and
        # course (hpo3 annotates them too) are nothing a case's phenotype list explains, yet they diluted coverage.
        # Measured on dev_tune_ids.txt: top-1 58.3 -> 58.6 %, MRR 0.626 -> 0.628 (with the excluded penalty as it was).
        phenotypic = np.zeros(len(graph.term_ids), dtype=bool)
        root = graph.index.get(PHENOTYPIC_ABNORMALITY)
        phenotypic[[i for i in range(len(graph.term_ids)) if root is None or graph.is_ancestor(root, i)]] = True
        kept = [phenotypic[graph.annotations[r]] for r in rows]
        counts = [int(k.sum()) for k in kept]
        weighted = sparse.csr_matrix(
            (
                np.concatenate([graph.annotation_freq[r][k] for r, k in zip(rows, kept, strict=True)]).astype(np.float64),
                (np.repeat(np.arange(len(rows)), counts),
                 np.concatenate([graph.annotations[r][k] for r, k in zip(rows, kept, strict=True)])),
            ),
            shape=(len(rows), len(graph.term_ids)),
        )  # fmt: skip
        onset_of = {graph.index[t]: y for t, y in ONSET_YEARS.items() if t in graph.index}
        modes_of = {graph.index[t]: t for t in MENDELIAN if t in graph.index}
        earliest, x_recessive, x_dominant = [], [], []
        for r in rows:
            terms = graph.annotations[r].tolist()
            earliest.append(min((onset_of[t] for t in terms if t in onset_of), default=np.inf))
            modes = {modes_of[t] for t in terms if t in modes_of}
            x_recessive.append(bool(modes) and modes <= {X_RECESSIVE, Y_LINKED})
            x_dominant.append(modes == {X_DOMINANT})
        cache[sources] = _Rows(
            rows=rows,
            closure=closure,
            direct=graph.direct().tocsr()[rows].tocsc(),
            log_size=np.log(np.maximum(counts, 1.0)).astype(np.float32),
            terms_per_disease=per_disease[rows],
            population=float(per_disease.sum()),
            weighted=weighted,
            weighted_ic=weighted @ graph.ic.astype(np.float64),
            earliest_onset=np.array(earliest),
            x_recessive_only=np.array(x_recessive),
            x_dominant_only=np.array(x_dominant),
        )
    return cache[sources]


def _log_hypergeom_sf(k: np.ndarray, big_k: np.ndarray, n: int, big_n: float) -> np.ndarray:
    """ln P(X >= k) for X ~ Hypergeom(population big_n, successes big_k, draws n), per disease."""

    def lchoose(a: np.ndarray | float, b: np.ndarray) -> np.ndarray:
        return gammaln(np.asarray(a) + 1) - gammaln(b + 1) - gammaln(np.asarray(a) - b + 1)

    j = np.arange(n + 1, dtype=np.float64)[None, :]
    kk = big_k[:, None]
    with np.errstate(invalid="ignore"):
        log_pmf = lchoose(kk, j) + lchoose(big_n - kk, n - j) - lchoose(big_n, np.array([float(n)]))
    log_pmf = np.where((j <= kk) & (n - j <= big_n - kk), log_pmf, -np.inf)
    log_pmf = np.where(j >= k[:, None], log_pmf, -np.inf)
    return logsumexp(log_pmf, axis=1)


@dataclass
class _Scores:
    total: np.ndarray  # per ranked disease
    per_term: list[tuple[int, np.ndarray, np.ndarray]]  # (term, score per disease, matched term per disease)
    penalties: list[tuple[int, np.ndarray, np.ndarray]]  # (term, penalty per disease, frequency per disease)
    enrichment: np.ndarray  # the hypergeometric part of total
    coverage: np.ndarray  # reverse coverage per disease, 0..1
    countered: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)  # as penalties, for `against`


def _score(graph: KnowledgeGraph, p: list[int], x: list[int], table: _Rows, params: RankParams,
           against: list[tuple[int, int | None]] = []) -> _Scores:  # noqa: B006 - read only
    ancestors = [graph.ancestors(q) for q in p]
    cols = np.unique(np.concatenate(ancestors))
    block = table.closure[:, cols].toarray()  # diseases x (union of ancestors): frequency or 0
    with np.errstate(divide="ignore"):
        values = graph.ic[cols][None, :] + params.alpha * np.log(np.maximum(block, params.min_frequency))
    values = np.where(block > 0, np.maximum(values, 0.0), 0.0)
    exact = table.direct[:, p].toarray() > 0 if params.exact_bonus else None
    n = len(table.rows)
    total = -params.delta * table.log_size.astype(np.float64)
    per_term = []
    hits = np.zeros(n)
    for t, (q, anc) in enumerate(zip(p, ancestors, strict=True)):
        pos = np.searchsorted(cols, anc)
        sub = values[:, pos]
        own = anc == q
        sub[:, ~own] *= params.beta
        best = sub.argmax(axis=1)
        score = sub[np.arange(n), best]
        hits += block[:, pos[own][0]] > 0
        if exact is not None:
            score = score + params.exact_bonus * exact[:, t]
        total = total + score
        per_term.append((q, score, anc[best]))
    enrichment = np.zeros(n)
    if params.hypergeom:
        log_p = _log_hypergeom_sf(hits, table.terms_per_disease, len(p), table.population)
        enrichment = -params.hypergeom * log_p
        total = total + enrichment
    coverage = _reverse_coverage(graph, ancestors, table)
    total = total + params.reverse * coverage
    penalties = []
    if x:
        freqs = table.closure[:, x].toarray()
        for t, xi in enumerate(x):
            penalty = _excluded_penalty(freqs[:, t], params)
            # A pertinent negative: case reports state the absence of features the suspected diseases
            # are known for, so an excluded, variable feature of a disease is evidence that it was on
            # the differential (learned on the tune split; see the module docstring).
            shows = (freqs[:, t] > 0) & (freqs[:, t] < params.negative_below)
            penalty = penalty - params.pertinent_negative / len(x) * shows
            total = total - penalty
            penalties.append((xi, penalty, freqs[:, t]))
    countered = []
    if against:
        freqs = table.closure[:, [a for a, _ in against]].toarray()
        for t, (ai, derived) in enumerate(against):
            shows = freqs[:, t] > 0
            penalty = -params.counter * np.log(1.0 - np.minimum(freqs[:, t], 0.95))
            # The measurement's own phenotype (anaemia, from the low haemoglobin) earns nothing from a disease of the
            # opposite abnormality through a shared ancestor ("abnormal erythrocyte morphology"): that credit would
            # undo the counter-evidence. A disease that has both, exactly, keeps its match.
            for q, score, matched in per_term if derived is not None else []:
                if q == derived:
                    spurious = shows & (matched != q)
                    total = total - np.where(spurious, score, 0.0)
                    score[spurious] = 0.0
            total = total - penalty
            countered.append((ai, penalty, freqs[:, t]))
    return _Scores(total, per_term, penalties, enrichment, coverage, countered)


def _reverse_coverage(graph: KnowledgeGraph, ancestors: list[np.ndarray], table: _Rows) -> np.ndarray:
    """Per disease: the share of its annotations' information content that the query explains.

    The other direction of Phenomizer's symmetric similarity. Each annotation a of the disease earns
    the information content of the most informative term it shares with the query (a itself when a
    query term is a or below it), weighted by how often the disease shows a; divided by what all its
    annotations would earn. A query that explains a small disease entirely beats one that touches a
    large disease here and there.
    """
    implied = np.zeros(len(graph.term_ids), dtype=bool)
    implied[np.concatenate(ancestors)] = True
    values = np.where(implied[graph.ancestor_idx], graph.ic[graph.ancestor_idx], 0.0).astype(np.float64)
    best = np.maximum.reduceat(values, graph.ancestor_ptr[:-1])  # per term: its best shared ancestor's IC
    return (table.weighted @ best) / np.maximum(table.weighted_ic, 1e-9)


def _patient_fit(table: _Rows, params: RankParams, sex: str | None, age_years: float | None) -> np.ndarray:
    """Per disease: the log likelihood ratio of the patient's age and sex (0 when they tell nothing)."""
    fit = np.zeros(len(table.rows))
    if age_years is not None and params.onset:
        # Age at the last encounter bounds the onset: a 3-year-old has not yet shown an adult-onset disease.
        fit -= params.onset * (age_years < table.earliest_onset) * np.isfinite(table.earliest_onset)
    if sex == "female" and params.x_linked_female:
        fit -= params.x_linked_female * table.x_recessive_only  # X-linked recessive: carriers are rarely affected
    if sex == "male" and params.x_dominant_male:
        fit -= params.x_dominant_male * table.x_dominant_only  # X-linked dominant: often lethal in males
    return fit


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
    against: dict[str, str | None] | None = None,
    sex: str | None = None,
    age_years: float | None = None,
) -> list[Candidate]:
    """Rank diseases of the given sources for these present and excluded HPO ids. `against` maps each HPO id that a
    measurement argues against to the present term derived from that measurement (or None): diseases that show
    the id are lowered (`RankParams.counter`), and the derived term earns them nothing through a shared ancestor.
    `sex` ("female", "male", other values tell nothing) and `age_years` (at the last encounter) are the case's
    `patient` fields: they weigh the disease's mode of inheritance and onset (`RankParams.onset`, ...)."""
    p, x = check_terms(graph, present, excluded)
    if not p:
        raise KnowledgeError("no present phenotypes to rank diseases by (only excluded ones were given)")
    table = _rows_for(graph, tuple(sources))
    contrary = [(i, graph.resolve(derived) if derived else None) for term, derived in (against or {}).items()
                if (i := graph.resolve(term)) is not None and i not in p]
    scores = _score(graph, p, x, table, params, contrary)
    fit = _patient_fit(table, params, sex, age_years)
    total = scores.total + fit
    top = min(top, len(total))
    head = np.argpartition(-total, top - 1)[:top] if top < len(total) else np.arange(len(total))
    order = head[np.lexsort((head, -total[head]))]  # by score, then catalogue order (stable)
    candidates = []
    for k in order:
        d = int(table.rows[k])
        direct = set(graph.annotations[d].tolist())
        matches = []
        for q, score, matched in scores.per_term:
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
        for xi, penalty, freq in scores.penalties:
            if penalty[k] != 0:
                matches.append(
                    Match(
                        term=graph.term_ids[xi],
                        label=graph.labels[xi],
                        matched=graph.term_ids[xi],
                        matched_label=graph.labels[xi],
                        kind="excluded but typical" if penalty[k] > 0 else "pertinent negative",
                        frequency=round(float(freq[k]), 3),
                        contribution=-round(float(penalty[k]), 3),
                    )
                )
        for ai, penalty, freq in scores.countered:
            if penalty[k] != 0:
                matches.append(Match(term=graph.term_ids[ai], label=graph.labels[ai], matched=graph.term_ids[ai],
                                     matched_label=graph.labels[ai], kind="argued against by a measurement",
                                     frequency=round(float(freq[k]), 3), contribution=-round(float(penalty[k]), 3)))  # fmt: skip
        if fit[k] != 0:
            matches.extend(_fit_evidence(graph, d, table, k, params, sex, age_years))
        matches.sort(key=lambda m: -m.contribution)
        candidates.append(Candidate(graph.disease_ids[d], graph.disease_names[d], round(float(total[k]), 3), matches,
                                    round(float(scores.coverage[k]), 3)))  # fmt: skip
    return candidates


def _fit_evidence(graph: KnowledgeGraph, d: int, table: _Rows, k: int, params: RankParams, sex: str | None,
                  age_years: float | None) -> list[Match]:
    """The patient-fit terms of one disease, as evidence naming the onset or inheritance annotation they weigh."""
    found = []
    annotated = {graph.term_ids[t] for t in graph.annotations[d].tolist()}
    if age_years is not None and params.onset and age_years < table.earliest_onset[k]:
        term = min((t for t in annotated if t in ONSET_YEARS), key=ONSET_YEARS.__getitem__)
        found.append((term, f"onset later than the patient's age ({age_years:g} y)", -params.onset))
    if sex == "female" and params.x_linked_female and table.x_recessive_only[k]:
        term = X_RECESSIVE if X_RECESSIVE in annotated else Y_LINKED
        found.append((term, "inheritance unlikely for the patient's sex", -params.x_linked_female))
    if sex == "male" and params.x_dominant_male and table.x_dominant_only[k]:
        found.append((X_DOMINANT, "inheritance unlikely for the patient's sex", -params.x_dominant_male))
    return [Match(term=t, label=graph.labels[graph.index[t]], matched=t, matched_label=graph.labels[graph.index[t]],
                  kind=kind, frequency=1.0, contribution=round(value, 3)) for t, kind, value in found]  # fmt: skip


def rank_all_scores(
    graph: KnowledgeGraph,
    present: list[str],
    excluded: list[str],
    sources: tuple[str, ...] = ("OMIM",),
    params: RankParams = RankParams(),
    sex: str | None = None,
    age_years: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(disease rows, score per row) for every disease of the sources (evaluation wants the gold's rank)."""
    p, x = check_terms(graph, present, excluded)
    table = _rows_for(graph, tuple(sources))
    if not p:
        return table.rows, np.zeros(len(table.rows))
    return table.rows, _score(graph, p, x, table, params).total + _patient_fit(table, params, sex, age_years)
