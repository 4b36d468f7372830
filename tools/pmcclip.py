"""`imaging.classify` and `imaging.similar`: PMC-CLIP on a 2D image (PNG/JPEG/TIFF or a single DICOM image).

`imaging.classify` scores the image against candidate labels in words (zero-shot: softmax over logit_scale x
cosine). Labels come from the call, else from choices the case question spells out ("... a chest X-ray or a
brain MRI?"), else a built-in set for the attachment's modality; an empty list falls back to the built-in set,
a list longer than `[pmcclip] max_labels` is cut, and the evidence says which. `imaging.similar` returns the
nearest images of the folder `[pmcclip] image_folder` (indexed by `medagent index images DIR`; tools/image_index.py),
with their captions or labels. A 3D volume is refused with the reason: PMC-CLIP reads one 2D picture.

Available only when `[pmcclip] path` names a folder with the released `checkpoint.pt` and PubMedBERT's vocab.txt.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, Evidence, EvidenceDraft
from medagent.tools.errors import CaseError, ToolError, UnavailableError
from medagent.tools.payloads import ClassifyPayload, RankPayload, SimilarPayload
from medagent.tools.pool import ModelPool
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

MODEL = "PMC-CLIP RN50_fusion4"
WEIGHTS_HELP = (
    "PMC-CLIP's checkpoint is `checkpoint.pt` in the Hugging Face dataset repo axiong/pmc_oa_beta (from the authors, "
    "github.com/WeixiongLin/PMC-CLIP): fetch it once yourself (`huggingface-cli download axiong/pmc_oa_beta "
    "checkpoint.pt --repo-type dataset --local-dir <folder>`; medagent never downloads), put PubMedBERT's vocab.txt "
    "(HF microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext) beside it and set [pmcclip] path to that folder"
)
LAYOUT_NOTE = (
    "layout from the authors' code as MODELS.md section 4 describes it, not yet checked against released weights "
    "(the fusion/MLM shapes are inferred)"
)

# Built-in candidate labels by attachment modality (DICOM codes); GENERAL when the modality has none.
GENERAL = [
    "chest X-ray", "chest CT", "abdominal CT", "brain MRI", "spine MRI", "ultrasound image",
    "histopathology slide", "fundus photograph", "skin lesion photograph",
]
BUILTIN = {
    "general": GENERAL,
    "CR": ["normal chest X-ray", "pneumonia", "pleural effusion", "pneumothorax", "cardiomegaly", "pulmonary nodule",
           "bone fracture"],
    "CT": ["head CT", "chest CT", "abdominal CT", "pelvic CT", "CT of the spine", "CT of the extremities"],
    "MR": ["brain MRI", "spine MRI", "knee MRI", "abdominal MRI", "cardiac MRI", "pelvic MRI"],
    "US": ["abdominal ultrasound", "obstetric ultrasound", "echocardiogram", "thyroid ultrasound",
           "vascular ultrasound"],
}
BUILTIN["DX"] = BUILTIN["CR"]
_ASKING = re.compile(
    r"^(?:is|are|was|were|does|do|could)\s+(?:this|it|these|the\s+(?:image|picture|scan|film|radiograph))\s+"
    r"(?:(?:show|depict|demonstrate|suggest)s?\s+)?",
    re.IGNORECASE,
)
_ARTICLE = re.compile(r"^(?:a|an|the)\s+", re.IGNORECASE)


class ClassifyArgs(AttachmentArgs):
    labels: list[str] | None = Field(
        default=None, description="Candidate findings, diagnoses or image types to choose between (two or more)"
    )
    label_set: str | None = Field(default=None, description="Built-in set: general, CR, DX, CT, MR, US")


class SimilarArgs(AttachmentArgs):
    k: int | None = Field(default=None, ge=1, le=100, description="How many similar images (default [pmcclip] top_k)")


def question_choices(question: str) -> list[str]:
    """The alternatives a question spells out ("Is this a chest X-ray or a brain MRI?"), or [] when it has none."""
    asked = next((s for s in reversed(re.split(r"(?<=[.!?])\s+", question.strip())) if s.endswith("?")), "")
    if " or " not in asked:
        return []
    body = _ASKING.sub("", asked.rstrip("?").strip())
    parts = [_ARTICLE.sub("", p.strip(" ,;:")) for p in re.split(r",\s*|\s+or\s+", body)]
    parts = [p for p in parts if p]
    if len(parts) < 2 or any(len(p) > 60 or len(p.split()) > 8 for p in parts):
        return []
    return parts


def _dedupe(labels: list[str]) -> list[str]:
    seen, kept = set(), []
    for label in labels:
        clean = " ".join(str(label).split())
        if clean and clean.lower() not in seen:
            seen.add(clean.lower())
            kept.append(clean)
    return kept


def choose_labels(args: ClassifyArgs, question: str, modality: str | None, max_labels: int) -> tuple[list[str], str, int, list[str]]:
    """(labels to score, where they came from, how many were given, notes for the evidence)."""
    notes: list[str] = []
    if args.label_set is not None:
        key = args.label_set if args.label_set in BUILTIN else args.label_set.upper()
        if key not in BUILTIN:
            raise ToolError(f"imaging.classify: no built-in label set '{args.label_set}' (sets: {', '.join(BUILTIN)})")
        labels, source = list(BUILTIN[key]), f"built-in set {key}"
    elif args.labels:
        labels, source = _dedupe(args.labels), "arguments"
        if len(labels) < 2:
            raise ToolError(f"imaging.classify: labels: {len(labels)} distinct label; give two or more to choose between")
    else:
        choices = question_choices(question)
        key = (modality or "").upper() if (modality or "").upper() in BUILTIN else "general"
        if choices:
            labels, source = _dedupe(choices), "question"
        else:
            labels, source = list(BUILTIN[key]), f"built-in set {key}"
        if args.labels is not None:
            notes.append(f"the call gave an empty label list, so the {source} labels were used")
    given = len(labels)
    if given > max_labels:
        labels = labels[:max_labels]
        notes.append(f"{given} labels given; only the first {max_labels} were scored ([pmcclip] max_labels)")
    return labels, source, given, notes


def encoder(settings: Settings, pool: ModelPool) -> Any:
    """One loaded model per (weights, mtime, device) in the run's pool, shared by its calls."""
    from medagent.specialists.pmcclip.infer import PMCCLIPEncoder
    from medagent.specialists.pmcclip.load import CheckpointError, find_weights, load_pmcclip

    config = settings.pmcclip
    if config.path is None:
        raise UnavailableError(f"no PMC-CLIP checkpoint configured. {WEIGHTS_HELP}")
    try:
        weights = find_weights(Path(config.path))
        key = ("pmcclip", str(weights), weights.stat().st_mtime_ns, config.device)
        return pool.get(key, lambda: PMCCLIPEncoder(load_pmcclip(weights, config.device), config.device, config.batch_size))
    except CheckpointError as exc:
        raise UnavailableError(f"[pmcclip] path: {exc}") from exc


def _picture(attachment: Any, path: Path) -> Any:
    from medagent.tools.image_index import read_picture

    try:
        return read_picture(path, attachment.format)
    except CaseError as exc:
        raise CaseError(f"attachment '{attachment.id}': {exc}") from exc


def classify(args: ClassifyArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    attachment, path = ctx.attachment(args.attachment)
    config = ctx.settings.pmcclip
    labels, source, given, notes = choose_labels(args, ctx.case.question, attachment.modality, config.max_labels)
    image = _picture(attachment, path)
    result = encoder(ctx.settings, ctx.pool).classify(image, labels)
    ranked = result.ranked()
    (winner, p_win), (second, p_second) = ranked[0], ranked[1]
    summary = (
        f"PMC-CLIP zero-shot on {attachment.id}: most consistent with '{winner}' (p={p_win:.2f} among "
        f"{len(ranked)} labels from the {source}), then '{second}' ({p_second:.2f})."
        + (f" {' '.join(n[0].upper() + n[1:] + '.' for n in notes)}" if notes else "")
    )
    payload = {
        "model": MODEL,
        "label_source": source,
        "labels_given": given,
        "ranked": [{"label": label, "probability": round(p, 4)} for label, p in ranked[:10]],
        "top_label": winner,
        "image_size": list(image.size),
        "notes": notes,
    }
    return [EvidenceDraft(summary=summary, attachment=attachment.id, payload=payload, confidence=round(p_win, 4))]


def open_folder_index(settings: Settings, pool: ModelPool, folder: Path | None = None) -> Any:
    """The index of `folder` (default `[pmcclip] image_folder`), rebuilt first if anything changed."""
    from medagent.specialists.pmcclip.load import find_weights
    from medagent.tools.image_index import ImageIndexError, open_index

    folder = Path(folder or settings.pmcclip.image_folder or "").expanduser()
    model = encoder(settings, pool)
    try:
        return open_index(folder, settings.cache_root, find_weights(Path(settings.pmcclip.path)), model.embed_images)
    except ImageIndexError as exc:
        raise ToolError(f"imaging.similar: {exc}") from exc


def similar(args: SimilarArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.tools.image_index import sha256

    attachment, path = ctx.attachment(args.attachment)
    image = _picture(attachment, path)
    index = open_folder_index(ctx.settings, ctx.pool)
    query = encoder(ctx.settings, ctx.pool).embed_images([image])[0]
    own = sha256(path)
    hits = [
        {"rank": rank, "file": entry.file, "similarity": round(score, 4), "caption": entry.caption,
         "label": entry.label, "same_content": entry.sha256 == own}
        for rank, (entry, score) in enumerate(index.search(query, args.k or ctx.settings.pmcclip.top_k), start=1)
    ]
    first = hits[0]
    described = first["caption"] or first["label"] or "no caption"
    summary = (
        f"PMC-CLIP similar images to {attachment.id} in {index.folder.name}/ ({len(index.entries)} indexed): nearest "
        f"{first['file']} (cosine {first['similarity']:.2f}; {described})"
        + (f", then {', '.join(h['file'] for h in hits[1:4])}" if len(hits) > 1 else "")
        + f". Index {index.note}."
    )
    payload = {
        "model": MODEL,
        "folder": str(index.folder),
        "indexed": len(index.entries),
        "index_note": index.note,
        "hits": hits,
    }
    return [EvidenceDraft(summary=summary, attachment=attachment.id, payload=payload, confidence=None)]


def check(settings: Settings) -> str | None:
    path = settings.pmcclip.path
    if path is None:
        return f"no PMC-CLIP checkpoint configured. {WEIGHTS_HELP}"
    path = Path(path).expanduser()
    if not path.exists():
        return f"[pmcclip] path {path} does not exist. {WEIGHTS_HELP}"
    from medagent.specialists.pmcclip.load import CheckpointError, find_weights

    try:
        find_weights(path)
    except CheckpointError as exc:
        return f"{exc}. {WEIGHTS_HELP}"
    if settings.pmcclip.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"[pmcclip] device is '{settings.pmcclip.device}' but no CUDA GPU is visible (use 'cpu')"
    return None


def check_similar(settings: Settings) -> str | None:
    reason = check(settings)
    if reason is not None:
        return reason
    folder = settings.pmcclip.image_folder
    if folder is None:
        return "no image folder to search: set [pmcclip] image_folder and index it with `medagent index images DIR`"
    if not Path(folder).expanduser().is_dir():
        return f"[pmcclip] image_folder {folder} is not a folder"
    return None


def version(settings: Settings) -> str:
    path = settings.pmcclip.path
    return f"{MODEL} from {path}" if path else "PMC-CLIP (not configured)"


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    from medagent.specialists.pmcclip.load import find_weights

    return [("PMC-CLIP checkpoint", find_weights(Path(settings.pmcclip.path)))] if check(settings) is None else []


def doctor(settings: Settings) -> list[str]:
    config = settings.pmcclip
    lines = [
        f"pmcclip: path = {config.path if config.path is not None else '(not set)'}, device = {config.device}; "
        f"looks for {' or '.join(('checkpoint.pt', 'pytorch_model.bin', 'model.pt'))} and vocab.txt/tokenizer.json there",
        f"pmcclip: {WEIGHTS_HELP}",
        "pmcclip: licence: see the LICENSE of github.com/WeixiongLin/PMC-CLIP (not yet read for medagent; check "
        "before redistributing); memory: RN50 + PubMedBERT-base, under 2 GB (estimate)",
        f"pmcclip: {LAYOUT_NOTE}",
    ]
    reason = check(settings)
    lines.append(f"pmcclip: {'ready' if reason is None else 'unavailable: ' + reason.split('. ')[0]}")
    return lines


def doctor_similar(settings: Settings) -> list[str]:
    from medagent.tools.image_index import INDEX_VERSION

    folder = settings.pmcclip.image_folder
    return [
        f"imaging.similar: image_folder = {folder if folder is not None else '(not set)'}; its index lives under "
        f"{settings.cache_root / 'pmcclip' / INDEX_VERSION} (rebuilt when a file changes)"
    ]


MAX_FOLLOW_UP_LABELS = 8


def ranked_candidates(case: Case, tools: Any, evidence: Any, calls: Any) -> list[tuple[str, dict, str]]:
    """After the knowledge tools rank diagnoses, classify each 2D image against those candidates too."""
    if "imaging.classify" not in {t.name for t in tools}:
        return []
    ranking = next((e for e in reversed(evidence) if e.tool == "knowledge.rank" and not e.error), None)
    names = _dedupe([c.name for c in RankPayload.of(ranking).differential] if ranking is not None else [])
    names = names[:MAX_FOLLOW_UP_LABELS]
    if len(names) < 2:
        return []
    return [
        ("imaging.classify", {"attachment": a.id, "labels": names}, "classify the image against the ranked candidate diagnoses")
        for a in case.attachments
        if a.kind is AttachmentKind.image
    ]


FOLLOW_UP_RULES = [ranked_candidates]


def _grounded_classify(case: Case, evidence: list[Evidence]) -> dict[str, list[str]]:
    """Labels an LLM may give: the ranked diagnoses, the question's own choices and the built-in labels."""
    ranking = next((e for e in reversed(evidence) if e.tool == "knowledge.rank" and not e.error), None)
    ranked = [c.name.strip() for c in RankPayload.of(ranking).differential if c.name.strip()] if ranking else []
    builtin = [label for labels in BUILTIN.values() for label in labels]
    return {
        "labels": list(dict.fromkeys(ranked + question_choices(case.question) + builtin)),
        "label_set": list(BUILTIN),
    }


TOOLS = [
    Tool(
        name="imaging.classify",
        purpose=(
            "Zero-shot classification of a 2D medical image (X-ray, CT/MR slice, ultrasound, figure) with PMC-CLIP "
            "against candidate labels (given, from the question's choices, or a built-in set per modality); "
            "returns the labels ranked by probability."
        ),
        args=ClassifyArgs,
        run=classify,
        payload=ClassifyPayload,
        grounded=_grounded_classify,
        attachment_kinds=(AttachmentKind.image,),
        check=check,
        version=version,
        doctor=doctor,
        model_files=model_files,
    ),
    Tool(
        name="imaging.similar",
        purpose=(
            "Find the most similar images (with their captions or labels) to a 2D medical image in the user's "
            "indexed image folder, by PMC-CLIP image embeddings."
        ),
        args=SimilarArgs,
        run=similar,
        payload=SimilarPayload,
        attachment_kinds=(AttachmentKind.image,),
        check=check_similar,
        version=version,
        doctor=doctor_similar,
        model_files=model_files,
    ),
]
