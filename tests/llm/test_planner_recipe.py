"""Planner recipe round trip: real agent traces → SFT examples → LoRA on a tiny Llama → reload → same calls."""

from __future__ import annotations

import asyncio
import json
import random
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medagent.agent.api import run_loaded
from medagent.agent.llm.local import TransformersBackend
from medagent.agent.sft import convert, trace_examples
from medagent.tools.config import Settings
from medagent.tools.errors import ConfigError
from medagent.tools.intake import load_case
from medagent.tools.registry import all_tools

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "training" / "planner" / "configs" / "smoke.yaml"
WORDS = ["chest", "knee", "hand", "spine", "head", "film", "scan", "view", "pelvis", "wrist"]


def make_cases(folder: Path, n: int = 8) -> list[Path]:
    """Cases with 1-2 small images and/or CT volumes under varied ids, written as real files."""
    rng = random.Random(7)
    paths = []
    for number in range(n):
        case_dir = folder / f"case{number}"
        case_dir.mkdir(parents=True)
        attachments = []
        for slot in range(1 + number % 2):
            ident = f"{rng.choice(WORDS)}{rng.randint(1, 9)}{'abc'[slot]}"
            if (number + slot) % 3 == 0:
                volume = rng.normalvariate(0, 1) * 10 + np.random.default_rng(number).normal(-300, 400, (24, 24, 12))
                nib.save(nib.Nifti1Image(volume.astype(np.int16), np.diag([1.5, 1.5, 3.0, 1.0])), case_dir / f"{ident}.nii.gz")
                attachments.append({"id": ident, "kind": "volume", "path": f"{ident}.nii.gz", "modality": "CT"})
            else:
                Image.fromarray(np.random.default_rng(number).integers(0, 255, (32, 32), dtype=np.uint8)).save(case_dir / f"{ident}.png")
                attachments.append({"id": ident, "kind": "image", "path": f"{ident}.png", "modality": "CR"})
        case = {"id": f"sft-{number}", "history": f"Patient {number}: {rng.choice(WORDS)} pain for {number + 2} days.", "attachments": attachments}
        (case_dir / "case.json").write_text(json.dumps(case))
        paths.append(case_dir / "case.json")
    return paths


def expected(example: dict) -> tuple[set[str], set[str]]:
    calls = json.loads(example["messages"][-1]["content"])["calls"]
    return {c["tool"] for c in calls}, {c["arguments"]["attachment"] for c in calls}


def reproduced(text: str, tools: set[str], ids: set[str]) -> bool:
    found_tools = set(re.findall(r"imaging\.[a-z_]+", text))
    return tools <= found_tools and all(i in text for i in ids)


@pytest.mark.slow
def test_traces_to_lora_adapter_round_trip(tmp_path):
    from medagent.training.planner.recipe import main

    settings = Settings()  # rule planner: the traces a deployment collects before any fine-tune
    tools = [t for t in all_tools() if t.name in {"imaging.describe", "imaging.ct_quant"}]
    traces, cases = [], {}
    for case_path in make_cases(tmp_path / "cases"):
        loaded = load_case(case_path)
        result, trace = asyncio.run(run_loaded(loaded, settings, tmp_path / "artifacts" / loaded.case.id, tools=tools))
        path = tmp_path / f"{loaded.case.id}.trace.jsonl"
        trace.write(path)
        traces.append(path)
        cases[loaded.case.id] = loaded.case
    examples_path = tmp_path / "examples.jsonl"
    assert convert(traces, examples_path, cases, tools) >= 8
    examples = [json.loads(line) for line in examples_path.read_text().splitlines()]
    assert {t for e in examples for t in expected(e)[0]} == {"imaging.describe", "imaging.ct_quant"}
    assert all(e["messages"][0]["role"] == "system" and "<case>" in e["messages"][1]["content"] for e in examples)

    out = main(SMOKE, [f"data.examples={examples_path}", f"output_dir={tmp_path / 'run'}"])
    log = json.loads((out / "train_log.json").read_text())["log"]
    assert log[-1]["loss"] < log[0]["loss"] / 4

    async def generate(backend):
        texts = []
        for example in examples:
            # No schema is passed, so decoding is not constrained: only learning can produce the format.
            result = await backend.chat(example["messages"][:2], max_tokens=len(example["messages"][2]["content"]) // 2 + 20)
            texts.append(result.text)
        return texts

    tuned = asyncio.run(generate(TransformersBackend(out / "base", template="alpaca", adapter=out / "adapter")))
    base = asyncio.run(generate(TransformersBackend(out / "base", template="alpaca")))
    tuned_hits = sum(reproduced(t, *expected(e)) for t, e in zip(tuned, examples, strict=True))
    base_hits = sum(reproduced(t, *expected(e)) for t, e in zip(base, examples, strict=True))
    print(f"round trip: adapter reproduces {tuned_hits}/{len(examples)} plans, untrained base {base_hits}/{len(examples)}")
    for text, example in zip(tuned, examples, strict=True):
        if not reproduced(text, *expected(example)):
            print("missed:", expected(example), text[:200])
    assert tuned_hits >= 6 and base_hits == 0

    async def streamed(backend, example):
        limit = len(example["messages"][2]["content"]) // 2 + 20
        return [piece async for piece in backend.stream(example["messages"][:2], max_tokens=limit)]

    # The trained planner also streams (as the chat's reporter would use it): greedy pieces join to the same reply.
    pieces = asyncio.run(streamed(TransformersBackend(out / "base", template="alpaca", adapter=out / "adapter"), examples[0]))
    assert len(pieces) > 1 and "".join(pieces).strip() == tuned[0].strip()


def test_sft_uses_the_planner_turn_when_the_trace_has_one():
    from medagent.tools.trace import LLMTurnEvent, PlanEvent, ToolCallEvent, TraceRecorder

    trace = TraceRecorder("c1")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "<case>U</case>"}]
    trace.emit(LLMTurnEvent, "plan", role="planner", model="m", seconds=1.0, messages=messages, completion="{}")
    trace.emit(ToolCallEvent, "act", call_id="C1", tool="imaging.describe", arguments={"attachment": "a"}, origin="llm")
    trace.emit(ToolCallEvent, "act", call_id="C2", tool="imaging.describe", arguments={"attachment": "zz"}, origin="llm", rejected=True, rejection="no attachment")
    trace.emit(PlanEvent, "plan", planner="llm", step=1, calls=["C1", "C2"])
    [example] = trace_examples(trace.events)
    assert example["messages"][:2] == messages
    assert json.loads(example["messages"][2]["content"]) == {"calls": [{"tool": "imaging.describe", "arguments": {"attachment": "a"}}]}


def test_alpaca_records_as_the_authors_sft_data_comes_train_with_their_prompt(tmp_path):
    from medagent.training.planner.recipe import load_examples, split

    rows = [
        {"instruction": "You are a doctor. Answer the question.", "input": "###Question: Fever? ###Options: A. yes B. no", "output": "A"},
        {"instruction": "Define anaemia.", "input": "", "output": "A low haemoglobin."},
    ]  # fmt: skip
    (tmp_path / "sft.json").write_text(json.dumps(rows))
    examples = load_examples({"examples": str(tmp_path / "sft.json")})
    prompt, reply = split(examples[0], "alpaca", None)
    # PMC-LLaMA's prompt (../shared/MODELS.md section 2): instruction, input, then the response marker.
    assert prompt.endswith(
        "### Instruction:\nYou are a doctor. Answer the question.\n\n"
        "### Input:\n###Question: Fever? ###Options: A. yes B. no\n\n### Response:\n"
    ) and reply == "A"
    prompt, reply = split(examples[1], "alpaca", None)
    assert "### Input:" not in prompt and prompt.endswith("### Instruction:\nDefine anaemia.\n\n### Response:\n")
    (tmp_path / "bad.jsonl").write_text('{"question": "x"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: an example needs `messages`"):
        load_examples({"examples": str(tmp_path / "bad.jsonl")})
