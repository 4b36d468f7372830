"""RadDiag inference: sigmoid probabilities per disorder, ranked, each with its ICD-10-CM category."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medagent.specialists.raddiag.labels import Vocabulary, vocabulary
from medagent.specialists.raddiag.load import LoadedRadDiag
from medagent.specialists.raddiag.preprocess import PreparedCase

LATE_COMBINATION = "highest probability over the scans (late fusion scores each scan alone)"


@dataclass(frozen=True)
class Finding:
    column: int
    disorder: str
    icd10: str | None
    probability: float


def probabilities(loaded: LoadedRadDiag, prepared: PreparedCase) -> torch.Tensor:
    """(classes,) sigmoid probabilities of the case; late fusion takes each class's highest over the scans."""
    device = next(loaded.model.parameters()).device
    with torch.inference_mode():
        logits = loaded.model(
            prepared.scans.to(device), prepared.slice_valid.to(device), prepared.modality.to(device)
        )["logits"].float()
    probs = torch.sigmoid(logits)[0]
    return probs.amax(dim=0) if loaded.config.fusion == "late" else probs


def diagnose(loaded: LoadedRadDiag, prepared: PreparedCase, top: int = 5) -> list[Finding]:
    """The `top` disorders by probability (column order breaks ties)."""
    labels: Vocabulary = vocabulary()
    probs = probabilities(loaded, prepared)
    if probs.numel() != len(labels):
        raise ValueError(f"the model has {probs.numel()} outputs but the vocabulary {len(labels)} disorders")
    order = sorted(range(len(labels)), key=lambda i: (-float(probs[i]), i))[:top]
    return [Finding(i, labels.names[i], labels.codes[i], float(probs[i])) for i in order]
