"""Typed evidence payloads: every tool's payload matches its model, a payload that does not becomes error
evidence, and no code outside tools/payloads.py reads a payload by key."""

from __future__ import annotations

import ast
import asyncio
import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel

from medagent.agent.api import run_loaded, solve
from medagent.cli.schemas import json_schema
from medagent.evals.suite import load_suite_file
from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.describe import TOOLS as DESCRIBE
from medagent.tools.errors import MedagentError
from medagent.tools.intake import resolve_attachments
from medagent.tools.payloads import Payload, dump, payload_models
from medagent.tools.registry import AttachmentArgs, Registry, Tool, ToolContext

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("agent", "tools", "evals", "specialists", "training")


def _keyed_reads(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "payload":
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "payload"):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_payload_is_read_by_key_outside_the_payload_models():
    found = [hit for layer in LAYERS for path in sorted((REPO / layer).rglob("*.py"))
             if path != REPO / "tools" / "payloads.py" for hit in _keyed_reads(path)]
    assert not found, "read payloads with their model (tools/payloads.py), not by key:\n" + "\n".join(found)


def test_every_adapter_tool_declares_a_payload_model():
    models = payload_models()
    assert set(models) == {tool.name for tool in Registry(Settings()).tools.values()}
    assert all(issubclass(m, BaseModel) and m.__name__ != "NoPayload" for m in models.values())


class VolumePayload(Payload):
    volume_ml: float


def _measuring(payload: dict) -> Tool:
    def run(args, ctx):
        return [EvidenceDraft(summary="Liver volume measured.", attachment=args.attachment, payload=payload)]

    return Tool(name="test.liver", purpose="measures the liver", args=AttachmentArgs, run=run,
                payload=VolumePayload, attachment_kinds=(AttachmentKind.volume,))


def _solve_ct(examples, tmp_path, tools):
    case = Case(id="p1", attachments=[{"id": "ct", "kind": "volume", "path": "data/ct_small.nii.gz", "modality": "CT"}])
    result, _ = asyncio.run(run_loaded(resolve_attachments(case, examples), Settings(), tmp_path / "artifacts",
                                       tools=tools))
    return {e.tool: e for e in result.evidence}, result


@pytest.mark.parametrize("payload, message", [
    ({"volume_ml": "large"}, "test.liver returned a payload that does not match VolumePayload: volume_ml: "
                             "Input should be a valid number, unable to parse string as a number"),
    ({"volume_ml": 1620.0, "liver": 1}, "test.liver returned a payload that does not match VolumePayload: liver: "
                                        "Extra inputs are not permitted"),
    ({}, "test.liver returned a payload that does not match VolumePayload: volume_ml: Field required"),
])
def test_a_payload_that_does_not_match_its_model_becomes_error_evidence(examples, tmp_path, payload, message):
    by_tool, result = _solve_ct(examples, tmp_path, [_measuring(payload), *DESCRIBE])
    assert by_tool["test.liver"].error and by_tool["test.liver"].summary == message
    assert by_tool["test.liver"].payload == {}
    assert not by_tool["imaging.describe"].error  # the other tool's evidence is untouched
    assert any(message in line for line in result.report.limitations)


def test_a_matching_payload_is_kept_as_written(examples, tmp_path):
    by_tool, _ = _solve_ct(examples, tmp_path, [_measuring({"volume_ml": 1620}), *DESCRIBE])
    assert not by_tool["test.liver"].error
    assert by_tool["test.liver"].payload == {"volume_ml": 1620.0}


def _check_against_models(evidence) -> set[str]:
    models, schema = payload_models(), json_schema("evidence")
    checked = set()
    for item in evidence:
        if item.error:
            assert item.payload == {}
            continue
        parsed = models[item.tool].model_validate(item.payload)
        assert dump(parsed) == item.payload  # the model keeps every key and value the tool wrote
        jsonschema.validate(item.payload, {"$defs": schema["$defs"], **schema["payloads"][item.tool]})
        checked.add(item.tool)
    return checked


def test_real_payloads_match_their_models(examples, tmp_path):
    checked: set[str] = set()
    for name in ("multimodal_case.json", "dictation_case.json", "conflict_case.json", "ct_dicom_case.json"):
        result = solve(examples / name, settings=Settings(), artifacts_dir=tmp_path / name / "artifacts")
        checked |= _check_against_models(result.evidence)
    assert {"imaging.describe", "imaging.ct_quant", "speech.transcribe", "knowledge.link", "knowledge.rank"} <= checked


def test_lookup_payloads_of_every_kind_match_their_model(examples, tmp_path):
    registry = Registry(Settings())
    lookup = registry.tools["knowledge.lookup"]
    ctx = ToolContext(Case(id="l1"), examples, tmp_path, Settings())
    drafts = []
    for concept in ("OMIM:219700", "E84.0", "HP:0001250", "Seizure", "Marfan syndrome", "fever and a seizure"):
        drafts += lookup.run(lookup.args(concept=concept), ctx)
    kinds = {type(lookup.payload.model_validate(d.payload).root).__name__ for d in drafts}
    assert {"DiseaseLookup", "ICDLookup", "TermLookup"} <= kinds
    for draft in drafts:
        assert lookup.checked(draft) == draft


def test_schema_evidence_publishes_each_tools_payload(run_cli):
    done = run_cli("schema", "evidence")
    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    assert set(schema["payloads"]) == set(payload_models())
    assert schema["payloads"]["knowledge.rank"] == {"$ref": "#/$defs/RankPayload"}
    assert "differential" in schema["$defs"]["RankPayload"]["properties"]


def _suite(tmp_path: Path, second_step: dict) -> Path:
    case = {"id": "s1", "history": "Seizures since childhood."}
    item = {"id": "linked", "mode": "pipeline", "case": case,
            "steps": [{"tool": "knowledge.link", "arguments": {"text": "Seizures."}}, second_step]}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(item) + "\n")
    return path


def test_prev_keys_are_checked_against_the_previous_tools_payload_when_the_suite_loads(tmp_path):
    good = _suite(tmp_path, {"tool": "knowledge.rank", "arguments": {"present": "$prev.present_ids"}})
    assert load_suite_file(good).items[0].steps[1].arguments == {"present": "$prev.present_ids"}
    bad = _suite(tmp_path, {"tool": "knowledge.rank", "arguments": {"present": "$prev.present_terms"}})
    with pytest.raises(MedagentError, match=r"mine.jsonl:1: .*item linked, step 2 \(knowledge.rank\), argument "
                                            r"present='\$prev.present_terms': the payload of knowledge.link "
                                            r"\(LinkPayload\) has no field 'present_terms'; its fields: source, present"):
        load_suite_file(bad)
