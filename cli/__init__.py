"""The command line, the one composition root: the only package that may import every layer.

`medagent` (the console script), `python -m medagent.cli` and `torchrun -m medagent.cli train ...` all
start `main` here.
"""

from medagent.cli.main import app, main

__all__ = ["app", "main"]
