"""Zero-shot classification of a pathology image with a loaded KEP model.

Text side: each label's prompts (templates x synonyms) are embedded, normalised, averaged and
re-normalised. Image side: a patch-sized image is one crop; a larger one is tiled (preprocess.py),
every tile scored against the labels, and the image's logits are the mean of each label's top-k
tile logits (MI-Zero's top-k pooling, as KEP's slide-level evaluation uses). The tiles that most
support the winning label are returned as images so a caller can keep them as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from medagent.specialists.pathology.labels import LabelSet
from medagent.specialists.pathology.load import LoadedKEP
from medagent.specialists.pathology.preprocess import (
    Tile,
    TilingOptions,
    kep_transform,
    needs_tiling,
    open_rgb,
    plan_tiles,
)


@dataclass
class TileResult:
    box: tuple[int, int, int, int]
    tissue: float
    probabilities: list[float]
    image: Image.Image | None = None


@dataclass
class Classification:
    labels: list[str]
    probabilities: list[float]  # aligned with labels, in label-set order
    image_size: tuple[int, int]
    tiled: bool
    grid_tiles: int
    tiles_scored: int
    top_tiles: list[TileResult] = field(default_factory=list)

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(zip(self.labels, self.probabilities, strict=True), key=lambda pair: -pair[1])


class KEPClassifier:
    """Wraps a loaded model; caches label embeddings by label set."""

    def __init__(self, loaded: LoadedKEP, device: str = "cpu", topk_pool: int = 5) -> None:
        self.loaded = loaded
        self.device = device
        self.topk_pool = topk_pool
        self.transform = kep_transform(loaded.config.image_size, loaded.config.variant)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    @torch.inference_mode()
    def label_embeddings(self, label_set: LabelSet) -> torch.Tensor:
        key = (tuple(label_set.labels), label_set.templates)
        if key not in self._text_cache:
            tokenizer, model = self.loaded.tokenizer, self.loaded.model
            rows = []
            for prompts in label_set.prompts():
                # Padding length does not change the masked BERT's output, so pad to the longest prompt.
                batch = tokenizer(
                    prompts,
                    padding=True,
                    truncation=True,
                    max_length=self.loaded.config.max_text_length,
                    return_tensors="pt",
                )
                features = model.encode_text(
                    batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
                )
                rows.append(F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1))
            self._text_cache[key] = torch.stack(rows)
        return self._text_cache[key]

    @torch.inference_mode()
    def tile_logits(self, crops: list[Image.Image], text: torch.Tensor) -> torch.Tensor:
        pixels = torch.stack([self.transform(crop) for crop in crops]).to(self.device)
        image = F.normalize(self.loaded.model.encode_image(pixels), dim=-1)
        return self.loaded.model.logit_scale.exp() * image @ text.T

    def classify(
        self, image: Image.Image | Path, label_set: LabelSet, tiling: TilingOptions | None = None, top_tiles: int = 3
    ) -> Classification:
        tiling = tiling or TilingOptions()
        if not isinstance(image, Image.Image):
            image = open_rgb(Path(image), tiling.max_pixels)
        text = self.label_embeddings(label_set)
        if not needs_tiling(image.size, tiling.tile_size):
            tiles, grid = [Tile((0, 0, *image.size), 1.0)], 1
        else:
            tiles, grid = plan_tiles(image, tiling)
        logits = []
        for start in range(0, len(tiles), tiling.batch_size):
            chunk = tiles[start : start + tiling.batch_size]
            logits.append(self.tile_logits([image.crop(t.box) for t in chunk], text))
        tile_logits = torch.cat(logits).float()
        k = min(self.topk_pool, len(tiles))
        pooled = tile_logits.topk(k, dim=0).values.mean(dim=0)
        probabilities = pooled.softmax(dim=-1)
        tile_probs = tile_logits.softmax(dim=-1)
        winner = int(probabilities.argmax())
        order = tile_probs[:, winner].argsort(descending=True)[:top_tiles].tolist()
        kept = [
            TileResult(tiles[i].box, tiles[i].tissue, tile_probs[i].tolist(), image.crop(tiles[i].box)) for i in order
        ]
        return Classification(
            labels=label_set.names,
            probabilities=probabilities.tolist(),
            image_size=image.size,
            tiled=grid > 1 or tiles[0].box != (0, 0, *image.size),
            grid_tiles=grid,
            tiles_scored=len(tiles),
            top_tiles=kept,
        )
