"""A regular (non-editable) install must contain every package folder on disk."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ("agent", "tools", "specialists", "evals", "training")


def test_wheel_contains_every_package_folder(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    wheel = next(tmp_path.glob("medagent-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    in_wheel = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith("/__init__.py") or n.endswith("__init__.py")}
    on_disk = {
        "medagent." + str(p.parent.relative_to(REPO)).replace("/", ".")
        for layer in LAYERS
        for p in (REPO / layer).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= in_wheel, f"missing from the wheel: {sorted(on_disk - in_wheel)}"
    assert not any(n.startswith(("agent/", "tools/")) for n in names), "bare top-level packages installed"
    assert "medagent/evals/builtin.py" in names
