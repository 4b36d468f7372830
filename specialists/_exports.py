"""A specialist package's public API, imported on first use.

Each specialist's `__init__` names what other layers may use (`__all__`) and the submodule holding each;
`from medagent.specialists.speech import transcribe` then imports torch and the model code only when the
name is first taken, so importing the package stays as cheap as importing its docstring.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` (PEP 562) that resolves each public name from its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)

    return __getattr__
