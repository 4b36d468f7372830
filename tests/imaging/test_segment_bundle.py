"""The MONAI bundle path end to end: the real spleen bundle configs, random weights, real CT.

The network is built by monai.bundle's ConfigParser from the bundle's own inference.json; its random
weights are saved in both layouts a bundle may use and checked against the state_dict manifest.
To stay fast on CPU the CT is a crop of the example CT and the sliding-window ROI is small.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medagent.specialists.imaging.bundle import BundleError, build_network, load_bundle, read_state_dict, segment
from medagent.tools.config import ImagingSettings, Settings
from medagent.tools.contracts import Case
from medagent.tools.errors import ToolError
from medagent.tools.imaging import TOOLS, SegmentArgs
from medagent.tools.registry import ToolContext

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "imaging"
EXAMPLES = ROOT / "examples" / "data"
SEGMENT = next(tool for tool in TOOLS if tool.name == "imaging.segment")
ROI = [48, 48, 32]


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real spleen bundle configs with random weights saved as {"model": state_dict}."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("bundles") / "spleen_ct_segmentation"
    shutil.copytree(DATA / "spleen_ct_segmentation", root)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(0)
    network = parser.get_parsed_content("network_def", instantiate=True)
    (root / "models").mkdir()
    torch.save({"model": network.state_dict()}, root / "models" / "model.pt")
    torch.save(network.state_dict(), root / "models" / "bare.pt")
    return root


@pytest.fixture(scope="module")
def ct_crop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40×40×16-voxel piece of the real example CT around the spleen, its affine moved to match."""
    ct = nib.load(str(EXAMPLES / "ct_small.nii.gz"))
    start = np.array([10, 30, 10])
    shift = np.eye(4)
    shift[:3, 3] = start
    crop = np.asarray(ct.dataobj)[10:50, 30:70, 10:26]
    path = tmp_path_factory.mktemp("ct") / "ct_crop.nii.gz"
    nib.save(nib.Nifti1Image(crop, ct.affine @ shift), str(path))
    return path


def test_random_weights_match_the_manifest_in_both_layouts(bundle_dir: Path) -> None:
    manifest = json.loads((DATA / "spleen_unet_state_dict.json").read_text())
    expected = {name: list(shape) for name, shape in manifest["state_dict"].items()}
    for file in ("model.pt", "bare.pt"):
        state = read_state_dict(bundle_dir / "models" / file)
        assert {name: list(value.shape) for name, value in state.items()} == expected
        assert sum(v.numel() for v in state.values()) == manifest["header"]["state_dict_numel_incl_buffers"]


def test_both_layouts_segment_real_ct_on_its_own_grid(bundle_dir: Path, ct_crop: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.labels == {0: "background", 1: "spleen"} and bundle.modality == "CT"
    assert bundle.roi_size == (96, 96, 96)  # the bundle's own; the runs below override it for speed
    results = []
    for file in ("model.pt", "bare.pt"):
        network = build_network(bundle, weights=bundle_dir / "models" / file)
        results.append(segment(bundle, ct_crop, network, roi_size=tuple(ROI), sw_batch_size=4, overlap=0.25))
    first, second = results
    image = nib.load(str(ct_crop))
    # Inverted back to the input's grid: same shape and world position as the CT itself.
    assert first.labels.shape == image.shape
    assert np.allclose(first.affine, image.affine)
    assert set(np.unique(first.labels)) <= {0, 1}
    assert np.array_equal(first.labels, second.labels)  # same weights, either layout
    spleen_voxels = int((first.labels == 1).sum())
    assert first.volumes_ml["spleen"] == pytest.approx(spleen_voxels * 27 / 1000, abs=0.01)
    if spleen_voxels:
        box = first.bboxes_mm["spleen"]
        assert all(lo <= hi for lo, hi in zip(box["ras_min_mm"], box["ras_max_mm"], strict=True))


def _case(tmp_path: Path, source: Path, modality: str) -> Case:
    case_dir = tmp_path / "case"
    case_dir.mkdir(exist_ok=True)
    shutil.copy(source, case_dir / source.name)
    case = Case.model_validate(
        {
            "id": "seg",
            "attachments": [
                {"id": "scan", "kind": "volume", "path": source.name, "modality": modality, "format": "nifti"}
            ],
        }
    )
    return case


def _settings(bundle_dir: Path, **extra: object) -> Settings:
    return Settings(
        imaging=ImagingSettings(
            bundles=[bundle_dir], roi_size=ROI, sw_batch_size=4, overlap=0.25, device="cpu", **extra
        )
    )


def test_segment_tool_writes_label_map_and_picture(bundle_dir: Path, ct_crop: Path, tmp_path: Path) -> None:
    case = _case(tmp_path, ct_crop, "CT")
    ctx = ToolContext(case, tmp_path / "case", tmp_path / "out" / "artifacts", _settings(bundle_dir))
    assert SEGMENT.check(ctx.settings) is None
    (evidence,) = SEGMENT.run(SegmentArgs(attachment="scan", bundle="spleen_ct_segmentation"), ctx)
    assert evidence.summary.startswith("MONAI bundle spleen_ct_segmentation (v0.5.9) on scan:")
    assert SEGMENT.checked(evidence) == evidence  # the payload matches SegmentationPayload as written
    assert "spleen" in evidence.summary
    assert evidence.payload["roi_size"] == ROI and evidence.payload["labels"] == {"0": "background", "1": "spleen"}
    png, labels = evidence.artifacts
    assert png.startswith("artifacts/") and png.endswith(".png")
    written = nib.load(str(tmp_path / "out" / labels))
    assert written.shape == nib.load(str(ct_crop)).shape
    assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    assert evidence.payload["volumes_ml"]["spleen"] == pytest.approx(
        float((np.asarray(written.dataobj) == 1).sum()) * 27 / 1000, abs=0.01
    )


def test_ct_bundle_refuses_mr_and_oversized_images(bundle_dir: Path, ct_crop: Path, tmp_path: Path) -> None:
    mr = _case(tmp_path, EXAMPLES / "mr_small.nii.gz", "MR")
    ctx = ToolContext(mr, tmp_path / "case", tmp_path / "artifacts", _settings(bundle_dir))
    with pytest.raises(ToolError, match="trained on CT.*this volume is MR"):
        SEGMENT.run(SegmentArgs(attachment="scan"), ctx)
    ct = _case(tmp_path, ct_crop, "CT")
    ctx = ToolContext(ct, tmp_path / "case", tmp_path / "artifacts", _settings(bundle_dir, max_output_gb=0.0001))
    with pytest.raises(ToolError, match="max_output_gb"):
        SEGMENT.run(SegmentArgs(attachment="scan"), ctx)
    with pytest.raises(ToolError, match="no label liver"):
        SEGMENT.run(
            SegmentArgs(attachment="scan", structures=["liver"]),
            ToolContext(ct, tmp_path / "case", tmp_path, _settings(bundle_dir)),
        )
    assert "no MONAI bundle configured" in SEGMENT.check(Settings())


def test_corrupt_bundles_say_what_is_wrong(bundle_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(bundle_dir, broken)
    config = json.loads((broken / "configs" / "inference.json").read_text())
    del config["network_def"]
    (broken / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="missing config keys network_def"):
        load_bundle(broken)
    config = json.loads((bundle_dir / "configs" / "inference.json").read_text())
    config["inferer"]["_target_"] = "SlidingWindowInfererr"
    (broken / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"inference.json: inferer cannot be built \(.*SlidingWindowInfererr") as err:
        load_bundle(broken)
    assert "\n" not in str(err.value)
    config["inferer"] = {"_target_": "SimpleInferer"}  # a whole-image inferer: no window to resize
    (broken / "configs" / "inference.json").write_text(json.dumps(config))
    simple = load_bundle(broken)
    with pytest.raises(
        BundleError, match=r"inferer is a SimpleInferer; \[imaging\] roi_size are settings of a SlidingWindowInferer"
    ):
        segment(simple, broken / "missing.nii.gz", None, roi_size=(48, 48, 32))
    (broken / "configs" / "metadata.json").unlink()
    with pytest.raises(BundleError, match="metadata.json: missing"):
        load_bundle(broken)

    bundle = load_bundle(bundle_dir)
    state = read_state_dict(bundle_dir / "models" / "bare.pt")
    state.pop("model.0.residual.bias")
    state["model.0.residual.weight"] = torch.zeros(16, 1, 1, 1, 1)
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(
        BundleError, match=r"missing keys: model\.0\.residual\.bias.*wrong shapes: model\.0\.residual\.weight"
    ):
        build_network(bundle, weights=tmp_path / "wrong.pt")
    (tmp_path / "junk.pt").write_bytes(b"not weights")
    with pytest.raises(BundleError, match="cannot be read as PyTorch weights"):
        build_network(bundle, weights=tmp_path / "junk.pt")
