"""`imaging.vqa`: ask RadFM a free-text question about a radiology image or volume; the answer becomes evidence.

Available only when `[radfm] path` names a folder with the RadFM checkpoint and tokenizer. The model is loaded
once per model pool (it is 13 B parameters) and kept there for later calls.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, EvidenceDraft
from medagent.tools.errors import ToolError, UnavailableError
from medagent.tools.pool import ModelPool
from medagent.tools.payloads import VQAPayload
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

DEFAULT_QUESTION = "Describe the findings in this image."
# A case question that is about the pictures themselves (rather than e.g. a diagnosis from history alone).
IMAGE_QUESTION = re.compile(
    r"\b(image|scan|ct|mri?|x-?ray|radiograph|film|slice|view|shown?|seen|visible|lesion|finding|opacity|mass)\b",
    re.IGNORECASE,
)


class VQAArgs(AttachmentArgs):
    question: str = Field(default=DEFAULT_QUESTION, min_length=3, max_length=1000, description="What to ask")


def check(settings: Settings) -> str | None:
    path = settings.radfm.path
    if path is None:
        return "RadFM weights are not configured: set [radfm] path in medagent.toml (see `medagent doctor`)"
    from medagent.specialists.radfm.load import missing_files

    problems = missing_files(Path(path).expanduser())
    if problems:
        return "; ".join(problems)
    if settings.radfm.device.startswith("cuda") or settings.radfm.device == "auto":
        import torch

        if not torch.cuda.is_available():
            return f"[radfm] device is '{settings.radfm.device}' but no CUDA GPU is visible"
    return None


def version(settings: Settings) -> str:
    path = settings.radfm.path
    if path is None:
        return "radfm (not configured)"
    from medagent.specialists.radfm.load import checkpoint_file

    checkpoint = checkpoint_file(Path(path).expanduser())
    size = checkpoint.stat().st_size if checkpoint is not None else 0
    return f"radfm {settings.radfm.dtype} {checkpoint.name if checkpoint else '?'} {size} bytes"


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    from medagent.specialists.radfm.load import checkpoint_file

    checkpoint = checkpoint_file(Path(settings.radfm.path).expanduser()) if settings.radfm.path else None
    return [(f"RadFM checkpoint ({settings.radfm.dtype} in memory)", checkpoint)] if checkpoint is not None else []


def doctor(settings: Settings) -> list[str]:
    from medagent.specialists.radfm.load import memory_table

    path = settings.radfm.path
    lines = [
        f"radfm: path = {path if path is not None else '(not set)'}, dtype = {settings.radfm.dtype}, "
        f"device = {settings.radfm.device}",
        "radfm: get the weights from Hugging Face chaoyi-wu/RadFM: download pytorch_model.zip (or RadFM.z01-z04 + "
        "RadFM.zip, joined with `cat RadFM.z0* RadFM.zip > full.zip`) and unzip pytorch_model.bin into the folder",
        "radfm: put the LLaMA tokenizer files of github.com/chaoyi-wu/RadFM Quick_demo/Language_files "
        "(tokenizer.model, tokenizer_config.json, special_tokens_map.json) beside it; reading tokenizer.model "
        "needs the sentencepiece package",
        f"radfm: GPU memory for the 13.3 B-parameter model: {memory_table()} (weights + activations, batch 1); "
        "device = 'auto' splits it over several GPUs",
        "radfm: licence: the RadFM repo and weights carry no licence: research use, ask the authors",
    ]
    reason = check(settings)
    lines.append(f"radfm: {'ready' if reason is None else 'unavailable: ' + reason}")
    return lines


def bundle(settings: Settings, pool: ModelPool) -> Any:
    from medagent.specialists.radfm.load import RadFMLoadError, load_radfm

    assert settings.radfm.path is not None  # check() ran first
    folder = Path(settings.radfm.path).expanduser()
    try:
        return pool.get(("radfm", str(folder), settings.radfm.dtype, settings.radfm.device),
                        lambda: load_radfm(folder, dtype=settings.radfm.dtype, device=settings.radfm.device))
    except RadFMLoadError as exc:
        raise UnavailableError(f"RadFM: {exc}") from exc


def scan_tensor(
    kind: AttachmentKind, fmt: str | None, modality: str | None, series_uid: str | None, path: Path, size: int
) -> Any:
    """The attachment as RadFM's (3, size, size, D) tensor, read through medio."""
    from medagent.specialists.radfm.preprocess import image_to_tensor, volume_to_tensor
    from medagent.tools.medio import read_image, read_volume

    if kind is AttachmentKind.volume or (fmt == "dicom" and path.is_dir()):
        volume = read_volume(path, fmt or "", modality, series_uid)
        return volume_to_tensor(volume.voxels, size, affine=volume.affine, hounsfield=volume.units == "HU")
    return image_to_tensor(read_image(path), size)


def vqa(args: VQAArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.radfm.infer import answer

    attachment, path = ctx.attachment(args.attachment)
    model = bundle(ctx.settings, ctx.pool)
    try:
        scan = scan_tensor(
            attachment.kind,
            attachment.format,
            attachment.modality,
            attachment.series_uid,
            path,
            model.config.vision.image_size,
        )
        text = answer(model, args.question, [scan], max_new_tokens=ctx.settings.radfm.max_new_tokens)
    except ValueError as exc:
        raise ToolError(f"imaging.vqa on {attachment.id} ({path.name}): {exc}") from exc
    shown = text if text else "(empty answer)"
    return [
        EvidenceDraft(
            summary=f"RadFM, asked '{args.question}' about {attachment.id}, answered: {shown}",
            attachment=attachment.id,
            payload={
                "question": args.question,
                "answer": text,
                "model": "RadFM",
                "input_shape": [int(n) for n in scan.shape],
                "generated": "greedy",
            },
            # A generative answer carries no calibrated probability.
            confidence=None,
        )
    ]


def ask_case_question(case: Any, tools: Any, evidence: Any, calls: Any) -> list[tuple[str, dict, str]]:
    """When the case question is about what the scans show, ask RadFM that very question of each scan."""
    if not any(tool.name == "imaging.vqa" for tool in tools) or not IMAGE_QUESTION.search(case.question or ""):
        return []
    return [
        ("imaging.vqa", {"attachment": a.id, "question": case.question}, "the case question is about the images")
        for a in case.attachments
        if a.kind in (AttachmentKind.image, AttachmentKind.volume)
    ]


FIRST_STEP_RULES = [ask_case_question]

def _grounded_vqa(case: Any, evidence: Any) -> dict[str, list[str]]:
    """The questions an LLM may ask RadFM: the case's own question or the default description request."""
    return {"question": list(dict.fromkeys([q for q in (case.question.strip(), DEFAULT_QUESTION) if len(q) >= 3]))}


TOOLS = [
    Tool(
        name="imaging.vqa",
        purpose=(
            "Ask RadFM (radiology foundation model) a free-text question about a 2D radiology image or 3D volume "
            "(CT/MR/X-ray), e.g. 'Is there a pleural effusion?' or 'Describe the findings'; returns its answer."
        ),
        args=VQAArgs,
        run=vqa,
        payload=VQAPayload,
        grounded=_grounded_vqa,
        attachment_kinds=(AttachmentKind.image, AttachmentKind.volume),
        check=check,
        version=version,
        doctor=doctor,
        model_files=model_files,
    )
]
