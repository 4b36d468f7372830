"""The reference deployments in examples/scale/: valid Ray Serve config files whose medagent applications build
from the example medagent.toml and name only deployments that medagent makes (no cluster needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCALE = REPO / "examples" / "scale"
CLUSTER_TOML = SCALE / "medagent-cluster.toml"


@pytest.mark.parametrize("name", ["node-8gpu.yaml", "multi-node.yaml", "llm-ray-serve.yaml"])
def test_each_reference_config_is_a_valid_ray_serve_config(name: str):
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((SCALE / name).read_text(encoding="utf-8")))
    assert config.applications


@pytest.mark.parametrize("name", ["node-8gpu.yaml", "multi-node.yaml"])
def test_medagent_applications_build_and_name_only_their_own_deployments(name: str, monkeypatch):
    import importlib

    from medagent.agent.scale import deployment_name, remote_names
    from medagent.tools.config import load_settings
    from medagent.tools.registry import all_tools

    monkeypatch.setenv("MEDAGENT_API_TOKEN", "a-token")  # the service binds 0.0.0.0: it needs one
    settings = load_settings(CLUSTER_TOML)
    made = {"medagent-tools": {deployment_name(g) for g in settings.serve.deployments} | {"catalogue"},
            "medagent-service": {"service"}}
    grouped = {tool for spec in settings.serve.deployments.values() for tool in spec.tools}
    assert set(remote_names(settings, [t.name for t in all_tools()])) <= grouped
    for app in yaml.safe_load((SCALE / name).read_text(encoding="utf-8"))["applications"]:
        module, _, function = app["import_path"].partition(":")
        built = getattr(importlib.import_module(module), function)({"config": str(CLUSTER_TOML)})
        assert built is not None
        named = {d["name"] for d in app.get("deployments", [])}
        assert named <= made[app["name"]], (app["name"], named - made[app["name"]])
        assert app["args"]["config"].endswith(CLUSTER_TOML.name)


def test_the_service_on_ray_refuses_an_open_address_without_a_token(monkeypatch):
    from medagent.service.ray_app import service_application
    from medagent.tools.config import load_settings
    from medagent.tools.errors import MedagentError

    monkeypatch.delenv("MEDAGENT_API_TOKEN", raising=False)
    with pytest.raises(MedagentError, match="not a loopback address"):
        service_application(load_settings(CLUSTER_TOML))
