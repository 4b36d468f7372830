"""`imaging.segment_text`: SAT segments the structures a call names (any of its 498 classes) in a CT, MR or PET volume.

Each target is resolved with SAT's vocabulary (specialists/sat/vocabulary.py) against the scan's modality: an
unknown target is refused with the nearest known names, a class SAT was trained on only for another modality is
refused with the reason. The scan is preprocessed and segmented as the authors do it (specialists/sat/preprocess.py,
infer.py: RAS, 1x1x3 mm, CT window / MR-PET percentiles, z-score, 288x288x96 sliding window, 50 % overlap,
Gaussian weights, sigmoid > 0.5) and the masks are put back on the input grid. Evidence: one item per structure
(volume in mL and voxel count); artifacts: the label map and one mask per class as NIfTI, a PNG overlay, and a
DICOM SEG when the input is a DICOM series whose headers allow one (tools/dicomseg.py).

Available only when `[sat] path` names a folder with the SAT network, its text encoder and the BioLORD-2023-C
tokenizer (specialists/sat/load.py). The rule planner calls it when the case question, or a finding of another
tool, names a structure SAT knows for that scan's modality.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, EvidenceDraft
from medagent.tools.errors import ToolError, UnavailableError
from medagent.tools.payloads import SATSegmentPayload
from medagent.tools.pool import ModelPool
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

NAME = "imaging.segment_text"
MODEL = "SAT"
MAX_TARGETS = 16
WEIGHTS_HELP = (
    "SAT's weights are on Hugging Face (zzh99/SAT, from github.com/zhaoziheng/SAT): download the network (Nano/ "
    "nano.pth or Pro/) and the text-encoder checkpoint published beside it yourself (medagent never downloads), put "
    "the tokenizer files of FremyCompany/BioLORD-2023-C (tokenizer.json, tokenizer_config.json) in the same folder "
    "and set [sat] path = \"<that folder>\""
)
LAYOUT_NOTE = "layout from the authors' code, not yet checked against released weights"
# The DICOM modality codes SAT reads (its vocabulary has CT, MRI and PET classes).
MODALITIES = ("CT", "MR", "PT")


class SegmentTextArgs(AttachmentArgs):
    targets: list[str] = Field(
        min_length=1, max_length=MAX_TARGETS,
        description="Structures to segment, by name (SAT's classes: organs, vessels, bones, tumours, e.g. "
        "['liver', 'spleen', 'left kidney'])",
    )  # fmt: skip


def vocabulary() -> Any:
    """SAT's 498 classes, read each time (2 ms; no module-level cache: tests/spine/test_pool.py)."""
    from medagent.specialists.sat.vocabulary import load_vocabulary

    return load_vocabulary()


def resolve_targets(targets: list[str], modality: str | None) -> list[Any]:
    """The SAT classes for `targets` on a scan of `modality` (DICOM code); ToolError naming every refused target."""
    from medagent.specialists.sat.vocabulary import VocabularyError, sat_modality

    if not modality:
        raise ToolError(f"{NAME}: the scan's modality is unknown; SAT needs CT, MR or PET to choose its classes")
    try:
        sat_modality(modality)
    except VocabularyError as exc:
        raise ToolError(f"{NAME}: {exc}") from exc
    vocab = vocabulary()
    resolved, refused = [], []
    for target in targets:
        try:
            item = vocab.resolve(target, modality)
        except VocabularyError as exc:
            refused.append(str(exc))
            continue
        if item.term not in [r.term for r in resolved]:
            resolved.append(item)
    if refused:
        raise ToolError(f"{NAME}: " + "; ".join(refused))
    return resolved


def precheck(args: SegmentTextArgs, case: Case, settings: Settings, pool: ModelPool) -> str | None:
    attachment = case.attachment(args.attachment)
    if attachment is None or not attachment.modality:
        return None  # the run reads the modality from the scan itself
    try:
        resolve_targets(args.targets, attachment.modality)
    except ToolError as exc:
        return str(exc)
    return None


# ------------------------------------------------------------------ availability


def _device(settings: Settings) -> str:
    device = settings.sat.device
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check(settings: Settings) -> str | None:
    path = settings.sat.path
    if path is None:
        return f"no SAT weights configured. {WEIGHTS_HELP}"
    from medagent.specialists.sat.load import doctor_lines

    problems = [line.removeprefix("sat: ") for line in doctor_lines(Path(path).expanduser())[:-1]]
    if problems:
        return f"{'; '.join(problems)}. {WEIGHTS_HELP}"
    if settings.sat.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return f"[sat] device is '{settings.sat.device}' but no CUDA GPU is visible (use 'cpu' or 'auto')"
    return None


def _weights(settings: Settings) -> list[Path]:
    from medagent.specialists.sat.load import find_checkpoints

    found = find_checkpoints(Path(settings.sat.path).expanduser())
    return [found["segmenter"][0], found["text_encoder"][0]]


def version(settings: Settings) -> str:
    if check(settings) is not None:
        return "SAT (not configured)"
    return f"{MODEL} {settings.sat.dtype} " + ", ".join(f"{p.name} {p.stat().st_size} bytes" for p in _weights(settings))


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    if check(settings) is not None:
        return []
    network, text = _weights(settings)
    return [("SAT network", network), ("SAT text encoder", text)]


def doctor(settings: Settings) -> list[str]:
    from medagent.specialists.sat.load import doctor_lines

    config = settings.sat
    lines = [
        f"sat: path = {config.path if config.path is not None else '(not set)'}, device = {config.device}, "
        f"dtype = {config.dtype}, window = {list(config.window)}, overlap = {config.overlap}, "
        f"sw_batch_size = {config.sw_batch_size}",
        f"sat: {WEIGHTS_HELP}",
        "sat: the folder holds the network .pth (keys module.backbone.*), the text-encoder .pth (keys "
        "module.text_tower.*) and the BioLORD-2023-C tokenizer files; each file is recognised by its keys",
        "sat: licence unclear (zhaoziheng/SAT has no top-level LICENSE; see specialists/sat/LICENSE_NOTE.md); "
        "memory: SAT-Nano about 24 GB, SAT-Pro about 34 GB of GPU memory at sw_batch_size 1 (the authors' figures)",
        f"sat: {LAYOUT_NOTE}",
    ]
    lines += [line for line in doctor_lines(Path(config.path).expanduser() if config.path else None)[:-1]]
    reason = check(settings)
    lines.append(f"sat: {'ready' if reason is None else 'unavailable: ' + reason.split('. ')[0]}")
    return lines


def loaded(settings: Settings, pool: ModelPool) -> Any:
    """One loaded SAT per (folder, weights' mtimes, device, dtype) in the run's pool."""
    from medagent.specialists.sat.load import SATLoadError, load_sat

    config = settings.sat
    if config.path is None:
        raise UnavailableError(f"no SAT weights configured. {WEIGHTS_HELP}")
    device = _device(settings)
    try:
        files = _weights(settings)
        key = ("sat", str(Path(config.path).expanduser()), *(p.stat().st_mtime_ns for p in files), device, config.dtype)
        return pool.get(key, lambda: load_sat(Path(config.path), device=device, dtype=config.dtype))
    except SATLoadError as exc:
        raise UnavailableError(f"[sat] path: {exc}") from exc


# ------------------------------------------------------------------ the tool


def _relative(ctx: ToolContext, path: Path) -> str:
    return f"{ctx.artifacts_dir.name}/{path.name}"


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def segment_text(args: SegmentTextArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    import nibabel as nib

    from medagent.specialists.imaging.figure import save_slice_png
    from medagent.specialists.sat.infer import segment
    from medagent.specialists.sat.vocabulary import sat_modality
    from medagent.tools.dicomseg import SegNotWritten, structure_code, write_seg
    from medagent.tools.imaging import _load_volume

    attachment, path = ctx.attachment(args.attachment)
    volume = _load_volume(attachment, path)
    modality = volume.modality or attachment.modality
    classes = resolve_targets(args.targets, modality)
    code = sat_modality(modality)
    config = ctx.settings.sat
    model = loaded(ctx.settings, ctx.pool)
    device = _device(ctx.settings)
    terms = [c.term for c in classes]
    try:
        result = segment(
            model, volume.voxels, volume.affine, code, terms,
            window=tuple(config.window), overlap=config.overlap, sw_batch_size=config.sw_batch_size, device=device,
        )  # fmt: skip
    except ValueError as exc:
        raise ToolError(f"{NAME} on {attachment.id}: {exc}") from exc
    except MemoryError as exc:
        raise ToolError(
            f"{NAME} on {attachment.id}: out of memory; lower [sat] sw_batch_size, or use a GPU ([sat] device)"
        ) from exc

    ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
    stem = f"sat_{_safe(attachment.id)}"
    affine = volume.affine
    labels = np.zeros(volume.voxels.shape, dtype=np.uint16 if len(terms) > 255 else np.uint8)
    overlap_voxels = 0
    for value, term in enumerate(terms, start=1):  # a voxel in several masks keeps the later class's value
        mask = result.masks[term]
        overlap_voxels += int((mask & (labels > 0)).sum())
        labels[mask] = value
    label_path = ctx.artifacts_dir / f"{stem}_labels.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(label_path))
    mask_paths = {}
    for term in terms:
        mask_paths[term] = ctx.artifacts_dir / f"{stem}_{_safe(term)}.nii.gz"
        nib.save(nib.Nifti1Image(result.masks[term].astype(np.uint8), affine), str(mask_paths[term]))
    png_path = ctx.artifacts_dir / f"{stem}.png"
    voxels = np.asarray(volume.voxels, dtype=np.float32)
    window = (-160.0, 240.0) if code == "ct" else tuple(np.percentile(voxels, [1, 99]).tolist())
    save_slice_png(voxels, affine, dict(result.masks), png_path, window=window,  # type: ignore[arg-type]
                   title=f"{attachment.id}: SAT {', '.join(terms)}"[:80])  # fmt: skip
    segments = {value: structure_code(term) for value, term in enumerate(terms, start=1)}
    try:
        seg_path = ctx.artifacts_dir / f"{stem}_seg.dcm"
        seg_line = write_seg(labels, affine, volume, segments, seg_path, tool=NAME,
                             algorithm=(f"SAT {model.segmenter.config.variant}", "zhaoziheng/SAT@5676be5",
                                        "ArtificialIntelligence"))  # fmt: skip
        seg_artifacts = [_relative(ctx, seg_path)]
    except SegNotWritten as exc:
        seg_line, seg_artifacts = str(exc), []

    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    notes = list(result.notes)
    if overlap_voxels:
        notes.append(f"{overlap_voxels} voxels fall in more than one mask; the label map gives them the later class")
    shared = {
        "model": f"{MODEL} {model.segmenter.config.variant}",
        "modality": code,
        "labels": {str(v): t for v, t in enumerate(terms, start=1)},
        "window": list(result.window),
        "overlap": config.overlap,
        "sw_batch_size": config.sw_batch_size,
        "windows": result.windows,
        "padded": result.padded_from is not None,
        "processed_shape": [int(n) for n in result.prepared.image.shape],
        "processed_spacing_mm": [round(s, 4) for s in result.prepared.spacing],
        "orientation": "RAS",
        "normalisation": result.prepared.normalisation,
        "input_shape": [int(n) for n in volume.voxels.shape],
        "device": device,
        "dtype": config.dtype,
        "seconds": round(result.seconds, 2),
        "dicom_seg": seg_line,
        "notes": notes,
    }
    common = [_relative(ctx, png_path), _relative(ctx, label_path), *seg_artifacts]
    evidence, vocab = [], vocabulary()
    for item, term in zip(classes, terms, strict=True):
        count = int(result.masks[term].sum())
        ml = round(count * voxel_ml, 2)
        asked = [t for t in args.targets if vocab.canonical_term(t) == term]
        named = f"{term}" + (f" (asked as '{asked[0]}')" if asked and asked[0].strip().lower() != term else "")
        summary = (
            f"SAT ({shared['model']}) on {attachment.id}: {named} {ml:.1f} mL ({count} voxels)"
            if count else f"SAT ({shared['model']}) on {attachment.id}: no voxel segmented as {named}"
        ) + (f"; {notes[0]}" if result.padded_from is not None else "")
        payload = shared | {
            "target": asked[0] if asked else term,
            "term": term,
            "region": item.region,
            "volume_ml": ml,
            "voxels": count,
            "voxel_volume_ml": round(voxel_ml, 6),
            "mask": _relative(ctx, mask_paths[term]),
        }
        evidence.append(EvidenceDraft(summary=summary, attachment=attachment.id, payload=payload,
                                      artifacts=[*common, _relative(ctx, mask_paths[term])], confidence=None))  # fmt: skip
    return evidence


# ------------------------------------------------------------------ rules


def named_terms(text: str, modality: str, limit: int = 8) -> list[str]:
    """SAT terms of `modality` (DICOM code) that `text` names (whole words, synonyms too), longest phrase first."""
    from medagent.specialists.sat.vocabulary import SYNONYMS, VocabularyError, _words, sat_modality

    try:
        code = sat_modality(modality)
    except VocabularyError:
        return []
    vocab = vocabulary()
    known = set(vocab.terms(code))
    phrases = {" ".join(_words(t)): t for t in known}
    phrases |= {" ".join(_words(a)): t for a, t in SYNONYMS.items() if t in known}
    words = " ".join(_words(text))
    if not words:
        return []
    taken = [False] * len(words)
    found: list[tuple[int, str]] = []
    for phrase in sorted(phrases, key=len, reverse=True):
        if not phrase:
            continue
        for match in re.finditer(rf"(?<![a-z0-9]){re.escape(phrase)}(?![a-z0-9])", words):
            if not any(taken[match.start() : match.end()]):
                taken[match.start() : match.end()] = [True] * (match.end() - match.start())
                found.append((match.start(), phrases[phrase]))
    return list(dict.fromkeys(term for _, term in sorted(found)))[:limit]


def _scans(case: Case) -> list[Any]:
    return [a for a in case.attachments if a.kind is AttachmentKind.volume and (a.modality or "").upper() in MODALITIES]


def structures_in_question(case: Case, tools: Any, evidence: Any, calls: Any) -> list[tuple[str, dict, str]]:
    """When the case question names structures SAT knows, segment them in each CT/MR/PET volume."""
    if NAME not in {t.name for t in tools}:
        return []
    proposals = []
    for attachment in _scans(case):
        terms = named_terms(case.question or "", attachment.modality or "")
        if terms:
            proposals.append((NAME, {"attachment": attachment.id, "targets": terms},
                              f"the case question names {', '.join(terms)}"))  # fmt: skip
    return proposals


FINDING_TOOLS = ("imaging.vqa", "imaging.diagnose")


def structures_in_findings(case: Case, tools: Any, evidence: Any, calls: Any) -> list[tuple[str, dict, str]]:
    """When another tool's finding on a scan names structures SAT knows (and no call segmented them), segment them."""
    if NAME not in {t.name for t in tools}:
        return []
    done = {(c.arguments.get("attachment"), t) for c in calls if c.tool == NAME for t in c.arguments.get("targets", [])}
    proposals = []
    for attachment in _scans(case):
        text = " ".join(e.summary for e in evidence
                        if e.tool in FINDING_TOOLS and not e.error and e.attachment == attachment.id)  # fmt: skip
        terms = [t for t in named_terms(text, attachment.modality or "") if (attachment.id, t) not in done]
        if terms:
            proposals.append((NAME, {"attachment": attachment.id, "targets": terms},
                              f"a finding on {attachment.id} names {', '.join(terms)}"))  # fmt: skip
    return proposals


FIRST_STEP_RULES = [structures_in_question]
FOLLOW_UP_RULES = [structures_in_findings]


def _grounded(case: Case, evidence: Any) -> dict[str, list[str]]:
    """Targets an LLM may give: SAT's own class names (a closed list, never patient text)."""
    return {"targets": vocabulary().terms()}


TOOLS = [
    Tool(
        name=NAME,
        purpose=(
            "Segment named structures (any of SAT's 498 classes: organs, vessels, bones, muscles, tumours, e.g. "
            "['liver', 'spleen']) in a CT, MR or PET volume with SAT's text-prompted model; returns each structure's "
            "volume (mL) and voxel count, NIfTI masks and an overlay image."
        ),
        args=SegmentTextArgs,
        run=segment_text,
        payload=SATSegmentPayload,
        grounded=_grounded,
        attachment_kinds=(AttachmentKind.volume,),
        modalities=MODALITIES,
        check=check,
        version=version,
        doctor=doctor,
        model_files=model_files,
        precheck=precheck,
    )
]
