"""Load MedVInT-TD from local folders: the HF-Trainer checkpoint, the LLaMA base when it is not inside, the tokenizer.

Folder layout (what `medagent doctor` asks the user to assemble):

    <path>/pytorch_model.bin        the HF-Trainer checkpoint of the authors' QA_model (HF xmcmic/MedVInT-TD, a folder
                                    such as VQA_lora_PMC_LLaMA_PMCCLIP/choice/checkpoint-4000); model.safetensors too
    <path>/tokenizer.model          the LLaMA tokenizer (+ tokenizer_config.json), here or in <llama_path>
    <path>/medvint_config.json      optional: only for non-default sizes (tiny test models, fine-tunes)
    <llama_path>/                   optional: an HF LlamaForCausalLM folder (config.json, model*.safetensors or
                                    pytorch_model*.bin) with the base weights, for a checkpoint that holds only
                                    the LoRA and the non-LLM parts; its config.json sizes the LLaMA

The load is strict: every key of the architecture must come from the checkpoint or the base folder, and every key
there must belong to the architecture; the error names the first mismatches. Two kinds of key differ by PEFT
version and are renamed to what the installed PEFT expects: the LoRA matrices (`lora_A.weight`, PEFT < 0.3, or
`lora_A.default.weight`) and the wrapped linear layers (`q_proj.weight`, PEFT < 0.7, or `q_proj.base_layer.weight`).
Nothing is downloaded.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medagent.specialists import _checkpoints as checkpoints
from medagent.specialists.medvint.model import MedVInT, MedVInTConfig

WEIGHT_NAMES = ("pytorch_model.bin", "model.safetensors")
CONFIG_NAME = "medvint_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
LLM_PREFIX = "llamacasual.base_model.model."
LORA_KEY = re.compile(r"\.lora_(A|B)(\.[^.]+)?\.weight$")
# Rotary tables that transformers < 4.31 saved as persistent buffers; current LLaMA computes them.
LEGACY_BUFFER = re.compile(r"\.rotary_emb\.inv_freq$")
# The LLaMA config.json keys that size the model (the rest is provenance: architectures, torch_dtype, ...).
LLAMA_KEYS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "rms_norm_eps", "max_position_embeddings", "tie_word_embeddings", "rope_theta", "rope_scaling",
    "hidden_act", "pad_token_id", "bos_token_id", "eos_token_id",
)  # fmt: skip
LAYOUT_NOTE = (
    "decoder.* key names are the layout from the authors' code (a DETR-style pre-norm decoder: "
    "layers.N.{self_attn,multihead_attn,linear1,linear2,norm1,norm2,norm3}, norm), not yet checked against released weights"
)


class MedVInTLoadError(ValueError):
    """The weights folder is incomplete or does not fit the architecture; the message names the file and keys."""


@dataclass
class MedVInTBundle:
    model: MedVInT
    tokenizer: Any
    config: MedVInTConfig
    weights: Path
    base: str  # where the LLaMA base weights came from: "checkpoint" or the llama_path folder
    ignored_keys: list[str] = field(default_factory=list)  # legacy buffers dropped
    renamed_keys: int = 0  # checkpoint keys renamed to the installed PEFT's naming

    @property
    def device(self) -> torch.device:
        return self.model.query_embed.weight.device


def find_weights(path: Path) -> Path:
    """The checkpoint file in a folder (or the file itself)."""
    return checkpoints.find_weights(Path(path), WEIGHT_NAMES, "MedVInT-TD", MedVInTLoadError)


def tokenizer_folder(path: Path, llama_path: Path | None) -> Path | None:
    """The first of the checkpoint folder and the LLaMA folder that holds tokenizer files."""
    for folder in (path, llama_path):
        if folder is not None and any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
            return Path(folder)
    return None


def missing_files(path: Path, llama_path: Path | None = None) -> list[str]:
    """What the folders still lack, as lines a user can act on (cheap: no weights are read)."""
    path = Path(path).expanduser()
    if not path.exists():
        return [f"[medvint] path {path} does not exist"]
    problems = []
    try:
        find_weights(path)
    except MedVInTLoadError as exc:
        problems.append(str(exc))
    if llama_path is not None and not Path(llama_path).expanduser().is_dir():
        problems.append(f"[medvint] llama_path {llama_path} is not a folder")
    folder = path if path.is_dir() else path.parent
    if tokenizer_folder(folder, Path(llama_path).expanduser() if llama_path else None) is None:
        problems.append(
            f"no LLaMA tokenizer (tokenizer.model or tokenizer.json) in {folder}"
            + (f" or {llama_path}" if llama_path else "")
        )
    return problems


def canonical(key: str) -> str:
    """A key without PEFT's version-dependent parts: `.base_layer` and the adapter name after lora_A/lora_B."""
    key = key.replace(".base_layer.", ".")
    return re.sub(r"\.(lora_[AB])\.default\.", r".\1.", key)


def rename_peft_keys(state: dict[str, torch.Tensor], expected: dict[str, Any]) -> tuple[dict[str, torch.Tensor], int]:
    """The state with each key renamed to the installed PEFT's spelling of it; (state, how many were renamed)."""
    spelling = {canonical(k): k for k in expected}
    renamed: dict[str, torch.Tensor] = {}
    count = 0
    for key, tensor in state.items():
        target = spelling.get(canonical(key), key)
        if target in renamed:
            raise MedVInTLoadError(f"{key} and another key both name {target} (two PEFT namings mixed in one checkpoint)")
        count += target != key
        renamed[target] = tensor
    return renamed, count


def read_llama_config(llama_path: Path) -> dict[str, Any]:
    config_file = Path(llama_path) / "config.json"
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MedVInTLoadError(f"{config_file}: not a readable LLaMA config.json ({exc})") from exc
    return {k: raw[k] for k in LLAMA_KEYS if k in raw}


def read_config(folder: Path, llama_path: Path | None, state: dict[str, torch.Tensor]) -> MedVInTConfig:
    """medvint_config.json when present; else the published sizes, the LLaMA from llama_path's config.json (or
    LLaMA-7B) and the vocabulary the checkpoint's embedding has."""
    config_file = folder / CONFIG_NAME
    if config_file.is_file():
        try:
            return MedVInTConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise MedVInTLoadError(f"{config_file}: not a valid MedVInT config ({exc})") from exc
    config = MedVInTConfig()
    if llama_path is not None and (Path(llama_path) / "config.json").is_file():
        config.llama = {**config.llama, **read_llama_config(llama_path)}
    words = state.get(LLM_PREFIX + "model.embed_tokens.weight")
    if words is not None:
        config.llama["vocab_size"] = int(words.shape[0])
    return config


def base_weight_files(llama_path: Path) -> list[Path]:
    folder = Path(llama_path)
    for pattern in ("model*.safetensors", "pytorch_model*.bin"):
        found = sorted(folder.glob(pattern))
        if found:
            return found
    raise MedVInTLoadError(f"{folder}: no LLaMA weights (model*.safetensors or pytorch_model*.bin)")


def read_base(llama_path: Path) -> dict[str, torch.Tensor]:
    """An HF LlamaForCausalLM folder's weights (all shards), keyed as inside MedVInT (`llamacasual.base_model.model.`)."""
    state: dict[str, torch.Tensor] = {}
    for file in base_weight_files(llama_path):
        state.update(checkpoints.read_state_dict(file, MedVInTLoadError))
    return {LLM_PREFIX + k: v for k, v in state.items()}


def is_base_key(key: str) -> bool:
    """A LLaMA weight that is not a LoRA matrix (what the base folder supplies)."""
    return key.startswith(LLM_PREFIX) and not LORA_KEY.search(key)


def load_tokenizer(folder: Path, llama_path: Path | None, vocab_size: int) -> Any:
    from transformers import AutoTokenizer

    where = tokenizer_folder(folder, llama_path)
    if where is None:
        raise MedVInTLoadError(
            f"no LLaMA tokenizer in {folder}{f' or {llama_path}' if llama_path else ''}: put tokenizer.model "
            "(+ tokenizer_config.json) of the LLaMA the checkpoint was trained on beside pytorch_model.bin"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        raise MedVInTLoadError(f"{where}: cannot read the tokenizer ({exc})") from exc
    if len(tokenizer) > vocab_size:
        raise MedVInTLoadError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the LLaMA's vocabulary is {vocab_size}; "
            "use the tokenizer that belongs to these weights"
        )
    return tokenizer


def parameter_count(config: MedVInTConfig) -> int:
    """Parameters of a config, counted on the meta device: no memory used."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = MedVInT(config)
    return sum(p.numel() for p in model.parameters())


def memory_needed(parameters: int, dtype: str) -> int:
    """Bytes for the weights plus ~10% for activations at batch 1 (one 512 x 512 image, a 512-token prompt)."""
    return int(parameters * DTYPES[dtype].itemsize * 1.1)


def _check_device(parameters: int, dtype: str, device: str) -> None:
    if not device.startswith("cuda"):
        return
    if not torch.cuda.is_available():
        raise MedVInTLoadError(f"device '{device}' asked for but no CUDA GPU is visible")
    need, free = memory_needed(parameters, dtype), torch.cuda.mem_get_info(torch.device(device))[0]
    if need > free:
        raise MedVInTLoadError(
            f"MedVInT-TD in {dtype} needs about {need / 2**30:.1f} GiB of GPU memory, {device} has {free / 2**30:.1f} GiB "
            "free; use bf16 or a larger card"
        )


def check_keys(model: MedVInT, state: dict[str, torch.Tensor], source: Path, base: str) -> None:
    missing, unexpected, wrong = checkpoints.mismatches(model.state_dict(), state)
    if not (missing or unexpected or wrong):
        return
    hint = ""
    if missing and base == "checkpoint" and all(is_base_key(k) for k in missing):
        hint = "; the checkpoint lacks LLaMA base weights: set [medvint] llama_path to the LLaMA folder it was trained on"
    elif any(k.startswith("decoder.") for k in missing + unexpected):
        hint = f" ({LAYOUT_NOTE})"
    raise MedVInTLoadError(
        f"{source}: weights do not fit the MedVInT-TD architecture: {checkpoints.summary(missing, unexpected, wrong)}{hint}"
    )


def load_medvint(
    path: Path, llama_path: Path | None = None, dtype: str = "bf16", device: str = "cpu"
) -> MedVInTBundle:
    """Build MedVInT-TD, load the checkpoint (+ the base from `llama_path` when the checkpoint has none) strictly."""
    from accelerate import init_empty_weights

    if dtype not in DTYPES:
        raise MedVInTLoadError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    weights = find_weights(Path(path).expanduser())
    folder = weights.parent
    llama_path = Path(llama_path).expanduser() if llama_path is not None else None
    state = checkpoints.read_state_dict(weights, MedVInTLoadError)
    config = read_config(folder, llama_path, state)
    tokenizer = load_tokenizer(folder, llama_path, config.vocab_size)
    # Parameters on meta, buffers real (the rotary tables are computed, not loaded).
    with init_empty_weights(include_buffers=False):
        model = MedVInT(config)
    parameters = sum(p.numel() for p in model.parameters())
    _check_device(parameters, dtype, device)
    expected = model.state_dict()
    state, renamed = rename_peft_keys(state, expected)
    base = "checkpoint"
    if not any(is_base_key(k) for k in state):
        if llama_path is None:
            raise MedVInTLoadError(
                f"{weights}: holds only the LoRA and the vision/decoder weights, no LLaMA base: set [medvint] "
                "llama_path to the HF folder of the LLaMA it was trained on"
            )
        base_state, base_renamed = rename_peft_keys(read_base(llama_path), expected)
        clash = sorted(set(base_state) & set(state))
        if clash:
            raise MedVInTLoadError(f"{llama_path}: {len(clash)} keys are also in {weights.name} (e.g. {clash[0]})")
        state.update(base_state)
        renamed += base_renamed
        base = str(llama_path)
    ignored = [k for k in state if LEGACY_BUFFER.search(k) and k not in expected]
    for key in ignored:
        del state[key]
    check_keys(model, state, weights, base)
    torch_dtype = DTYPES[dtype]
    state = {k: v.to(device=device, dtype=torch_dtype if v.is_floating_point() else v.dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device=device)  # the computed buffers
    model.eval()
    return MedVInTBundle(
        model=model, tokenizer=tokenizer, config=config, weights=weights, base=base, ignored_keys=ignored,
        renamed_keys=renamed,
    )  # fmt: skip


def save_checkpoint(
    model: MedVInT, tokenizer: Any | None, folder: Path, peft_naming: str = "released", base_folder: Path | None = None
) -> Path:
    """Write a model as the authors' HF Trainer did: a flat `pytorch_model.bin` (+ medvint_config.json, tokenizer).

    peft_naming: "released" writes the LoRA keys without the adapter name and the wrapped layers without
    `base_layer` (`q_proj.weight`, `q_proj.lora_A.weight`: the naming the authors' key-rename hint starts from [I]),
    "installed" writes the installed PEFT's own names. base_folder: the LLaMA base goes there as an HF folder
    (config.json + model.safetensors) and stays out of the checkpoint, which then holds the LoRA and non-LLM parts.
    """
    if peft_naming not in ("released", "installed"):
        raise ValueError(f"peft_naming '{peft_naming}' is not 'released' or 'installed'")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if base_folder is not None:
        from safetensors.torch import save_file

        base_folder = Path(base_folder)
        base_folder.mkdir(parents=True, exist_ok=True)
        base = {canonical(k)[len(LLM_PREFIX) :]: v for k, v in state.items() if is_base_key(canonical(k))}
        save_file(base, str(base_folder / "model.safetensors"), metadata={"format": "pt"})
        llama = model.llamacasual.get_base_model().config.to_dict()
        (base_folder / "config.json").write_text(json.dumps(llama, indent=2), encoding="utf-8")
        state = {k: v for k, v in state.items() if not is_base_key(canonical(k))}
    if peft_naming == "released":
        state = {canonical(k): v for k, v in state.items()}
    torch.save(state, folder / "pytorch_model.bin")
    (folder / CONFIG_NAME).write_text(json.dumps(model.config.to_dict(), indent=2), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(str(folder))
    return folder
