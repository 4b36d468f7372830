"""A run's outputs, written one way: result.json, report.md, trace.jsonl and artifacts/ in a staging folder
that is published whole (tools/paths.py: never half-written, never replacing a folder medagent did not
write). The CLI's `solve`, the Python API's `solve(..., out=...)` and chat's `/export` all write here."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from medagent.agent.render import render_markdown
from medagent.tools.contracts import Case, Result
from medagent.tools.paths import prepare_output, publish_output
from medagent.tools.safeio import terminal_safe


@contextmanager
def output_folder(out: Path, overwrite: bool, inputs: Iterable[Path], command: str) -> Iterator[Path]:
    """A staging folder for `out` (checked and refused before any work); published on success, removed on any failure."""
    staging = prepare_output(out, overwrite, inputs)
    try:
        yield staging
        publish_output(staging, out, overwrite, command)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_outputs(folder: Path, result: Result, case: Case) -> None:
    """result.json and report.md into `folder` (the trace streams there itself); an empty artifacts/ is dropped."""
    (folder / "result.json").write_text(result.model_dump_json(indent=2), encoding="utf-8")
    (folder / "report.md").write_text(terminal_safe(render_markdown(result, case)), encoding="utf-8")
    artifacts = folder / "artifacts"
    if artifacts.is_dir() and not any(artifacts.iterdir()):
        artifacts.rmdir()
