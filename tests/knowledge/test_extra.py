"""The user's own ontologies: a hand-written UMLS RRF sample and a MONDO-style OBO file, through knowledge.lookup."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medagent.specialists.knowledge.extra import read_obo_concepts, read_umls
from medagent.specialists.knowledge.graph import KnowledgeError
from medagent.tools.config import KnowledgeSettings, Settings
from medagent.tools.contracts import Case
from medagent.tools.errors import ToolError
from medagent.tools.knowledge import TOOLS
from medagent.tools.registry import Registry, ToolContext

DATA = Path(__file__).resolve().parent / "data"


def test_umls_rrf_names_definitions_hierarchy_and_xrefs():
    concepts = read_umls(DATA / "umls")
    seizure = concepts.concepts["C9900001"]
    assert seizure.name == "Seizure"  # the preferred English name
    assert seizure.synonyms == ["Sample convulsive episode"]  # the French row is left out
    assert seizure.definition.startswith("Hand-written sample definition")
    assert seizure.parents == ["C9900002"]  # from PAR and from the inverse CHD row, once
    assert seizure.xrefs == ["HP:0001250", "MESH:D9900001"]
    marfan = concepts.concepts["C9900003"]
    assert marfan.name == "Marfan syndrome" and "Suppressed sample name" not in marfan.synonyms
    assert marfan.parents == []  # an RO relation is not a hierarchy
    assert concepts.find("sample fibrillin disorder").id == "C9900003"


def test_bad_rrf_and_obo_files_are_named(tmp_path):
    with pytest.raises(KnowledgeError, match="MRCONSO.RRF not found"):
        read_umls(tmp_path)
    (tmp_path / "MRCONSO.RRF").write_text("C1|ENG|P\n")
    with pytest.raises(KnowledgeError, match="MRCONSO.RRF line 1: 3 fields"):
        read_umls(tmp_path)
    (tmp_path / "empty.obo").write_text("format-version: 1.2\n")
    with pytest.raises(KnowledgeError, match="no \\[Term\\]"):
        read_obo_concepts(tmp_path / "empty.obo")


def _lookup(concept: str, settings: Settings, tmp_path: Path):
    registry = Registry(settings, TOOLS)
    tool = registry.tools["knowledge.lookup"]
    case = Case.model_validate({"schema_version": 1, "id": "c1", "history": "x"})
    return tool.run(tool.args.model_validate({"concept": concept}), ToolContext(case, tmp_path, tmp_path, settings))


def test_lookup_searches_a_user_obo_and_names_linked_diseases(tmp_path, graph):
    obo = tmp_path / "mondo.obo"
    shutil.copy(DATA / "sample_mondo.obo", obo)
    settings = Settings(knowledge=KnowledgeSettings(dense=False, ontologies=[obo]))
    [found] = _lookup("sample Marfan-like disorder", settings, tmp_path)  # an exact synonym
    assert found.payload["id"] == "MONDO:9900002"
    assert found.payload["parents"] == [{"id": "MONDO:9900001", "label": "sample connective tissue disorder"}]
    assert {"id": "OMIM:154700", "name": graph.disease_names[graph.disease_index["OMIM:154700"]]} in found.payload[
        "linked"
    ]
    with pytest.raises(ToolError, match="obsolete sample disorder.*or a concept of your ontologies"):
        _lookup("obsolete sample disorder", settings, tmp_path)
    lines = TOOLS[0].doctor(settings)
    assert any(line.startswith("ontology:") and "found" in line for line in lines)


def test_lookup_reads_umls_and_doctor_reports_a_missing_folder(tmp_path):
    settings = Settings(knowledge=KnowledgeSettings(dense=False, umls_dir=DATA / "umls"))
    [found] = _lookup("C9900001", settings, tmp_path)
    assert found.payload["label"] == "Seizure" and found.payload["source"] == "umls:umls"
    assert found.payload["linked"] == [{"id": "HP:0001250", "name": "Seizure"}]
    missing = Settings(knowledge=KnowledgeSettings(dense=False, umls_dir=tmp_path / "nowhere"))
    assert any("MRCONSO.RRF MISSING" in line for line in TOOLS[0].doctor(missing))
