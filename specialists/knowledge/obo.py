"""A small OBO 1.2 reader: the stanzas HPO's hp.obo and user ontologies (MONDO, ...) are written in."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_SYNONYM = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(EXACT|RELATED|BROAD|NARROW)\s*([A-Za-z0-9_:]+)?')
_DEF = re.compile(r'^"((?:[^"\\]|\\.)*)"')


@dataclass
class OboTerm:
    id: str
    name: str = ""
    definition: str = ""
    synonyms: list[tuple[str, str, str]] = field(default_factory=list)  # (text, scope, type)
    parents: list[str] = field(default_factory=list)
    alt_ids: list[str] = field(default_factory=list)
    xrefs: list[str] = field(default_factory=list)
    obsolete: bool = False
    replaced_by: str | None = None


@dataclass
class Obo:
    version: str
    terms: dict[str, OboTerm]


def read_obo(path: Path) -> Obo:
    """Parse the [Term] stanzas of an OBO file; other stanzas ([Typedef]) are skipped."""
    version = ""
    terms: dict[str, OboTerm] = {}
    current: OboTerm | None = None
    in_term = False
    with open(path, encoding="utf-8") as handle:
        for raw in handle:
            line = raw.rstrip("\n")
            if line.startswith("["):
                if current is not None:
                    terms[current.id] = current
                current = None
                in_term = line.strip() == "[Term]"
                continue
            if not line or ":" not in line:
                continue
            tag, _, value = line.partition(":")
            value = value.strip()
            if not in_term:
                if tag == "data-version" and not version:
                    version = value.rsplit("/", 1)[-1]
                continue
            if tag == "id":
                current = OboTerm(id=value)
            elif current is None:
                continue
            elif tag == "name":
                current.name = value
            elif tag == "def":
                match = _DEF.match(value)
                current.definition = match.group(1).replace('\\"', '"') if match else value
            elif tag == "synonym":
                match = _SYNONYM.match(value)
                if match:
                    current.synonyms.append((match.group(1).replace('\\"', '"'), match.group(2), match.group(3) or ""))
            elif tag == "is_a":
                current.parents.append(value.split("!")[0].split("{")[0].strip())
            elif tag == "alt_id":
                current.alt_ids.append(value)
            elif tag == "xref":
                current.xrefs.append(value.split()[0])
            elif tag == "is_obsolete":
                current.obsolete = value == "true"
            elif tag == "replaced_by":
                current.replaced_by = value
    if current is not None:
        terms[current.id] = current
    return Obo(version=version, terms=terms)
