"""`imaging.describe`: what an image or volume is, measured from the file itself (no model).

Modality, dimensions, voxel spacing, orientation, intensity range (Hounsfield units for CT),
slice count and acquisition metadata. Never patient identifiers: only medio's safe tags.
"""

from __future__ import annotations

import numpy as np

from medagent.tools.contracts import AttachmentKind, EvidenceDraft
from medagent.tools.medio import read_image, read_volume
from medagent.tools.payloads import DescribePayload
from medagent.tools.registry import AttachmentArgs, Tool, ToolContext


def _intensity(voxels: np.ndarray) -> dict[str, float]:
    values = voxels.astype(np.float32, copy=False)
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": round(float(values.mean()), 2),
        "p1": float(p1),
        "median": float(p50),
        "p99": float(p99),
    }


def describe(args: AttachmentArgs, ctx: ToolContext) -> list[EvidenceDraft]:
    attachment, path = ctx.attachment(args.attachment)
    if attachment.kind is AttachmentKind.volume or (attachment.format == "dicom" and path.is_dir()):
        volume = read_volume(path, attachment.format or "", attachment.modality, attachment.series_uid)
        shape = [int(n) for n in volume.voxels.shape]
        spacing = [round(s, 4) for s in volume.spacing]
        intensity = _intensity(volume.voxels)
        extent = [round(n * s, 1) for n, s in zip(shape, spacing)]
        modality = volume.modality or "unknown modality"
        unit = "HU" if volume.units == "HU" else ""
        summary = (
            f"{modality} volume of {shape[0]}×{shape[1]}×{shape[2]} voxels "
            f"({spacing[0]}×{spacing[1]}×{spacing[2]} mm, {volume.orientation}), {shape[2]} slices covering "
            f"{extent[0]}×{extent[1]}×{extent[2]} mm; intensity {intensity['p1']:.0f} to {intensity['p99']:.0f} {unit} "
            f"(1st–99th percentile)".replace("  ", " ").replace(" )", ")")
        )
        payload = {
            "kind": "volume",
            "modality": volume.modality,
            "format": volume.source_format,
            "shape": shape,
            "spacing_mm": spacing,
            "extent_mm": extent,
            "orientation": volume.orientation,
            "units": volume.units,
            "intensity": intensity,
            "acquisition": volume.metadata,
        }
    else:
        pixels = read_image(path)
        height, width = int(pixels.shape[0]), int(pixels.shape[1])
        channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
        intensity = _intensity(pixels)
        modality = attachment.modality or attachment.kind.value
        summary = (
            f"{modality} {attachment.format} image of {width}×{height} pixels, {channels} channel"
            f"{'s' if channels > 1 else ''}; intensity {intensity['min']:.0f} to {intensity['max']:.0f}"
        )
        payload = {
            "kind": "image",
            "modality": attachment.modality,
            "format": attachment.format,
            "width": width,
            "height": height,
            "channels": channels,
            "intensity": intensity,
        }
    return [EvidenceDraft(summary=summary, attachment=attachment.id, payload=payload, confidence=1.0)]


TOOLS = [
    Tool(
        name="imaging.describe",
        purpose="Describe an image or volume: modality, size, voxel spacing, orientation, intensity range (HU for CT).",
        args=AttachmentArgs,
        run=describe,
        payload=DescribePayload,
        attachment_kinds=(AttachmentKind.image, AttachmentKind.volume, AttachmentKind.pathology),
    )
]
