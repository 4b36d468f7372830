"""Zero-shot classification and image embeddings with a loaded PMC-CLIP.

Labels: each label's prompts (templates) are embedded, L2-normalised, averaged and re-normalised; an image's
probabilities are the softmax over logit_scale.exp() x cosine similarity (MODELS.md section 4). Image
embeddings are L2-normalised float32 rows, so an inner-product index ranks by cosine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from medagent.specialists.pmcclip.load import LoadedPMCCLIP
from medagent.specialists.pmcclip.preprocess import pmcclip_transform

# PMC-CLIP was trained on figure captions, so plain noun phrases and caption-like sentences.
TEMPLATES = ("{}", "a medical image of {}", "a figure showing {}")


@dataclass
class Classification:
    labels: list[str]
    probabilities: list[float]  # aligned with labels
    logits: list[float]

    def ranked(self) -> list[tuple[str, float]]:
        return sorted(zip(self.labels, self.probabilities, strict=True), key=lambda pair: -pair[1])


class PMCCLIPEncoder:
    """Wraps a loaded model: label embeddings (cached), image embeddings, zero-shot classification."""

    def __init__(self, loaded: LoadedPMCCLIP, device: str = "cpu", batch_size: int = 16) -> None:
        self.loaded = loaded
        self.device = device
        self.batch_size = batch_size
        self.transform = pmcclip_transform(loaded.config.image_size)
        self._text_cache: dict[tuple, torch.Tensor] = {}

    @torch.inference_mode()
    def label_embeddings(self, labels: list[str], templates: tuple[str, ...] = TEMPLATES) -> torch.Tensor:
        key = (tuple(labels), templates)
        if key not in self._text_cache:
            rows = []
            for label in labels:
                batch = self.loaded.tokenizer(
                    [t.format(label) for t in templates],
                    padding=True,
                    truncation=True,
                    max_length=self.loaded.config.context_length,
                    return_tensors="pt",
                )
                features = self.loaded.model.encode_text(
                    batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
                )
                rows.append(F.normalize(F.normalize(features.float(), dim=-1).mean(dim=0), dim=-1))
            self._text_cache[key] = torch.stack(rows)
        return self._text_cache[key]

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        """L2-normalised embed_dim float32 rows, one per image, encoded batch_size at a time."""
        rows = []
        for start in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.transform(im) for im in images[start : start + self.batch_size]])
            features = self.loaded.model.encode_image(pixels.to(self.device)).float()
            rows.append(F.normalize(features, dim=-1).cpu())
        if not rows:
            return np.zeros((0, self.loaded.config.embed_dim), dtype=np.float32)
        return torch.cat(rows).numpy().astype(np.float32)

    @torch.inference_mode()
    def classify(self, image: Image.Image, labels: list[str]) -> Classification:
        if len(labels) < 2:
            raise ValueError("zero-shot classification needs at least two labels to choose between")
        text = self.label_embeddings(labels)
        image_row = torch.from_numpy(self.embed_images([image])).to(text.device)
        logits = (self.loaded.model.logit_scale.exp().float() * image_row @ text.T)[0]
        return Classification(labels=list(labels), probabilities=logits.softmax(-1).tolist(), logits=logits.tolist())
