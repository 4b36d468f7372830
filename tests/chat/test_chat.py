"""Chat sessions driven as a user would: scripted turns, restarts, a killed process, a second process, a real terminal."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medagent.agent.chat import ChatSession
from medagent.tools.config import Settings

REPO = Path(__file__).resolve().parents[2]
EXE = Path(sys.executable).parent / "medagent"
CT = REPO / "examples" / "data" / "ct_small.nii.gz"
DICOM = REPO / "examples" / "data" / "ct_dicom"


def chat(*args: str, turns: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(EXE), "chat", *args], input=turns, capture_output=True, text=True, env=env, timeout=timeout)


def session_id(output: str) -> str:
    return re.search(r"session (\d{8}-\d{6}-[0-9a-f]{6})", output).group(1)


def evidence_ids(output: str) -> list[str]:
    return re.findall(r"^\[(E\d+)\]", output, flags=re.M)


def test_session_with_attachment_mid_way_resumes_after_restart(tmp_path):
    first = chat("--script", "-", turns=f"Cough for two weeks.\n/attach {CT} volume CT\n/evidence\n")
    assert first.returncode == 0, first.stderr
    sid = session_id(first.stdout)
    assert "Attached ct_small.nii.gz as a1 (volume, CT)" in first.stdout
    before = evidence_ids(first.stdout)
    assert before and before[0] == "E1"
    # A new process resumes the same session: the same evidence, and numbering goes on from there.
    second = chat("--session", sid, turns=f"/evidence\n/attach {DICOM} volume\n/evidence\n")
    assert second.returncode == 0, second.stderr
    listing = second.stdout.split("you> /attach")[0]
    assert evidence_ids(listing) == before
    after = evidence_ids(second.stdout.split("you> /attach")[1])
    assert after[: len(before)] == before and len(after) > len(before)
    assert after[len(before)] == f"E{len(before) + 1}"
    # The attached files were copied into the session folder, so it stands alone.
    folder = Path(os.environ["MEDAGENT_HOME"]) / "sessions" / sid
    assert (folder / "files" / "a1" / "ct_small.nii.gz").exists() and (folder / "files" / "a2" / "ct_dicom").is_dir()
    # Export writes the three outputs.
    exported = chat("--session", sid, turns=f"/export {tmp_path / 'export'}\n")
    assert exported.returncode == 0 and (tmp_path / "export" / "report.md").exists()
    assert (tmp_path / "export" / "result.json").exists() and (tmp_path / "export" / "trace.jsonl").exists()
    # Sessions are listed, and deleting one removes all its data.
    assert sid in chat("--list").stdout
    assert chat("--delete", sid).returncode == 0
    assert not folder.exists()
    assert chat("--session", sid, turns="/evidence\n").returncode == 2


def test_bad_attachments_and_commands_keep_the_session_alive(tmp_path):
    bad = tmp_path / "notes.xyz"
    bad.write_text("hello")
    done = chat(turns=f"/attach {tmp_path / 'missing.nii.gz'}\n/attach {bad}\n/frobnicate\n/attach {CT} volume CT\n")
    assert done.returncode == 0, done.stderr
    assert "file not found" in done.stdout and "unrecognised file format" in done.stdout and "unknown command" in done.stdout
    assert "Attached ct_small.nii.gz as a1" in done.stdout


def test_second_process_on_an_open_session_is_refused(tmp_path):
    settings = Settings()

    async def hold() -> None:
        async with ChatSession(settings) as session:
            done = await asyncio.to_thread(chat, "--session", session.id, turns="/evidence\n")
            assert done.returncode == 2
            assert "open in another process" in done.stderr

    asyncio.run(hold())


def test_killed_mid_turn_resumes_from_last_checkpoint(tmp_path):
    start = chat(turns="Fatigue.\n")
    sid = session_id(start.stdout)
    env = {**os.environ, "COLUMNS": "200"}
    process = subprocess.Popen([str(EXE), "chat", "--session", sid, "--script", "-"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    process.stdin.write(f"/attach {DICOM} volume CT\n")
    process.stdin.close()
    seen = ""
    deadline = time.monotonic() + 120
    while "…" not in seen and time.monotonic() < deadline:  # a tool has started running
        seen += process.stdout.readline()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert "…" in seen, seen
    resumed = chat("--session", sid, turns="/evidence\n")
    assert resumed.returncode == 0, resumed.stderr
    assert "interrupted" in resumed.stdout
    assert "imaging.describe a1" in resumed.stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make system-deps installs it)")
def test_interactive_screen_in_a_real_terminal(tmp_path):
    name = f"medagent-test-{os.getpid()}"
    # The pane outlives the chat by a while, so its last words ("Resume with ...") can still be read.
    command = f"MEDAGENT_HOME={os.environ['MEDAGENT_HOME']} {EXE} chat; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "160", "-y", "50", command], check=True)
    try:
        def screen() -> str:
            return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

        def wait_for(text: str, seconds: float = 120) -> str:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                shown = screen()
                if text in shown:
                    return shown
                time.sleep(0.5)
            raise AssertionError(f"{text!r} never appeared:\n{screen()}")

        wait_for("you>")
        subprocess.run(["tmux", "send-keys", "-t", name, "/help", "Enter"], check=True)
        assert "/attach PATH" in wait_for("/export")
        subprocess.run(["tmux", "send-keys", "-t", name, f"/attach {CT} volume CT", "Enter"], check=True)
        shown = wait_for("New evidence")
        assert "[E1]" in shown
        subprocess.run(["tmux", "send-keys", "-t", name, "/quit", "Enter"], check=True)
        wait_for("Resume with")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_history_taking_asks_a_separating_question_and_uses_the_answer(tmp_path):
    import json

    history = "Baby boy with a distended abdomen and constipation."  # thin: two phenotypes
    done = chat(turns=f"{history}\nyes\n")
    assert done.returncode == 0, done.stderr
    sid = session_id(done.stdout)
    asked = re.findall(r"medagent asks> Does the patient have (.+?)\?", done.stdout)
    assert asked, done.stdout
    folder = Path(os.environ["MEDAGENT_HOME"]) / "sessions" / sid
    turns = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    questions = [t for t in turns if t.get("kind") == "question"]
    # Each question is logged with the reason: how often each leading candidate shows the feature.
    assert questions and "separates the leading candidates" in questions[0]["reason"] and "%" in questions[0]["reason"]
    # "yes" became a history sentence naming the feature, which the linker then found.
    assert f"Reports {asked[0].lower()}" in done.stdout or asked[0].lower() in done.stdout.split("you> yes")[1].lower()
