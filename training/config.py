"""Recipe configs: a YAML file is the single source of truth for a run, `a.b=value` overrides on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from medagent.tools.errors import MedagentError


def load_config(path: Path, overrides: list[str]) -> dict[str, Any]:
    """The YAML file, then `dotted.key=value` overrides (values parsed as YAML)."""
    try:
        cfg = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise MedagentError(f"{path}: cannot read the recipe config ({exc})") from exc
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise MedagentError(f"override '{item}': expected key=value")
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return cfg
