"""`pathology.classify`: KEP zero-shot classification of a pathology image against labels in words.

Labels come from the call (e.g. candidate diagnoses from the knowledge tools), a named built-in
set, or the configured default set. Large images are tiled; the tiles that most support the
winning label are written as PNG artifacts. Available only when `[pathology] path` names a KEP
checkpoint folder (the weights are not on a model hub; `medagent doctor` says where to get them).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import AttachmentKind, Case, Evidence, EvidenceDraft, ToolCall
from medagent.tools.errors import CaseError, ToolError, UnavailableError
from medagent.tools.pool import ModelPool
from medagent.tools.payloads import PathologyPayload, RankPayload
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

WEIGHTS_HELP = (
    "KEP weights are not on a model hub: download KEP-32, KEP-16 or KEP-CTP from the links in "
    "github.com/MAGIC-AI4Med/KEP (BaiduPan; KEP-CTP_OpenPath also on Google Drive) or train one with "
    "`medagent train pathology`, then set [pathology] path in medagent.toml to the folder holding "
    "pytorch_model.bin and the PubMedBERT tokenizer (vocab.txt or tokenizer.json). Or use KEEP, KEP's "
    "successor (MIT), which is on the Hugging Face hub: fetch it once yourself "
    "(`huggingface-cli download Astaxanthin/KEEP --local-dir <folder>`; medagent never downloads) and point "
    "[pathology] path at that folder (weights, config.json and tokenizer files)"
)
MAX_FOLLOW_UP_LABELS = 8


class ClassifyArgs(AttachmentArgs):
    labels: list[str] | None = Field(
        default=None,
        description="Diagnoses or tissue types to choose between (at least two); omit to use a built-in set",
    )
    label_set: str | None = Field(
        default=None, description="Built-in set: general, crc, lung, colon, breast, luad_tissue, prostate"
    )


def _classifier(settings: Settings, pool: ModelPool):  # noqa: ANN202 - a KEPClassifier
    """One loaded model per (folder, weights mtime, device) in the run's pool, shared by its calls."""
    from medagent.specialists.pathology.infer import KEPClassifier
    from medagent.specialists.pathology.load import CheckpointError, find_weights, load_kep

    config = settings.pathology
    try:
        weights = find_weights(Path(config.path))
        key = ("pathology.kep", str(weights), weights.stat().st_mtime_ns, config.device, config.variant)
        return pool.get(key, lambda: KEPClassifier(load_kep(weights, config.variant, config.device), config.device))
    except CheckpointError as exc:
        raise UnavailableError(f"[pathology] path: {exc}") from exc


def classify(args: ClassifyArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    from medagent.specialists.pathology.labels import LabelError, resolve
    from medagent.specialists.pathology.preprocess import PathologyInputError, TilingOptions, open_rgb

    config = ctx.settings.pathology
    attachment, path = ctx.attachment(args.attachment)
    try:
        label_set = resolve(args.labels, args.label_set, config.default_label_set)
    except LabelError as exc:
        raise ToolError(f"pathology.classify: {exc}") from exc
    tiling = TilingOptions(config.tile_size, config.max_tiles, config.batch_size, max_pixels=config.max_pixels)
    try:
        image = open_rgb(path, tiling.max_pixels)
    except PathologyInputError as exc:
        raise CaseError(f"attachment '{attachment.id}': {exc}") from exc
    classifier = _classifier(ctx.settings, ctx.pool)
    result = classifier.classify(image, label_set, tiling, top_tiles=config.top_tiles)
    ranked = result.ranked()
    winner, winner_p = ranked[0]

    ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
    tiles = []
    for rank, tile in enumerate(result.top_tiles, start=1):
        png = ctx.artifacts_dir / f"pathology_{attachment.id}_tile{rank}.png"
        tile.image.save(png)
        tiles.append(
            {
                "rank": rank,
                "box": list(tile.box),
                "probability": round(tile.probabilities[result.labels.index(winner)], 4),
                "tissue_fraction": round(tile.tissue, 3),
                "artifact": f"{ctx.artifacts_dir.name}/{png.name}",
            }
        )
    variant = classifier.loaded.config.variant
    model_name = "KEEP" if variant == "keep" else f"KEP-{variant}"
    how = (
        f"{result.tiles_scored} of {result.grid_tiles} tiles of {config.tile_size} px"
        if result.tiled
        else "the whole image as one patch"
    )
    runner_up = f", then '{ranked[1][0]}' ({ranked[1][1]:.2f})" if len(ranked) > 1 else ""
    summary = (
        f"{model_name} zero-shot on {how}: most consistent with '{winner}' "
        f"(p={winner_p:.2f} among {len(ranked)} labels{runner_up})."
    )
    payload = {
        "model": model_name,
        "label_set": label_set.name,
        "ranked": [{"label": label, "probability": round(p, 4)} for label, p in ranked],
        "top_label": winner,
        "image_size": list(result.image_size),
        "tiled": result.tiled,
        "grid_tiles": result.grid_tiles,
        "tiles_scored": result.tiles_scored,
        "top_tiles": tiles,
    }
    return [
        EvidenceDraft(
            summary=summary,
            attachment=attachment.id,
            payload=payload,
            artifacts=[t["artifact"] for t in tiles],
            confidence=round(winner_p, 4),
        )
    ]


def check(settings: Settings) -> str | None:
    path = settings.pathology.path
    if path is None:
        return f"no KEP checkpoint configured. {WEIGHTS_HELP}"
    path = Path(path).expanduser()
    if not path.exists():
        return f"[pathology] path {path} does not exist. {WEIGHTS_HELP}"
    from medagent.specialists.pathology.load import CheckpointError, find_weights

    try:
        find_weights(path)
    except CheckpointError as exc:
        return f"{exc}. {WEIGHTS_HELP}"
    return None


def version(settings: Settings) -> str:
    path = settings.pathology.path
    return f"KEP/KEEP {settings.pathology.variant or 'auto'} from {path}" if path else "KEP (not configured)"


def model_files(settings: Settings) -> list[tuple[str, Path]]:
    from medagent.specialists.pathology.load import find_weights

    return [("KEP/KEEP weights", find_weights(Path(settings.pathology.path)))] if settings.pathology.path else []


def doctor(settings: Settings) -> list[str]:
    reason = check(settings)
    if reason is None:
        return [
            f"pathology.classify: KEP/KEEP checkpoint at {settings.pathology.path} (device {settings.pathology.device})"
        ]
    return [f"pathology.classify unavailable: {reason}"]


def candidate_labels(case: Case, tools, evidence: list[Evidence], calls: list[ToolCall]) -> list[tuple[str, dict, str]]:
    """After the knowledge tools rank diagnoses, classify each pathology image against those candidates."""
    if "pathology.classify" not in {t.name for t in tools}:
        return []
    names: list[str] = []
    ranking = next((e for e in reversed(evidence) if e.tool == "knowledge.rank" and not e.error), None)
    for candidate in RankPayload.of(ranking).differential if ranking is not None else []:
        if candidate.name.strip() and candidate.name.strip() not in names:
            names.append(candidate.name.strip())
    names = names[:MAX_FOLLOW_UP_LABELS]
    if len(names) < 2:
        return []
    return [
        (
            "pathology.classify",
            {"attachment": a.id, "labels": names},
            "classify the pathology image against the ranked candidate diagnoses",
        )
        for a in case.attachments
        if a.kind is AttachmentKind.pathology
    ]


FOLLOW_UP_RULES = [candidate_labels]

def _grounded_classify(case: Case, evidence: list[Evidence]) -> dict[str, list[str]]:
    """Labels an LLM may classify against: the names the latest ranking gave (a built-in set needs none)."""
    ranking = next((e for e in reversed(evidence) if e.tool == "knowledge.rank" and not e.error), None)
    return {"labels": [c.name.strip() for c in RankPayload.of(ranking).differential if c.name.strip()] if ranking else []}


TOOLS = [
    Tool(
        name="pathology.classify",
        purpose=(
            "Zero-shot classification of a pathology (H&E) image with KEP against given labels "
            "(e.g. candidate diagnoses) or a built-in tissue set; returns ranked labels and top tiles."
        ),
        args=ClassifyArgs,
        run=classify,
        payload=PathologyPayload,
        grounded=_grounded_classify,
        attachment_kinds=(AttachmentKind.pathology,),
        check=check,
        version=version,
        doctor=doctor,
        model_files=model_files,
    )
]
