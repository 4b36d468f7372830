"""Fixtures for the MedVInT-TD tests: one tiny random-weight MedVInT-TD folder in the released checkpoint layout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SLICE = EXAMPLES / "data" / "ct_axial_14.png"  # a committed 2D CT slice (examples/data/LICENSE.md)
SENTENCES = [
    "which region of the body does this axial ct slice show chest upper abdomen pelvis head",
    "describe the findings in this image there is no mass lesion normal",
]


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medagent.specialists.medvint.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("medvint") / "tiny", SENTENCES, seed=0)


@pytest.fixture(scope="session")
def tiny(tiny_folder: Path):
    from medagent.specialists.medvint.load import load_medvint

    return load_medvint(tiny_folder, dtype="fp32", device="cpu")


@pytest.fixture(scope="session")
def slice_pixels():
    import numpy as np
    from PIL import Image

    with Image.open(SLICE) as image:
        return np.asarray(image)
