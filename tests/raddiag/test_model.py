"""The tiny RadDiag model: the authors' LayerNorm, the slice and scan masks, fusion outputs, strict loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medagent.specialists.raddiag.load import CheckpointError, load_raddiag
from medagent.specialists.raddiag.model import LayerNorm, build_model

from .conftest import tiny_config, write_checkpoint


def test_layernorm_uses_unbiased_std_with_eps_on_the_std() -> None:
    norm = LayerNorm(4)
    with torch.no_grad():
        norm.a.copy_(torch.tensor([1.0, 2.0, 1.0, 1.0]))
        norm.b.copy_(torch.tensor([0.0, 0.0, 0.5, 0.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    # mean 3, squared deviations 4+1+0+9 = 14, unbiased variance 14/3
    std = (14 / 3) ** 0.5
    expected = torch.tensor([[-2 / (std + 1e-6), 2 * -1 / (std + 1e-6), 0.5, 3 / (std + 1e-6)]])
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert not torch.allclose(norm(x), torch.nn.functional.layer_norm(x, (4,)), atol=1e-3)


def _inputs(batch: int, scans: int, depth: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, scans, depth, size, size, generator=torch.Generator().manual_seed(seed))


def test_padded_slices_and_empty_scan_slots_do_not_change_the_logits() -> None:
    torch.manual_seed(1)
    model = build_model(tiny_config("early")).eval()
    scans = _inputs(1, 4, 8, 16)
    valid = torch.zeros(1, 4, 8, dtype=torch.bool)
    valid[0, 0, :5] = True
    valid[0, 1, :3] = True
    modality = torch.tensor([[1, 4, 0, 0]])  # a CT and an MR, two empty slots
    with torch.no_grad():
        logits = model(scans, valid, modality)["logits"]
        other = scans.clone()
        other[0, 0, 5:] = 7.0  # padded slices of scan 0
        other[0, 2:] = 3.0  # empty slots
        assert logits.shape == (1, 5569)
        assert torch.allclose(model(other, valid, modality)["logits"], logits, atol=1e-5)
        changed = scans.clone()
        changed[0, 0, 2] = 1 - changed[0, 0, 2]  # a valid slice
        assert not torch.allclose(model(changed, valid, modality)["logits"], logits, atol=1e-5)
        # The modality embedding matters: the same pixels called MR instead of CT give other logits.
        assert not torch.allclose(model(scans, valid, torch.tensor([[4, 4, 0, 0]]))["logits"], logits, atol=1e-5)


def test_late_fusion_gives_each_scan_its_own_logits() -> None:
    torch.manual_seed(2)
    model = build_model(tiny_config("late")).eval()
    scans = _inputs(1, 2, 8, 16)
    valid = torch.ones(1, 2, 8, dtype=torch.bool)
    with torch.no_grad():
        both = model(scans, valid)["logits"]
        alone = model(scans[:, 1:], valid[:, 1:])["logits"]
    assert both.shape == (1, 2, 5569)
    assert torch.allclose(both[:, 1], alone[:, 0], atol=1e-5)


def test_checkpoint_round_trip_loads_strictly_and_predicts_the_same(early_dir: Path) -> None:
    loaded = load_raddiag(early_dir)
    assert loaded.absent_optional == [] and loaded.config == tiny_config("early")
    again = load_raddiag(early_dir / "pytorch_model.bin")
    scans, valid, modality = _inputs(1, 4, 8, 16), torch.ones(1, 4, 8, dtype=torch.bool), torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(loaded.model(scans, valid, modality)["logits"], again.model(scans, valid, modality)["logits"])


def test_optional_keys_may_be_absent_but_used_keys_may_not(tmp_path: Path) -> None:
    folder = write_checkpoint(tmp_path / "ck", "late", seed=3)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    pruned = {k: v for k, v in state.items() if not k.startswith("resnet2D.fc.") and ".encoder_layer." not in k}
    torch.save(pruned, folder / "pytorch_model.bin")
    loaded = load_raddiag(folder)
    assert "resnet2D.fc.weight" in loaded.absent_optional and len(loaded.absent_optional) == 2 + 16
    # A used key missing, an extra key, a wrong shape: each refused with the key named.
    for broken, message in (
        ({k: v for k, v in state.items() if k != "attention1D.pos_emb"}, "1 missing .*attention1D.pos_emb"),
        ({**state, "bioLORD.x": torch.zeros(1)}, "1 unexpected .*bioLORD.x"),
        ({**state, "fc.2.bias": torch.zeros(10)}, r"fc.2.bias \[10\] != \[5569\]"),
    ):
        torch.save(broken, folder / "pytorch_model.bin")
        with pytest.raises(CheckpointError, match=message):
            load_raddiag(folder)


def test_weights_of_the_other_fusion_are_refused(tmp_path: Path, late_dir: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes((late_dir / "pytorch_model.bin").read_bytes())
    (folder / "raddiag_config.json").write_text((late_dir / "raddiag_config.json").read_text().replace("late", "early"))
    with pytest.raises(CheckpointError, match="says early fusion but the weights are late fusion"):
        load_raddiag(folder)
    with pytest.raises(CheckpointError, match="no RadDiag weights found"):
        load_raddiag(tmp_path)
