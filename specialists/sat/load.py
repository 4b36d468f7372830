"""Loading SAT: the segmentation network and the text encoder, each a strict load of a published checkpoint.

Folder layout (what `medagent doctor` asks the user to assemble; file names are free, each file is recognised by
its keys):

    <folder>/<name>.pth               the SAT-Nano or SAT-Pro network (HF zzh99/SAT `Nano/` or `Pro/`, e.g. nano.pth)
    <folder>/<name>.pth               the text encoder checkpoint published beside it (keys `text_tower.*`)
    <folder>/tokenizer.json ...       the tokenizer files of FremyCompany/BioLORD-2023-C (tokenizer.json or vocab.txt,
                                      tokenizer_config.json): the checkpoints hold no tokenizer
    <folder>/sat_config.json          optional, medagent's: only for non-published sizes (tiny test models, fine-tunes)

Both checkpoints are `torch.save` dicts with `model_state_dict` (training ones also `optimizer_state_dict`, `step`)
saved from DDP, so every key starts with `module.`. The loader strips that prefix and then maps the published names
onto this implementation's:

- every conv and norm of the U-Net is stored twice, as `…convs.N.conv.*` / `…convs.N.norm.*` and as
  `…convs.N.all_modules.0.*` / `…all_modules.1.*` (the same tensor): the twins are folded onto `.conv` / `.norm`
  after checking they agree;
- `DROPPED_KEYS` are dropped, each for the reason given there (the authors' own drops), and `LEGACY_BUFFERS` when
  the installed transformers no longer registers them.

Everything else must match exactly: one error names every missing, unexpected or misshaped key. Nothing is
downloaded. The key layout is derived from the authors' code (../shared/manifests, SAT @ 5676be5), not from the
released files: see LAYOUT_NOTE.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medagent.specialists import _checkpoints as checkpoints
from medagent.specialists.sat.model import SATConfig, SATSegmenter, nano_config, pro_config, tiny_config
from medagent.specialists.sat.text import (
    SATTextEncoder,
    TextConfig,
    biolord_config,
    encode_prompts,
    tiny_text_config,
)

LAYOUT_NOTE = (
    "SAT's checkpoint layout here is derived from the authors' code (zhaoziheng/SAT @ 5676be5: module. prefix, "
    "doubly stored conv/norm names, MPNet text tower), not yet checked against released weights"
)
PREFIX = "module."
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
CONFIG_NAME = "sat_config.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Keys the authors drop before loading, by substring, with the reason (MODELS_corrections.md SAT 5, 6, and the
# confirmed text-encoder drop). The segmenter's are dropped only when the model is built without those heads.
DROPPED_KEYS = {
    "segmenter": {
        "mid_mask_embed_proj.": "deep-supervision heads (training only): the authors' inference builds the network "
        "without them and its partial load skips their 12 keys",
    },
    "text_encoder": {
        "atlas_tower": "left over from knowledge pre-training (atlas alignment); the authors' Text_Encoder deletes it",
        "temperature": "the contrastive temperature of knowledge pre-training; the authors' Text_Encoder deletes it",
    },
}
# Persistent buffers that the pinned transformers (4.21.3; < 4.31) saves and current versions compute instead.
LEGACY_BUFFERS = {
    "text_tower.biolord.embeddings.position_ids": "MPNet's position-id table, a persistent buffer before "
    "transformers 4.31, recomputed now",
}
_TWIN = re.compile(r"\.convs\.(\d+)\.all_modules\.([01])\.")
_FIRST_CONV = "backbone.encoder.stages.0.0.convs.0.conv.weight"


class SATLoadError(ValueError):
    """A SAT checkpoint folder is incomplete or does not fit the architecture; the message names files and keys."""


@dataclass
class LoadReport:
    """What the name mapping did to one checkpoint."""

    source: Path
    dropped: list[str] = field(default_factory=list)  # keys dropped (DROPPED_KEYS, LEGACY_BUFFERS), `module.` stripped
    folded: int = 0  # all_modules twins folded onto .conv/.norm


@dataclass
class LoadedSAT:
    segmenter: SATSegmenter
    text_encoder: SATTextEncoder
    tokenizer: Any
    reports: list[LoadReport]

    def queries(self, prompts: list[str], modality: str) -> torch.Tensor:
        """One query per prompt (N, query_dim) for scans of `modality` ('ct', 'mri', 'us', 'pet')."""
        return encode_prompts(self.text_encoder, self.tokenizer, prompts, modality)


# ---- names: published <-> this implementation ----------------------------------------------------------------


def _unprefixed(key: str) -> str:
    return key[len(PREFIX) :] if key.startswith(PREFIX) else key


def _dropped(role: str, key: str) -> bool:
    return any(part in key for part in DROPPED_KEYS[role])


def segmenter_key(published: str, deep_supervision: bool = False) -> str | None:
    """This implementation's name for a published segmenter key; None when the loader drops it."""
    key = _unprefixed(published)
    if not deep_supervision and _dropped("segmenter", key):
        return None
    return _TWIN.sub(lambda m: f".convs.{m.group(1)}.{'conv' if m.group(2) == '0' else 'norm'}.", key)


def text_key(published: str, model_keys: set[str] | frozenset[str] = frozenset()) -> str | None:
    """This implementation's name for a published text-encoder key; None when the loader drops it."""
    key = _unprefixed(published)
    if _dropped("text_encoder", key) or (key in LEGACY_BUFFERS and key not in model_keys):
        return None
    return key


def to_model_names(
    role: str, state: dict[str, torch.Tensor], model: nn.Module, source: Path
) -> tuple[dict[str, torch.Tensor], LoadReport]:  # fmt: skip
    """The published state_dict under this implementation's names, twins folded, drops applied."""
    report = LoadReport(source=source)
    model_keys = set(model.state_dict())
    deep = bool(getattr(getattr(model, "config", None), "deep_supervision", False))
    mapped: dict[str, torch.Tensor] = {}
    twins: dict[str, tuple[str, torch.Tensor]] = {}
    for published, tensor in state.items():
        key = segmenter_key(published, deep) if role == "segmenter" else text_key(published, model_keys)
        if key is None:
            report.dropped.append(published)
        elif role == "segmenter" and _TWIN.search(_unprefixed(published)):
            twins[key] = (published, tensor)
        else:
            if key in mapped:
                raise SATLoadError(f"{source}: two keys of the checkpoint map onto {key}")
            mapped[key] = tensor
    for key, (published, tensor) in twins.items():
        if key not in mapped:  # a file holding only the all_modules names: take them
            mapped[key] = tensor
            continue
        first = mapped[key]
        same = first.shape == tensor.shape and (first.data_ptr() == tensor.data_ptr() or torch.equal(first, tensor))
        if not same:
            raise SATLoadError(f"{source}: {published} and its twin {key} must be one tensor but differ")
        report.folded += 1
    return mapped, report


def published_state(role: str, model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's state_dict in the published layout: `module.` prefix, conv/norm twins, the legacy MPNet buffer."""
    state = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if role == "text_encoder" and key == "text_tower.biolord.embeddings.word_embeddings.weight":
            for legacy in LEGACY_BUFFERS:
                if legacy not in state:  # the pinned transformers saved it first in the tower
                    positions = model.config.max_position_embeddings
                    out[PREFIX + legacy] = torch.arange(positions, device=tensor.device).unsqueeze(0)
        out[PREFIX + key] = tensor
        norm = re.search(r"\.convs\.(\d+)\.norm\.bias$", key) if role == "segmenter" else None
        if norm:  # after a block's conv and norm come the same tensors as all_modules.0 / .1
            block = key[: -len("norm.bias")]
            for index, part in (("0", "conv"), ("1", "norm")):
                for name in ("weight", "bias"):
                    out[f"{PREFIX}{block}all_modules.{index}.{name}"] = state[f"{block}{part}.{name}"]
    return out


def save_checkpoint(role: str, model: nn.Module, path: Path) -> Path:
    """`{'model_state_dict': …}` in the published layout (twins share storage, as in the authors' files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in published_state(role, model).items()}
    torch.save({"model_state_dict": state}, path)
    return path


# ---- reading files --------------------------------------------------------------------------------------------


def role_of(state: dict[str, torch.Tensor]) -> str | None:
    """'segmenter', 'text_encoder' or None, from the key names."""
    keys = [_unprefixed(k) for k in state]
    if any(k.startswith("backbone.") for k in keys):
        return "segmenter"
    if any(k.startswith("text_tower.") for k in keys):
        return "text_encoder"
    return None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    return checkpoints.read_state_dict(Path(path), SATLoadError)


def find_checkpoints(folder: Path) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    """{'segmenter': (file, state), 'text_encoder': (file, state)} from a folder, each file recognised by its keys."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SATLoadError(f"{folder}: no such SAT folder")
    found: dict[str, tuple[Path, dict[str, torch.Tensor]]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        state = read_checkpoint(path)
        role = role_of(state)
        if role is None:
            continue
        if role in found:
            raise SATLoadError(
                f"{folder}: two {role.replace('_', ' ')} checkpoints ({found[role][0].name}, {path.name}); keep one"
            )
        found[role] = (path, state)
    lacking = [
        f"the {what} checkpoint ({hint})"
        for role, what, hint in (
            ("segmenter", "SAT network", "HF zzh99/SAT Nano/ or Pro/, keys module.backbone.*"),
            ("text_encoder", "text encoder", "the text-encoder .pth beside it, keys module.text_tower.*"),
        )
        if role not in found
    ]
    if lacking:
        raise SATLoadError(f"{folder}: lacks {' and '.join(lacking)}")
    return found


def read_configs(folder: Path) -> tuple[SATConfig | None, TextConfig | None]:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        return None, None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return SATConfig.from_dict(raw["segmenter"]), TextConfig.from_dict(raw["text_encoder"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SATLoadError(f"{path}: not a valid SAT config ({exc})") from exc


def published_config_for(state: dict[str, torch.Tensor], source: Path) -> SATConfig:
    """SAT-Nano or SAT-Pro, from the width of the first conv (64 or 128)."""
    first = next((v for k, v in state.items() if _unprefixed(k) == _FIRST_CONV), None)
    width = int(first.shape[0]) if first is not None else None
    if width == 64:
        return nano_config()
    if width == 128:
        return pro_config()
    raise SATLoadError(
        f"{source}: first conv width {width} is neither SAT-Nano's 64 nor SAT-Pro's 128; "
        f"other sizes need a {CONFIG_NAME} beside the weights"
    )


def load_tokenizer(folder: Path) -> Any:
    """BioLORD-2023-C's tokenizer from the folder's own files; never downloads."""
    folder = Path(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise SATLoadError(
            f"{folder}: no tokenizer (put the tokenizer files of FremyCompany/BioLORD-2023-C, e.g. tokenizer.json and "
            "tokenizer_config.json, beside the weights)"
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise SATLoadError(f"{folder}: tokenizer files present but unreadable ({exc})") from exc


def doctor_lines(folder: Path | None) -> list[str]:
    """What `medagent doctor` says about a SAT folder: what it lacks (empty when complete), then LAYOUT_NOTE."""
    if folder is None:
        return ["sat: no folder configured (HF zzh99/SAT Nano/ or Pro/ + the text encoder + BioLORD-2023-C tokenizer)"]
    problems = []
    try:
        find_checkpoints(Path(folder))
    except SATLoadError as exc:
        problems.append(f"sat: {exc}")
    if Path(folder).is_dir() and not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"sat: {folder} lacks the tokenizer files of FremyCompany/BioLORD-2023-C")
    return [*problems, f"sat: {LAYOUT_NOTE}"]


# ---- strict loading -------------------------------------------------------------------------------------------


def _names(keys: list[str], limit: int = 25) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def strict_load(model: nn.Module, mapped: dict[str, torch.Tensor], what: str, source: Path, dtype: torch.dtype) -> None:
    """load_state_dict(strict=True, assign=True) after a check whose one error names every mismatching key."""
    missing, unexpected, wrong = checkpoints.mismatches(model.state_dict(), mapped)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing: {_names(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {_names(unexpected)}")
        if wrong:
            parts.append(f"{len(wrong)} with another shape: {_names(wrong)}")
        raise SATLoadError(f"{source}: does not fit the {what} architecture ({'; '.join(parts)}). {LAYOUT_NOTE}")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in mapped.items()}
    model.load_state_dict(state, strict=True, assign=True)


def _empty(build: Any) -> nn.Module:
    """The module with its parameters on the meta device (buffers real): the load assigns the checkpoint's."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return build()


def load_segmenter(
    path: Path, config: SATConfig | None = None, device: str = "cpu", dtype: str = "fp32",
    state: dict[str, torch.Tensor] | None = None,
) -> tuple[SATSegmenter, LoadReport]:  # fmt: skip
    """The SAT network from one checkpoint (config: sat_config.json's, else Nano or Pro from the weights)."""
    path = Path(path)
    state = read_checkpoint(path) if state is None else state
    if role_of(state) != "segmenter":
        raise SATLoadError(f"{path}: not a SAT network checkpoint (no module.backbone.* keys)")
    config = config or published_config_for(state, path)
    model = _empty(lambda: SATSegmenter(config))
    mapped, report = to_model_names("segmenter", state, model, path)
    strict_load(model, mapped, f"SAT {config.variant}", path, DTYPES[dtype])
    return model.eval().to(device), report


def load_text_encoder(
    path: Path, config: TextConfig | None = None, device: str = "cpu", dtype: str = "fp32",
    state: dict[str, torch.Tensor] | None = None,
) -> tuple[SATTextEncoder, LoadReport]:  # fmt: skip
    """SAT's text encoder from its checkpoint (config: sat_config.json's, else BioLORD-2023-C's)."""
    path = Path(path)
    state = read_checkpoint(path) if state is None else state
    if role_of(state) != "text_encoder":
        raise SATLoadError(f"{path}: not a SAT text-encoder checkpoint (no module.text_tower.* keys)")
    config = config or biolord_config()
    model = _empty(lambda: SATTextEncoder(config))
    mapped, report = to_model_names("text_encoder", state, model, path)
    strict_load(model, mapped, "SAT text-encoder (BioLORD-2023-C MPNet)", path, DTYPES[dtype])
    return model.eval().to(device), report


def load_sat(folder: Path, device: str = "cpu", dtype: str = "fp32") -> LoadedSAT:
    """Network + text encoder + tokenizer from one folder (layout in this module's docstring), eval mode."""
    if dtype not in DTYPES:
        raise SATLoadError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    folder = Path(folder).expanduser()
    found = find_checkpoints(folder)
    config, text_config = read_configs(folder)
    tokenizer = load_tokenizer(folder)
    seg_path, seg_state = found["segmenter"]
    text_path, text_state = found["text_encoder"]
    segmenter, seg_report = load_segmenter(seg_path, config, device, dtype, state=seg_state)
    text_encoder, text_report = load_text_encoder(text_path, text_config, device, dtype, state=text_state)
    if text_encoder.config.query_dim != segmenter.config.query_dim:
        raise SATLoadError(
            f"{folder}: the text encoder makes {text_encoder.config.query_dim}-wide queries, the network wants "
            f"{segmenter.config.query_dim}"
        )
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise SATLoadError(
            f"{folder}: the tokenizer has {len(tokenizer)} tokens, the text tower {text_encoder.config.vocab_size}: "
            "it does not belong to these weights"
        )
    return LoadedSAT(
        segmenter=segmenter, text_encoder=text_encoder, tokenizer=tokenizer, reports=[seg_report, text_report]
    )


# ---- tiny checkpoints for tests and smoke runs -----------------------------------------------------------------


def tiny_tokenizer(words: list[str]) -> Any:
    """A lower-casing word-level fast tokenizer; ids 0-3 are MPNet's <s>, <pad>, </s>, <unk>, then SAT's literal
    '[CLS]' and '[SEP]' (ordinary tokens in MPNet's vocabulary too)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "<pad>", "</s>", "<unk>", "[CLS]", "[SEP]"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(specials + words))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def build_tiny(folder: Path, seed: int = 0) -> Path:
    """Random tiny SAT in the published layout under `folder`: network (with its deep-supervision heads, as the
    authors' training saves it) and text encoder, each `{'model_state_dict'}` with `module.` keys and conv/norm
    twins, plus a word-level tokenizer over SAT's class names and medagent's sat_config.json."""
    from tokenizers import pre_tokenizers

    from medagent.specialists.sat.vocabulary import load_vocabulary

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    split = pre_tokenizers.BertPreTokenizer()
    words = [w.lower() for term in load_vocabulary().terms() for w, _ in split.pre_tokenize_str(term)]
    tokenizer = tiny_tokenizer(words)
    torch.manual_seed(seed)
    segmenter = SATSegmenter(tiny_config(deep_supervision=True))
    text_encoder = SATTextEncoder(tiny_text_config(vocab_size=len(tokenizer)))
    save_checkpoint("segmenter", segmenter, folder / "sat_tiny.pth")
    save_checkpoint("text_encoder", text_encoder, folder / "sat_tiny_text_encoder.pth")
    tokenizer.save_pretrained(str(folder))
    inference = SATConfig.from_dict({**segmenter.config.to_dict(), "deep_supervision": False})
    config = {"segmenter": inference.to_dict(), "text_encoder": text_encoder.config.to_dict()}
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=1), encoding="utf-8")
    return folder
