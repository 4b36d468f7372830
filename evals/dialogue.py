"""Dialogue items: medagent's chat converses with a simulated patient, in a fresh session per item.

The simulated patient is an LLM given the case (history, examination, and test results with any
line naming the diagnosis redacted) — never the diagnosis itself. It answers only what it is asked.
medagent starts from nothing but what the patient says, asks its history-taking questions, and its
final differential is scored. The whole conversation is in the item's trace (chat traces are the
same schema as `solve` traces), and its turns in the item's result folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from medagent.evals.suite import Expected, Suite, SuiteItem, register
from medagent.tools.config import Settings
from medagent.tools.contracts import Result
from medagent.tools.errors import MedagentError

PATIENT_SYSTEM = (
    "You are the patient (or the patient's parent) in a medical consultation. The case notes below are "
    "what you know about yourself. Answer only the doctor's question, in one or two short sentences of "
    "plain language, in the first person. When the question can be answered yes or no, begin with 'Yes' "
    "or 'No'. If the notes do not mention it, answer 'No'. Never name or guess a diagnosis.\n\n"
    "Case notes:\n{notes}"
)
OPENING = "What brings you in today?"
MAX_TURNS = 8


def patient_settings(settings: Settings) -> Settings:
    """The simulated patient's LLM: the configured one, or the offline default when none is configured."""
    if settings.llm.configured:
        return settings
    return settings.model_copy(update={"llm": settings.llm.model_copy(update={"preset": "offline-cpu"})})


class SimulatedPatient:
    def __init__(self, notes: str, settings: Settings, pool: Any = None) -> None:
        from medagent.agent.llm.factory import make_backend

        self.backend = make_backend(patient_settings(settings), pool)
        self.messages = [{"role": "system", "content": PATIENT_SYSTEM.format(notes=notes)}]

    async def answer(self, question: str) -> str:
        self.messages.append({"role": "user", "content": f"Doctor: {question}"})
        result = await self.backend.chat(self.messages, max_tokens=60, temperature=0.0)
        text = " ".join(result.text.strip().split()) or "I don't know."
        self.messages.append({"role": "assistant", "content": text})
        return text

    async def aclose(self) -> None:
        await self.backend.aclose()


async def run_dialogue(item: SuiteItem, settings: Settings, run_dir: Path, trace_path: Path,
                       pool: Any = None) -> tuple[Result, dict[str, Any]]:
    """Converse until medagent stops asking (or MAX_TURNS); return its last result and dialogue metrics.
    `pool` (a ModelPool) holds the models of medagent and the simulated patient."""
    from medagent.agent.chat import ChatSession
    from medagent.agent.sessions import delete_session

    if item.case is None:
        raise MedagentError(f"dialogue item {item.id}: needs an inline case (the simulated patient's notes)")
    notes = item.case.history
    patient = SimulatedPatient(notes, settings, pool) if not item.turns else None
    scripted = iter(item.turns)
    transcript: list[dict[str, str]] = []
    questions = 0
    try:
        async with ChatSession(settings, pool=pool) as session:
            session_id = session.id
            said = next(scripted, None) if patient is None else await patient.answer(OPENING)
            reply = None
            for _ in range(MAX_TURNS):
                if said is None:
                    break
                transcript.append({"role": "patient", "text": said})
                reply = await session.say(said)
                transcript.append({"role": "medagent", "text": reply.text, "question": reply.question or ""})
                if not reply.question:
                    break
                questions += 1
                said = next(scripted, None) if patient is None else await patient.answer(reply.question)
            result = await session.result()
            if result is None:
                raise MedagentError(f"dialogue item {item.id}: the conversation produced no result")
            folder = session.folder
            shutil.copy(folder / "trace.jsonl", trace_path)
    finally:
        if patient is not None:
            await patient.aclose()
    (run_dir / "results" / f"{item.id}.dialogue.json").write_text(json.dumps(transcript, indent=2), encoding="utf-8")
    delete_session(settings, session_id)
    cited = sorted({c for s in result.report.sentences for c in s.citations})
    return result, {"turns": sum(1 for t in transcript if t["role"] == "patient"), "questions": questions,
                    "evidence_cited": len(cited)}


@register("agentclinic-chat")
def agentclinic_chat_suite(data_dir: Path | None, limit: int | None) -> Suite:
    """AgentClinic cases as consultations with a simulated patient (diagnosis never given to it)."""
    from medagent.evals.builtin import agentclinic_suite

    base = agentclinic_suite(data_dir, limit)
    items = [
        item.model_copy(update={"mode": "dialogue", "expected": Expected(answer_labels=item.expected.answer_labels)})
        for item in base.items
    ]
    return Suite(
        name="agentclinic-chat", items=items, base_dir=base.base_dir, default_limit=5,
        description=("AgentClinic OSCE cases as dialogues: a simulated patient (the configured LLM, or the offline "
                     "Qwen2.5-Coder-1.5B) answers medagent's questions from the redacted case; medagent starts from "
                     "the patient's opening complaint only. Metrics: diagnosis top-1/3/10, turns, questions, "
                     "evidence cited. About a minute per item on 2 CPU cores."),
    )
