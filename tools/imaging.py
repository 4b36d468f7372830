"""`imaging.ct_quant` (classical CT measurements, no weights) and `imaging.segment` (any MONAI bundle).

Both write their masks as NIfTI and a PNG of a representative axial slice with the masks outlined
into the run's artifacts folder, and, when the input was a DICOM series, as a DICOM SEG referencing it
(tools/dicomseg.py); evidence names those files relative to the output folder and says whether a SEG
was written, or why not.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from medagent.tools.config import Settings
from medagent.tools.contracts import Attachment, AttachmentKind, EvidenceDraft
from medagent.tools.dicomseg import SegmentCode, SegNotWritten, sct, structure_code, write_seg
from medagent.tools.errors import ToolError
from medagent.tools.medio import Volume, read_volume
from medagent.tools.payloads import CTQuantPayload, SegmentationPayload
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext

CT_VERSION = "ctquant-1"
# ct_quant's labels (specialists/imaging/ctquant.py LABELS) as SEG segments: (category, type) in SNOMED CT.
CT_CODES = {
    "lungs": ("AnatomicalStructure", "Lung"),
    "bone": ("Tissue", "Bone"),
    "fat": ("Tissue", "AdiposeTissue"),
    "other soft tissue": ("Tissue", "SoftTissue"),
}


def _relative(ctx: ToolContext, path: Path) -> str:
    """Artifact paths in evidence are relative to the output folder (the parent of artifacts/)."""
    return f"{ctx.artifacts_dir.name}/{path.name}"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _dicom_seg(
    ctx: ToolContext, path: Path, labels: np.ndarray, affine: np.ndarray, volume: Volume, segments: dict[int, SegmentCode],
    **how: Any,
) -> tuple[str, list[str]]:
    """The SEG's evidence line and artifact; a SEG that cannot be written costs only that line, never the masks."""
    try:
        return write_seg(labels, affine, volume, segments, path, **how), [_relative(ctx, path)]
    except SegNotWritten as exc:
        return str(exc), []


def _load_volume(attachment: Attachment, path: Path) -> Volume:
    if attachment.kind is not AttachmentKind.volume and not (attachment.format == "dicom" and path.is_dir()):
        raise ToolError(f"{attachment.id}: is a {attachment.kind.value}, not a volume; CT measurements need a 3D scan")
    volume = read_volume(path, attachment.format or "", attachment.modality, attachment.series_uid)
    if min(volume.voxels.shape) < 3:
        raise ToolError(
            f"{attachment.id}: {path.name} holds {volume.voxels.shape} voxels, a single slice or a thin stack; "
            "a volume of at least 3 slices is needed"
        )
    if volume.source_format == "nifti":
        import nibabel as nib

        header = nib.load(str(path)).header
        if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
            raise ToolError(
                f"{attachment.id}: {path.name} has no spatial information (qform and sform codes are 0), "
                "so voxel spacing is unknown; re-export the NIfTI with its geometry"
            )
    return volume


def _canonical(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Voxels reordered to RAS (k = inferior→superior, the axial axis) and the matching affine."""
    import nibabel as nib

    image = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(volume.voxels, dtype=np.float32), volume.affine))
    return np.asarray(image.dataobj, dtype=np.float32), image.affine


def ct_quant(args: AttachmentArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    import nibabel as nib

    from medagent.specialists.imaging.ctquant import LABELS, quantify
    from medagent.specialists.imaging.figure import save_slice_png

    attachment, path = ctx.attachment(args.attachment)
    volume = _load_volume(attachment, path)
    modality = volume.modality or attachment.modality
    if modality != "CT":
        raise ToolError(
            f"{attachment.id}: imaging.ct_quant measures CT in Hounsfield units; this volume is "
            f"{modality or 'of unknown modality'} (set the attachment's modality only if it really is CT)"
        )
    if volume.units != "HU":
        raise ToolError(f"{attachment.id}: CT without a rescale to Hounsfield units (no RescaleSlope/Intercept)")
    # A volume labelled CT that holds no air (about -1000 HU) is not CT in Hounsfield units: NIfTI carries
    # no modality, so a wrong word in the case would otherwise yield confident, meaningless volumes.
    low, high = (float(v) for v in np.percentile(volume.voxels, [0.5, 99.5]))
    if low > -700:
        raise ToolError(
            f"{attachment.id}: labelled CT, but its intensities ({low:.0f} to {high:.0f}) hold no air near -1000 HU; "
            "this does not look like CT in Hounsfield units (check the attachment's modality)"
        )
    hu, affine = _canonical(volume)
    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    try:
        result = quantify(hu, spacing)
    except ValueError as exc:
        raise ToolError(f"{attachment.id}: {exc}") from exc
    except MemoryError as exc:
        raise ToolError(
            f"{attachment.id}: {hu.shape} voxels do not fit in memory for ct_quant; resample the volume "
            "to a coarser grid (e.g. 1.5 mm) before attaching it"
        ) from exc

    ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
    stem = f"ct_quant_{_safe_name(attachment.id)}"
    mask_path = ctx.artifacts_dir / f"{stem}_labels.nii.gz"
    labels_image = nib.Nifti1Image(result.label_map(), affine)
    labels_image.header["descrip"] = (
        b"medagent ct_quant: " + ", ".join(f"{k}={v}" for k, v in LABELS.items()).encode()[:60]
    )
    nib.save(labels_image, str(mask_path))
    png_path = ctx.artifacts_dir / f"{stem}.png"
    has_lungs = bool(result.masks["lungs"].any())
    outlined = {name: result.masks[name] for name in ("lungs", "bone", "body")}
    slice_index = save_slice_png(
        hu,
        affine,
        outlined,
        png_path,
        window=(-1000.0, 400.0) if has_lungs else (-160.0, 240.0),
        title=f"{attachment.id}: ct_quant masks",
        slice_from="lungs" if has_lungs else "body",
    )
    segments = {value: SegmentCode(name, *(sct(k) for k in CT_CODES[name])) for value, name in LABELS.items()}
    seg_line, seg_artifacts = _dicom_seg(
        ctx, ctx.artifacts_dir / f"{stem}_seg.dcm", result.label_map(), affine, volume, segments,
        tool="imaging.ct_quant", algorithm=("medagent ct_quant", CT_VERSION, "MorphologicalOperations"),
    )
    artifacts = [_relative(ctx, png_path), _relative(ctx, mask_path), *seg_artifacts]
    volumes = result.volumes_ml
    extent_mm = round(hu.shape[2] * spacing[2], 1)
    scope = f"within the {hu.shape[2]} axial slices scanned ({extent_mm} mm)"
    payload: dict[str, Any] = {
        "volumes_ml": volumes,
        "spacing_mm": [round(s, 4) for s in spacing],
        "shape": [int(n) for n in hu.shape],
        "scanned_extent_mm": extent_mm,
        "label_map": {str(k): v for k, v in LABELS.items()},
        "png_slice_index_ras": slice_index,
        "thresholds_hu": {"body": -500, "lung_air": -400, "bone": 200, "fat": [-190, -30], "emphysema": -950},
        "limits": result.limits,
        "method": "Hounsfield thresholds and connected components (no model weights)",
        "dicom_seg": seg_line,
    }
    evidence = [
        EvidenceDraft(
            summary=(
                f"CT tissue volumes {scope}: lungs {volumes['lungs']:.1f} mL, bone {volumes['bone']:.1f} mL (≥ 200 HU), "
                f"fat {volumes['fat']:.1f} mL (−190 to −30 HU), whole body {volumes['body']:.1f} mL"
            ),
            attachment=attachment.id,
            payload=payload,
            artifacts=artifacts,
            confidence=0.8,
        )
    ]
    density = result.lung_density
    if density is not None:
        evidence.append(
            EvidenceDraft(
                summary=(
                    f"Lung density over {volumes['lungs']:.1f} mL of lung {scope}: mean {density['mean_hu']:.0f} HU, "
                    f"15th percentile {density['perc15_hu']:.0f} HU, emphysema index "
                    f"{density['emphysema_index_pct']:.1f} % of lung voxels below −950 HU"
                ),
                attachment=attachment.id,
                payload={"lung_density": density, "lung_volume_ml": volumes["lungs"], "scanned_extent_mm": extent_mm},
                artifacts=artifacts,
                confidence=0.8,
            )
        )
    else:
        evidence.append(
            EvidenceDraft(
                summary=f"No lung tissue found {scope} (no large air-density region inside the body); lung density not measured",
                attachment=attachment.id,
                payload={"lung_density": None, "scanned_extent_mm": extent_mm},
                confidence=0.7,
            )
        )
    return evidence


class SegmentArgs(AttachmentArgs):
    """Arguments of imaging.segment."""

    bundle: str | None = Field(
        default=None, description="folder name of a configured MONAI bundle; default: the first configured"
    )
    structures: list[str] = Field(
        default_factory=list, description="label names to report (e.g. ['spleen']); empty = every label"
    )


def _bundle_folder(settings: Settings, name: str | None) -> Path:
    folders = [Path(p).expanduser() for p in settings.imaging.bundles]
    if not folders:
        raise ToolError("no MONAI bundle configured: list bundle folders under [imaging] bundles in medagent.toml")
    if name is None:
        return folders[0]
    for folder in folders:
        if folder.name == name:
            return folder
    raise ToolError(f"no configured bundle named '{name}' (configured: {', '.join(f.name for f in folders)})")


def _device(settings: Settings) -> str:
    if settings.imaging.device != "auto":
        return settings.imaging.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def segment(args: SegmentArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    import nibabel as nib

    from medagent.specialists.imaging.bundle import (
        BundleError,
        build_network,
        estimate_output_gb,
        load_bundle,
        target_spacing,
    )
    from medagent.specialists.imaging.bundle import segment as run_bundle
    from medagent.specialists.imaging.figure import save_slice_png

    attachment, path = ctx.attachment(args.attachment)
    volume = _load_volume(attachment, path)
    folder = _bundle_folder(ctx.settings, args.bundle)
    settings = ctx.settings.imaging
    try:
        bundle = load_bundle(folder)
    except BundleError as exc:
        raise ToolError(str(exc)) from exc
    modality = volume.modality or attachment.modality
    if bundle.modality and modality != bundle.modality:
        raise ToolError(
            f"{attachment.id}: bundle {bundle.name} was trained on {bundle.modality} (its metadata says so); "
            f"this volume is {modality or 'of unknown modality'}"
        )
    unknown = [s for s in args.structures if s not in bundle.labels.values()]
    if unknown:
        raise ToolError(
            f"bundle {bundle.name} has no label {', '.join(unknown)}; its labels: {', '.join(bundle.labels.values())}"
        )
    need_gb = estimate_output_gb(volume.voxels.shape, volume.spacing, target_spacing(bundle), len(bundle.labels) or 2)
    if need_gb > settings.max_output_gb:
        raise ToolError(
            f"{attachment.id}: {volume.voxels.shape} voxels need about {need_gb:.1f} GB for the stitched probabilities "
            f"(limit [imaging] max_output_gb = {settings.max_output_gb}); crop or resample the image, or raise the limit "
            "on a machine with that memory ([imaging] roi_size and sw_batch_size bound the network's working memory)"
        )
    device = _device(ctx.settings)
    weights = folder / "models" / "model.pt"
    # Bundle networks in the run's pool, keyed by folder and weights' modification time, so a session reuses them.
    key = ("imaging.bundle", str(folder.resolve()), weights.stat().st_mtime if weights.is_file() else 0.0, device)
    try:
        ctx.pool.drop(lambda held: held[0] == "imaging.bundle" and held != key)  # one bundle network at a time
        network = ctx.pool.get(key, lambda: build_network(bundle, device=device))
        with tempfile.TemporaryDirectory(prefix="medagent-segment-") as scratch:
            image_path = path
            if volume.source_format != "nifti":
                # DICOM goes through medio (the project's reader, HU applied) and into the bundle as NIfTI.
                image_path = Path(scratch) / "image.nii.gz"
                nib.save(nib.Nifti1Image(np.asarray(volume.voxels, dtype=np.float32), volume.affine), str(image_path))
            result = run_bundle(
                bundle,
                image_path,
                network,
                device=device,
                roi_size=tuple(settings.roi_size) if settings.roi_size else None,
                sw_batch_size=settings.sw_batch_size,
                overlap=settings.overlap,
            )
    except BundleError as exc:
        raise ToolError(str(exc)) from exc
    except MemoryError as exc:
        raise ToolError(
            f"{attachment.id}: out of memory running bundle {bundle.name}; lower [imaging] sw_batch_size or roi_size, "
            "or set [imaging] device = 'cpu'"
        ) from exc

    ctx.artifacts_dir.mkdir(parents=True, exist_ok=True)
    stem = f"segment_{_safe_name(bundle.name)}_{_safe_name(attachment.id)}"
    mask_path = ctx.artifacts_dir / f"{stem}_labels.nii.gz"
    nib.save(nib.Nifti1Image(result.labels, result.affine), str(mask_path))
    wanted = args.structures or [n for v, n in sorted(result.names.items()) if v != 0]
    masks = {name: result.labels == value for value, name in result.names.items() if name in wanted}
    png_path = ctx.artifacts_dir / f"{stem}.png"
    window = (-160.0, 240.0) if modality == "CT" else tuple(np.percentile(volume.voxels, [1, 99]).tolist())
    save_slice_png(
        np.asarray(volume.voxels, dtype=np.float32) if volume.voxels.shape == result.labels.shape else result.labels,
        result.affine,
        masks,
        png_path,
        window=window,  # type: ignore[arg-type]
        title=f"{attachment.id}: {bundle.name}",
    )
    segments = {value: structure_code(name) for value, name in result.names.items() if value != 0}
    seg_line, seg_artifacts = _dicom_seg(
        ctx, ctx.artifacts_dir / f"{stem}_seg.dcm", result.labels, result.affine, volume, segments,
        tool="imaging.segment", algorithm=(f"MONAI bundle {bundle.name}", str(bundle.version), "ArtificialIntelligence"),
    )
    volumes = {name: result.volumes_ml[name] for name in wanted if name in result.volumes_ml}
    found = [f"{name} {ml:.1f} mL" for name, ml in volumes.items() if ml > 0]
    absent = [name for name, ml in volumes.items() if ml == 0]
    summary = f"MONAI bundle {bundle.name} (v{bundle.version}) on {attachment.id}: " + (
        ", ".join(found) if found else "no voxel labelled"
    )
    if absent:
        summary += f"; nothing labelled {', '.join(absent)}" if found else f" {', '.join(absent)}"
    return [
        EvidenceDraft(
            summary=summary,
            attachment=attachment.id,
            payload={
                "bundle": bundle.name,
                "bundle_version": bundle.version,
                "volumes_ml": volumes,
                "bounding_boxes": {n: b for n, b in result.bboxes_mm.items() if n in wanted},
                "labels": {str(k): v for k, v in result.names.items()},
                "roi_size": list(settings.roi_size or bundle.roi_size),
                "sw_batch_size": settings.sw_batch_size or bundle.sw_batch_size,
                "device": device,
                "seconds": round(result.seconds, 2),
                "dicom_seg": seg_line,
            },
            artifacts=[_relative(ctx, png_path), _relative(ctx, mask_path), *seg_artifacts],
            confidence=None,
        )
    ]


def _segment_check(settings: Settings) -> str | None:
    if not settings.imaging.enabled:
        return "imaging is disabled in medagent.toml ([imaging] enabled = false)"
    if not settings.imaging.bundles:
        return 'no MONAI bundle configured ([imaging] bundles = ["/path/to/bundle"] in medagent.toml)'
    for folder in settings.imaging.bundles:
        folder = Path(folder).expanduser()
        for part in ("configs/metadata.json", "configs/inference.json", "models/model.pt"):
            if not (folder / part).is_file():
                return f"MONAI bundle {folder}: {part} is missing"
    return None


def _segment_version(settings: Settings) -> str:
    import json

    names = []
    for folder in settings.imaging.bundles:
        try:
            version = json.loads((Path(folder) / "configs" / "metadata.json").read_text()).get("version", "?")
        except (OSError, ValueError):
            version = "?"
        names.append(f"{Path(folder).name}@{version}")
    return ", ".join(names) or "none"


def _model_files(settings: Settings) -> list[tuple[str, Path]]:
    return [(f"MONAI bundle {Path(b).name}", Path(b).expanduser() / "models" / "model.pt") for b in settings.imaging.bundles]


def _doctor(settings: Settings) -> list[str]:
    lines = ["imaging.ct_quant: Hounsfield-unit analysis (body, lungs, bone, fat, lung density); needs no weights"]
    for folder in settings.imaging.bundles:
        reason = _segment_check(Settings(imaging=settings.imaging.model_copy(update={"bundles": [folder]})))
        lines.append(f"imaging.segment: bundle {folder}: {'ready' if reason is None else reason}")
    if not settings.imaging.bundles:
        lines.append(
            "imaging.segment: no MONAI bundle configured ([imaging] bundles); no segmentation model runs offline"
        )
    lines.append(
        "chest radiographs (CR/DX), ultrasound and other 2D images: no model weights ship offline, so they get "
        "imaging.describe only (no findings are read from them)"
    )
    return lines


TOOLS = [
    Tool(
        name="imaging.ct_quant",
        purpose=(
            "Measure a CT volume without any model: body, lung, bone and fat volumes (mL), lung density "
            "(mean, 15th percentile, emphysema index % below -950 HU), with a mask image."
        ),
        args=AttachmentArgs,
        run=ct_quant,
        payload=CTQuantPayload,
        attachment_kinds=(AttachmentKind.volume,),
        modalities=("CT",),
        check=lambda settings: None if settings.imaging.enabled else "imaging is disabled ([imaging] enabled = false)",
        version=lambda settings: CT_VERSION,
        doctor=_doctor,
    ),
    Tool(
        name="imaging.segment",
        purpose=(
            "Segment organs in a CT volume with a configured MONAI bundle: per-structure volume (mL), "
            "bounding box and a label-map image."
        ),
        args=SegmentArgs,
        run=segment,
        payload=SegmentationPayload,
        attachment_kinds=(AttachmentKind.volume,),
        modalities=("CT",),
        check=_segment_check,
        version=_segment_version,
        model_files=_model_files,
    ),
]
