"""Shared fixtures for the RadFM tests: the committed VQA-RAD lines and images, one tiny random-weight RadFM."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent.parent / "data" / "radfm"


@pytest.fixture(scope="session")
def radfm_data() -> Path:
    return DATA


@pytest.fixture(scope="session")
def vqa_rows() -> list[dict]:
    lines = (DATA / "vqa_rad" / "dev.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="session")
def picture() -> Callable[[str], np.ndarray]:
    from PIL import Image

    def read(name: str) -> np.ndarray:
        with Image.open(DATA / "vqa_rad" / "images" / name) as image:
            return np.asarray(image.convert("L"))

    return read


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, vqa_rows: list[dict]) -> Path:
    from medagent.specialists.radfm.tiny import build_tiny

    sentences = [f"{row['question']} {row['answer']}" for row in vqa_rows]
    return build_tiny(tmp_path_factory.mktemp("radfm") / "tiny", sentences)


@pytest.fixture(scope="session")
def tiny(tiny_folder: Path):
    from medagent.specialists.radfm.load import load_radfm

    return load_radfm(tiny_folder, dtype="fp32", device="cpu")
