"""Reference: `imaging.segment` against MONAI's own run of the same bundle on the same CT, voxel for voxel.

The bundle is the real spleen_ct_segmentation configs (tests/data/imaging, Apache-2.0, see its LICENSE) with
seeded random weights of its own network_def. Nothing is overridden but the dataset and output folders, so
both sides use the bundle's own inferer (SlidingWindowInferer, ROI 96³, sw_batch_size 4, overlap 0.5,
constant blending), preprocessing and postprocessing.

The reference is the library's own command, `python -m monai.bundle run` (fire + pytorch-ignite, installed
with the dev tools): ignite's SupervisedEvaluator with the bundle's CheckpointLoader, inferer and postprocessing,
whose SaveImaged writes the mask.

The CT is a piece of examples/data/ct_small.nii.gz large enough for four overlapping windows (so blending
matters) and stored L-P-S, so that both sides must turn it to RAS for the network and back again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medagent.tools.config import ImagingSettings, Settings
from medagent.tools.contracts import Case
from medagent.tools.imaging import TOOLS, SegmentArgs
from medagent.tools.registry import ToolContext

ROOT = Path(__file__).resolve().parents[2]
BUNDLE = ROOT / "tests" / "data" / "imaging" / "spleen_ct_segmentation"
CT = ROOT / "examples" / "data" / "ct_small.nii.gz"
SEGMENT = next(tool for tool in TOOLS if tool.name == "imaging.segment")
SEED = 2  # seeded random weights whose mask is neither all background nor all spleen on this CT



@pytest.fixture(scope="module")
def spleen_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The committed spleen configs with seeded random weights at models/model.pt, as {"model": state_dict}."""
    from monai.bundle import ConfigParser

    root = tmp_path_factory.mktemp("bundles") / "spleen_ct_segmentation"
    shutil.copytree(BUNDLE, root)
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    torch.manual_seed(SEED)
    network = parser.get_parsed_content("network_def", instantiate=True)
    (root / "models").mkdir()
    torch.save({"model": network.state_dict()}, root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset folder in the bundle's layout (imagesTs/) holding one CT: 64×64×30 voxels of 3 mm, stored LPS."""
    ct = nib.load(str(CT))
    assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
    start = np.array([0, 20, 0])
    crop = np.asarray(ct.dataobj)[0:64, 20:84, 0:30]
    # Voxel (i, j, k) of the stored array is voxel (63 - i, 83 - j, k) of ct_small: same world, axes L-P-S.
    to_source = np.array([[-1, 0, 0, 63], [0, -1, 0, 83], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    affine = ct.affine @ to_source
    assert np.allclose(affine @ [63, 63, 0, 1], ct.affine @ [*start, 1])  # first voxel of the crop, same place
    root = tmp_path_factory.mktemp("dataset")
    (root / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(crop[::-1, ::-1, :], affine), str(root / "imagesTs" / "ct.nii.gz"))
    return root


def test_segment_matches_monai_running_the_bundle_voxel_for_voxel(
    spleen_bundle: Path, dataset: Path, tmp_path: Path
) -> None:
    image_path = dataset / "imagesTs" / "ct.nii.gz"
    image = nib.load(str(image_path))
    assert nib.aff2axcodes(image.affine) == ("L", "P", "S")

    reference_dir = tmp_path / "reference"
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
         "--meta_file", "configs/metadata.json", "--dataset_dir", str(dataset), "--output_dir", str(reference_dir)],
        cwd=spleen_bundle,  # the config's bundle_root is "."
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = nib.load(str(reference_dir / "ct" / "ct_trans.nii.gz"))  # SaveImaged: separate_folder, postfix

    case = Case.model_validate(
        {
            "id": "reference",
            "attachments": [{"id": "scan", "kind": "volume", "path": "ct.nii.gz", "modality": "CT", "format": "nifti"}],
        }
    )
    settings = Settings(imaging=ImagingSettings(bundles=[spleen_bundle], device="cpu"))  # the bundle's own inferer
    ctx = ToolContext(case, dataset / "imagesTs", tmp_path / "out" / "artifacts", settings)
    (evidence,) = SEGMENT.run(SegmentArgs(attachment="scan", bundle="spleen_ct_segmentation"), ctx)
    assert evidence.payload["roi_size"] == [96, 96, 96] and evidence.payload["sw_batch_size"] == 4
    ours = nib.load(str(tmp_path / "out" / evidence.artifacts[1]))

    # Both masks lie on the CT's own grid: same shape, same voxel-to-world map (still L-P-S), so voxel (i, j, k)
    # of one is the same place in the patient as voxel (i, j, k) of the other.
    assert reference.shape == ours.shape == image.shape
    assert np.allclose(reference.affine, image.affine, atol=1e-4)
    assert np.allclose(ours.affine, image.affine, atol=1e-4)
    expected = np.rint(np.asarray(reference.dataobj)).astype(np.int16)
    found = np.asarray(ours.dataobj).astype(np.int16)
    assert set(np.unique(expected)) == {0, 1}  # a mask with both labels, so agreement is not trivial
    assert 0.05 < float((expected == 1).mean()) < 0.95
    differ = int((expected != found).sum())
    assert differ == 0, f"{differ} of {expected.size} voxels differ from MONAI's own run of the bundle"
    assert evidence.payload["volumes_ml"]["spleen"] == pytest.approx(float((expected == 1).sum()) * 27 / 1000, abs=0.01)
