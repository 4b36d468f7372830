"""Ask RadFM a question about one or more scans: tokenise the prompt, run generate, decode the answer."""

from __future__ import annotations

import torch

from medagent.specialists.radfm.load import RadFMBundle
from medagent.specialists.radfm.preprocess import build_prompt, stack_images


def encode_prompt(bundle: RadFMBundle, question: str, n_images: int) -> torch.Tensor:
    """Prompt ids (1, L): bos + images + question (bos explicitly, as LLaMA's tokenizer adds it)."""
    prompt = build_prompt(question, n_images, bundle.config.perceiver.num_latents)
    ids = bundle.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return torch.tensor([[1, *ids]], dtype=torch.long)


def answer(
    bundle: RadFMBundle,
    question: str,
    images: list[torch.Tensor],
    max_new_tokens: int = 64,
) -> str:
    """Greedy answer to `question` about `images` ((3, S, S, D) tensors from preprocess)."""
    if len(images) > bundle.config.max_images:
        raise ValueError(f"{len(images)} images given, RadFM takes at most {bundle.config.max_images}")
    size = bundle.config.vision.image_size
    for image in images:
        if tuple(image.shape[1:3]) != (size, size):
            raise ValueError(f"image of {tuple(image.shape)} does not match the model's {size}x{size} input")
    device = bundle.device
    lang_x = encode_prompt(bundle, question, len(images)).to(device)
    vision_x = stack_images(images).to(device) if images else None
    new_ids = bundle.model.generate(lang_x, vision_x, max_new_tokens=max_new_tokens)
    return bundle.tokenizer.decode(new_ids[0].tolist(), skip_special_tokens=True).strip()
