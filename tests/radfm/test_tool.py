"""`imaging.vqa`: availability from settings, and a real run on a picture and a NIfTI volume via the tiny model."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from medagent.tools.config import RadFMSettings, Settings
from medagent.tools.contracts import Attachment, AttachmentKind, Case
from medagent.tools.radfm import TOOLS, VQAArgs, ask_case_question, doctor
from medagent.tools.registry import Registry, ToolContext

VQA = TOOLS[0]


def test_unavailable_until_weights_are_configured(tmp_path: Path) -> None:
    assert "[radfm] path" in VQA.check(Settings())
    empty = Settings(radfm=RadFMSettings(path=tmp_path, device="cpu"))
    assert "pytorch_model.bin" in VQA.check(empty)
    lines = "\n".join(doctor(Settings()))
    assert "chaoyi-wu/RadFM" in lines and "bf16 ≈ 27 GiB" in lines and "fp32 ≈ 54 GiB" in lines


def test_vqa_on_a_picture_and_a_volume(tiny_folder: Path, radfm_data: Path, tmp_path: Path) -> None:
    settings = Settings(radfm=RadFMSettings(path=tiny_folder, device="cpu", dtype="fp32", max_new_tokens=3))
    assert VQA.check(settings) is None
    shutil.copy(radfm_data / "vqa_rad" / "images" / "synpic51426.jpg", tmp_path / "mri.jpg")
    hu = np.full((24, 24, 9), -1000.0, dtype=np.float32)
    hu[6:18, 6:18, :] = 40.0
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 3.0, 1.0])), tmp_path / "ct.nii.gz")
    case = Case(
        id="vqa-case",
        question="What does the scan show?",
        attachments=[
            Attachment(id="mri", kind=AttachmentKind.image, path="mri.jpg", modality="MR", format="jpeg"),
            Attachment(id="ct", kind=AttachmentKind.volume, path="ct.nii.gz", modality="CT", format="nifti"),
        ],
    )
    registry = Registry(settings, tools=TOOLS)
    assert [t.name for t in registry.available()] == ["imaging.vqa"]
    context = ToolContext(case=case, case_dir=tmp_path, artifacts_dir=tmp_path / "out", settings=settings)
    for attachment, depth in (("mri", 4), ("ct", 8)):
        (evidence,) = VQA.run(VQAArgs(attachment=attachment, question="Is there midline shift?"), context)
        assert evidence.attachment == attachment
        assert VQA.checked(evidence) == evidence  # the payload matches VQAPayload as written
        assert evidence.payload["input_shape"] == [3, 64, 64, depth]
        assert evidence.payload["question"] == "Is there midline shift?"
        assert 1 <= len(evidence.payload["answer"].split()) <= 3
        assert evidence.payload["answer"] in evidence.summary
    proposals = ask_case_question(case, registry.available(), [], [])
    assert [(tool, args["attachment"]) for tool, args, _ in proposals] == [
        ("imaging.vqa", "mri"),
        ("imaging.vqa", "ct"),
    ]
    assert ask_case_question(case.model_copy(update={"question": "Which drug?"}), registry.available(), [], []) == []
