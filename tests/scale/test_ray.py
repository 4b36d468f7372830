"""medagent on a real local Ray cluster (tests/scale/conftest.py): the tools as Ray Serve deployments, the HTTP
service as a Ray Serve application, and suites spread over Ray actors.

What a user would notice: the same evidence and scores as a local run, the trace saying where each call ran,
a killed replica costing a retry and not the run, a consultation that outlives its replica, and an address
nothing answers on being one line and exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from .conftest import REPO, free_port, wait_until

TIMING_KEYS = {"timings", "real_time_factor"}  # measured times differ between any two runs
SCORE_TIMING_KEYS = {"wall_s", "seconds", "tool_seconds", "node_seconds"}
SUITE = REPO / "tests/data/scale/suite.jsonl"


def _settings(config: Path, remote: bool):
    """Settings for a solve (`config`: the cluster's plain.toml, no tiny models): the knowledge and speech tools
    remote or, with `remote` False, everything in this process."""
    from medagent.tools.config import load_settings

    settings = load_settings(config)
    if not remote:
        settings.serve.remote_tools = []
    return settings


def _evidence(result) -> list[dict]:  # noqa: ANN001 - Result
    def strip(value):  # noqa: ANN001, ANN202
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMING_KEYS}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return [strip(e.model_dump(mode="json")) for e in result.evidence]


def _ran_on(trace: Path) -> dict[str, set[str]]:
    where: dict[str, set[str]] = {}
    for line in trace.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if event["event"] == "tool_result":
            where.setdefault(event["tool"], set()).add(event["ran_on"])
    return where


def test_every_model_backed_tool_is_deployed_and_answers_its_health_check(ray_cluster):
    said = ray_cluster.deploy_output
    for tool in ("knowledge.link", "knowledge.rank", "knowledge.lookup", "speech.transcribe", "imaging.ct_quant",
                 "imaging.segment", "imaging.vqa", "pathology.classify"):
        assert f"✓ {tool} on medagent-tools/tools-" in said, said
    status = subprocess.run([sys.executable, "-m", "medagent.cli", "scale", "status", "--config", str(ray_cluster.config)],
                            capture_output=True, text=True, timeout=180)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "medagent-tools: RUNNING" in status.stdout and "medagent-service: RUNNING" in status.stdout, status.stdout
    assert "✓ imaging.vqa on medagent-tools/tools-vision" in status.stdout
    health = httpx.get(f"{ray_cluster.service_url}/api/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    doctor = subprocess.run([sys.executable, "-m", "medagent.cli", "doctor", "--config", str(ray_cluster.config)],
                            capture_output=True, text=True, timeout=180)
    assert "knowledge.link (on ray:medagent-tools/tools-knowledge): available" in doctor.stdout, doctor.stdout


def test_the_demo_case_with_remote_knowledge_and_speech_has_the_local_evidence(ray_cluster, tmp_path: Path):
    from medagent.agent.api import solve

    case = REPO / "examples/multimodal_case.json"
    local = solve(case, settings=_settings(ray_cluster.plain, remote=False), out=tmp_path / "local")
    remote = solve(case, settings=_settings(ray_cluster.plain, remote=True), out=tmp_path / "remote")
    assert [e.tool for e in remote.evidence].count("speech.transcribe") == 1
    assert _evidence(remote) == _evidence(local)
    assert remote.differential == local.differential
    where = _ran_on(tmp_path / "remote" / "trace.jsonl")
    for tool in ("speech.transcribe", "knowledge.link", "knowledge.rank"):
        assert all(w.startswith("ray:medagent-tools/tools-") for w in where[tool]), where
    assert where["imaging.ct_quant"] == {"local"}
    assert set().union(*_ran_on(tmp_path / "local" / "trace.jsonl").values()) == {"local"}


def test_a_replica_killed_during_a_call_is_replaced_and_the_run_completes(ray_cluster, tmp_path: Path):
    from medagent.agent.api import solve
    from medagent.agent.scale import RemoteTool

    settings = _settings(ray_cluster.plain, remote=True)
    pid = RemoteTool(settings, "speech").health()["pid"]
    trace = tmp_path / "out" / "trace.jsonl"
    killed: list[float] = []

    def kill_during_the_call() -> None:
        # The solve writes its trace in a staging folder first: watch every trace under tmp_path for the call.
        wait_until(lambda: any('"tool":"speech.transcribe"' in p.read_text(errors="replace")
                               for p in tmp_path.rglob("trace.jsonl")), timeout_s=120, every_s=0.05)
        time.sleep(0.3)  # the call is on the replica now (a warm transcription of this dictation takes > 1 s)
        os.kill(pid, signal.SIGKILL)
        killed.append(time.monotonic())

    killer = threading.Thread(target=kill_during_the_call, daemon=True)
    killer.start()
    result = solve(REPO / "examples/dictation_case.json", settings=settings, out=tmp_path / "out")
    killer.join(timeout=5)
    assert killed, "the replica was not killed during the call"
    speech = [e for e in result.evidence if e.tool == "speech.transcribe"]
    assert len(speech) == 1 and not speech[0].error and "chest pain" in speech[0].summary.lower(), speech
    (where,) = _ran_on(trace)["speech.transcribe"]
    assert "retried: the first replica died" in where, where
    assert RemoteTool(settings, "speech").health()["pid"] != pid  # Ray Serve started another replica


def test_a_consultation_survives_the_death_of_the_replica_serving_it(ray_cluster):
    from medagent.agent.sessions import session_folder
    from medagent.tools.config import load_settings

    settings = load_settings(ray_cluster.config)
    with httpx.Client(base_url=ray_cluster.service_url, timeout=300) as client:
        session_id = client.post("/api/sessions").json()["id"]

        def say(text: str) -> list[str]:
            with client.stream("POST", f"/api/sessions/{session_id}/messages", json={"text": text}) as response:
                assert response.status_code == 200
                return [line.removeprefix("event: ") for line in response.iter_lines() if line.startswith("event:")]

        assert say("Three weeks of left upper quadrant pain, early satiety and night sweats. No fever.")[-2:] == ["reply", "end"]
        before = client.get(f"/api/sessions/{session_id}").json()
        serving = int((session_folder(settings, session_id) / "lock").read_text())  # the replica that held the session
        os.kill(serving, signal.SIGKILL)
        assert say("Weight loss of 4 kg.")[-2:] == ["reply", "end"]
        after = client.get(f"/api/sessions/{session_id}").json()
    assert int((session_folder(settings, session_id) / "lock").read_text()) != serving
    assert after["turns"][: len(before["turns"])] == before["turns"]  # the history is intact
    assert [t["role"] for t in after["turns"]].count("user") == 2
    old_ids = [e["id"] for e in before["result"]["evidence"]]
    assert [e["id"] for e in after["result"]["evidence"]][: len(old_ids)] == old_ids and len(after["result"]["evidence"]) > len(old_ids)


def _scores(folder: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (folder / "scores.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return {line["id"]: {k: v for k, v in line.items() if k not in SCORE_TIMING_KEYS} for line in lines}


def test_a_suite_on_the_cluster_scores_as_it_does_locally(ray_cluster, tmp_path: Path):
    from medagent.evals.runner import run_suite

    run_suite(str(SUITE), out=tmp_path / "local", settings=_settings(ray_cluster.plain, remote=False), quiet=True)
    on_ray = subprocess.run([sys.executable, "-m", "medagent.cli", "eval", "run", str(SUITE), "-o", str(tmp_path / "ray"),
                             "--ray", "--workers", "2", "--config", str(ray_cluster.plain)],
                            capture_output=True, text=True, timeout=600)
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    local, remote = _scores(tmp_path / "local"), _scores(tmp_path / "ray")
    assert len(local) == 6 and remote == local
    assert all(line.get("completed", True) and not line.get("failure") for line in remote.values()), remote
    assert json.loads((tmp_path / "ray" / "run.json").read_text())["ray"] == ray_cluster.address
    for item in local:
        assert (tmp_path / "ray" / "traces" / f"{item}.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "ray" / "results").iterdir()) == sorted(
        p.name for p in (tmp_path / "local" / "results").iterdir())


@pytest.mark.parametrize("command", [
    ["solve", str(REPO / "examples/history_case.json"), "-o", "{out}"],
    ["eval", "run", str(SUITE), "-o", "{out}", "--ray", "127.0.0.1:{port}"],
    ["scale", "status"],
])
def test_an_unreachable_cluster_is_one_line_naming_it_and_exit_2(tmp_path: Path, command: list[str]):
    port = free_port()  # nothing listens there
    config = tmp_path / "medagent.toml"
    config.write_text(f'[agent]\nplanner = "rule"\n[serve]\nray_address = "127.0.0.1:{port}"\nremote_tools = ["knowledge.*"]\n')
    args = [a.format(out=tmp_path / "out", port=port) for a in command]
    done = subprocess.run([sys.executable, "-m", "medagent.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "no Ray cluster answered" in errors[0], done.stderr
    assert not (tmp_path / "out").exists() or command[0] == "eval"


def test_a_deployment_whose_weights_are_missing_says_so_and_starts(tmp_path: Path):
    """The deployment class itself, as each replica builds it: missing weights make tools unavailable with the
    reason `medagent doctor` gives, and construction never raises (no restart loop on the cluster)."""
    import tempfile

    from medagent.agent.scale import ToolServer
    from medagent.tools.config import Settings
    from medagent.tools.registry import Registry

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = Path(tempfile.gettempdir()) / f"medagent-call-{dead}-test"  # left by a replica killed mid-call
    (stale / "case").mkdir(parents=True, exist_ok=True)
    live = Path(tempfile.mkdtemp(prefix=f"medagent-call-{os.getppid()}-"))  # a live process's call: kept
    settings = Settings.model_validate({"radfm": {"path": str(tmp_path / "nowhere")}})
    server = ToolServer(settings.model_dump(mode="json"), ["imaging.vqa", "pathology.classify", "imaging.ct_quant"])
    health = server.health()
    local = Registry(settings)
    for tool in ("imaging.vqa", "pathology.classify"):
        assert health["tools"][tool] == local.unavailable_reason(tool) and health["tools"][tool]
    assert health["tools"]["imaging.ct_quant"] is None
    answer = server._call({"tool": "imaging.vqa", "arguments": {}, "case": {"id": "c"}, "evidence": [], "files": {},
                           "paths": {}, "artifacts_name": "artifacts"})
    assert answer["error"]["kind"] == "UnavailableError" and answer["error"]["message"] == health["tools"]["imaging.vqa"]
    assert not stale.exists() and live.is_dir()
    live.rmdir()


def test_a_job_whose_service_replica_dies_is_finished_by_the_replica_started_in_its_place(ray_cluster):
    import io
    import zipfile

    series = REPO / "examples/data/ct_dicom"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(series.iterdir()):
            archive.writestr(f"ct_dicom/{path.name}", path.read_bytes())
    jobs = ray_cluster.folder / "jobs"
    with httpx.Client(base_url=ray_cluster.service_url, timeout=120) as client:
        submitted = client.post("/api/jobs", files=[("files", ("ct_dicom.zip", buffer.getvalue(), "application/zip"))],
                                data={"history": "Three weeks of left upper quadrant pain and early satiety."})
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        owner = int(wait_until(lambda: (jobs / job_id / "lock").is_file() and (jobs / job_id / "lock").read_text(),
                               timeout_s=30, every_s=0.02))  # the replica that holds the job
        os.kill(owner, signal.SIGKILL)
        job = wait_until(lambda: (j := client.get(f"/api/jobs/{job_id}").json())["status"] in ("done", "failed") and j,
                         timeout_s=300)
        assert job["status"] == "done", job
        assert job["resumed"] >= 1  # picked up by the replica Ray Serve started, not run twice from scratch
        result = client.get(f"/api/jobs/{job_id}/result").json()
    quant = [e for e in result["evidence"] if e["tool"] == "imaging.ct_quant"]
    assert quant and not any(e["error"] for e in quant), quant  # the CT was measured
    assert int((jobs / job_id / "lock").read_text()) != owner
