"""Ask MedVInT-TD about one 2D image, as the authors' test scripts do.

Prompts (PMC_QA_Dataset, test mode): `Question: {q}Choices: A:{a} B:{b} ...The Answer is:` for a multiple-choice
question and `Question: {q}The Answer is:` for an open ("blank") one, tokenised with LLaMA's bos first; the 32 visual
embeddings go before the bos. The spacing is the authors' string concatenation: `'Question: ' + q + 'Choices:' +
the choice cells + 'The Answer is:'`. The choice cells of PMC-VQA's CSV are `A:Diffuse uptake pattern` (dataset
card) and the test code rewrites `' A:'` inside them, so each cell is taken to start with one space, with none
after the colon and none at its end [I: the exact whitespace of the cells is a guess].

Multiple choice, one forward pass: the next-token logits after the prompt, restricted to the first token of each
choice's letter (`' A'` and `'A'`, whichever the tokenizer makes), give the chosen option and its probability among
the choices (the authors' test takes the arg-max next token). The same pass continues greedily into a short
answer, which is matched to the choices by difflib.SequenceMatcher ratio, the authors' string similarity
(`find_most_similar_index`: the first highest ratio; none when every ratio is 0); both are returned.
Open questions: greedy generation of up to 50 new tokens (the authors' `generate_long_sentence`).
Generation stops at id 2 (LLaMA's eos) or id 1: the authors' dataset sets eos_token_id = 1 and appends it after
every training answer, so the fine-tuned model ends its answers with id 1.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from medagent.specialists.medvint.load import MedVInTBundle

LETTERS = "ABCDEFGH"
CHOICE_NEW_TOKENS = 24  # a letter, a colon and a choice's words
OPEN_NEW_TOKENS = 50
STOP_IDS = (2, 1)


def _clean(text: str, what: str) -> str:
    text = " ".join(str(text).split())
    if not text:
        raise ValueError(f"the {what} is empty")
    return text


def choice_prompt(question: str, choices: list[str]) -> str:
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{len(choices)} choices given; MedVInT-TD takes 2 to {len(LETTERS)} (it was trained on 4)")
    cells = "".join(f" {letter}:{_clean(choice, 'choice')}" for letter, choice in zip(LETTERS, choices, strict=False))
    return f"Question: {_clean(question, 'question')}Choices:{cells}The Answer is:"


def open_prompt(question: str) -> str:
    return f"Question: {_clean(question, 'question')}The Answer is:"


def encode(tokenizer, text: str) -> list[int]:  # noqa: ANN001 - any HF tokenizer
    """bos + the text's ids (bos written out: LLaMA's tokenizer adds it, a plain word-level one does not)."""
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else 1
    return [bos, *tokenizer(text, add_special_tokens=False)["input_ids"]]


def continuation_token(tokenizer, prompt_ids: list[int], prompt: str, continuation: str) -> int:  # noqa: ANN001
    """The first token the tokenizer writes for `continuation` right after `prompt`."""
    full = encode(tokenizer, prompt + continuation)
    if full[: len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids)]
    return tokenizer(continuation, add_special_tokens=False)["input_ids"][0]


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b).ratio()


def most_similar(text: str, options: list[str]) -> tuple[int | None, float]:
    """(index of the first most similar option, its ratio); (None, 0.0) when nothing matches at all."""
    best, best_ratio = None, 0.0
    for index, option in enumerate(options):
        ratio = similarity(option, text)
        if ratio > best_ratio:
            best, best_ratio = index, ratio
    return best, best_ratio


@dataclass
class ChoiceAnswer:
    letter: str
    choice: str
    probability: float  # among the choices' letters, from the next-token logits
    probabilities: list[float]  # per choice, in order
    generated: str  # the greedy continuation
    similar_index: int | None  # the choice the continuation is most similar to
    similarity: float


@torch.inference_mode()
def generate(bundle: MedVInTBundle, prompt: str, pixels: torch.Tensor, max_new_tokens: int) -> tuple[str, torch.Tensor]:
    """Greedy continuation of the prompt about `pixels` (3, S, S): (decoded text, next-token logits after the prompt)."""
    size = bundle.config.image_size
    if tuple(pixels.shape) != (3, size, size):
        raise ValueError(f"image tensor of shape {list(pixels.shape)} does not match the model's 3 x {size} x {size}")
    device = bundle.device
    ids = torch.tensor([encode(bundle.tokenizer, prompt)], dtype=torch.long, device=device)
    embeds = bundle.model.input_embeddings(ids, pixels[None].to(device))
    out = bundle.model.llamacasual.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones(embeds.shape[:2], dtype=torch.long, device=device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(STOP_IDS),
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    new = [t for t in out.sequences[0].tolist() if t not in STOP_IDS]
    return bundle.tokenizer.decode(new, skip_special_tokens=True).strip(), out.logits[0][0].float()


def answer_open(bundle: MedVInTBundle, question: str, pixels: torch.Tensor, max_new_tokens: int = OPEN_NEW_TOKENS) -> str:
    return generate(bundle, open_prompt(question), pixels, max_new_tokens)[0]


def answer_choices(
    bundle: MedVInTBundle,
    question: str,
    choices: list[str],
    pixels: torch.Tensor,
    max_new_tokens: int = CHOICE_NEW_TOKENS,
) -> ChoiceAnswer:
    prompt = choice_prompt(question, choices)
    letters = LETTERS[: len(choices)]
    prompt_ids = encode(bundle.tokenizer, prompt)
    candidates = [
        sorted({continuation_token(bundle.tokenizer, prompt_ids, prompt, f" {letter}:"),
                continuation_token(bundle.tokenizer, prompt_ids, prompt, f"{letter}:")})
        for letter in letters
    ]  # fmt: skip
    text, logits = generate(bundle, prompt, pixels, max_new_tokens)
    per_letter = torch.stack([logits[ids].max() for ids in candidates])
    probabilities = per_letter.softmax(-1)
    best = int(probabilities.argmax())
    cells = [f"{letter}:{' '.join(choice.split())}" for letter, choice in zip(letters, choices, strict=True)]
    index, ratio = most_similar(text, cells)
    return ChoiceAnswer(
        letter=letters[best],
        choice=choices[best],
        probability=float(probabilities[best]),
        probabilities=[float(p) for p in probabilities],
        generated=text,
        similar_index=index,
        similarity=ratio,
    )
