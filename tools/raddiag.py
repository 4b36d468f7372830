"""`imaging.diagnose`: RadDiag's most probable disorders for a case's scans, each with its ICD-10-CM category.

RadDiag (RP3D-Diag, Nature Communications 2024) is a multi-label classifier over 5,569 disorders (930
ICD-10-CM categories in the authors' map). The early-fusion weights fuse up to 4 scans of a case; the
late-fusion weights score each scan alone (the highest probability over the scans is reported). Scans beyond
4 are left out, first by case order kept, and the evidence says which. The codes in the payload are what
`knowledge.lookup` and the differential take. Available only when `[raddiag] path` names a checkpoint;
`medagent doctor` says where to get it. The checkpoint layout is the one derived from the authors' code, not
yet checked against the released weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import Attachment, AttachmentKind, Case, Evidence, EvidenceDraft, ToolCall
from medagent.tools.errors import ToolError, UnavailableError
from medagent.tools.payloads import DiagnosePayload
from medagent.tools.pool import ModelPool
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

HF_REPO = "QiaoyuZheng/RadDiag"
EARLY_FOLDER = "RP3D_5569_res_ART_256_32_BCE_T_4_2_0.7_2048_E_F_F_F_N"
LATE_FOLDER = "RP3D_5569_res_ART_256_32_BCE_T_2048_L_F_F_F_N"
UNCHECKED = "layout from the authors' code, not yet checked against released weights"
WEIGHTS_HELP = (
    f"RadDiag weights are on the Hugging Face hub ({HF_REPO}, MIT): fetch one folder yourself (medagent never "
    f"downloads), e.g. `huggingface-cli download {HF_REPO} --include '{EARLY_FOLDER}/*' --local-dir <dir>` "
    f"(early fusion) or '{LATE_FOLDER}/*' (late fusion), and set [raddiag] path in medagent.toml to the folder "
    "holding pytorch_model.bin"
)
# Scan modalities RadDiag was trained on (DICOM codes and the case words for them).
MODALITIES = ("CT", "MR", "MRI", "CR", "DX", "XR", "US", "RF", "MG", "XA", "NM", "PT")
MAX_SCANS = 4


class DiagnoseArgs(AttachmentArgs):
    more: list[str] = Field(
        default_factory=list,
        description="Further scans of the case (attachment ids) to diagnose together with it; at most 4 in all",
    )


def check(settings: Settings) -> str | None:
    path = settings.raddiag.path
    if path is None:
        return f"no RadDiag checkpoint configured. {WEIGHTS_HELP}"
    from medagent.specialists.raddiag.load import CheckpointError, find_weights

    try:
        find_weights(Path(path))
    except CheckpointError as exc:
        return f"{exc}. {WEIGHTS_HELP}"
    return None


def version(settings: Settings) -> str:
    path = settings.raddiag.path
    return f"RadDiag from {path} ({UNCHECKED})" if path else "RadDiag (not configured)"


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    if check(settings) is not None:
        return []
    from medagent.specialists.raddiag.load import find_weights

    return [("RadDiag weights (fp32)", find_weights(Path(settings.raddiag.path)))]


def doctor(settings: Settings) -> list[str]:
    from medagent.specialists.raddiag.load import WEIGHT_NAMES

    path = settings.raddiag.path
    lines = [
        f"raddiag: path = {path if path is not None else '(not set)'}, device = {settings.raddiag.device}; "
        f"looks for {', '.join(WEIGHT_NAMES)} in that folder (or takes the file itself)",
        f"raddiag: weights on Hugging Face {HF_REPO} (MIT): {EARLY_FOLDER} (early fusion, 167.2 M parameters) or "
        f"{LATE_FOLDER} (late fusion, 91.6 M)",
        "raddiag: memory: ~0.7 GB of fp32 weights (early) plus ~2 GB of activations for 4 scans x 32 slices at "
        "256 px, batch 1 (estimate)",
        f"raddiag: checkpoint {UNCHECKED}",
    ]
    reason = check(settings)
    lines.append(f"raddiag: {'ready' if reason is None else 'unavailable: ' + reason}")
    return lines


def _model(settings: Settings, pool: ModelPool) -> Any:
    from medagent.specialists.raddiag.load import CheckpointError, find_weights, load_raddiag

    try:
        weights = find_weights(Path(settings.raddiag.path))
        key = ("raddiag", str(weights), weights.stat().st_mtime_ns, settings.raddiag.device)
        return pool.get(key, lambda: load_raddiag(weights, settings.raddiag.device))
    except CheckpointError as exc:
        raise UnavailableError(f"[raddiag] path: {exc}") from exc


def _scan(attachment: Attachment, path: Path) -> Any:
    """The attachment as a RadDiag Scan, read through medio (DICOM series, NIfTI, pictures)."""
    from medagent.specialists.raddiag.preprocess import Scan
    from medagent.tools.medio import read_image, read_volume, sniff

    fmt = attachment.format or sniff(path).format  # intake sets it; a case built in code may not
    if attachment.kind is AttachmentKind.volume or (fmt == "dicom" and path.is_dir()):
        volume = read_volume(path, fmt, attachment.modality, attachment.series_uid)
        return Scan(volume.voxels, volume.modality or attachment.modality, volume.affine, name=attachment.id)
    return Scan(read_image(path), attachment.modality, None, name=attachment.id)


def _chosen(args: DiagnoseArgs, ctx: ToolContext) -> tuple[list[tuple[Attachment, Path]], list[str]]:
    wanted = list(dict.fromkeys([args.attachment, *args.more]))
    found = [ctx.attachment(a) for a in wanted]
    order = {a.id: i for i, a in enumerate(ctx.case.attachments)}
    found.sort(key=lambda pair: order[pair[0].id])  # the case's order
    return found[:MAX_SCANS], [a.id for a, _ in found[MAX_SCANS:]]


def diagnose(args: DiagnoseArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.raddiag.infer import LATE_COMBINATION
    from medagent.specialists.raddiag.infer import diagnose as rank
    from medagent.specialists.raddiag.preprocess import RadDiagInputError, prepare_case

    chosen, left_out = _chosen(args, ctx)
    names = ", ".join(a.id for a, _ in chosen)
    loaded = _model(ctx.settings, ctx.pool)
    try:
        prepared = prepare_case([_scan(a, p) for a, p in chosen], loaded.config)
        findings = rank(loaded, prepared, ctx.settings.raddiag.top)
    except (RadDiagInputError, ValueError) as exc:
        raise ToolError(f"imaging.diagnose on {names}: {exc}") from exc
    fusion = loaded.config.fusion
    ids = prepared.modality[0].tolist()
    scans = [
        {"attachment": a.id, "modality": prepared.modality_groups[n], "modality_id": int(ids[n]),
         "slices_used": prepared.slices_used[n], "slices_total": prepared.slices_total[n]}
        for n, (a, _) in enumerate(chosen)
    ]  # fmt: skip
    disorders = [
        {"rank": r, "disorder": f.disorder, "column": f.column, "icd10": f.icd10, "probability": round(f.probability, 4)}
        for r, f in enumerate(findings, start=1)
    ]
    codes = list(dict.fromkeys(f.icd10 for f in findings if f.icd10))
    listed = "; ".join(
        f"{f.disorder} ({f.icd10 or 'no ICD-10 code'}) p={f.probability:.2f}" for f in findings
    )
    used = ", ".join(f"{s['attachment']} {s['modality']} {s['slices_used']} of {s['slices_total']} slices" for s in scans)
    dropped = f" Left out (more than {MAX_SCANS} scans): {', '.join(left_out)}." if left_out else ""
    summary = f"RadDiag ({fusion} fusion) on {used}: most probable disorders {listed}.{dropped}"
    payload = {
        "model": f"RadDiag {fusion} fusion",
        "fusion": fusion,
        "disorders": disorders,
        "icd10_codes": codes,
        "scans": scans,
        "left_out": left_out,
        "combined": "one fused case vector (early fusion)" if fusion == "early" else LATE_COMBINATION,
        # The candidates the differential takes, marked as coming from imaging (the reporter adds this item's id).
        "differential": [
            {"name": f.disorder, "codes": [{"system": "ICD-10-CM", "id": f.icd10}] if f.icd10 else [],
             "score": round(f.probability, 4), "evidence": [], "phenotypes": [],
             "rationale": f"from imaging: RadDiag ({fusion} fusion) on {names}, p={f.probability:.2f}"}
            for f in findings
        ],
    }
    return [EvidenceDraft(summary=summary, attachment=args.attachment, payload=payload,
                          confidence=round(findings[0].probability, 4))]  # fmt: skip


def fuse_case_scans(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]):  # noqa: ANN201
    """A case with several scans also gets one call over all of them (the first 4 by case order are fused)."""
    tool = next((t for t in tools if t.name == "imaging.diagnose"), None)
    scans = [a for a in case.attachments if tool is not None and tool.fits(a)]
    if len(scans) < 2:
        return []
    return [("imaging.diagnose", {"attachment": scans[0].id, "more": [a.id for a in scans[1:]]},
             "diagnose the case's scans together")]  # fmt: skip


def look_up_top_code(case: Case, tools: Sequence[Tool], evidence: Sequence[Evidence], calls: Sequence[ToolCall]):  # noqa: ANN201
    """After a diagnosis from the scans, look up the ICD-10-CM category of its most probable coded disorder."""
    if not any(t.name == "knowledge.lookup" for t in tools):
        return []
    proposals = []
    for item in evidence:
        if item.tool == "imaging.diagnose" and not item.error:
            codes = DiagnosePayload.of(item).icd10_codes
            if codes:
                proposals.append(("knowledge.lookup", {"concept": codes[0]},
                                  f"look up the ICD-10-CM code of {item.id}'s most probable disorder"))  # fmt: skip
    return proposals


FIRST_STEP_RULES = [fuse_case_scans]
FOLLOW_UP_RULES = [look_up_top_code]


def _grounded(case: Case, evidence: Sequence[Evidence]) -> dict[str, list[str]]:
    """The further scans an LLM may name: the case's own attachment ids."""
    return {"more": [a.id for a in case.attachments]}


TOOLS = [
    Tool(
        name="imaging.diagnose",
        purpose=(
            "Diagnose disorders from CT/MR/X-ray/ultrasound scans with RadDiag (5,569 disorders, multi-label); "
            "returns the most probable disorders with sigmoid probabilities and ICD-10-CM codes."
        ),
        args=DiagnoseArgs,
        run=diagnose,
        payload=DiagnosePayload,
        grounded=_grounded,
        attachment_kinds=(AttachmentKind.volume, AttachmentKind.image),
        modalities=MODALITIES,
        check=check,
        version=version,
        doctor=doctor,
        model_files=model_files,
    )
]
