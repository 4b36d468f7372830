"""`imaging.vqa` with MedVInT-TD: availability and doctor lines, the backend chosen by `[vqa] backend` and the input,
a multiple-choice and an open question on a 2D image, a 3D volume refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medagent.tools.config import MedVInTSettings, RadFMSettings, Settings, VQASettings
from medagent.tools.contracts import Attachment, AttachmentKind, Case, ToolCall
from medagent.tools.errors import ToolError
from medagent.tools.radfm import TOOLS, VQAArgs, ask_case_question, case_choices, doctor, lettered_choices
from medagent.tools.registry import Registry, ToolContext

from .conftest import SLICE

VQA = TOOLS[0]


def _settings(folder: Path | None, backend: str = "auto", **radfm) -> Settings:
    medvint = MedVInTSettings(path=folder, device="cpu", dtype="fp32", max_new_tokens=8) if folder else MedVInTSettings()
    return Settings(vqa=VQASettings(backend=backend), medvint=medvint, radfm=RadFMSettings(**radfm))


def test_unavailable_until_weights_are_configured_and_doctor_says_where(tmp_path: Path):
    assert "[medvint] path" in VQA.check(Settings()) and "[radfm] path" in VQA.check(Settings())
    only = _settings(None, backend="medvint")
    assert VQA.check(only).startswith("MedVInT-TD weights are not configured: set [medvint] path")
    assert "pytorch_model.bin" in VQA.check(_settings(tmp_path, backend="medvint"))
    lines = "\n".join(doctor(Settings()))
    assert '[medvint] path = "<that folder>"' in lines and "xmcmic/MedVInT-TD" in lines
    assert "[medvint] llama_path" in lines and "bf16 ≈ 14 GiB" in lines
    assert "not yet checked against released weights" in lines
    assert "medvint: unavailable: MedVInT-TD weights are not configured" in lines

    from typer.testing import CliRunner

    from medagent.cli.main import app

    config = tmp_path / "medagent.toml"
    config.write_text('[vqa]\nbackend = "medvint"\n')
    done = CliRunner().invoke(app, ["tools", "--json", "--config", str(config)])
    assert done.exit_code == 0, done.output
    [spec] = [s for s in json.loads(done.output) if s["name"] == "imaging.vqa"]
    assert not spec["available"] and "[medvint] path" in spec["unavailable_reason"]


def test_choices_are_read_from_the_case_question():
    stem, choices = lettered_choices("Which region does it show? A: chest B: upper abdomen C: pelvis D: head")
    assert stem == "Which region does it show?" and choices == ["chest", "upper abdomen", "pelvis", "head"]
    assert lettered_choices("Is this a CT scan?") == ("Is this a CT scan?", [])
    assert case_choices("Is this a chest CT or an abdominal CT?") == ["chest CT", "abdominal CT"]


@pytest.fixture
def case_dir(tmp_path: Path) -> Path:
    shutil.copy(SLICE, tmp_path / "slice.png")
    hu = np.full((24, 24, 9), -1000.0, dtype=np.float32)
    hu[6:18, 6:18, :] = 40.0
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 3.0, 1.0])), tmp_path / "ct.nii.gz")
    return tmp_path


CASE = Case(
    id="vqa-2d",
    question="Which region of the body does this CT slice show? A: chest B: upper abdomen C: pelvis D: head",
    attachments=[
        Attachment(id="slice", kind=AttachmentKind.image, path="slice.png", modality="CT", format="png"),
        Attachment(id="ct", kind=AttachmentKind.volume, path="ct.nii.gz", modality="CT", format="nifti"),
    ],
)


def test_auto_sends_a_2d_image_to_medvint_and_refuses_a_volume_without_radfm(tiny_folder: Path, case_dir: Path):
    settings = _settings(tiny_folder)
    assert VQA.check(settings) is None
    registry = Registry(settings, tools=TOOLS)
    context = ToolContext(case=CASE, case_dir=case_dir, artifacts_dir=case_dir / "out", settings=settings,
                          pool=registry.pool)  # fmt: skip
    [(tool, arguments, _), _] = ask_case_question(CASE, registry.available(), [], [])
    assert tool == "imaging.vqa" and arguments["choices"] == ["chest", "upper abdomen", "pelvis", "head"]
    args, reason = registry.validate(ToolCall(call_id="C1", tool=tool, arguments=arguments), CASE)
    assert reason is None
    (evidence,) = VQA.run(args, context)
    assert VQA.checked(evidence) == evidence
    payload = evidence.payload
    assert payload["model"] == "MedVInT-TD" and payload["backend"] == "medvint" and "2D image" in payload["backend_reason"]
    assert payload["input_shape"] == [3, 512, 512]
    assert payload["chosen"] in "ABCD" and payload["answer"] == arguments["choices"]["ABCD".index(payload["chosen"])]
    assert [c["text"] for c in payload["choices"]] == arguments["choices"] and evidence.confidence == payload["score"]
    assert f"chose {payload['chosen']}: {payload['answer']}" in evidence.summary
    assert "MedVInT-TD, asked 'Which region of the body does this CT slice show?'" in evidence.summary

    (described,) = VQA.run(VQAArgs(attachment="slice"), context)  # an open question: a generated answer
    assert described.payload["generated"] == "greedy" and "choices" not in described.payload
    assert 1 <= len(described.payload["answer"].split()) <= 8

    _, refused = registry.validate(ToolCall(call_id="C2", tool="imaging.vqa", arguments={"attachment": "ct"}), CASE)
    assert "a 3D volume needs RadFM" in refused and "[radfm] path" in refused
    with pytest.raises(ToolError, match="MedVInT-TD reads only one 2D image"):
        VQA.run(VQAArgs(attachment="ct"), context)
    medvint_only = _settings(tiny_folder, backend="medvint")
    with pytest.raises(ToolError, match="a 3D volume is not sent to it"):
        VQA.run(VQAArgs(attachment="ct"), ToolContext(case=CASE, case_dir=case_dir, artifacts_dir=case_dir,
                                                      settings=medvint_only, pool=registry.pool))  # fmt: skip


def test_with_both_models_auto_sends_the_volume_to_radfm_and_the_image_to_medvint(tiny_folder, case_dir, tmp_path):
    from medagent.specialists.radfm.tiny import build_tiny

    radfm = build_tiny(tmp_path / "radfm", ["what does the scan show", "no mass"])
    settings = _settings(tiny_folder, path=radfm, device="cpu", dtype="fp32", max_new_tokens=2)
    context = ToolContext(case=CASE, case_dir=case_dir, artifacts_dir=case_dir / "out", settings=settings)
    (volume,) = VQA.run(VQAArgs(attachment="ct", question="What does the scan show?"), context)
    assert volume.payload["model"] == "RadFM" and "3D volume goes to RadFM" in volume.payload["backend_reason"]
    radfm_only = settings.model_copy(update={"vqa": VQASettings(backend="radfm")})
    (image,) = VQA.run(VQAArgs(attachment="slice", question="What does the scan show?", choices=["chest", "head"]),
                       ToolContext(case=CASE, case_dir=case_dir, artifacts_dir=case_dir, settings=radfm_only))  # fmt: skip
    assert image.payload["model"] == "RadFM" and image.payload["backend_reason"] == "[vqa] backend = radfm"
    assert VQA.checked(image) == image and "similarity" in image.payload
