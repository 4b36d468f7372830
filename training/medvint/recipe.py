"""Fine-tune MedVInT-TD (PMC-VQA) on visual question answering: LoRA on LLaMA, the vision side trained in full.

Read top to bottom: config -> data -> model -> loop -> checkpoint. The saved folder is what
`medagent.specialists.medvint.load.load_medvint(folder)` reads strictly: a flat `pytorch_model.bin` as the authors'
HF Trainer wrote it (the whole QA_model: `vision_model.*`, `query_embed.weight`, `decoder.*`, `fc_l1/fc_l2`,
`llamacasual.base_model.model.*` with the LoRA still separate -- MedVInT checkpoints carry the PEFT-wrapped keys, so
nothing is merged), in the released PEFT naming (`q_proj.weight`, `q_proj.lora_A.weight`), plus
`medvint_config.json` and the tokenizer files.

What the recipe takes from the authors (../shared/MODELS.md section 5 and their src/MedVInT_TD code; [V] seen there,
[I] inferred):
- Prompts (PMC_QA_Dataset): choice task `Question: {q}Choices: A:{a} B:{b} ...The Answer is:` and blank task
  `Question: {q}The Answer is:`, built by specialists/medvint/infer.py's choice_prompt/open_prompt, so training and
  inference see the very same strings. The target follows the prompt directly: the choice cell ` B:{choice}` for
  the choice task (the authors' test scores the first generated token, the letter [V]), ` {answer}` (the cell
  without its letter, as their `replace('A:', '')` leaves it) for the blank task. Sequence: bos + prompt + target
  + id 1 (their dataset sets `eos_token_id = 1` and appends it after every answer [V]; infer.py stops at 1 or 2),
  cut to `train.max_length` (their seq_length 512, the text only; the 32 visual positions come on top). Labels:
  -100 on the 32 visual positions, on bos + prompt (the length of the prompt's own ids, as theirs) and on padding;
  the loss is the causal LM cross-entropy over the answer tokens and the closing id 1.
- What trains: PEFT freezes the LLaMA and leaves the LoRA matrices (q_proj, v_proj; r 8, alpha 32, dropout 0.1 --
  they come with the checkpoint and its medvint_config.json) trainable; the authors hand the whole QA_model to the
  HF Trainer, whose optimizer takes every parameter that requires grad, so the query embeddings, the decoder, fc_l1/
  fc_l2 and the PMC-CLIP ResNet trunk train in full [I: from their model code, which freezes nothing outside PEFT].
  `train.vision_encoder: false` keeps the trunk frozen (and its BatchNorm statistics fixed) instead.
- Images: train transform RandomResizedCrop(512, scale 0.2-1, bicubic) + RandomHorizontalFlip + ImageNet mean/std
  (`data.augment: true`); their RandomAugment(2, 7, ...) on top is not reproduced. `data.augment: false` uses the
  test transform (specialists/medvint/preprocess.py: 512 x 512 bicubic resize), which the smoke run takes.
- Optimisation (gpu.yaml): HF Trainer defaults (AdamW, betas 0.9/0.999, eps 1e-8, gradient clipping at 1.0), bf16,
  cosine with 3 % warm-up, weight decay 0, lr 2e-5; batch 8 x accumulation 8 and 5 epochs are MODELS.md's MedVInT-TE
  settings (the TD training script for PMC-VQA was not seen; their TD downstream script uses the same lr, warm-up,
  cosine, bf16/tf32 and batch 8 per GPU).

Data (`data.path`):
- PMC-VQA's CSV (HF dataset xmcmic/PMC-VQA: train.csv / test.csv, images.zip): columns `Figure_path`, `Question`,
  `Answer` (the card's older spelling `Anwser` too), `Choice A`..`Choice D` (cells like `A:Diffuse uptake pattern`;
  the letter prefix is taken off), `Answer_label` (the letter). Other columns are ignored. The answer's letter is
  `Answer_label`, else the choice equal to `Answer` (case and spacing ignored). `Figure_path` is relative to
  `data.image_root` (the unzipped images folder; default: the CSV's folder).
- JSONL lines `{"image": "images/x.jpg", "question": "...", "answer": "...", "choices": ["...", ...]}` (choices
  optional: a question without them is a blank one); VQA-RAD's dev.jsonl shape is read too (`options: {"A": ..}`,
  `answer_idx`, `fold`; `data.fold` keeps matching lines). `image` is relative to `data.image_root` (default: the
  JSONL's folder).
- `data.task`: `choice` (a row with choices is asked as multiple choice, one without as a blank question) or
  `blank` (every row open, as the authors' blank checkpoint). A row without question, answer or image, or whose
  answer is not one of its choices, fails with `file:line: ...`.
- `data.synthetic: {image_size: S}` (smoke): eight distinct pictures drawn with PIL, each with its own question and
  four choices (the right letters two each of A-D), written as such a JSONL under `output_dir/data/`.

Model (`model.base`): a MedVInT-TD checkpoint folder as load_medvint reads it (pytorch_model.bin + tokenizer files,
`model.llama_path` for one that holds only the LoRA and the vision side); LoRA rank, alpha and dropout come with it
(the checkpoint's medvint_config.json, else the published r 8 / alpha 32 / 0.1). Everything loads in float32;
`model.frozen_dtype: bf16` then casts the frozen LLaMA weights to bf16 (half the memory; the HF Trainer's bf16 keeps
them in float32), `model.gradient_checkpointing` is the authors' `checkpointing` flag, `train.tf32` theirs too.
`model.tiny: true` (smoke) builds specialists/medvint/tiny.py's toy model with a word-level tokenizer over the data's
prompts and answers in `output_dir/base` first (the untrained reference of the round trip).

Several processes: torchrun (training/common.py starts the group); the model is replicated with DDP. Every rank takes
its padded share of each epoch's shuffled order (`rank_batches`), so all ranks run as many micro-batches; the batch
plan is one iterable over the whole run (the DataLoader's workers start once, and a resumed run skips the batches it
has done without decoding their images: why the recipe does not take `common.loader`). Crops and flips are drawn from
(seed, epoch, index), not from a process's random state. `train.accumulate`, `precision`, clipping and the schedule:
training/common.py's Stepper; `train.checkpoint_every` + `resume: true`: its Resume.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from medagent.specialists.medvint.infer import LETTERS, answer_choices, choice_prompt, encode, open_prompt
from medagent.specialists.medvint.load import load_medvint, save_checkpoint
from medagent.specialists.medvint.preprocess import IMAGENET_MEAN, IMAGENET_STD, image_to_tensor, medvint_transform
from medagent.specialists.medvint.tiny import build_tiny
from medagent.tools.errors import ConfigError
from medagent.training import pictures
from medagent.training.common import (
    BatchPlan,
    Resume,
    Stepper,
    TrainLog,
    ddp,
    rank_batches,
    setup,
    threads,
    warmup_cosine,
)
from medagent.training.config import load_config

ANSWER_END = 1  # the authors' dataset: tokenizer.eos_token_id = 1, appended after every answer
TASKS = ("choice", "blank")
LETTER_PREFIX = re.compile(r"^\s*([A-H])\s*:\s*")

# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Row:
    image: Path
    question: str
    answer: str  # the answer's text, without a letter
    choices: tuple[str, ...]  # empty: an open question
    letter: str | None  # the right choice's letter
    where: str  # "file:line", for messages


def _text(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _row(where: str, image: Any, question: Any, answer: Any, choices: list[Any], letter: Any, root: Path) -> Row:
    """One checked row: the answer's letter resolved (given, or the choice equal to the answer)."""
    image, question = _text(image), _text(question)
    answer = LETTER_PREFIX.sub("", _text(answer))
    if not image:
        raise ConfigError(f"{where}: a row needs an image path")
    if not question:
        raise ConfigError(f"{where}: a row needs a question")
    cells = [LETTER_PREFIX.sub("", _text(c)) for c in choices]
    while cells and not cells[-1]:
        cells.pop()  # fewer than four choices: empty trailing cells
    if cells and (not 2 <= len(cells) <= len(LETTERS) or not all(cells)):
        raise ConfigError(f"{where}: {len(cells)} choices with empty ones among them; give 2 to {len(LETTERS)}")
    letter = _text(letter).upper() or None
    if letter is not None and cells:
        if letter not in LETTERS[: len(cells)]:
            raise ConfigError(f"{where}: answer letter '{letter}' names none of the {len(cells)} choices")
        answer = answer or cells[LETTERS.index(letter)]
    elif cells and answer:
        matches = [i for i, c in enumerate(cells) if c.lower() == answer.lower()]
        if not matches:
            raise ConfigError(f"{where}: the answer '{answer}' is none of the choices {cells}")
        letter = LETTERS[matches[0]]
    if not answer:
        raise ConfigError(f"{where}: a row needs an answer")
    return Row(root / image, question, answer, tuple(cells), letter if cells else None, where)


def read_csv_rows(path: Path, root: Path) -> list[tuple[int, Row]]:
    """PMC-VQA's CSV: Figure_path, Question, Answer (or Anwser), Choice A-D, Answer_label; line numbers as in the file."""
    rows = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or [])
        answer_column = "Answer" if "Answer" in fields else "Anwser"
        missing = {"Figure_path", "Question", answer_column} - fields
        if missing:
            raise ConfigError(f"{path}:1: the CSV header has no {', '.join(sorted(missing))} column (PMC-VQA's layout)")
        choice_columns = [f"Choice {letter}" for letter in LETTERS if f"Choice {letter}" in fields]
        start = reader.line_num + 1
        for raw in reader:
            where = f"{path}:{start}"
            choices = [raw.get(c) for c in choice_columns]
            rows.append((start, _row(where, raw.get("Figure_path"), raw.get("Question"), raw.get(answer_column),
                                     choices, raw.get("Answer_label"), root)))  # fmt: skip
            start = reader.line_num + 1
    return rows


def read_jsonl_rows(path: Path, root: Path, fold: str | None) -> list[tuple[int, Row]]:
    """Lines {"image", "question", "answer", "choices"?}; VQA-RAD's {"options": {"A": ..}, "answer_idx", "fold"} too."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: not a JSON object")
        if fold and raw.get("fold", fold) != fold:
            continue
        choices = raw.get("choices")
        if choices is None and isinstance(raw.get("options"), dict):
            choices = [raw["options"][k] for k in sorted(raw["options"])]
        if choices is not None and not isinstance(choices, list):
            raise ConfigError(f"{where}: 'choices' must be a list of strings")
        letter = raw.get("answer_label", raw.get("answer_idx"))
        rows.append((number, _row(where, raw.get("image"), raw.get("question"), raw.get("answer"), choices or [],
                                  letter, root)))  # fmt: skip
    return rows


def read_rows(data: dict[str, Any]) -> list[Row]:
    path = Path(data["path"]).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file (data.path)")
    root = Path(data.get("image_root") or path.parent).expanduser()
    if path.suffix.lower() == ".csv":
        numbered = read_csv_rows(path, root)
    else:
        numbered = read_jsonl_rows(path, root, data.get("fold"))
    rows = [row for _, row in numbered][: int(data["limit"])] if data.get("limit") else [row for _, row in numbered]
    if not rows:
        raise ConfigError(f"{path}: no question-answer rows (fold {data.get('fold')!r})")
    return rows


def texts(row: Row, task: str) -> tuple[str, str]:
    """(prompt, target): the authors' prompt for the task and the text that follows it."""
    if task == "choice" and row.choices:
        assert row.letter is not None
        return choice_prompt(row.question, list(row.choices)), f" {row.letter}:{row.choices[LETTERS.index(row.letter)]}"
    return open_prompt(row.question), f" {row.answer}"


# ---- the smoke run's synthetic pairs: eight pictures that differ in shape, place, colour and texture


def _cross(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.rectangle((s * 0.1, s * 0.62, s * 0.45, s * 0.72), fill=(240, 220, 20))
    draw.rectangle((s * 0.23, s * 0.5, s * 0.33, s * 0.85), fill=(240, 220, 20))


# (question, choices, index of the answer, background, drawing): the right letters are A, B, C, D twice each, so a
# model that always picks one letter gets two of eight.
SYNTHETIC = (
    ("Where is the bright disc?", ("upper left", "lower right", "centre", "lower left"), 0, (70, 70, 70), pictures.disc),
    ("What shape is in the lower right?", ("circle", "square", "triangle", "cross"), 1, (200, 200, 200), pictures.square),
    ("What colour is the triangle?", ("blue", "green", "red", "yellow"), 2, (245, 240, 225), pictures.triangle),
    ("What is drawn on the black background?", ("a disc", "a square", "stripes", "a ring"), 3, (0, 0, 0), pictures.ring),
    ("Which way do the stripes run?", ("horizontal", "vertical", "diagonal", "circular"), 0, (235, 235, 250), pictures.stripes),
    ("What pattern fills the image?", ("dots", "checkerboard", "stripes", "waves"), 1, (255, 255, 255), pictures.checkerboard),
    ("What colour is the cross?", ("red", "blue", "yellow", "white"), 2, (90, 30, 110), _cross),
    ("What is scattered on the grey background?", ("lines", "squares", "rings", "dots"), 3, (120, 120, 120), pictures.dots),
)


def synthetic_image(index: int, size: int) -> Image.Image:
    *_, background, paint = SYNTHETIC[index]
    image = Image.new("RGB", (size, size), background)
    paint(ImageDraw.Draw(image), size)
    return image


def write_synthetic(folder: Path, size: int) -> Path:
    """The eight synthetic pictures as PNGs and their `pairs.jsonl` in `folder`; returns the JSONL."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (question, choices, answer, _, _) in enumerate(SYNTHETIC):
        synthetic_image(index, size).save(folder / f"synthetic_{index}.png")
        lines.append(json.dumps({"image": f"synthetic_{index}.png", "question": question,
                                 "answer": choices[answer], "choices": list(choices)}))  # fmt: skip
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "pairs.jsonl"


# ---- samples and batches


def open_picture(row: Row) -> Image.Image:
    """8-bit RGB; 16-bit or float pictures are stretched as the specialist does (preprocess.image_to_tensor)."""
    from medagent.specialists.pmcclip.preprocess import to_rgb

    try:
        with Image.open(row.image) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"):
                return image.convert("RGB")
            return to_rgb(np.asarray(image))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{row.where}: cannot read the image {row.image} ({exc})") from None


def train_transform(size: int) -> Any:
    """The authors' train transform, less their RandomAugment: RandomResizedCrop (scale 0.2-1, bicubic) + flip."""
    from torchvision import transforms

    return transforms.Compose([
        transforms.RandomResizedCrop((size, size), scale=(0.2, 1.0), interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])  # fmt: skip


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def sequence(tokenizer: Any, prompt: str, target: str, max_length: int) -> tuple[list[int], list[int]]:
    """(ids, labels): bos + prompt + target + id 1, the prompt's positions -100 (the authors' masking)."""
    ids = [*encode(tokenizer, prompt + target), ANSWER_END]
    masked = len(encode(tokenizer, prompt))
    labels = [-100] * masked + ids[masked:]
    return ids[:max_length], labels[:max_length]


class Questions(torch.utils.data.Dataset):
    """Item `(index, epoch)`: the picture, transformed, and its ids and labels. Read when a batch asks for it (in
    DataLoader workers with `train.num_workers`); the crop and flip are drawn from (seed, epoch, index)."""

    def __init__(self, rows: list[Row], task: str, tokenizer: Any, transform: Any, max_length: int, seed: int) -> None:
        self.rows, self.task, self.tokenizer, self.transform = rows, task, tokenizer, transform
        self.max_length, self.seed = max_length, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        row = self.rows[index]
        picture = open_picture(row)
        with torch.random.fork_rng(devices=[]):  # the crop's draws, without touching this process's random state
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            pixels = self.transform(picture)
        ids, labels = sequence(self.tokenizer, *texts(row, self.task), self.max_length)
        return {"pixels": pixels, "ids": ids, "labels": labels, "epoch": epoch}


def collate(batch: list[dict[str, Any]], query_tokens: int) -> dict[str, Any]:
    """Right-padded ids (pad 0, as the authors; causal attention never lets a prompt see the padding after it) and
    labels with -100 on the visual positions and the padding."""
    longest = max(len(item["ids"]) for item in batch)
    ids = torch.zeros(len(batch), longest, dtype=torch.long)
    labels = torch.full((len(batch), query_tokens + longest), -100, dtype=torch.long)
    for row, item in enumerate(batch):
        ids[row, : len(item["ids"])] = torch.tensor(item["ids"])
        labels[row, query_tokens : query_tokens + len(item["labels"])] = torch.tensor(item["labels"])
    pixels = torch.stack([item["pixels"] for item in batch])
    return {"input_ids": ids, "pixels": pixels, "labels": labels, "epoch": batch[0]["epoch"]}


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Causal LM cross-entropy over the labelled positions (HF's shift: position t predicts token t + 1)."""
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


# --------------------------------------------------------------------------------------------------
# Main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry point's documented signature)
    cfg = load_config(config, overrides)
    with threads(cfg):  # a smoke run's `threads: 1`, restored afterwards (training/common.py)
        return train(cfg)


def train(cfg: dict[str, Any]) -> Path:
    """The whole run for one loaded config; returns the checkpoint folder (output_dir/model)."""
    seed = int(cfg.get("seed", 0))
    out = Path(cfg["output_dir"]).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if cfg.get("strategy", "ddp") != "ddp":
        raise ConfigError(f"strategy: '{cfg['strategy']}': this recipe replicates the model (ddp only; LoRA on "
                          "a 7B LLaMA fits one GPU)")  # fmt: skip
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    data_cfg, model_cfg, train_cfg = cfg["data"], cfg["model"], cfg["train"]
    task = data_cfg.get("task", "choice")
    if task not in TASKS:
        raise ConfigError(f"data.task: '{task}' is not {' or '.join(TASKS)}")

    # ---- data: a CSV or JSONL of rows (smoke: synthetic pictures written as a JSONL first, by rank 0)
    if data_cfg.get("synthetic"):
        path = out / "data" / "pairs.jsonl"
        run.on_main(write_synthetic, path.parent, int(data_cfg["synthetic"].get("image_size", 128)))
        data_cfg = {**data_cfg, "path": str(path), "image_root": None, "fold": None}
    rows = read_rows(data_cfg)

    # ---- model: a MedVInT-TD checkpoint folder, or (smoke) a tiny random one whose tokenizer knows the data's words
    base = model_cfg.get("base")
    if model_cfg.get("tiny"):
        sentences = [prompt + target for row in rows for t in TASKS for prompt, target in [texts(row, t)]]
        run.on_main(build_tiny, out / "base", sentences, seed=seed)  # rank 0 writes it, every rank loads it
        base = out / "base"
    if not base:
        raise ConfigError("model.base: the MedVInT-TD checkpoint folder to fine-tune (or model.tiny: true)")
    llama_path = Path(model_cfg["llama_path"]).expanduser() if model_cfg.get("llama_path") else None
    bundle = load_medvint(Path(base).expanduser(), llama_path, dtype="fp32", device=str(device))
    model, tokenizer, config = bundle.model, bundle.tokenizer, bundle.config

    # What trains: the LoRA matrices (PEFT's) and the vision side -- queries, decoder, fc_l1/fc_l2, and the ResNet
    # trunk with `train.vision_encoder` (the authors'); the LLaMA stays frozen.
    vision = bool(train_cfg.get("vision_encoder", True))
    for name, parameter in model.named_parameters():
        if name.startswith("llamacasual."):
            parameter.requires_grad_(".lora_" in name)
        else:
            parameter.requires_grad_(vision or not name.startswith("vision_model."))
    frozen_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[model_cfg.get("frozen_dtype", "fp32")]
    if frozen_dtype != torch.float32:  # the frozen LLaMA in bf16 (half the memory); what trains stays float32
        for parameter in model.llamacasual.parameters():
            if not parameter.requires_grad:
                parameter.data = parameter.data.to(frozen_dtype)
    model.llamacasual.config.use_cache = False
    if model_cfg.get("gradient_checkpointing"):
        model.llamacasual.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if train_cfg.get("tf32") and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    model.train()
    if not vision:
        model.vision_model.eval()  # a frozen trunk keeps its BatchNorm statistics
    trained = ddp(model, run)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=float(train_cfg["lr"]), weight_decay=float(train_cfg.get("weight_decay", 0.0)),
                                  betas=tuple(train_cfg.get("betas", (0.9, 0.999))), eps=float(train_cfg.get("eps", 1e-8)))  # fmt: skip
    count = sum(p.numel() for p in parameters)
    run.log(f"medvint recipe: {len(rows)} rows ({task}), {count:,} trainable parameters, device {device}, "
            f"world {run.world}")  # fmt: skip

    # ---- steps: each epoch every rank runs ceil(ceil(rows / world) / batch) micro-batches; `accumulate` of them
    # make one optimizer step (training/common.py's Stepper: DDP no_sync, the precision's autocast, clipping, schedule)
    epochs, batch_size = int(train_cfg["epochs"]), int(train_cfg["batch_size"])
    total = len(rank_batches(len(rows), batch_size, run, seed, 0)) * epochs
    steps = Stepper.steps_for(total, train_cfg)
    warmup = train_cfg.get("warmup")
    warmup = int(warmup) if warmup is not None else round(float(train_cfg.get("warmup_ratio", 0.0)) * steps)
    schedule = warmup_cosine(optimizer, steps, warmup, float(train_cfg.get("min_lr_ratio", 0.0)))
    stepper = Stepper(trained, optimizer, schedule, train_cfg, run, total, parameters)
    resume = Resume(run, out, cfg)  # `resume: true` continues after out/resume.pt
    start = resume.load(model, optimizer, schedule=schedule, scaler=stepper.scaler) * stepper.accumulate

    size = config.image_size
    transform = train_transform(size) if data_cfg.get("augment") else medvint_transform(size)
    dataset = Questions(rows, task, tokenizer, transform, int(train_cfg.get("max_length", 512)), seed)
    workers = int(train_cfg.get("num_workers", 0))
    data = torch.utils.data.DataLoader(
        dataset, batch_sampler=BatchPlan(len(rows), batch_size, run, seed, epochs, start), num_workers=workers,
        collate_fn=partial(collate, query_tokens=config.query_tokens), pin_memory=device.type == "cuda",
        persistent_workers=False, generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip

    # ---- loop
    log = TrainLog(run, out, append=start > 0)
    log_every = int(train_cfg.get("log_every", 10))
    last_loss = float("nan")
    for index, batch in enumerate(data, start=start):
        epoch = batch.pop("epoch")
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with stepper.micro(index):
            logits = trained(batch["input_ids"], batch["pixels"])
            loss = answer_loss(logits, batch["labels"])
            stepper.backward(loss, index)
        stepper.step(index)
        record = {"step": index, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                  "lr": schedule.get_last_lr()[0]}  # fmt: skip
        last_loss = record["loss"]
        log.write(record)
        if index % log_every == 0 or index + 1 == total:
            run.log(f"step {index} epoch {epoch} loss {record['loss']:.4f}")
        if stepper.closes(index) and index + 1 < total:
            resume.save(stepper.step_of(index), model, optimizer, schedule=schedule, scaler=stepper.scaler)
    log.close()
    run.finished("medvint", steps, last_loss)  # optimizer steps

    # ---- checkpoint in the released layout, LoRA separate (rank 0 writes, every rank waits for it)
    def save() -> Path:
        model.eval()
        target = save_checkpoint(model, tokenizer, out / "model", peft_naming="released")
        (out / "train_config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
        print(f"MedVInT-TD checkpoint written to {target}", flush=True)
        return target

    run.on_main(save)
    resume.done()
    run.close()
    return out / "model"


# --------------------------------------------------------------------------------------------------
# Evaluation (the smoke round trip)


def right_choices(folder: Path, rows: list[Row]) -> list[bool]:
    """Per multiple-choice row: does the checkpoint in `folder`, loaded and asked as the specialist does (its loader,
    preprocessing and answer_choices), pick the right letter?"""
    bundle = load_medvint(folder, dtype="fp32", device="cpu")
    right = []
    for row in rows:
        pixels = image_to_tensor(open_picture(row), bundle.config.image_size)
        right.append(answer_choices(bundle, row.question, list(row.choices), pixels).letter == row.letter)
    return right
