"""2D pictures for PMC-CLIP, and the similar-image index of a folder (`medagent index images DIR`, imaging.similar).

`read_picture` turns a PNG/JPEG/TIFF or a single-frame DICOM into 8-bit RGB; a DICOM series folder or a
multi-slice file is refused as 3D. The index of a folder lives under the cache root,
`<cache>/pmcclip/images-v1/<key>/` (key: the folder's resolved path and the weights file), never in the folder:
`manifest.json` (each file's path, SHA-256 of its bytes, caption and label) and `vectors.npy` (one L2-normalised
PMC-CLIP embedding per distinct content hash); the search itself is a faiss inner-product index built from those
vectors when loaded. Any file added, changed or removed (by content hash), a new caption file, or other weights
make the next use rebuild it and say what changed; unchanged contents keep their vectors.

Captions and labels come from a sidecar in the folder, if present: `captions.jsonl` (one object a line with
`file` and `caption` and/or `label`) or `captions.csv` (a header row with `file` and `caption` and/or `label`).
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medagent.tools.errors import CaseError, MedagentError

INDEX_VERSION = "images-v1"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm")
SIDECARS = ("captions.jsonl", "captions.csv")
MAX_IMAGES = 200_000


class ImageIndexError(MedagentError):
    """A folder that cannot be indexed (missing, empty, a bad caption file)."""


def read_picture(path: Path, fmt: str | None = None) -> Any:
    """A 2D picture as an 8-bit RGB PIL image; one clear CaseError for 3D input or an unreadable file."""
    from medagent.specialists.pmcclip.preprocess import to_rgb
    from medagent.tools.medio import read_dicom_series, read_image, sniff

    if path.is_dir():
        raise CaseError(
            f"{path}: a DICOM folder is a 3D series; PMC-CLIP reads one 2D picture (attach a single slice or key image)"
        )
    fmt = fmt or sniff(path).format
    if fmt == "dicom":
        volume = read_dicom_series(path)
        if volume.voxels.shape[2] != 1:
            raise CaseError(f"{path}: {volume.voxels.shape[2]} slices is a 3D volume; PMC-CLIP reads one 2D picture")
        pixels = volume.voxels[:, :, 0].T  # medio's (column, row) back to (row, column)
    elif fmt in ("png", "jpeg", "tiff"):
        pixels = read_image(path)
    else:
        raise CaseError(f"{path}: {fmt} is not a 2D picture (PNG, JPEG, TIFF or a single DICOM image expected)")
    try:
        return to_rgb(pixels)
    except ValueError as exc:
        raise CaseError(f"{path}: {exc}") from exc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Entry:
    file: str  # relative to the folder, with '/'
    sha256: str
    caption: str | None = None
    label: str | None = None


def read_sidecar(folder: Path) -> dict[str, dict[str, str]]:
    """file -> {caption, label} from captions.jsonl or captions.csv; a bad line is one clear error."""
    found = [folder / name for name in SIDECARS if (folder / name).is_file()]
    if not found:
        return {}
    if len(found) > 1:
        raise ImageIndexError(f"{folder}: both captions.jsonl and captions.csv; keep one")
    sidecar = found[0]
    rows: list[dict[str, Any]] = []
    try:
        text = sidecar.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImageIndexError(f"{sidecar}: unreadable ({exc})") from exc
    if sidecar.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ImageIndexError(f"{sidecar} line {number}: not JSON ({exc})") from exc
            if not isinstance(row, dict):
                raise ImageIndexError(f"{sidecar} line {number}: expected an object with 'file' and 'caption' or 'label'")
            rows.append({**row, "_line": number})
    else:
        reader = csv.DictReader(text.splitlines())
        if "file" not in (reader.fieldnames or []):
            raise ImageIndexError(f"{sidecar}: the header row needs a 'file' column (and 'caption' and/or 'label')")
        rows = [{**row, "_line": number} for number, row in enumerate(reader, start=2)]
    sidecar_map: dict[str, dict[str, str]] = {}
    for row in rows:
        name = row.get("file")
        if not isinstance(name, str) or not name.strip():
            raise ImageIndexError(f"{sidecar} line {row['_line']}: no 'file'")
        values = {k: str(row[k]).strip() for k in ("caption", "label") if isinstance(row.get(k), str | int | float)}
        sidecar_map[name.strip().replace("\\", "/")] = {k: v for k, v in values.items() if v}
    return sidecar_map


def scan(folder: Path) -> list[Entry]:
    """The folder's pictures (recursively, hidden files skipped), sorted, each with its content hash and caption."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ImageIndexError(f"{folder}: no such folder of images")
    files = sorted(
        p for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise ImageIndexError(f"{folder}: no images ({', '.join(PICTURE_SUFFIXES)}) to index")
    if len(files) > MAX_IMAGES:
        raise ImageIndexError(f"{folder}: {len(files):,} images is more than the {MAX_IMAGES:,} one index holds")
    sidecar = read_sidecar(folder)
    entries = []
    for path in files:
        name = path.relative_to(folder).as_posix()
        extra = sidecar.get(name, {})
        entries.append(Entry(name, sha256(path), extra.get("caption"), extra.get("label")))
    return entries


def index_dir(cache_root: Path, folder: Path, weights: Path) -> Path:
    key = hashlib.sha256(f"{Path(folder).expanduser().resolve()}\n{Path(weights).resolve()}".encode()).hexdigest()[:16]
    return Path(cache_root) / "pmcclip" / INDEX_VERSION / key


def _weights_id(weights: Path) -> dict[str, Any]:
    stat = Path(weights).stat()
    return {"path": str(Path(weights).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@dataclass
class ImageIndex:
    folder: Path
    where: Path
    entries: list[Entry]
    vectors: np.ndarray  # one row per entry, L2-normalised
    note: str  # what happened: reused, built, rebuilt (and why)
    embedded: int = 0  # images encoded this time
    _faiss: Any = field(default=None, repr=False)

    def search(self, query: np.ndarray, k: int) -> list[tuple[Entry, float]]:
        import faiss

        if self._faiss is None:
            self._faiss = faiss.IndexFlatIP(self.vectors.shape[1])
            self._faiss.add(np.ascontiguousarray(self.vectors, dtype=np.float32))
        scores, rows = self._faiss.search(np.ascontiguousarray(query.reshape(1, -1), dtype=np.float32), min(k, len(self.entries)))
        return [(self.entries[int(r)], float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _changes(old: list[Entry], new: list[Entry]) -> list[str]:
    before, after = {e.file: e for e in old}, {e.file: e for e in new}
    added = [f for f in after if f not in before]
    removed = [f for f in before if f not in after]
    changed = [f for f in after if f in before and after[f].sha256 != before[f].sha256]
    relabelled = [f for f in after if f in before and f not in changed
                  and (after[f].caption, after[f].label) != (before[f].caption, before[f].label)]
    parts = []
    for what, files in (("added", added), ("changed", changed), ("removed", removed), ("with new captions", relabelled)):
        if files:
            shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
            parts.append(f"{len(files)} {what} ({shown})")
    return parts


def open_index(folder: Path, cache_root: Path, weights: Path, embed: Any, read: Any = read_picture) -> ImageIndex:
    """The folder's index, rebuilt first when its files, captions or the weights changed.

    `embed(list of PIL images) -> (n, d) array` encodes pictures (PMCCLIPEncoder.embed_images).
    """
    folder = Path(folder).expanduser()
    entries = scan(folder)
    where = index_dir(cache_root, folder, weights)
    manifest_file, vectors_file = where / "manifest.json", where / "vectors.npy"
    old_entries: list[Entry] = []
    old_vectors: dict[str, np.ndarray] = {}
    reason = "built: no index of this folder yet"
    if manifest_file.is_file() and vectors_file.is_file():
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
            stored = np.load(vectors_file)
            old_entries = [Entry(**e) for e in manifest["entries"]]
            old_vectors = dict(zip(manifest["hashes"], stored, strict=True))
            same_weights = manifest.get("weights") == _weights_id(weights)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason, same_weights, old_vectors = f"rebuilt: the stored index was unreadable ({exc.__class__.__name__})", True, {}
        else:
            changes = _changes(old_entries, entries)
            if not changes and same_weights:
                vectors = np.stack([old_vectors[e.sha256] for e in entries])
                return ImageIndex(folder, where, entries, vectors, f"reused: {_count(len(entries), 'image')} unchanged")
            if not same_weights:
                old_vectors = {}
                changes.insert(0, "the PMC-CLIP weights changed")
            reason = "rebuilt: " + "; ".join(changes)
    todo = [e for e in dict((e.sha256, e) for e in entries).values() if e.sha256 not in old_vectors]
    fresh = {}
    for start in range(0, len(todo), 64):  # pictures decoded a batch at a time: memory stays bounded
        chunk = todo[start : start + 64]
        rows = embed([read(folder / e.file) for e in chunk])
        fresh.update({e.sha256: row for e, row in zip(chunk, rows, strict=True)})
    table = {**old_vectors, **fresh}
    hashes = list(dict.fromkeys(e.sha256 for e in entries))
    where.mkdir(parents=True, exist_ok=True)
    tmp_vectors, tmp_manifest = where / "vectors.tmp.npy", where / "manifest.tmp.json"
    np.save(tmp_vectors, np.stack([table[h] for h in hashes]).astype(np.float32))
    manifest = {
        "version": INDEX_VERSION,
        "folder": str(folder.resolve()),
        "weights": _weights_id(weights),
        "hashes": hashes,
        "entries": [e.__dict__ for e in entries],
    }
    tmp_manifest.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    tmp_vectors.replace(vectors_file)
    tmp_manifest.replace(manifest_file)
    vectors = np.stack([table[e.sha256] for e in entries])
    reused = len([e for e in entries if e.sha256 not in fresh])
    note = f"{reason}; {_count(len(fresh), 'image')} encoded, {reused} reused"
    return ImageIndex(folder, where, entries, vectors, note, embedded=len(fresh))
