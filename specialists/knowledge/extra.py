"""Ontologies the user owns, beside the packaged HPO graph: an OBO file (e.g. MONDO) or UMLS RRF tables.

Both become one `Concepts` table (id -> name, definition, synonyms, parents, cross-references) that
`knowledge.lookup` searches when the packaged graph does not know a concept. UMLS rows are read from
the Metathesaurus' pipe-delimited files (one row per line, fields in the documented column order,
trailing `|`): MRCONSO (names: English, not suppressed), MRDEF (definitions), MRREL (PAR/CHD
hierarchy; REL states how the second concept relates to the first). Parsed once per file version and
pickled under `<cache>/knowledge/user/`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from medagent.specialists.knowledge.graph import KnowledgeError, normalise
from medagent.specialists.knowledge.obo import read_obo

# Column positions, from the UMLS Reference Manual's descriptions of each file.
MRCONSO = {"CUI": 0, "LAT": 1, "TS": 2, "ISPREF": 6, "SAB": 11, "TTY": 12, "CODE": 13, "STR": 14, "SUPPRESS": 16}
MRDEF = {"CUI": 0, "SAB": 4, "DEF": 5, "SUPPRESS": 6}
MRREL = {"CUI1": 0, "REL": 3, "CUI2": 4, "SAB": 10, "SUPPRESS": 14}
# UMLS source abbreviations whose codes are ids medagent knows, and the prefix those ids carry.
SAB_PREFIX = {"HPO": "", "OMIM": "OMIM:", "ORPHANET": "ORPHA:", "ICD10CM": "ICD10CM:", "MSH": "MESH:",
              "SNOMEDCT_US": "SNOMEDCT:", "NCI": "NCIT:"}  # fmt: skip
FORMAT = 1  # bump when the pickled layout changes


@dataclass
class Concept:
    id: str
    name: str
    definition: str = ""
    synonyms: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    xrefs: list[str] = field(default_factory=list)


@dataclass
class Concepts:
    source: str  # "obo:<file name> <version>" or "umls:<folder>"
    concepts: dict[str, Concept]
    by_name: dict[str, str] = field(default_factory=dict)  # normalised name or synonym -> id

    def __post_init__(self) -> None:
        if not self.by_name:
            for concept in self.concepts.values():
                for text in [concept.name, *concept.synonyms]:
                    self.by_name.setdefault(normalise(text), concept.id)

    def find(self, query: str) -> Concept | None:
        """By id (case-insensitive), then by exact name or synonym after normalisation."""
        query = query.strip()
        hit = self.concepts.get(query) or self.concepts.get(query.upper())
        if hit is not None:
            return hit
        key = self.by_name.get(normalise(query))
        return self.concepts[key] if key else None

    def by_xref(self, xref: str) -> list[Concept]:
        return [c for c in self.concepts.values() if xref in c.xrefs]


def read_obo_concepts(path: Path) -> Concepts:
    """A user OBO file (MONDO, DOID, ...): every non-obsolete [Term] with its names, parents and xrefs."""
    if not path.is_file():
        raise KnowledgeError(f"ontology file {path} not found ([knowledge] ontologies in medagent.toml)")
    try:
        obo = read_obo(path)
    except UnicodeDecodeError as exc:
        raise KnowledgeError(f"{path}: not a UTF-8 OBO text file ({exc.reason})") from exc
    concepts = {
        t.id: Concept(t.id, t.name, t.definition, [s[0] for s in t.synonyms], t.parents, t.xrefs)
        for t in obo.terms.values()
        if not t.obsolete and t.name
    }
    if not concepts:
        raise KnowledgeError(f"{path}: no [Term] stanza with an id and a name (is it an OBO file?)")
    return Concepts(source=f"obo:{path.name} {obo.version}".strip(), concepts=concepts)


def _rows(path: Path, columns: dict[str, int]):  # noqa: ANN202 - generator of field lists
    need = max(columns.values()) + 1
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("|")
            if len(fields) < need:
                raise KnowledgeError(f"{path.name} line {number}: {len(fields)} fields, expected at least {need}")
            yield fields


def read_umls(folder: Path) -> Concepts:
    """UMLS Metathesaurus RRF tables from one folder (MRCONSO.RRF required; MRDEF, MRREL optional)."""
    conso = folder / "MRCONSO.RRF"
    if not conso.is_file():
        raise KnowledgeError(f"{conso} not found ([knowledge] umls_dir must hold the Metathesaurus' MRCONSO.RRF)")
    concepts: dict[str, Concept] = {}
    preferred: dict[str, int] = {}  # CUI -> rank of the name chosen so far (lower is better)
    for f in _rows(conso, MRCONSO):
        if f[MRCONSO["LAT"]] != "ENG" or f[MRCONSO["SUPPRESS"]] not in ("N", ""):
            continue
        cui, text = f[MRCONSO["CUI"]], f[MRCONSO["STR"]]
        concept = concepts.setdefault(cui, Concept(cui, text))
        # The concept's preferred name: TS=P (preferred term) with ISPREF=Y ranks first.
        rank = (f[MRCONSO["TS"]] != "P") * 2 + (f[MRCONSO["ISPREF"]] != "Y")
        if rank < preferred.get(cui, 99):
            if concept.name != text and concept.name not in concept.synonyms:
                concept.synonyms.append(concept.name)
            concept.name, preferred[cui] = text, rank
        elif text != concept.name and text not in concept.synonyms:
            concept.synonyms.append(text)
        sab, code = f[MRCONSO["SAB"]], f[MRCONSO["CODE"]]
        if sab in SAB_PREFIX and code and code != "NOCODE":
            xref = code if sab == "HPO" else SAB_PREFIX[sab] + code
            if xref not in concept.xrefs:
                concept.xrefs.append(xref)
    if not concepts:
        raise KnowledgeError(f"{conso}: no English, unsuppressed names")
    definitions = folder / "MRDEF.RRF"
    if definitions.is_file():
        for f in _rows(definitions, MRDEF):
            concept = concepts.get(f[MRDEF["CUI"]])
            if concept is not None and not concept.definition and f[MRDEF["SUPPRESS"]] in ("N", ""):
                concept.definition = f[MRDEF["DEF"]]
    relations = folder / "MRREL.RRF"
    if relations.is_file():
        for f in _rows(relations, MRREL):
            first, second, rel = f[MRREL["CUI1"]], f[MRREL["CUI2"]], f[MRREL["REL"]]
            if first not in concepts or second not in concepts or f[MRREL["SUPPRESS"]] not in ("N", ""):
                continue
            # REL is the relation of the second concept to the first: PAR = CUI2 is a parent of CUI1.
            child, parent = (first, second) if rel == "PAR" else (second, first) if rel == "CHD" else (None, None)
            if child is not None and parent not in concepts[child].parents:
                concepts[child].parents.append(parent)
    return Concepts(source=f"umls:{folder.name}", concepts=concepts)


def load_user_ontology(path: Path, cache_dir: Path) -> Concepts:
    """An OBO file or a UMLS RRF folder, parsed once per file version and cached as a pickle (read again
    on each call: callers keep it in their model pool)."""
    path = Path(path).expanduser()
    files = [path / "MRCONSO.RRF", path / "MRDEF.RRF", path / "MRREL.RRF"] if path.is_dir() else [path]
    stamp = "|".join(f"{p}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files if p.is_file())
    key = hashlib.sha1(f"{FORMAT}|{path.resolve()}|{stamp}".encode()).hexdigest()[:12]
    target = cache_dir / "knowledge" / "user" / f"{key}.pkl"
    if target.is_file():
        with open(target, "rb") as handle:
            concepts = pickle.load(handle)
    else:
        concepts = read_umls(path) if path.is_dir() else read_obo_concepts(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".tmp{os.getpid()}")
        with open(partial, "wb") as handle:
            pickle.dump(concepts, handle, protocol=pickle.HIGHEST_PROTOCOL)
        partial.replace(target)
    return concepts
