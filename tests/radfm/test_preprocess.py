"""RadFM preprocessing: depth rules, windowing, display orientation, prompts."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.specialists.radfm.preprocess import (
    build_prompt,
    image_to_tensor,
    snap_depth,
    stack_images,
    volume_to_tensor,
)


def test_depth_snaps_to_multiples_of_four_and_is_capped() -> None:
    assert [snap_depth(n) for n in (1, 5, 7, 30, 64, 200)] == [4, 4, 8, 32, 64, 64]


def test_ct_is_windowed_before_scaling() -> None:
    # Air (-1000) and bone (+1000) fall outside the soft-tissue window; water (0) lands inside it.
    hu = np.full((8, 8, 4), -1000.0)
    hu[:, :, 2:] = 1000.0
    hu[2:6, 2:6, :] = 0.0
    scaled = volume_to_tensor(hu, size=8, hounsfield=True)
    assert scaled.shape == (3, 8, 8, 4)
    assert float(scaled.min()) == 0.0 and float(scaled.max()) == 1.0
    centre = float(scaled[0, 4, 4, 0])
    assert 0.3 < centre < 0.5  # (0 - (-160)) / 400 = 0.4


def test_volume_is_reoriented_to_display_axes() -> None:
    # An LPS-stored volume (i runs to patient left, j posterior): a bright block at low i / low j is at the
    # patient's right-anterior, which a display shows top-left (rows from anterior, columns from patient right).
    voxels = np.zeros((8, 8, 4))
    voxels[6:, 6:, :] = 1.0  # high i = patient left, high j = posterior in LPS storage
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    shown = volume_to_tensor(voxels, size=8, affine=lps)[0, :, :, 0].numpy()
    assert shown[7, 7] > 0.9 and shown[0, 0] < 0.1  # posterior-left block -> bottom-right on display


def test_picture_becomes_three_channels_of_depth_four() -> None:
    grey = (np.arange(20 * 30) % 256).astype(np.uint8).reshape(20, 30)
    tensor = image_to_tensor(grey, size=32)
    assert tensor.shape == (3, 32, 32, 4)
    assert np.allclose(tensor[0].numpy(), tensor[2].numpy())
    with pytest.raises(ValueError, match="2D picture"):
        image_to_tensor(np.zeros(5), size=32)


def test_mixed_depths_stack_to_the_deepest() -> None:
    picture = image_to_tensor(np.zeros((16, 16), np.uint8), size=16)
    volume = volume_to_tensor(np.random.default_rng(0).random((16, 16, 16)), size=16)
    assert stack_images([picture, volume]).shape == (1, 2, 3, 16, 16, 16)


def test_prompt_places_each_image_with_its_own_tokens() -> None:
    prompt = build_prompt("  Is there   a fracture? ", 2, tokens_per_image=3)
    assert prompt == (
        "<image><image0><image1><image2></image><image><image3><image4><image5></image>Is there a fracture?"
    )
    with pytest.raises(ValueError, match="empty"):
        build_prompt("  ", 1)
