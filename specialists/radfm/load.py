"""Load RadFM from a local folder: checkpoint + LLaMA tokenizer, image tokens, dtype, device and memory checks.

Folder layout (what `medagent doctor` asks the user to assemble):

    <folder>/pytorch_model.bin        the published checkpoint (HF chaoyi-wu/RadFM: unzip pytorch_model.zip,
                                      or `cat RadFM.z0* RadFM.zip > full.zip` and unzip that)
    <folder>/tokenizer.model          the LLaMA tokenizer of the RadFM repo's Quick_demo/Language_files
    <folder>/tokenizer_config.json    (+ special_tokens_map.json) from the same folder
    <folder>/radfm_config.json        optional: only for non-default sizes (tiny test models, fine-tunes)

`model.safetensors` is accepted in place of `pytorch_model.bin`. Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medagent.specialists.radfm.model import RadFM, RadFMConfig

CHECKPOINT_NAMES = ("pytorch_model.bin", "model.safetensors")
CONFIG_NAME = "radfm_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# Parameters of the published full-size model (shared embedding counted once), from its state_dict manifest.
FULL_SIZE_PARAMETERS = 13_266_902_305
# Persistent buffers that transformers 4.28 saved and current transformers no longer registers: the published
# checkpoint holds them, a strict load accepts exactly these as unexpected.
LEGACY_BUFFER = re.compile(
    r"^(lang_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq|embedding_layer\.bert_model\.embeddings\.position_ids)$"
)
TIED_KEYS = ("lang_model.model.embed_tokens.weight", "embedding_layer.weight")


class RadFMLoadError(ValueError):
    """The weights folder is incomplete or inconsistent; the message names the file and what is wrong."""


@dataclass
class RadFMBundle:
    model: RadFM
    tokenizer: Any
    config: RadFMConfig
    folder: Path

    @property
    def device(self) -> torch.device:
        return self.model.embedding_layer.figure_token_weight.device


def checkpoint_file(folder: Path) -> Path | None:
    return next((folder / name for name in CHECKPOINT_NAMES if (folder / name).is_file()), None)


def missing_files(folder: Path) -> list[str]:
    """What the folder still lacks, as lines a user can act on; empty when it looks complete."""
    if not folder.is_dir():
        return [f"{folder} is not a folder"]
    problems = []
    if checkpoint_file(folder) is None:
        problems.append(f"{folder}/pytorch_model.bin (the RadFM checkpoint from HF chaoyi-wu/RadFM) is missing")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        problems.append(
            f"{folder}/tokenizer.model (the LLaMA tokenizer from the RadFM repo's Quick_demo/Language_files) is missing"
        )
    return problems


def read_config(folder: Path) -> RadFMConfig:
    path = folder / CONFIG_NAME
    if not path.is_file():
        return RadFMConfig()
    try:
        return RadFMConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, TypeError) as exc:
        raise RadFMLoadError(f"{path}: not a valid RadFM config ({exc})") from exc


def parameter_count(config: RadFMConfig) -> int:
    """Parameters of a config (shared embedding once), counted on the meta device: no memory used."""
    with torch.device("meta"):
        model = RadFM(config)
    return sum(p.numel() for p in model.parameters())


def memory_needed(parameters: int, dtype: str) -> int:
    """Bytes for the weights plus ~10% for activations at batch 1 (a 512x512x64 scan, a 2k prompt)."""
    return int(parameters * DTYPES[dtype].itemsize * 1.1)


def memory_table(parameters: int = FULL_SIZE_PARAMETERS) -> str:
    return ", ".join(f"{name} ≈ {memory_needed(parameters, name) / 2**30:.0f} GiB" for name in DTYPES)


def add_image_tokens(tokenizer: Any, config: RadFMConfig) -> Any:
    """`<image>`, `</image>`, `<image0>`..`<imageN>` as special tokens right after the text vocabulary; ids forced.

    The embedding layer addresses these ids by position, so they are checked, not assumed.
    """
    base = len(tokenizer)
    if base != config.vocab_size:
        raise RadFMLoadError(
            f"tokenizer has {base} tokens but the language model's vocabulary is {config.vocab_size}: "
            "use the tokenizer that belongs to these weights"
        )
    tokens = ["<image>", "</image>"] + [f"<image{k}>" for k in range(config.image_token_count)]
    tokenizer.add_tokens(tokens, special_tokens=True)
    expected = {"<image>": base, "</image>": base + 1, "<image0>": base + 2}
    for token, token_id in expected.items():
        if tokenizer.convert_tokens_to_ids(token) != token_id:
            raise RadFMLoadError(f"tokenizer gave {token} id {tokenizer.convert_tokens_to_ids(token)}, not {token_id}")
    # RadFM forces LLaMA's ids; the bundled config's decapoda-style values are wrong.
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    tokenizer.bos_token = tokenizer.convert_ids_to_tokens(1)
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(2)
    return tokenizer


def load_tokenizer(folder: Path, config: RadFMConfig) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        raise RadFMLoadError(f"{folder}: cannot read the tokenizer ({exc})") from exc
    return add_image_tokens(tokenizer, config)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # mmap: the 50 GB file is paged in tensor by tensor, never held twice.
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file; all mean the same to the user
        raise RadFMLoadError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc


def check_keys(model: RadFM, state_dict: dict[str, torch.Tensor], source: Path) -> list[str]:
    """Strict key check; returns the legacy buffers to drop. Anything else missing/unexpected/misshaped is an error."""
    expected = model.state_dict()
    unexpected = [k for k in state_dict if k not in expected]
    legacy = [k for k in unexpected if LEGACY_BUFFER.match(k)]
    unexpected = [k for k in unexpected if not LEGACY_BUFFER.match(k)]
    missing = [k for k in expected if k not in state_dict]
    # One of the two tied keys suffices: they are the same tensor.
    if any(k in state_dict for k in TIED_KEYS):
        missing = [k for k in missing if k not in TIED_KEYS]
    wrong = [
        f"{k} {tuple(v.shape)} (model wants {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s), e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])}")
    if problems:
        raise RadFMLoadError(f"{source}: does not match the RadFM architecture: {'; '.join(problems)}")
    return legacy


def _check_memory(parameters: int, dtype: str, device: str) -> None:
    if not device.startswith("cuda") and device != "auto":
        return
    if not torch.cuda.is_available():
        raise RadFMLoadError(f"device '{device}' asked for but no CUDA GPU is visible")
    need = memory_needed(parameters, dtype)
    if device == "auto":
        free = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count()))
        where = f"{torch.cuda.device_count()} GPU(s)"
    else:
        free = torch.cuda.mem_get_info(torch.device(device))[0]
        where = device
    if need > free:
        raise RadFMLoadError(
            f"RadFM in {dtype} needs about {need / 2**30:.1f} GiB of GPU memory, {where} has "
            f"{free / 2**30:.1f} GiB free ({memory_table(parameters)}); use bf16, several GPUs (device 'auto'), "
            "or a larger card"
        )


def load_radfm(
    folder: Path,
    dtype: str = "bf16",
    device: str = "cpu",
    max_memory: dict[int | str, str] | None = None,
) -> RadFMBundle:
    """Build RadFM from `folder`. device: 'cpu', 'cuda', 'cuda:N', or 'auto' (split over all GPUs with accelerate)."""
    from accelerate import init_empty_weights

    folder = Path(folder)
    if dtype not in DTYPES:
        raise RadFMLoadError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    problems = missing_files(folder)
    if problems:
        raise RadFMLoadError("; ".join(problems))
    config = read_config(folder)
    tokenizer = load_tokenizer(folder, config)
    # Parameters on meta, buffers real (rotary tables, BERT position ids are computed, not loaded).
    with init_empty_weights(include_buffers=False):
        model = RadFM(config)
    parameters = sum(p.numel() for p in model.parameters())
    _check_memory(parameters, dtype, device)

    source = checkpoint_file(folder)
    assert source is not None  # missing_files checked it
    state_dict = read_state_dict(source)
    for key in check_keys(model, state_dict, source):
        del state_dict[key]
    present = [k for k in TIED_KEYS if k in state_dict]
    if len(present) == 2 and not torch.equal(state_dict[TIED_KEYS[0]], state_dict[TIED_KEYS[1]]):
        raise RadFMLoadError(f"{source}: {TIED_KEYS[0]} and {TIED_KEYS[1]} differ but must be one tensor")
    for key in TIED_KEYS:
        state_dict.setdefault(key, state_dict[present[0]])
    target = "cpu" if device == "auto" else device
    torch_dtype = DTYPES[dtype]
    state_dict = {
        k: v.to(device=target, dtype=torch_dtype if v.is_floating_point() else v.dtype) for k, v in state_dict.items()
    }
    model.load_state_dict(state_dict, strict=True, assign=True)
    model.tie_embeddings()  # assign=True put two tensors in; make them one again
    model.to(device=target)  # the computed buffers; rotary tables stay float32 for precision
    model.eval()
    if device == "auto":
        from accelerate import dispatch_model, infer_auto_device_map

        device_map = infer_auto_device_map(
            model,
            max_memory=max_memory,
            no_split_module_classes=["LlamaDecoderLayer", "RadFMEmbedding"],
            dtype=torch_dtype,
        )
        model = dispatch_model(model, device_map=device_map)
    return RadFMBundle(model=model, tokenizer=tokenizer, config=config, folder=folder)


def save_checkpoint(model: RadFM, tokenizer: Any | None, folder: Path) -> Path:
    """Write a model in the published layout (flat state_dict, both tied keys) + its config (+ tokenizer)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    torch.save(state_dict, folder / "pytorch_model.bin")
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2), encoding="utf-8")
    if tokenizer is not None:
        # Save the text vocabulary only: the loader adds the image tokens itself, with checked ids.
        base = _base_tokenizer(tokenizer, model.config.vocab_size)
        base.save_pretrained(str(folder))
    return folder


def _base_tokenizer(tokenizer: Any, vocab_size: int) -> Any:
    if len(tokenizer) == vocab_size:
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise RadFMLoadError("can only re-save a tokenizer without image tokens or a fast tokenizer")
    raw = json.loads(tokenizer.backend_tokenizer.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["id"] < vocab_size]
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(raw)),
        unk_token=tokenizer.convert_ids_to_tokens(0),
        bos_token=tokenizer.convert_ids_to_tokens(1),
        eos_token=tokenizer.convert_ids_to_tokens(2),
        pad_token=tokenizer.convert_ids_to_tokens(0),
    )
