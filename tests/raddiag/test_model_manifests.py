"""The full-size RadDiag architectures, built on the meta device, have the manifests' names, shapes and order.

The manifests (tests/data/raddiag) were dumped from the authors' own `RadNet` class (see their headers); a
strict load of the published `pytorch_model.bin` needs exactly these keys.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch

import pytest
import torch

from medagent.specialists.raddiag.load import config_for, is_optional
from medagent.specialists.raddiag.model import build_model, published_config, state_dict_shapes, unique_parameters

from .conftest import DATA


@pytest.mark.parametrize("fusion", ["early", "late"])
def test_full_size_model_has_the_manifest_keys_shapes_and_parameter_count(fusion: str, tmp_path) -> None:
    manifest = json.loads((DATA / f"raddiag_{fusion}_state_dict.json").read_text())
    with torch.device("meta"):
        model = build_model(published_config(fusion))
    ours = state_dict_shapes(model)
    assert list(ours.items()) == list(manifest["state_dict"].items())  # names, shapes and their order
    assert unique_parameters(model) == manifest["total_params"]
    # The keys forward never runs are exactly the manifest's `unused_in_forward` patterns.
    unused = manifest["header"]["unused_in_forward"]
    optional = [k for k in ours if is_optional(k)]
    assert optional == [k for k in ours if any(fnmatch(k, p) for p in unused["patterns"])]
    assert len(optional) == unused["count"]
    # Without medagent's config file, the fusion is read from the key names.
    fake = {k: torch.empty(0) for k in manifest["state_dict"]}
    assert config_for(tmp_path, fake) == published_config(fusion)


def test_published_sizes() -> None:
    early, late = published_config("early"), published_config("late")
    assert early.hidden == 2048 and early.num_classes == 5569 and early.max_depth == 32 and early.image_size == 256
    assert (early.slice_layers, early.slice_heads, early.fuse_layers, early.fuse_heads) == (1, 1, 2, 4)
    assert late.fusion == "late" and early.num_modalities == 16
