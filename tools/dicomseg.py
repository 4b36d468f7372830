"""Masks written back as DICOM SEG (highdicom), referencing the DICOM series they were computed from.

A tool that writes a label map calls `write_seg` after its NIfTI is saved. When the input was a DICOM series
the SEG is a BINARY `Segmentation` with one segment per label, built from the source instances' headers, so
it carries their study, series, frame of reference and per-frame references to the instances. When it cannot
be written (the input was no DICOM series, the headers lack what a SEG must reference, highdicom refuses
them) the answer is one line saying why; the NIfTI and the picture stay as they are.

Privacy: the source headers are reduced to the geometry and UIDs a SEG needs before highdicom sees them, and
the patient and study fields it must carry are left empty, so no name, id or date reaches the SEG.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medagent.tools.errors import MedagentError
from medagent.tools.medio import Volume

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.sr.coding import Code

NOT_DICOM = "no DICOM SEG written: the input was not a DICOM series (no source instances to reference)"
RESEARCH_NOTICE = "research use only, not a medical device"

# What a SEG needs from each source instance: identity, geometry and pixel layout. Nothing else is copied.
_KEPT = (
    "SpecificCharacterSet",
    "ImageType",
    "SOPClassUID",
    "SOPInstanceUID",
    "Modality",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "InstanceNumber",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
)
# Patient and study fields a SEG must have (DICOM type 2): present, empty.
_EMPTY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
)
# A SEG cannot reference instances without these (anonymisers sometimes blank them).
_REFERENCED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID")


class SegNotWritten(MedagentError):
    """Why a DICOM SEG could not be written; its message is the one line the evidence carries."""


@dataclass(frozen=True)
class SegmentCode:
    """What one label is: its name and its coded property category and type (pydicom `Code`s)."""

    label: str
    category: Code
    type: Code


def sct(keyword: str) -> Code:
    """A SNOMED CT code from pydicom's code dictionary, by keyword ("AdiposeTissue" -> 55603005 Fat)."""
    from pydicom.sr.codedict import codes

    return getattr(codes.SCT, keyword)


def structure_code(name: str) -> SegmentCode:
    """A bundle's label name coded: the SNOMED CT structure of that name when pydicom knows it ("spleen" ->
    78961009 Spleen, category Anatomical Structure); a tumour or lesion as Neoplasm, category Morphologically
    Abnormal Structure; anything else an anatomical structure with a private code (99MEDAGENT) of its name."""
    from pydicom.sr.coding import Code

    if any(word in name.lower() for word in ("tumor", "tumour", "lesion", "cancer", "neoplasm")):
        return SegmentCode(name, sct("MorphologicallyAbnormalStructure"), sct("Neoplasm"))
    words = [part.capitalize() for part in name.replace("-", " ").replace("_", " ").split()]
    try:
        return SegmentCode(name, sct("AnatomicalStructure"), sct("".join(words)))
    except AttributeError:
        pass
    value = "".join(c for c in "".join(words) if c.isalnum())[:16] or "label"
    return SegmentCode(name, sct("AnatomicalStructure"), Code(value, "99MEDAGENT", name[:64]))


def medagent_version() -> str:
    try:
        return importlib.metadata.version("medagent")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def on_source_grid(labels: np.ndarray, affine: np.ndarray, volume: Volume) -> np.ndarray:
    """The label map as DICOM frames (slice, row, column), slice k the instance `volume.source_files[k]`.

    A mask lies on the source grid with its axes permuted or flipped (ct_quant works in RAS, nibabel's
    closest canonical; a MONAI bundle's output is inverted to the input grid). The transform between the two
    grids' axis codes undoes that exactly, without resampling; the affine it yields must equal the source
    volume's, which proves the voxels now sit where the source pixels are. medio's source grid is
    (i = column, j = row, k = slice in source_files order), so a final transpose gives DICOM's frame order.
    """
    from nibabel import orientations

    transform = orientations.ornt_transform(
        orientations.io_orientation(affine), orientations.io_orientation(volume.affine)
    )
    grid = orientations.apply_orientation(labels, transform)
    moved = affine @ orientations.inv_ornt_aff(transform, labels.shape)
    if grid.shape != volume.voxels.shape or not np.allclose(moved, volume.affine, atol=1e-3):
        raise SegNotWritten(
            f"no DICOM SEG written: the mask ({labels.shape} voxels) is not on the source images' grid "
            f"({volume.voxels.shape}), so its frames would not match the source instances"
        )
    return np.ascontiguousarray(grid.transpose(2, 1, 0))


def _source_headers(files: list[Path]) -> list[Dataset]:
    """Each source instance's header reduced to what a SEG needs (see _KEPT), in the volume's slice order."""
    import pydicom
    from pydicom.dataset import Dataset

    headers: list[Dataset] = []
    for file in files:
        try:
            source = pydicom.dcmread(str(file), stop_before_pixels=True)
        except (OSError, ValueError, EOFError, pydicom.errors.InvalidDicomError) as exc:
            raise SegNotWritten(
                f"no DICOM SEG written: {file.name} cannot be read again ({exc.__class__.__name__})"
            ) from exc
        header = Dataset()
        for keyword in _KEPT:
            if keyword in source:
                setattr(header, keyword, source.data_element(keyword).value)
        # A Part 10 file states its SOP class and instance in its meta header too, and the two must agree
        # (PS3.10 7.1); anonymisers that blank the dataset's copies leave these, so they stand in.
        meta = getattr(source, "file_meta", None)
        if meta is not None:
            if not header.get("SOPInstanceUID") and meta.get("MediaStorageSOPInstanceUID"):
                header.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            if not header.get("SOPClassUID") and meta.get("MediaStorageSOPClassUID"):
                header.SOPClassUID = meta.MediaStorageSOPClassUID
        for keyword in _EMPTY:
            setattr(header, keyword, "")
        missing = [keyword for keyword in _REFERENCED if not str(header.get(keyword, "") or "")]
        if missing:
            raise SegNotWritten(
                f"no DICOM SEG written: the source instances have no {', '.join(missing)} "
                "(blanked, e.g. by anonymisation), which a SEG must reference"
            )
        headers.append(header)
    return headers


def write_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    volume: Volume,
    segments: dict[int, SegmentCode],
    path: Path,
    *,
    tool: str,
    algorithm: tuple[str, str, str],
) -> str:
    """Write `labels` (values: the keys of `segments`) as a DICOM SEG at `path`; returns the evidence's line.

    `algorithm` is (name, version, family keyword in pydicom's CID 7162, e.g. "ArtificialIntelligence").
    Raises SegNotWritten with a one-line reason when no SEG can be written; nothing is left at `path` then.
    """
    if volume.source_format != "dicom" or not volume.source_files:
        raise SegNotWritten(NOT_DICOM)
    frames = on_source_grid(labels, affine, volume)
    headers = _source_headers(volume.source_files)
    import highdicom as hd
    from pydicom.sr.codedict import codes

    # Segment numbers run 1..n in label order (a bundle may number its labels with gaps); a label-map style
    # array keeps memory at one byte per voxel, where stacked binary masks would take one per label.
    values = sorted(segments)
    numbered = np.zeros(frames.shape, dtype=np.uint16 if len(values) > 255 else np.uint8)
    for number, value in enumerate(values, start=1):
        numbered[frames == value] = number
    name, version, family = algorithm
    software = f"medagent {medagent_version()}"
    try:
        descriptions = [
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=segments[value].label[:64],
                segmented_property_category=segments[value].category,
                segmented_property_type=segments[value].type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=hd.AlgorithmIdentificationSequence(
                    name=name[:64], family=getattr(codes.cid7162, family), version=version[:64], source="medagent"
                ),
            )
            for number, value in enumerate(values, start=1)
        ]
        seg = hd.seg.Segmentation(
            source_images=headers,
            pixel_array=numbered,  # frame k <-> headers[k]: both in the volume's slice order
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=9000,  # far above a scanner's own series numbers, so the SEG is easy to tell apart
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medagent",
            manufacturer_model_name=f"medagent {tool}"[:64],
            software_versions=software[:64],
            device_serial_number=software[:64],
            series_description=f"medagent {tool.split('.')[-1]}: {RESEARCH_NOTICE}"[:64],
            content_description=f"{tool} masks, {RESEARCH_NOTICE}"[:64],
            content_label=tool.split(".")[-1].upper().replace("-", "_")[:16],
        )
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise SegNotWritten(
            f"no DICOM SEG written: highdicom refused the source instances ({exc.__class__.__name__}: {detail})"
        ) from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(str(path))
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise SegNotWritten(f"no DICOM SEG written: {path.name} could not be saved ({exc.strerror or exc})") from exc
    present = sorted({int(v) for v in np.unique(numbered)} - {0})
    return (
        f"DICOM SEG written: {path.name}, {len(values)} segments ({len(present)} with voxels) on "
        f"{len(headers)} source instances of the series"
    )
