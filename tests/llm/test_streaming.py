"""Streaming (the reporter over HTTP is in test_reporter.py): the LLM reporter's sentences reach the user while they are decoded (real llama.cpp, HTTP and in-process)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema

from medagent.agent.llm.local import LlamaCppBackend
from medagent.agent.llm_reporter import SentenceStream, partial_sentence_texts, report_schema
from medagent.agent.sessions import sessions_root
from medagent.tools.config import load_settings

EXE = Path(sys.executable).parent / "medagent"


def test_partial_json_yields_growing_sentence_texts():
    reply = json.dumps({
        "differential": [{"name": "CML", "citations": ["E3"]}],
        "sentences": [
            {"text": 'The spleen is "enlarged" at 820\u00a0mL \u2014 splenomegaly.', "citations": ["E1"]},
            {"text": "Back\\slash and\nnew line.", "citations": []},
        ],
    })  # json.dumps escapes quotes, the backslash, the newline and the non-ASCII characters
    final = [s["text"] for s in json.loads(reply)["sentences"]]
    previous: list[str] = []
    for end in range(len(reply) + 1):
        texts = partial_sentence_texts(reply[:end])
        # What has been shown is never taken back: each value only grows, and is a prefix of the final one.
        assert len(texts) >= len(previous)
        for index, text in enumerate(texts):
            assert final[index].startswith(text)
            if index < len(previous):
                assert text.startswith(previous[index])
        previous = texts
    assert previous == final
    shown: list[str] = []
    stream = SentenceStream(shown.append)
    for character in reply:
        stream.feed(character)
    stream.close()
    assert "".join(shown) == "\n".join(final) + "\n"


def test_in_process_llamacpp_streams_schema_constrained_json(small_gguf):
    schema = report_schema(["E1", "E2"])
    messages = [
        {"role": "system", "content": "Reply with JSON only."},
        {"role": "user", "content": "Evidence E1: CT shows splenomegaly (820 mL). E2: CT volume 512x512x40. "
                                    "Write a differential and two cited sentences."},
    ]

    async def go() -> list[str]:
        backend = LlamaCppBackend(small_gguf, n_ctx=2048)
        # Room for the longest reply the schema allows (3 other diagnoses with 4 findings, 6 sentences of 220
        # characters: about 2,700 characters), so the reply is never cut: the grammar must close it.
        return [piece async for piece in backend.stream(messages, schema=schema, max_tokens=1200)]

    pieces = asyncio.run(go())
    assert len(pieces) > 5
    reply = json.loads("".join(pieces))  # the grammar holds while streaming
    jsonschema.validate(reply, schema)


def test_chat_prints_the_llm_draft_as_it_is_written_then_the_checked_reply(llama_server, tmp_path):
    config = tmp_path / "medagent.toml"
    config.write_text(
        "[agent]\nplanner = \"llm\"\n\n"
        f"[llm]\npreset = \"openai-compatible\"\nbase_url = \"{llama_server}\"\nmodel = \"small\"\ndialect = \"llamacpp\"\n"
        "reflect = false\nmax_calls = 2\ntimeout_s = 300\nreport_max_tokens = 200\n",
        encoding="utf-8",
    )
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [str(EXE), "chat", "--config", str(config), "--script", "-"],
        input="Cough and fever for two weeks, night sweats, weight loss.\n", capture_output=True, text=True,
        env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "medagent (draft report, checked below)>" in out, out[-3000:]
    draft, reply = out.split("medagent (draft report, checked below)>", 1)[1].split("medagent>", 1)
    assert "New evidence:" in reply  # the checked reply follows the draft
    # What was shown as the draft is exactly what the model wrote (the session's trace holds its completion).
    session = re.search(r"session (\d{8}-\d{6}-[0-9a-f]{6})", out).group(1)
    trace = sessions_root(load_settings(config)) / session / "trace.jsonl"
    turns = [json.loads(line) for line in trace.read_text(encoding="utf-8").splitlines()]
    completion = next(t for t in turns if t["event"] == "llm_turn" and t["role"] == "reporter")["completion"]
    written = [" ".join(s["text"].split()) for s in json.loads(completion)["sentences"] if s["text"].strip()]
    assert written and [" ".join(line.split()) for line in draft.splitlines() if line.strip()] == written
