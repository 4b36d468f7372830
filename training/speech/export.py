"""Export a fine-tuned HF Whisper to the formats the speech specialist loads: openai-whisper `.pt` and CTranslate2.

The HF → openai-whisper key map follows the two implementations' module names (both are the same
network: conv stem, pre-LN transformer encoder, decoder with self- and cross-attention, logits tied to
the token embedding). CTranslate2's own converter (`ctranslate2.converters.TransformersConverter`)
writes the CT2 folder that faster-whisper reads.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch

# (HF pattern, openai-whisper replacement), applied in order to each parameter name.
_KEY_MAP = [
    (r"^model\.encoder\.embed_positions\.weight$", "encoder.positional_embedding"),
    (r"^model\.decoder\.embed_positions\.weight$", "decoder.positional_embedding"),
    (r"^model\.decoder\.embed_tokens\.", "decoder.token_embedding."),
    (r"^model\.encoder\.layer_norm\.", "encoder.ln_post."),
    (r"^model\.decoder\.layer_norm\.", "decoder.ln."),
    (r"^model\.(encoder|decoder)\.layers\.", r"\1.blocks."),
    (r"^model\.encoder\.conv", "encoder.conv"),
    (r"\.self_attn_layer_norm\.", ".attn_ln."),
    (r"\.encoder_attn_layer_norm\.", ".cross_attn_ln."),
    (r"\.final_layer_norm\.", ".mlp_ln."),
    (r"\.self_attn\.", ".attn."),
    (r"\.encoder_attn\.", ".cross_attn."),
    (r"\.q_proj\.", ".query."),
    (r"\.k_proj\.", ".key."),
    (r"\.v_proj\.", ".value."),
    (r"\.out_proj\.", ".out."),
    (r"\.fc1\.", ".mlp.0."),
    (r"\.fc2\.", ".mlp.2."),
]


def openai_dims(config: object) -> dict[str, int]:
    """openai-whisper ModelDimensions of an HF WhisperConfig."""
    return {
        "n_mels": config.num_mel_bins,
        "n_audio_ctx": config.max_source_positions,
        "n_audio_state": config.d_model,
        "n_audio_head": config.encoder_attention_heads,
        "n_audio_layer": config.encoder_layers,
        "n_vocab": config.vocab_size,
        "n_text_ctx": config.max_target_positions,
        "n_text_state": config.d_model,
        "n_text_head": config.decoder_attention_heads,
        "n_text_layer": config.decoder_layers,
    }


def openai_state_dict(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for name, tensor in hf_state.items():
        if name == "proj_out.weight":  # tied to the token embedding in both implementations
            continue
        for pattern, replacement in _KEY_MAP:
            name = re.sub(pattern, replacement, name)
        out[name] = tensor.detach().clone().float()
    return out


def export_openai(model: object, path: Path) -> Path:
    """Write `{'dims', 'model_state_dict'}` and prove it loads strictly into openai-whisper's `Whisper`."""
    from whisper.model import ModelDimensions, Whisper

    dims = openai_dims(model.config)
    state = openai_state_dict(model.state_dict())
    Whisper(ModelDimensions(**dims)).load_state_dict(state, strict=True)  # every key mapped, none left over
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"dims": dims, "model_state_dict": state}, path)
    return path


def export_ctranslate2(hf_dir: Path, out_dir: Path, quantization: str | None = None) -> Path:
    """CTranslate2 Whisper folder (model.bin, config.json, vocabulary, tokenizer.json) from a saved HF model."""
    from ctranslate2.converters import TransformersConverter

    if out_dir.exists():
        shutil.rmtree(out_dir)
    copy = [name for name in ("tokenizer.json", "preprocessor_config.json") if (hf_dir / name).is_file()]
    TransformersConverter(str(hf_dir), copy_files=copy, load_as_float16=False).convert(
        str(out_dir), quantization=quantization
    )
    return out_dir
