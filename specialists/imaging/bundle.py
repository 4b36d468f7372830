"""Run any MONAI bundle: network, transforms and inferer from the bundle's own configs, with its weights.

A bundle folder holds `configs/metadata.json`, `configs/inference.json` and `models/model.pt`
(a bare state_dict or `{"model": state_dict}`). The config is read with `monai.bundle.ConfigParser`
(so `_target_`, `@ref` and `$expr` mean what MONAI means by them); `network_def`, `preprocessing`,
`inferer` and `postprocessing` (minus writing files) are instantiated from it, so the bundle's own
sliding window (ROI, batch, overlap, blending) runs and the prediction comes back on the image's grid.

What is trusted in a bundle: a bundle config is code (ConfigParser imports any `_target_` and evals any
`$` expression, and the config's `imports`), so a bundle is trusted as far as the person who listed it
under [imaging] bundles trusts it. The runner limits what it evaluates to the four components above:
never the workflow entries (`initialize`, `run`, `evaluator`, `dataloader`, `checkpointloader`,
`handlers`), which read data sets, write files and unpickle checkpoints; weights are read here with
`torch.load(weights_only=True)` instead, and file writers are dropped from postprocessing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_KEYS = ("network_def", "preprocessing")
# A bundle without an `inferer` gets MONAI's SlidingWindowInferer with this window and MONAI's defaults.
DEFAULT_INFERER = {"_target_": "SlidingWindowInferer", "roi_size": [96, 96, 96]}


class BundleError(ValueError):
    """The bundle folder, its configs or its weights cannot be used (the message says which part)."""


@dataclass
class Bundle:
    """A bundle's parsed config and what its metadata says about inputs and outputs."""

    root: Path
    name: str
    version: str
    parser: Any
    labels: dict[int, str]
    modality: str | None
    image_key: str
    inferer: Any
    roi_size: tuple[int, ...]
    sw_batch_size: int
    overlap: float
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Segmentation:
    """A label map on the input image's own grid, with per-label measurements."""

    labels: np.ndarray
    affine: np.ndarray
    names: dict[int, str]
    volumes_ml: dict[str, float]
    bboxes_mm: dict[str, dict[str, list[float]]]
    seconds: float = 0.0


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise BundleError(f"{path}: missing (a MONAI bundle needs configs/metadata.json and configs/inference.json)")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise BundleError(f"{path}: expected a JSON object")
    return value


def _labels(metadata: dict[str, Any]) -> dict[int, str]:
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    channel_def = pred.get("channel_def", {}) if isinstance(pred, dict) else {}
    labels = {}
    for key, name in channel_def.items():
        try:
            labels[int(key)] = str(name)
        except ValueError:
            continue
    return labels


def load_bundle(root: Path) -> Bundle:
    """Parse a bundle folder. Raises BundleError naming the file or key that is missing."""
    from monai.bundle import ConfigParser
    from monai.inferers import SlidingWindowInferer

    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"{root}: bundle folder not found")
    metadata = _read_json(root / "configs" / "metadata.json")
    inference = root / "configs" / "inference.json"
    _read_json(inference)
    parser = ConfigParser()
    parser.read_config(str(inference))
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser["bundle_root"] = str(root)
    missing = [key for key in REQUIRED_KEYS if key not in parser]
    if missing:
        raise BundleError(f"{inference}: missing config keys {', '.join(missing)}")
    if "inferer" not in parser:
        parser["inferer"] = dict(DEFAULT_INFERER)
    inferer = build_inferer(parser, str(inference))
    inputs = metadata.get("network_data_format", {}).get("inputs", {})
    image_meta = inputs.get("image") or next(iter(inputs.values()), {})
    modality = image_meta.get("modality") if isinstance(image_meta, dict) else None
    labels = _labels(metadata)
    window = isinstance(inferer, SlidingWindowInferer)
    return Bundle(
        root=root,
        name=root.name,
        version=str(metadata.get("version", "unknown")),
        parser=parser,
        labels=labels,
        modality=str(modality).upper() if modality else None,
        image_key=str(parser.get("image_key", "image")),
        inferer=inferer,
        roi_size=tuple(int(v) for v in np.atleast_1d(inferer.roi_size)) if window else (),
        sw_batch_size=int(inferer.sw_batch_size) if window else 1,
        overlap=float(np.max(inferer.overlap)) if window else 0.0,
        metadata=metadata,
    )


def build_inferer(parser: Any, where: str, **overrides: Any) -> Any:
    """The config's `inferer`, instantiated by ConfigParser; `overrides` replace its arguments in a copy."""
    import copy

    from monai.bundle import ConfigParser
    from monai.inferers import Inferer

    if overrides:
        # A copy, so that one call's [imaging] settings do not stay in the bundle's parsed config.
        parser = ConfigParser(copy.deepcopy(parser.get()))
        for key, value in overrides.items():
            parser[f"inferer#{key}"] = value
    try:
        inferer = parser.get_parsed_content("inferer", instantiate=True)
    except Exception as exc:  # a broken config can fail in many ways inside monai
        raise BundleError(f"{where}: inferer cannot be built ({str(exc).splitlines()[0]})") from exc
    if not isinstance(inferer, Inferer):
        raise BundleError(f"{where}: inferer is a {type(inferer).__name__}, not a monai.inferers.Inferer")
    return inferer


def read_state_dict(path: Path) -> dict[str, Any]:
    """models/model.pt as a state_dict, whether saved bare or as {"model": state_dict}."""
    import torch

    if not path.is_file():
        raise BundleError(f"{path}: weights file missing")
    try:
        saved = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise BundleError(f"{path}: cannot be read as PyTorch weights ({exc.__class__.__name__}: {exc})") from exc
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict):
        saved = saved["model"]
    if not isinstance(saved, dict) or not all(isinstance(k, str) for k in saved):
        raise BundleError(f"{path}: expected a state_dict or {{'model': state_dict}}, found {type(saved).__name__}")
    # Weights saved from a DistributedDataParallel wrapper carry a 'module.' prefix.
    if saved and all(k.startswith("module.") for k in saved):
        saved = {k[len("module.") :]: v for k, v in saved.items()}
    return saved


def check_state_dict(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str) -> None:
    """Raise BundleError naming missing, unexpected and mis-shaped keys (a few of each)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {list(found[k])} != {list(expected[k])}"
        for k in expected
        if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    problems = []
    for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        raise BundleError(f"{where}: weights do not match the bundle's network_def; " + "; ".join(problems))


def build_network(bundle: Bundle, weights: Path | None = None, device: str = "cpu") -> Any:
    """network_def from the config, with models/model.pt (or `weights`) loaded into it, in eval mode."""
    try:
        network = bundle.parser.get_parsed_content("network_def", instantiate=True)
    except Exception as exc:  # a broken config can fail in many ways inside monai
        raise BundleError(f"{bundle.root}/configs/inference.json: network_def cannot be built ({exc})") from exc
    path = weights or bundle.root / "models" / "model.pt"
    state = read_state_dict(path)
    expected = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    check_state_dict(expected, {k: tuple(getattr(v, "shape", ())) for k, v in state.items()}, str(path))
    network.load_state_dict(state)
    return network.to(device).eval()


def _postprocessing(bundle: Bundle, preprocessing: Any) -> Any:
    """The bundle's postprocessing without file writers; an inversion to the input grid guaranteed."""
    from monai.transforms import AsDiscreted, Compose, Invertd

    steps = []
    if "postprocessing" in bundle.parser:
        parsed = bundle.parser.get_parsed_content("postprocessing", instantiate=True)
        steps = [t for t in getattr(parsed, "transforms", [parsed]) if not type(t).__name__.startswith("SaveImage")]
    if not any(isinstance(t, Invertd) for t in steps):
        steps.append(Invertd(keys="pred", transform=preprocessing, orig_keys=bundle.image_key, nearest_interp=False))
    if not any(isinstance(t, AsDiscreted) for t in steps):
        steps.append(AsDiscreted(keys="pred", argmax=True))
    return Compose(steps)


def estimate_output_gb(
    shape: tuple[int, ...], spacing: tuple[float, ...], pixdim: tuple[float, ...] | None, channels: int
) -> float:
    """Size of the float32 probability volume that sliding-window stitching holds, in GB."""
    if pixdim:
        shape = tuple(int(np.ceil(n * s / p)) for n, s, p in zip(shape, spacing, pixdim, strict=False))
    return float(np.prod(shape)) * max(channels, 1) * 4 / 1e9


def target_spacing(bundle: Bundle) -> tuple[float, ...] | None:
    """The pixdim of the bundle's Spacingd step, if it has one (for the memory estimate)."""
    for step in bundle.parser.get("preprocessing", {}).get("transforms", []):
        if isinstance(step, dict) and str(step.get("_target_", "")).endswith("Spacingd"):
            pixdim = step.get("pixdim")
            if isinstance(pixdim, (list, tuple)) and all(isinstance(v, (int, float)) for v in pixdim):
                return tuple(float(v) for v in pixdim)
    return None


def segment(
    bundle: Bundle,
    image_path: Path,
    network: Any,
    device: str = "cpu",
    roi_size: tuple[int, ...] | None = None,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
    amp: bool = True,
) -> Segmentation:
    """Segment one image file (NIfTI or DICOM folder MONAI can load) and measure each label on its grid.

    The bundle's own inferer runs; `roi_size`, `sw_batch_size` and `overlap`, where given, replace those
    arguments of its SlidingWindowInferer (everything else it says, such as the blending mode, stays).
    """
    import time

    import torch
    from monai.inferers import SlidingWindowInferer

    start = time.perf_counter()
    overrides = {
        name: value
        for name, value in (
            ("roi_size", list(roi_size) if roi_size else None),
            ("sw_batch_size", sw_batch_size),
            ("overlap", overlap),
        )
        if value is not None
    }
    inferer = bundle.inferer
    if overrides:
        if not isinstance(inferer, SlidingWindowInferer):
            raise BundleError(
                f"{bundle.root}/configs/inference.json: its inferer is a {type(inferer).__name__}; [imaging] "
                f"{', '.join(overrides)} are settings of a SlidingWindowInferer (unset them for this bundle)"
            )
        inferer = build_inferer(bundle.parser, f"{bundle.root}/configs/inference.json", **overrides)
    preprocessing = bundle.parser.get_parsed_content("preprocessing", instantiate=True)
    try:
        sample = preprocessing({bundle.image_key: str(image_path)})
    except Exception as exc:  # MONAI wraps reader and transform failures in RuntimeError with a trace
        raise BundleError(f"{image_path}: the bundle's preprocessing failed ({str(exc).splitlines()[0]})") from exc
    image = sample[bundle.image_key]
    inputs = image.unsqueeze(0).to(device)
    use_amp = amp and str(device).startswith("cuda")
    with torch.no_grad(), torch.autocast(device_type="cuda", enabled=use_amp):
        logits = inferer(inputs, network)
    sample["pred"] = logits[0].float().cpu()
    sample[bundle.image_key] = image.cpu()
    sample = _postprocessing(bundle, preprocessing)(sample)
    pred = sample["pred"]
    labels = np.asarray(pred.detach().cpu().numpy() if hasattr(pred, "detach") else pred)
    labels = labels[0] if labels.ndim == 4 else labels
    affine = np.asarray(getattr(sample[bundle.image_key], "affine", np.eye(4)), dtype=float)
    original = getattr(sample[bundle.image_key], "meta", {}).get("original_affine")
    if original is not None:
        affine = np.asarray(original, dtype=float)
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int16)
    names = bundle.labels or {int(v): f"label {int(v)}" for v in np.unique(labels)}
    volumes, boxes = measure_labels(labels, affine, names)
    return Segmentation(labels, affine, names, volumes, boxes, seconds=time.perf_counter() - start)


def measure_labels(
    labels: np.ndarray, affine: np.ndarray, names: dict[int, str]
) -> tuple[dict[str, float], dict[str, dict[str, list[float]]]]:
    """Per-label volume in mL and bounding box (voxel index range and RAS mm corners) for non-background labels."""
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    volumes: dict[str, float] = {}
    boxes: dict[str, dict[str, list[float]]] = {}
    for value, name in sorted(names.items()):
        if value == 0:
            continue
        where = np.nonzero(labels == value)
        count = int(where[0].size)
        volumes[name] = round(count * voxel_ml, 2)
        if count:
            lower = [int(w.min()) for w in where]
            upper = [int(w.max()) for w in where]
            corners = np.array([[*lower, 1], [*upper, 1]], dtype=float) @ affine.T
            boxes[name] = {
                "voxel_min": lower,
                "voxel_max": upper,
                "ras_min_mm": [round(float(v), 1) for v in corners[:, :3].min(axis=0)],
                "ras_max_mm": [round(float(v), 1) for v in corners[:, :3].max(axis=0)],
            }
    return volumes, boxes
