"""SAT inference as the authors run it: text prompts encoded once, then MONAI's sliding window over the scan.

- The prompts (SAT terms) are encoded once per call with the text tower and the scan's modality
  (`LoadedSAT.queries`); every window is decoded against those same queries.
- `monai.inferers.sliding_window_inference`: windows of 288 x 288 x 96 voxels (the processed 1 x 1 x 3 mm grid),
  50 % overlap (stride = half the window), Gaussian importance weighting (sigma = window / 8, MONAI's
  `sigma_scale=0.125`), a volume smaller than a window zero-padded up to it (MONAI's constant padding); the
  window's logits go through a sigmoid and the weighted probabilities are averaged, then thresholded at 0.5.
- The masks go back to the input grid (`Prepared.to_input_grid`, nearest neighbours).

The authors run under fp16 autocast with a Gaussian of peak 10 stored in fp16; here the arithmetic follows the
loaded weights' dtype, and MONAI normalises the Gaussian (the peak cancels in the weighted average).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from medagent.specialists.sat.load import LoadedSAT
from medagent.specialists.sat.preprocess import Prepared, prepare

WINDOW = (288, 288, 96)
OVERLAP = 0.5
THRESHOLD = 0.5


@dataclass
class SATResult:
    masks: dict[str, np.ndarray]  # term -> bool mask on the input grid
    prepared: Prepared
    window: tuple[int, int, int]
    windows: int  # how many windows the sliding window ran
    padded_from: tuple[int, int, int] | None  # the processed shape, when it was smaller than a window somewhere
    seconds: float
    notes: list[str] = field(default_factory=list)


def window_count(shape: tuple[int, ...], window: tuple[int, ...], overlap: float) -> int:
    """How many windows MONAI's sliding window places on `shape` (after padding up to the window)."""
    count = 1
    for size, win in zip(shape, window, strict=True):
        size = max(size, win)
        stride = max(int(win * (1 - overlap)), 1)
        count *= int(np.ceil((size - win) / stride)) + 1
    return count


def check_window(window: tuple[int, ...], stride: int) -> tuple[int, int, int]:
    window = tuple(int(n) for n in window)
    if len(window) != 3 or any(n <= 0 or n % stride for n in window):
        raise ValueError(f"the SAT window must be 3 sides, each a multiple of {stride} voxels; got {list(window)}")
    return window  # type: ignore[return-value]


@torch.no_grad()
def segment(
    model: LoadedSAT,
    voxels: np.ndarray,
    affine: np.ndarray,
    modality: str,
    terms: list[str],
    window: tuple[int, int, int] = WINDOW,
    overlap: float = OVERLAP,
    sw_batch_size: int = 1,
    device: str = "cpu",
) -> SATResult:
    """Masks of `terms` (SAT's own names) on a scan (`modality`: SAT's code, ct / mri / us / pet)."""
    from monai.inferers import sliding_window_inference

    if not terms:
        raise ValueError("no SAT terms to segment")
    started = time.perf_counter()
    segmenter = model.segmenter
    window = check_window(window, segmenter.config.stride)
    prepared = prepare(voxels, affine, modality)
    dtype = next(segmenter.parameters()).dtype
    queries = model.queries(terms, modality).to(device=device, dtype=dtype)  # encoded once, (N, query_dim)

    def predictor(batch: torch.Tensor) -> torch.Tensor:
        logits = segmenter(batch.to(dtype), queries.unsqueeze(0).expand(batch.shape[0], -1, -1))
        return torch.sigmoid(logits.float())

    image = torch.as_tensor(prepared.image, device=device)[None, None]  # (1, 1, H, W, D); repeated to 3 channels
    shape = tuple(int(n) for n in prepared.image.shape)
    probabilities = sliding_window_inference(
        image,
        roi_size=window,
        sw_batch_size=sw_batch_size,
        predictor=predictor,
        overlap=overlap,
        mode="gaussian",
        sigma_scale=0.125,
        padding_mode="constant",
        cval=0.0,
        sw_device=device,
        device="cpu",
    )
    binary = (probabilities[0] > THRESHOLD).cpu().numpy()  # (N, H, W, D) in the processed grid
    masks = {term: prepared.to_input_grid(binary[i].astype(np.uint8)) > 0 for i, term in enumerate(terms)}
    padded = shape if any(s < w for s, w in zip(shape, window, strict=True)) else None
    notes = []
    if padded is not None:
        short = ", ".join(f"{axis} {s} < {w}" for axis, s, w in zip(("R-L", "A-P", "S-I"), shape, window, strict=True)
                          if s < w)  # fmt: skip
        notes.append(
            f"the processed scan ({'x'.join(map(str, shape))} voxels at 1x1x3 mm) is smaller than one "
            f"{'x'.join(map(str, window))} window ({short}), so it was zero-padded up to the window, as the authors do"
        )
    return SATResult(
        masks=masks,
        prepared=prepared,
        window=window,
        windows=window_count(shape, window, overlap),
        padded_from=padded,
        seconds=time.perf_counter() - started,
        notes=notes,
    )
