"""`medagent train NAME --config`: dispatch to training/NAME/recipe.py."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import medagent.training
from medagent.tools.errors import MedagentError


def recipe_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(medagent.training.__path__) if m.ispkg)


def run_recipe(name: str, config: Path, overrides: list[str]) -> Path:
    names = recipe_names()
    if name not in names:
        raise MedagentError(f"no training recipe '{name}'; available: {', '.join(names) or 'none yet'}")
    if not config.is_file():
        raise MedagentError(f"{config}: recipe config not found")
    recipe = importlib.import_module(f"medagent.training.{name}.recipe")
    return recipe.main(config, overrides)
