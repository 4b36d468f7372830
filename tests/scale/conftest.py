"""A real local Ray cluster for the scale-out tests: started once per test session on 127.0.0.1 (2 CPUs, no
dashboard), medagent's tools and service deployed on it by `medagent scale deploy --service`, stopped at the end.

The deployments get tiny random-weight models where the real weights cannot be here (RadFM, KEP-32, the MONAI
spleen bundle's own network), so every model-backed tool is deployed and answers its health check."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"

pytest.importorskip("ray.serve", reason="ray[serve] is not installed: pip install -e '.[scale]' (make test installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    address: str
    config: Path  # medagent.toml naming the cluster, the deployments and the tiny models
    plain: Path  # the same without the tiny models: for runs compared with local ones
    service_url: str
    folder: Path
    deploy_output: str


def _tiny_models(folder: Path) -> dict[str, Path]:
    """RadFM, KEP-32 and the spleen bundle with random weights, through the fixtures' own builders."""
    import json

    import torch
    from monai.bundle import ConfigParser

    from medagent.specialists.radfm.tiny import build_tiny

    rows = [json.loads(line) for line in (REPO / "tests/data/radfm/vqa_rad/dev.jsonl").read_text().splitlines()]
    radfm = build_tiny(folder / "radfm", [f"{r['question']} {r['answer']}" for r in rows])
    spec = importlib.util.spec_from_file_location("pathology_fixtures", REPO / "tests/pathology/conftest.py")
    pathology = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pathology)
    kep = pathology.write_checkpoint(folder / "kep32", pathology.make_tokenizer(folder / "tokenizer"), "kep32")
    bundle = folder / "spleen_ct_segmentation"
    shutil.copytree(REPO / "tests/data/imaging/spleen_ct_segmentation", bundle)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    torch.manual_seed(0)
    (bundle / "models").mkdir(exist_ok=True)
    torch.save({"model": parser.get_parsed_content("network_def", instantiate=True).state_dict()}, bundle / "models" / "model.pt")
    return {"radfm": radfm, "kep": kep, "bundle": bundle}


def _models_toml(models: dict[str, Path]) -> str:
    return f"""
[imaging]
bundles = ["{models["bundle"]}"]
roi_size = [32, 32, 32]

[radfm]
path = "{models["radfm"]}"
dtype = "fp32"
device = "cpu"

[pathology]
path = "{models["kep"]}"
"""


def write_config(folder: Path, address: str, port: int, models: dict[str, Path] | None, name: str = "medagent.toml") -> Path:
    """The cluster's medagent.toml; without `models`, one that names no tiny model (for the runs compared with
    local ones: the deployments keep theirs)."""
    threads = os.cpu_count() or 1  # a replica's native threads as this process has them: the same numbers
    config = folder / name
    config.write_text('[agent]\nplanner = "rule"\n' + (_models_toml(models) if models else "") + f'''
[serve]
ray_address = "{address}"
port = {port}
jobs_dir = "{folder / "jobs"}"
service_replicas = 2
service_num_cpus = 0.1
eval_num_cpus = 0.25
remote_tools = ["knowledge.*", "speech.transcribe"]

[serve.deployments.knowledge]
tools = ["knowledge.link", "knowledge.rank", "knowledge.lookup"]
num_cpus = 0.1
threads = {threads}

[serve.deployments.speech]
tools = ["speech.transcribe"]
num_cpus = 0.1
threads = {threads}

[serve.deployments.vision]
tools = ["imaging.ct_quant", "imaging.segment", "imaging.vqa", "pathology.classify"]
num_cpus = 0.1
''', encoding="utf-8")
    return config


@pytest.fixture(scope="session")
def ray_cluster() -> Cluster:
    import ray

    # Ray's sockets live under its temp folder, whose path must stay short (a Unix socket path has ~107 bytes):
    # a short prefix in $TMPDIR.
    folder = Path(tempfile.mkdtemp(prefix="mdray-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(RAY), "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false",
             "--node-ip-address=127.0.0.1", f"--temp-dir={folder / 'ray'}", "--disable-usage-stats"]
    started = subprocess.run(start, capture_output=True, text=True, timeout=180, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        models = _tiny_models(folder / "models")
        port_http = free_port()
        config = write_config(folder, address, port_http, models)
        plain = write_config(folder, address, port_http, None, "plain.toml")
        deployed = subprocess.run([sys.executable, "-m", "medagent.cli", "scale", "deploy", "--service", "--config", str(config)],
                                  capture_output=True, text=True, timeout=600, env=env)
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr[-4000:]
        from medagent.tools.config import load_settings

        settings = load_settings(config)
        from medagent.agent.scale import connect

        connect(address)
        yield Cluster(address, config, plain, f"http://127.0.0.1:{settings.serve.port}", folder, deployed.stdout)
    finally:
        ray.shutdown()
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120, env=env)
        shutil.rmtree(folder, ignore_errors=True)


def wait_until(check, timeout_s: float = 120.0, every_s: float = 0.5):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"not true within {timeout_s:g} s")
