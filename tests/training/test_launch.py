"""The launch commands written in the recipe configs and the README run as written.

Each command is taken from the file's text, its config path must exist and its recipe must be one the CLI
knows, and then the very entry point it names (the `medagent` console script, or torchrun's `-m medagent.cli`)
is run with `--help` (torchrun with one process instead of eight: the launch path is the same).
The two-process smoke runs (test_multiprocess.py) go through `torchrun -m medagent.cli train` as well.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from medagent.cli.recipes import recipe_names
from medagent.training.config import load_config

REPO = Path(__file__).resolve().parents[2]
COMMAND = re.compile(r"((?:torchrun|medagent train)\s[^`)]*)")


def documented(path: Path) -> list[str]:
    """Launch commands in a file: after '# ' in YAML comments, or in README backticks/code; `\\` joins lines."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix == ".yaml":
        lines = [line.lstrip("#").strip() for line in lines if line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for match in COMMAND.finditer(line):
            command = match.group(1).split("  #")[0].split("   (")[0].strip().rstrip(".,")
            if "--config" in command and "NAME" not in command:
                found.append(command)
    return found


def commands() -> list[tuple[str, str]]:
    files = sorted(REPO.glob("training/*/configs/*.yaml")) + [REPO / "README.md"]
    return [(str(path.relative_to(REPO)), command) for path in files for command in documented(path)]


def test_every_gpu_config_documents_its_launch() -> None:
    documented_files = {path for path, _ in commands()}
    for config in sorted(REPO.glob("training/*/configs/gpu.yaml")):
        assert str(config.relative_to(REPO)) in documented_files, f"{config}: no launch command in its comments"
    launchers = {command.split()[0] for path, command in commands() if path.endswith("gpu.yaml")}
    assert launchers == {"medagent", "torchrun"}


def entry_point(command: str) -> list[str]:
    """The argv that runs `command` here: torchrun as `python -m torch.distributed.run` with one process, the
    console script from this environment."""
    argv = shlex.split(command)
    if argv[0] == "torchrun":
        nproc = argv.index("--nproc_per_node")
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:nproc], "--nproc_per_node", "1", *argv[nproc + 2 :]]
    script = Path(sys.executable).parent / "medagent"
    assert script.is_file(), f"the medagent console script is not installed beside {sys.executable}"
    return [str(script), *argv[1:]]


@pytest.mark.parametrize(("source", "command"), commands(), ids=lambda value: value.replace(" ", "_")[:90])
def test_documented_command_names_a_recipe_and_a_config_that_loads(source: str, command: str) -> None:
    argv = shlex.split(command)
    name = argv[argv.index("train") + 1]
    config = argv[argv.index("--config") + 1]
    assert name in recipe_names(), f"{source}: {command!r} names no recipe '{name}'"
    assert (REPO / config).is_file(), f"{source}: {command!r} names a config that does not exist"
    load_config(REPO / config, [a for a in argv[argv.index("--config") + 2 :] if "=" in a])
    if argv[0] == "torchrun":
        assert argv[argv.index("-m") + 1] == "medagent.cli", f"{source}: torchrun must run -m medagent.cli"


def test_each_documented_entry_point_starts() -> None:
    # `--help` is answered before the arguments are parsed, so one documented command per entry point is
    # enough here (the test above checks every command's arguments); the two-process recipe tests run
    # `torchrun -m medagent.cli train ...` for real.
    firsts = {shlex.split(command)[0]: command for _, command in reversed(commands())}
    assert set(firsts) == {"medagent", "torchrun"}
    for command in firsts.values():
        done = subprocess.run([*entry_point(command), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        assert "Run a training recipe." in done.stdout and "--config" in done.stdout, command
