"""Medical file I/O: what a file is, and reading DICOM series, NIfTI, 2D images and audio.

Only pydicom, nibabel, Pillow, soundfile and numpy are used here, so intake can validate input
before anything heavy (torch) is imported. Volumes come back as `Volume`: a numpy array indexed
(i, j, k) with a RAS+ affine in millimetres, Hounsfield units for CT.
"""

from __future__ import annotations

import gzip
import re
import struct
import warnings
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medagent.tools.errors import CaseError
from medagent.tools.safeio import MB, Limits, check_path, current, terminal_safe

# DICOM header fields that describe the acquisition and are safe to report. Anything else
# (names, ids, dates, institutions, free-text descriptions) never leaves this module.
SAFE_DICOM_TAGS = (
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "KVP",
    "XRayTubeCurrent",
    "ConvolutionKernel",
    "SliceThickness",
    "MagneticFieldStrength",
    "RepetitionTime",
    "EchoTime",
    "ScanningSequence",
    "PhotometricInterpretation",
    "BitsStored",
)

# The free-text ones among them are screened before they are copied (a site may type anything there, a
# name included): code strings (VR CS) must be what DICOM allows in one, the others short plain words with
# no name separator '^', no '@' and no long digit run (dates, record numbers). Failing tags are withheld.
CODE_STRING_TAGS = {"Modality", "BodyPartExamined", "ScanningSequence", "PhotometricInterpretation"}
FREE_TEXT_LENGTH = {"Manufacturer": 64, "ManufacturerModelName": 64, "ConvolutionKernel": 16}
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
_PLAIN_WORDS = re.compile(r"[A-Za-z0-9 _.,:;()/+&-]+")
_DIGIT_RUN = re.compile(r"[0-9]{6,}")

IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg", b"II*\x00": "tiff", b"MM\x00*": "tiff"}


@dataclass
class FileInfo:
    """The answer to 'what is this file' at intake."""

    path: Path
    format: str  # dicom | nifti | png | jpeg | tiff | wav | flac | text | pdf
    kind_hint: str  # image | volume | audio | document
    modality: str | None = None
    series_uid: str | None = None
    files: int = 1
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Volume:
    """A 3D scan: voxel array (i, j, k), RAS+ affine (mm), and safe acquisition metadata."""

    voxels: np.ndarray
    affine: np.ndarray
    modality: str | None
    source_format: str
    metadata: dict[str, Any] = field(default_factory=dict)
    units: str = "intensity"  # "HU" for CT with a rescale applied
    # A DICOM series' files in voxel order (source_files[k] holds slice k); empty for other formats. Kept so a
    # mask can be written back as DICOM SEG referencing these instances; never copied into outputs.
    source_files: list[Path] = field(default_factory=list)

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        import nibabel as nib

        return "".join(nib.aff2axcodes(self.affine))


def _read_head(path: Path, size: int = 512) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError as exc:
        raise CaseError(f"{path}: cannot be read ({exc.strerror or exc.__class__.__name__})") from exc


def _is_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def sniff(path: Path) -> FileInfo:
    """Identify a file or folder by content (not just its name). Raises CaseError when unreadable."""
    check_path(path)  # a FIFO would block the read below for ever; a device is no document
    if path.is_dir():
        return _sniff_dicom_folder(path)
    head = _read_head(path)
    if not head:
        raise CaseError(f"{path}: file is empty")
    if _is_dicom(head):
        ds = _dcmread(path, stop_before_pixels=True)
        return FileInfo(path, "dicom", "image", modality=_modality(ds), series_uid=str(ds.get("SeriesInstanceUID", "")) or None)
    name = path.name.lower()
    if head[:2] == b"\x1f\x8b" and name.endswith((".nii.gz", ".nii")) or name.endswith(".nii") and _nifti_magic(head):
        return FileInfo(path, "nifti", "volume")
    if head[:2] == b"\x1f\x8b" and name.endswith(".gz"):
        raise CaseError(f"{path}: a gzip file that is not named .nii.gz; only NIfTI volumes are read compressed")
    for magic, fmt in IMAGE_MAGIC.items():
        if head.startswith(magic):
            return FileInfo(path, fmt, "image")
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return FileInfo(path, "wav", "audio")
    if head[:4] == b"fLaC":
        return FileInfo(path, "flac", "audio")
    if head[:4] == b"%PDF":
        return FileInfo(path, "pdf", "document")
    if name.endswith((".txt", ".md")):
        return FileInfo(path, "text", "document")
    if name.endswith((".mp3", ".m4a", ".ogg", ".aac", ".wma", ".webm")):
        raise CaseError(f"{path}: {path.suffix} audio needs ffmpeg to decode; convert it to WAV or FLAC first")
    raise CaseError(f"{path}: unrecognised file format (expected DICOM, NIfTI, PNG/JPEG/TIFF, WAV/FLAC, text or PDF)")


def _nifti_magic(head: bytes) -> bool:
    """NIfTI-1 keeps its magic at byte 344, NIfTI-2 at byte 4."""
    return len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00") or head[4:8] in (b"n+2\x00", b"ni2\x00")


def _dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError, TypeError) as exc:
        raise CaseError(f"{path}: unreadable DICOM ({exc.__class__.__name__}: {exc})") from exc


def _modality(ds: Any) -> str | None:
    value = ds.get("Modality")
    return str(value).upper() if value else None


def _dicom_series(folder: Path) -> dict[str, list[tuple[Path, Any]]]:
    series: dict[str, list[tuple[Path, Any]]] = defaultdict(list)
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())  # is_file: regular files only, never a FIFO
    except OSError as exc:
        raise CaseError(f"{folder}: folder cannot be read ({exc.strerror or exc.__class__.__name__})") from exc
    for file in files:
        head = _read_head(file, 132)
        if not _is_dicom(head):
            continue
        ds = _dcmread(file, stop_before_pixels=True)
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((file, ds))
    return series


def _sniff_dicom_folder(folder: Path) -> FileInfo:
    series = _dicom_series(folder)
    if not series:
        raise CaseError(f"{folder}: folder holds no DICOM files")
    if len(series) > 1:
        listing = "; ".join(
            f"{uid} ({len(files)} files, {_modality(files[0][1]) or '?'})" for uid, files in sorted(series.items())
        )
        raise CaseError(f"{folder}: folder holds {len(series)} DICOM series: {listing}; set the attachment's series_uid to pick one")
    uid, files = next(iter(series.items()))
    return FileInfo(folder, "dicom", "volume", modality=_modality(files[0][1]), series_uid=uid, files=len(files))


def sniff_series(folder: Path, series_uid: str) -> FileInfo:
    """One named series of a DICOM folder (headers read once)."""
    series = _dicom_series(folder)
    if series_uid not in series:
        found = ", ".join(sorted(series)) or "none"
        raise CaseError(f"no DICOM series {series_uid} in {folder} (found: {found})")
    files = series[series_uid]
    return FileInfo(folder, "dicom", "volume", modality=_modality(files[0][1]), series_uid=series_uid, files=len(files))


def safe_metadata(ds: Any) -> dict[str, Any]:
    """Acquisition facts from a DICOM header; never identifiers."""
    metadata: dict[str, Any] = {}
    withheld = []
    for tag in SAFE_DICOM_TAGS:
        value = ds.get(tag)
        if value is None or value == "":
            continue
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes)):
            value = [float(v) if _numeric(v) else str(v) for v in value]
        elif _numeric(value):
            value = float(value)
        else:
            value = str(value)
        if not _plain_tag_value(tag, value):
            withheld.append(tag)
            continue
        metadata[tag] = value
    if withheld:
        metadata["withheld_tags"] = withheld  # named, never copied: they were not plain acquisition words
    return metadata


def _plain_tag_value(tag: str, value: Any) -> bool:
    """Whether a safe tag's value may be copied: numbers always, text only as a code string or plain words."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, float):
            if not np.isfinite(item):
                return False
            continue
        text = item.strip()
        if tag in CODE_STRING_TAGS or tag not in FREE_TEXT_LENGTH:
            if not _CODE_STRING.fullmatch(text):
                return False
        elif len(text) > FREE_TEXT_LENGTH[tag] or not _PLAIN_WORDS.fullmatch(text) or _DIGIT_RUN.search(text):
            return False
    return True


def _numeric(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return not isinstance(value, str) or value.replace(".", "", 1).lstrip("-").isdigit()


def read_dicom_series(path: Path, series_uid: str | None = None) -> Volume:
    """A DICOM folder (one series, or the one named) or a single DICOM file, as a Volume."""
    if path.is_dir():
        series = _dicom_series(path)
        if not series:
            raise CaseError(f"{path}: folder holds no DICOM files")
        if series_uid is not None:
            if series_uid not in series:
                raise CaseError(f"{path}: no series with UID {series_uid}; found {', '.join(sorted(series))}")
            files = series[series_uid]
        elif len(series) == 1:
            files = next(iter(series.values()))
        else:
            _sniff_dicom_folder(path)  # raises with the listing
            raise AssertionError
    else:
        files = [(path, _dcmread(path, stop_before_pixels=True))]

    first = files[0][1]
    row_cos, col_cos = _direction_cosines(first)
    normal = np.cross(row_cos, col_cos)

    def position(item: tuple[Path, Any]) -> float:
        ipp = item[1].get("ImagePositionPatient")
        return float(np.dot(normal, [float(v) for v in ipp])) if ipp is not None else float(item[1].get("InstanceNumber", 0))

    files = sorted(files, key=position)
    first = files[0][1]
    _check_budget(path, (int(first.get("Columns", 0) or 0), int(first.get("Rows", 0) or 0), len(files)), "DICOM series")
    slices = []
    for file, _ in files:
        ds = _dcmread(file)
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # pydicom raises many types for undecodable pixel data
            raise CaseError(f"{file}: DICOM pixel data cannot be decoded ({exc.__class__.__name__}: {exc})") from exc
        if pixels.ndim != 2:
            raise CaseError(f"{file}: expected one 2D frame per file, found pixel array of shape {pixels.shape}")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        slices.append(pixels.astype(np.float32) * slope + intercept)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise CaseError(f"{path}: slices of different sizes in one series: {sorted(shapes)}")
    # (rows, cols, k) -> (i=col index, j=row index, k)
    voxels = np.stack(slices, axis=-1).transpose(1, 0, 2)

    spacing_rc = first.get("PixelSpacing")
    if spacing_rc is None:
        raise CaseError(f"{files[0][0]}: DICOM has no PixelSpacing; cannot measure anything in millimetres")
    row_spacing, col_spacing = float(spacing_rc[0]), float(spacing_rc[1])
    origin = np.array([float(v) for v in first.get("ImagePositionPatient", [0, 0, 0])])
    if len(files) > 1:
        positions = [np.array([float(v) for v in ds.get("ImagePositionPatient", [0, 0, 0])]) for _, ds in files]
        slice_vec = (positions[-1] - positions[0]) / (len(files) - 1)
        if not np.any(slice_vec):
            slice_vec = normal * float(first.get("SliceThickness", 1) or 1)
    else:
        slice_vec = normal * float(first.get("SliceThickness", 1) or 1)
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing
    lps[:3, 1] = col_cos * row_spacing
    lps[:3, 2] = slice_vec
    lps[:3, 3] = origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    modality = _modality(first)
    rescaled = "RescaleIntercept" in first or "RescaleSlope" in first
    metadata = safe_metadata(first)
    metadata["slices"] = len(files)
    return Volume(
        voxels=voxels,
        affine=ras,
        modality=modality,
        source_format="dicom",
        metadata=metadata,
        units="HU" if modality == "CT" and rescaled else "intensity",
        source_files=[file for file, _ in files],
    )


def _direction_cosines(ds: Any) -> tuple[np.ndarray, np.ndarray]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None:
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    values = np.array([float(v) for v in iop])
    return values[:3], values[3:]


def read_nifti(path: Path, modality: str | None = None) -> Volume:
    """A NIfTI volume. NIfTI carries no modality: the case's word is used."""
    import nibabel as nib
    from nibabel.spatialimages import HeaderDataError

    check_nifti_header(path)  # before nibabel allocates anything
    try:
        image = nib.load(str(path))
        voxels = np.asanyarray(image.dataobj)
    except (nib.filebasedimages.ImageFileError, HeaderDataError, OSError, EOFError, ValueError, gzip.BadGzipFile,
            zlib.error, struct.error) as exc:
        raise CaseError(f"{path}: unreadable NIfTI ({exc.__class__.__name__}: {terminal_safe(str(exc))})") from exc
    if voxels.dtype.kind in "fc" and not _any_finite(voxels):
        raise CaseError(f"{path}: NIfTI holds no finite voxel values (all NaN or infinite); nothing can be measured")
    if voxels.ndim == 4 and voxels.shape[3] == 1:
        voxels = voxels[..., 0]
    if voxels.ndim != 3:
        raise CaseError(f"{path}: expected a 3D volume, found shape {voxels.shape}")
    affine = image.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise CaseError(f"{path}: NIfTI affine has no valid voxel spacing ({zooms.tolist()})")
    upper = modality.upper() if modality else None
    return Volume(
        voxels=voxels,
        affine=np.asarray(affine, dtype=float),
        modality=upper,
        source_format="nifti",
        metadata={"slices": int(voxels.shape[2]), "datatype": str(image.get_data_dtype())},
        units="HU" if upper == "CT" else "intensity",
    )


# NIfTI datatype codes and their bytes per voxel (nifti1.h); anything else is refused.
def check_nifti_header(path: Path, limits: Limits | None = None) -> tuple[int, ...]:
    """Read a NIfTI-1/2 header (decompressing only its first bytes) and refuse an implausible one before any
    voxel is read: a dimension count outside 1-7, a dimension below 1, an unknown datatype, more voxels than
    the memory budget (as float32, the dtype tools compute in) or, uncompressed, fewer bytes than promised.
    nibabel parses the header (both versions, either byte order); this only judges what it says."""
    import io

    import nibabel as nib

    compressed = _read_head(path, 2) == b"\x1f\x8b"
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            head = handle.read(nib.Nifti2Header.sizeof_hdr)
    except (OSError, EOFError, zlib.error) as exc:
        raise CaseError(f"{path}: unreadable NIfTI ({exc.__class__.__name__}: {terminal_safe(str(exc))})") from exc
    header = None
    for kind in (nib.Nifti1Header, nib.Nifti2Header):
        if len(head) >= kind.sizeof_hdr:
            candidate = kind.from_fileobj(io.BytesIO(head[: kind.sizeof_hdr]), check=False)
            if int(candidate["sizeof_hdr"]) == kind.sizeof_hdr:  # nibabel guessed the byte order from it
                header = candidate
                break
    if header is None:
        raise CaseError(f"{path}: not a NIfTI-1 or NIfTI-2 header (header size field is neither 348 nor 540)")
    rank = int(header["dim"][0])
    if not 1 <= rank <= 7:
        raise CaseError(f"{path}: NIfTI header gives {rank} dimensions (1-7 are possible)")
    shape = tuple(int(n) for n in header["dim"][1 : rank + 1])
    if any(n < 1 for n in shape):
        raise CaseError(f"{path}: NIfTI header gives a dimension below 1 (shape {shape})")
    try:
        itemsize = header.get_data_dtype().itemsize
    except KeyError as exc:
        raise CaseError(f"{path}: NIfTI header gives an unknown datatype code {int(header['datatype'])}") from exc
    _check_budget(path, shape, "NIfTI header", limits)
    if not compressed:
        try:
            offset = int(header.get_data_offset())
        except (ValueError, OverflowError):  # a NaN or infinite vox_offset: the data would follow the header
            offset = header.sizeof_hdr + 4
        need = max(offset, header.sizeof_hdr) + int(np.prod(shape, dtype=object)) * itemsize
        have = path.stat().st_size
        if have < need:
            raise CaseError(f"{path}: NIfTI file is truncated: its header promises {need:,} bytes, the file holds {have:,}")
    return shape


def _check_budget(path: Path, shape: tuple[int, ...], what: str, limits: Limits | None = None) -> None:
    """Refuse a volume whose voxels, as float32, would not fit the memory budget ([agent] max_volume_mb)."""
    budget = (limits or current()).volume_bytes
    count = 1
    for n in shape:
        count *= max(int(n), 0)
    needed = count * 4
    if needed > budget:
        size = "×".join(str(n) for n in shape)
        raise CaseError(f"{path}: {what} gives {size} voxels ({needed / MB:,.0f} MB as float32), over the memory budget "
                        f"of {budget / MB:,.0f} MB ([agent] max_volume_mb)")


def _any_finite(voxels: np.ndarray) -> bool:
    """Whether any voxel is finite, slice by slice (stops at the first slice that has one; no full-size mask)."""
    flat = voxels.reshape(voxels.shape[0], -1) if voxels.ndim > 1 else voxels.reshape(1, -1)
    return any(bool(np.isfinite(row).any()) for row in flat)


def read_volume(path: Path, fmt: str, modality: str | None = None, series_uid: str | None = None) -> Volume:
    if fmt == "dicom":
        return read_dicom_series(path, series_uid)
    if fmt == "nifti":
        return read_nifti(path, modality)
    raise CaseError(f"{path}: {fmt} is not a volume format")


def read_image(path: Path) -> np.ndarray:
    """A 2D picture as an array (H, W) or (H, W, C)."""
    from PIL import Image

    limit = current().image_pixels
    Image.MAX_IMAGE_PIXELS = limit  # Pillow's own bomb check, at our limit (it warns above it, raises at twice)
    refusal = f"is over the limit of {limit:,} pixels ([agent] max_image_pixels); attach a smaller export of it"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > limit:
                    raise CaseError(f"{path}: {width}×{height} pixels {refusal}")
                image.load()
                return np.asarray(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise CaseError(f"{path}: the image {refusal}") from exc
    except CaseError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types for damaged files (OSError, ValueError, SyntaxError...)
        raise CaseError(f"{path}: unreadable image ({exc.__class__.__name__}: {terminal_safe(str(exc))})") from exc


@dataclass
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    declared_frames: int | None = None  # what a WAV header announces, when it says

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: Path) -> AudioInfo:
    """The header's facts, sanity-checked (sample rate, channels, samples present) before anything is decoded."""
    from medagent.specialists.speech.audio import AudioError, probe

    try:
        facts = probe(path)
    except AudioError as exc:
        raise CaseError(terminal_safe(str(exc))) from exc
    except OSError as exc:
        raise CaseError(f"{path}: unreadable audio ({exc.strerror or exc.__class__.__name__})") from exc
    return AudioInfo(facts.sample_rate, facts.channels, facts.frames, facts.declared_frames)


def validate_attachment(info: FileInfo, series_uid: str | None = None) -> list[str]:
    """Read enough of the file to be sure a tool can use it; raise CaseError otherwise. Returns warnings about
    a file that is usable but not what it says (a WAV cut short)."""
    if info.format == "dicom" and info.path.is_dir():
        if series_uid is None and info.series_uid is None:
            _sniff_dicom_folder(info.path)
        first = next(p for p in sorted(info.path.iterdir()) if p.is_file() and _is_dicom(_read_head(p, 132)))
        _dcmread(first)
    elif info.format == "dicom":
        ds = _dcmread(info.path)
        if "PixelData" not in ds:
            raise CaseError(f"{info.path}: DICOM file holds no pixel data")
    elif info.format == "nifti":
        read_nifti(info.path)
    elif info.format in ("png", "jpeg", "tiff"):
        read_image(info.path)
    elif info.format in ("wav", "flac"):
        audio = audio_info(info.path)
        if audio.declared_frames is not None and audio.declared_frames > audio.frames:
            return [f"{info.path.name}: the WAV header announces {audio.declared_frames / audio.sample_rate:.1f} s of audio "
                    f"but the file holds {audio.seconds:.1f} s (cut short); only that much can be heard"]
    return []
