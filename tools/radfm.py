"""`imaging.vqa`: ask a visual-question-answering model about a radiology image or volume; the answer becomes evidence.

Two backends, chosen by `[vqa] backend` and by the input:

- RadFM (`[radfm] path`): 2D images and 3D volumes; a free-text answer. It is 13 B parameters.
- MedVInT-TD (`[medvint] path`): one 2D image. A multiple-choice question (`choices`, or choices the case question
  spells out) gets one of its options with the next-token probability among them; an open question a generated
  answer.

`auto` (the default) sends a volume (NIfTI, DICOM series) to RadFM and a single 2D image to MedVInT-TD when its
weights are configured, else to RadFM. A volume meant for MedVInT-TD alone is refused with the reason; it is never
cut to a slice. The evidence names the model that answered and why it was chosen. Each model loads once per pool.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.errors import ToolError, UnavailableError
from medagent.tools.payloads import VQAPayload
from medagent.tools.pool import ModelPool
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

DEFAULT_QUESTION = "Describe the findings in this image."
# A case question that is about the pictures themselves (rather than e.g. a diagnosis from history alone).
IMAGE_QUESTION = re.compile(
    r"\b(image|scan|ct|mri?|x-?ray|radiograph|film|slice|view|shown?|seen|visible|lesion|finding|opacity|mass)\b",
    re.IGNORECASE,
)
# Lettered options written after a question: "... show? A: chest B: abdomen", "(A) chest (B) abdomen", "A) chest".
LETTERED = re.compile(r"(?:^|\s)\(?([A-H])[:).]\s*")
MEDVINT = "MedVInT-TD"
MEDVINT_HELP = (
    "MedVInT-TD's weights are on Hugging Face (xmcmic/MedVInT-TD, from github.com/xiaoman-zhang/PMC-VQA): download "
    "one checkpoint folder yourself (e.g. VQA_lora_PMC_LLaMA_PMCCLIP/choice/checkpoint-4000, which holds "
    "pytorch_model.bin; medagent never downloads) and set [medvint] path = \"<that folder>\""
)


class VQAArgs(AttachmentArgs):
    question: str = Field(default=DEFAULT_QUESTION, min_length=3, max_length=1000, description="What to ask")
    choices: list[str] | None = Field(
        default=None, min_length=2, max_length=8,
        description="Answer options of a multiple-choice question (MedVInT-TD picks one; RadFM's answer is matched to them)",
    )  # fmt: skip


# ------------------------------------------------------------------ choices in a question


def lettered_choices(question: str) -> tuple[str, list[str]]:
    """(the question without its options, the options) for "stem A: x B: y ..." with letters in order from A;
    (question, []) when it has none."""
    marks = list(LETTERED.finditer(question))
    letters = "".join(m.group(1) for m in marks)
    if len(marks) < 2 or not "ABCDEFGH".startswith(letters):
        return question, []
    ends = [m.start() for m in marks[1:]] + [len(question)]
    choices = [" ".join(question[m.end() : end].split()).rstrip(" ,;") for m, end in zip(marks, ends, strict=True)]
    if any(not c or len(c) > 200 for c in choices):
        return question, []
    return question[: marks[0].start()].strip(), choices


def case_choices(question: str) -> list[str]:
    """The options a case question offers: lettered ones, else the alternatives of "... X or Y?"."""
    from medagent.tools.pmcclip import question_choices

    return lettered_choices(question)[1] or question_choices(question)


# ------------------------------------------------------------------ availability


def radfm_reason(settings: Settings) -> str | None:
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


def medvint_reason(settings: Settings) -> str | None:
    config = settings.medvint
    if config.path is None:
        return "MedVInT-TD weights are not configured: set [medvint] path in medagent.toml (see `medagent doctor`)"
    from medagent.specialists.medvint.load import missing_files

    problems = missing_files(Path(config.path), config.llama_path)
    if problems:
        return "; ".join(problems)
    if config.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"[medvint] device is '{config.device}' but no CUDA GPU is visible"
    return None


def check(settings: Settings) -> str | None:
    """Why imaging.vqa is unavailable: the configured backend's reason, or (auto) both reasons when neither can run."""
    if settings.vqa.backend == "radfm":
        return radfm_reason(settings)
    if settings.vqa.backend == "medvint":
        return medvint_reason(settings)
    radfm, medvint = radfm_reason(settings), medvint_reason(settings)
    return None if radfm is None or medvint is None else f"{radfm}; for 2D images: {medvint}"


def route(settings: Settings, volume: bool) -> tuple[str | None, str]:
    """(backend, why it answers), or (None, why nothing may) for a volume or a 2D image."""
    backend = settings.vqa.backend
    if backend == "radfm":
        return "radfm", "[vqa] backend = radfm"
    if backend == "medvint":
        if volume:
            return None, (
                "MedVInT-TD reads one 2D image and [vqa] backend = medvint, so a 3D volume is not sent to it "
                "(attach a key slice as an image, or set [vqa] backend = auto with [radfm] path for volumes)"
            )
        return "medvint", "[vqa] backend = medvint"
    if volume:
        reason = radfm_reason(settings)
        if reason is None:
            return "radfm", "[vqa] backend = auto: a 3D volume goes to RadFM"
        return None, f"a 3D volume needs RadFM, which is unavailable ({reason}); MedVInT-TD reads only one 2D image"
    if medvint_reason(settings) is None:
        return "medvint", "[vqa] backend = auto: a single 2D image goes to MedVInT-TD"
    return "radfm", "[vqa] backend = auto: a 2D image, and MedVInT-TD is not configured"


def precheck(args: VQAArgs, case: Case, settings: Settings, pool: ModelPool) -> str | None:
    attachment = case.attachment(args.attachment)
    if attachment is None:
        return None
    backend, why = route(settings, attachment.kind is AttachmentKind.volume)
    return None if backend is not None else f"imaging.vqa on {attachment.id}: {why}"


def version(settings: Settings) -> str:
    parts = []
    if settings.vqa.backend != "medvint" and settings.radfm.path is not None:
        from medagent.specialists.radfm.load import checkpoint_file

        checkpoint = checkpoint_file(Path(settings.radfm.path).expanduser())
        size = checkpoint.stat().st_size if checkpoint is not None else 0
        parts.append(f"radfm {settings.radfm.dtype} {checkpoint.name if checkpoint else '?'} {size} bytes")
    if settings.vqa.backend != "radfm" and settings.medvint.path is not None and medvint_reason(settings) is None:
        from medagent.specialists.medvint.load import find_weights

        weights = find_weights(Path(settings.medvint.path))
        parts.append(f"medvint-td {settings.medvint.dtype} {weights.name} {weights.stat().st_size} bytes")
    return "; ".join(parts) if parts else "imaging.vqa (no VQA model configured)"


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    from medagent.specialists.radfm.load import checkpoint_file

    files = []
    checkpoint = checkpoint_file(Path(settings.radfm.path).expanduser()) if settings.radfm.path else None
    if checkpoint is not None and settings.vqa.backend != "medvint":
        files.append((f"RadFM checkpoint ({settings.radfm.dtype} in memory)", checkpoint))
    if settings.vqa.backend != "radfm" and medvint_reason(settings) is None:
        from medagent.specialists.medvint.load import find_weights

        files.append((f"MedVInT-TD checkpoint ({settings.medvint.dtype} in memory)", find_weights(Path(settings.medvint.path))))
        if settings.medvint.llama_path is not None:
            files.append(("MedVInT-TD LLaMA base folder", Path(settings.medvint.llama_path).expanduser()))
    return files


# MedVInT-TD at its published size (LLaMA-7B + LoRA r 8, trunk, 12-layer decoder, MLP), counted on the meta device;
# tests/medvint checks it against the architecture.
MEDVINT_PARAMETERS = 6_882_480_992


def doctor(settings: Settings) -> list[str]:
    from medagent.specialists.radfm.load import memory_table

    path = settings.radfm.path
    lines = [
        f"imaging.vqa: [vqa] backend = {settings.vqa.backend} (auto: RadFM for volumes, MedVInT-TD for a single 2D "
        "image when [medvint] path is set, else RadFM)",
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
    reason = radfm_reason(settings)
    lines.append(f"radfm: {'ready' if reason is None else 'unavailable: ' + reason}")
    return lines + medvint_doctor(settings)


def medvint_doctor(settings: Settings) -> list[str]:
    from medagent.specialists.medvint.load import DTYPES, LAYOUT_NOTE, memory_needed

    config = settings.medvint
    memory = ", ".join(f"{name} ≈ {memory_needed(MEDVINT_PARAMETERS, name) / 2**30:.0f} GiB" for name in DTYPES)
    lines = [
        f"medvint: path = {config.path if config.path is not None else '(not set)'}, llama_path = "
        f"{config.llama_path if config.llama_path is not None else '(not set)'}, dtype = {config.dtype}, "
        f"device = {config.device}",
        f"medvint: {MEDVINT_HELP}",
        "medvint: if that pytorch_model.bin holds only the LoRA and the vision/decoder weights, also set "
        "[medvint] llama_path = \"<folder>\" to the HF LLaMA it was trained on (config.json + weights; PMC-LLaMA-7B, "
        "HF chaoyi-wu/PMC_LLAMA_7B, for the PMC_LLaMA checkpoints, LLaMA-7B for the others); the LLaMA tokenizer "
        "(tokenizer.model) is read from path, else from llama_path",
        f"medvint: GPU memory for the 6.9 B-parameter model: {memory} (weights + activations, batch 1)",
        "medvint: licence: PMC-VQA / MedVInT code and weights MIT; the LLaMA base keeps its own licence",
        f"medvint: {LAYOUT_NOTE}",
    ]
    reason = medvint_reason(settings)
    lines.append(f"medvint: {'ready' if reason is None else 'unavailable: ' + reason}")
    return lines


# ------------------------------------------------------------------ models


def bundle(settings: Settings, pool: ModelPool) -> Any:
    from medagent.specialists.radfm.load import RadFMLoadError, load_radfm

    reason = radfm_reason(settings)
    if reason is not None:
        raise UnavailableError(f"RadFM: {reason}")
    folder = Path(settings.radfm.path).expanduser()
    try:
        return pool.get(("radfm", str(folder), settings.radfm.dtype, settings.radfm.device),
                        lambda: load_radfm(folder, dtype=settings.radfm.dtype, device=settings.radfm.device))
    except RadFMLoadError as exc:
        raise UnavailableError(f"RadFM: {exc}") from exc


def medvint_bundle(settings: Settings, pool: ModelPool) -> Any:
    """One loaded MedVInT-TD per (weights, their mtime, base folder, dtype, device) in the run's pool."""
    from medagent.specialists.medvint.load import MedVInTLoadError, find_weights, load_medvint

    config = settings.medvint
    reason = medvint_reason(settings)
    if reason is not None:
        raise UnavailableError(f"{MEDVINT}: {reason}")
    try:
        weights = find_weights(Path(config.path))
        key = ("medvint", str(weights), weights.stat().st_mtime_ns, str(config.llama_path), config.dtype, config.device)
        return pool.get(key, lambda: load_medvint(weights, config.llama_path, dtype=config.dtype, device=config.device))
    except MedVInTLoadError as exc:
        raise UnavailableError(f"{MEDVINT}: {exc}") from exc


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


def picture_2d(fmt: str | None, path: Path) -> Any | None:
    """A single 2D picture's pixels, or None when the file holds a volume (a multi-frame DICOM)."""
    from medagent.tools.medio import read_dicom_series, read_image, sniff

    fmt = fmt or sniff(path).format
    if fmt == "dicom":
        volume = read_dicom_series(path)
        return volume.voxels[:, :, 0].T if volume.voxels.shape[2] == 1 else None  # medio's (column, row) back
    return read_image(path)


# ------------------------------------------------------------------ the tool


def _matched(answer: str, choices: list[str]) -> dict:
    """RadFM's free answer matched to the options by the same string similarity MedVInT-TD's authors use."""
    from medagent.specialists.medvint.infer import LETTERS, most_similar

    index, ratio = most_similar(answer, [" ".join(c.split()) for c in choices])
    return {"similarity_choice": LETTERS[index] if index is not None else None, "similarity": round(ratio, 4)}


def vqa(args: VQAArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    attachment, path = ctx.attachment(args.attachment)
    volume = attachment.kind is AttachmentKind.volume or (attachment.format == "dicom" and path.is_dir())
    backend, why = route(ctx.settings, volume)
    if backend is None:
        raise ToolError(f"imaging.vqa on {attachment.id} ({path.name}): {why}")
    if backend == "medvint":
        pixels = picture_2d(attachment.format, path)
        if pixels is not None:
            return _medvint(args, ctx, attachment, pixels, why)
        if ctx.settings.vqa.backend == "medvint" or radfm_reason(ctx.settings) is not None:
            raise ToolError(f"imaging.vqa on {attachment.id} ({path.name}): the DICOM file holds several frames, a "
                            "3D volume; MedVInT-TD reads one 2D image and RadFM is not available for volumes")
        why = "[vqa] backend = auto: a multi-frame DICOM (a 3D volume) goes to RadFM"
    return _radfm(args, ctx, attachment, path, why)


def _radfm(args: VQAArgs, ctx: ToolContext, attachment: Any, path: Path, why: str) -> list[EvidenceDraft]:
    from medagent.specialists.radfm.infer import answer

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
    payload = {
        "question": args.question,
        "answer": text,
        "model": "RadFM",
        "backend": "radfm",
        "backend_reason": why,
        "input_shape": [int(n) for n in scan.shape],
        "generated": "greedy",
    }
    summary = f"RadFM, asked '{args.question}' about {attachment.id}, answered: {shown}"
    if args.choices:
        payload |= _matched(text, args.choices)
        if payload["similarity_choice"] is not None:
            summary += f" (closest option: {payload['similarity_choice']}, similarity {payload['similarity']:.2f})"
    # A generative answer carries no calibrated probability.
    return [EvidenceDraft(summary=summary, attachment=attachment.id, payload=payload, confidence=None)]


def _medvint(args: VQAArgs, ctx: ToolContext, attachment: Any, pixels: Any, why: str) -> list[EvidenceDraft]:
    from medagent.specialists.medvint.infer import LETTERS, answer_choices, answer_open
    from medagent.specialists.medvint.preprocess import image_to_tensor

    model = medvint_bundle(ctx.settings, ctx.pool)
    where = f"imaging.vqa on {attachment.id}"
    try:
        tensor = image_to_tensor(pixels, model.config.image_size)
        if args.choices:
            stem, written = lettered_choices(args.question)
            question = stem if written and [c.lower() for c in written] == [c.lower() for c in args.choices] else args.question
            result = answer_choices(model, question, args.choices, tensor)
        else:
            text = answer_open(model, args.question, tensor, max_new_tokens=ctx.settings.medvint.max_new_tokens)
    except ValueError as exc:
        raise ToolError(f"{where}: {exc}") from exc
    base = {
        "question": args.question,
        "model": MEDVINT,
        "backend": "medvint",
        "backend_reason": why,
        "input_shape": [int(n) for n in tensor.shape],
    }
    if not args.choices:
        shown = text if text else "(empty answer)"
        return [EvidenceDraft(
            summary=f"{MEDVINT}, asked '{args.question}' about {attachment.id}, answered: {shown}",
            attachment=attachment.id, payload=base | {"answer": text, "generated": "greedy"}, confidence=None,
        )]  # fmt: skip
    options = ", ".join(f"{letter}: {c}" for letter, c in zip(LETTERS, args.choices, strict=False))
    similar = LETTERS[result.similar_index] if result.similar_index is not None else None
    summary = (
        f"{MEDVINT}, asked '{question}' about {attachment.id} with the options {options}, chose {result.letter}: "
        f"{result.choice} (next-token probability {result.probability:.2f} among {len(args.choices)} options)"
        + (f"; its generated answer '{result.generated}' is closest to {similar} (similarity {result.similarity:.2f})"
           if similar is not None else "")
        + "."
    )  # fmt: skip
    payload = base | {
        "answer": result.choice,
        "generated": "next-token logits over the options' letters",
        "choices": [{"letter": letter, "text": c, "probability": round(p, 4)}
                    for letter, c, p in zip(LETTERS, args.choices, result.probabilities, strict=False)],
        "chosen": result.letter,
        "score": round(result.probability, 4),
        "generated_text": result.generated,
        "similarity_choice": similar,
        "similarity": round(result.similarity, 4),
    }  # fmt: skip
    return [EvidenceDraft(summary=summary, attachment=attachment.id, payload=payload,
                          confidence=round(result.probability, 4))]  # fmt: skip


def ask_case_question(case: Any, tools: Any, evidence: Any, calls: Any) -> list[tuple[str, dict, str]]:
    """When the case question is about what the scans show, ask it of each scan (with its options, when it has some)."""
    if not any(tool.name == "imaging.vqa" for tool in tools) or not IMAGE_QUESTION.search(case.question or ""):
        return []
    choices = case_choices(case.question)
    arguments = {"question": case.question} | ({"choices": choices} if choices else {})
    return [
        ("imaging.vqa", {"attachment": a.id, **arguments}, "the case question is about the images")
        for a in case.attachments
        if a.kind in (AttachmentKind.image, AttachmentKind.volume)
    ]


FIRST_STEP_RULES = [ask_case_question]


def _grounded_vqa(case: Any, evidence: Any) -> dict[str, list[str]]:
    """What an LLM may ask: the case's own question or the default description request, with the case's options."""
    return {
        "question": list(dict.fromkeys([q for q in (case.question.strip(), DEFAULT_QUESTION) if len(q) >= 3])),
        "choices": case_choices(case.question),
    }


TOOLS = [
    Tool(
        name="imaging.vqa",
        purpose=(
            "Ask a radiology VQA model a question about a 2D image or a 3D volume (CT/MR/X-ray), e.g. 'Is there a "
            "pleural effusion?' or 'Describe the findings'; with `choices` it picks one option. RadFM answers "
            "volumes, MedVInT-TD single 2D images when configured; returns the answer and which model gave it."
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
        precheck=precheck,
    )
]
