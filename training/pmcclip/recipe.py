"""PMC-CLIP training recipe: image-caption contrastive learning (open_clip's ClipLoss) plus masked language modelling.

Read top to bottom: config -> data -> tokenizer + model -> objective -> loop -> checkpoint. The authors' facts
(../shared/MODELS.md section 4): open_clip-derived training (`torchrun -m training.main`), contrastive loss + MLM
(`--mlm`, `--crop-scale 0.5`), lr 1e-4, weight decay 0.1, 500 warm-up steps, 100 epochs, batch 128 per GPU;
gpu.yaml carries them. What else follows open_clip's own training defaults (not stated by MODELS.md): AdamW
(beta 0.9 / 0.999, eps 1e-8, its ResNet values) with no weight decay on gains, biases, norms and the temperature,
a warm-up + cosine schedule per optimizer step, and the learned temperature clamped to at most 100 after each step.

Objective. Contrastive: open_clip's `ClipLoss` over L2-normalised image and text features (text at [CLS] times
`text_projection`, as specialists/pmcclip/model.py encodes it) and `logit_scale.exp()`. Under several processes it
is built with the world size and rank, `gather_with_grad` and `local_loss` (both true by default, the pair open_clip
recommends: every rank's features are gathered with their gradients, so the negatives of each image are the
captions of the whole global batch, and each rank computes the loss of its own rows; DDP's mean over ranks then
gives the gradient of one process with the global batch). MLM (`train.mlm: true`): 15 % of each caption's word
pieces are chosen as BERT does (at least one per caption; of those 80 % become [MASK], 10 % a random word piece,
10 % stay), the masked caption runs through the text tower, then through the model's own fusion module with the
image, and `mlm_projection` predicts the chosen pieces (cross-entropy). The fusion input is [I] (MODELS.md names
the parts, not their order): one image token (the image feature plus `img_special_token`) followed by the caption's
hidden states plus `positional_embedding`, padding masked out of attention, `ln_final` before the projection. It
needs `embed_dim` equal to the text width (768 = 768 in the published configuration). Loss = contrastive +
`train.mlm_weight` x MLM (the authors' weighting is not in MODELS.md: 1.0 by default, [I]). With `mlm: false` the
fusion/MLM parameters are frozen and saved as they were loaded; BERT's pooler is never used and is frozen too.

Data: `data.path`, a JSONL file of `{"image": path, "caption": text}` lines or a CSV with `image` and `caption`
columns; image paths are relative to `data.image_root` (default: the data file's folder). MODELS.md section 4
gives PMC-OA only as "1.6M image-caption pairs from PubMed Central OA", not its file format; the dataset card of
the HF dataset `axiong/pmc_oa` describes `pmc_oa.jsonl` (and `pmc_oa_beta.jsonl`, the uncut compound captions)
with lines `{"image": "PMC212319_Fig3_4.jpg", "caption": "..."}` (earlier versions: train/valid/test.jsonl, with
`pmcid` and `url_name` too) and the pictures in `images.zip`: point `data.path` at the JSONL and
`data.image_root` at the unzipped images folder. Extra fields are ignored. A line without an image or a caption
fails with `file:line: ...`. Pictures are decoded, randomly cropped (open_clip's train transform:
RandomResizedCrop with scale (`data.crop_scale`, 1), bicubic, OpenAI-CLIP mean/std; `crop_scale: null` = the eval
transform) and captions tokenised and masked in `train.num_workers` DataLoader processes. `data.synthetic: {pairs: N,
image_size: S}` (smoke) draws N (<= 8) distinct pictures with their captions itself and writes them as such a JSONL under
`output_dir/data/`, so the smoke run reads what a real run reads.

Batches: every rank takes its padded share of each epoch's shuffled order (training/common.py's DistributedSampler
through `rank_batches`: the same number of batches on every rank). The crop and the masking of a sample are drawn
from (seed, epoch, index), not from a process's random state, so they do not depend on the number of workers and a
resumed run sees exactly what the interrupted one would have; the batch plan is an iterable over the whole run, so
the DataLoader's workers start once and a resumed run skips the batches it has done without decoding them (which is
why the recipe does not take `common.loader`, whose sampler can only be skipped by reading). `train.accumulate`
micro-batches make an optimizer step (training/common.py's Stepper: DDP no_sync, `precision` autocast, clipping,
schedule); the contrastive negatives are those of the micro-batch (across ranks), not of the accumulated batch
(open_clip's `--accum-freq` re-encodes to get those; not done here). `train.checkpoint_every` + `resume: true`:
training/common.py's Resume.

Output folder: what `medagent.specialists.pmcclip.load.load_pmcclip(folder)` loads strictly -- `checkpoint.pt` as
open_clip saves it (`{'epoch', 'name', 'state_dict': {'module.<key>': tensor}}`, the released layout),
`pmcclip_config.json`, the tokenizer files -- plus `train_log.jsonl` and `train_config.json`.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from medagent.specialists.pmcclip.load import CONFIG_NAME, load_pmcclip, load_tokenizer
from medagent.specialists.pmcclip.model import PMCCLIP, PMCCLIPConfig, published_config
from medagent.specialists.pmcclip.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, pmcclip_transform, to_rgb
from medagent.tools.errors import ConfigError
from medagent.training import pictures
from medagent.training.common import (
    BatchPlan,
    Resume,
    Run,
    Stepper,
    TrainLog,
    ddp,
    rank_batches,
    setup,
    threads,
    warmup_cosine,
)
from medagent.training.config import load_config

# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Pair:
    image: Path
    caption: str
    where: str  # "file:line", for messages


def read_pairs(data: dict[str, Any]) -> list[Pair]:
    """The image-caption pairs of a JSONL or CSV file; a row without image or caption fails naming file and line."""
    path = Path(data["path"]).expanduser()
    root = Path(data.get("image_root") or path.parent).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file (data.path)")
    rows: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"image", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(f"{path}:1: the CSV header has no {', '.join(sorted(missing))} column")
            start = reader.line_num + 1
            for row in reader:
                rows.append((start, row))
                start = reader.line_num + 1
    else:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{path}:{number}: not a JSON object")
            rows.append((number, row))
    pairs = []
    for number, row in rows:
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image.strip():
            raise ConfigError(f"{path}:{number}: a pair needs an 'image' path")
        if not isinstance(caption, str) or not caption.strip():
            raise ConfigError(f"{path}:{number}: a pair needs a non-empty 'caption'")
        pairs.append(Pair(root / image, caption.strip(), f"{path}:{number}"))
        if data.get("limit") and len(pairs) >= int(data["limit"]):
            break
    if not pairs:
        raise ConfigError(f"{path}: no image-caption pairs")
    return pairs


def _cross(draw: ImageDraw.ImageDraw, s: int) -> None:
    draw.rectangle((s * 0.15, s * 0.42, s * 0.85, s * 0.58), fill=(20, 40, 200))
    draw.rectangle((s * 0.42, s * 0.15, s * 0.58, s * 0.85), fill=(20, 40, 200))


# (caption, background colour, drawing): eight pictures that differ in shape, place, colour and texture, and in
# their background colour (a tiny random tower first tells pictures apart by their overall colour).
SYNTHETIC = (
    ("a bright disc in the upper left", (70, 70, 70), pictures.disc),
    ("a dark square in the lower right", (200, 200, 200), pictures.square),
    ("a red triangle in the centre", (245, 240, 225), pictures.triangle),
    ("a green ring on black", (0, 0, 0), pictures.ring),
    ("horizontal blue stripes", (235, 235, 250), pictures.stripes),
    ("a black and white checkerboard", (255, 255, 255), pictures.checkerboard),
    ("a blue cross on orange", (240, 140, 30), _cross),
    ("scattered white dots on navy", (20, 30, 90), pictures.dots),
)


def synthetic_image(index: int, size: int) -> Image.Image:
    caption, background, paint = SYNTHETIC[index]
    image = Image.new("RGB", (size, size), background)
    paint(ImageDraw.Draw(image), size)
    return image


def write_synthetic(folder: Path, count: int, size: int) -> Path:
    """`count` synthetic pictures as PNGs and their `pairs.jsonl` in `folder`; returns the JSONL."""
    if not 2 <= count <= len(SYNTHETIC):
        raise ConfigError(f"data.synthetic: {count} pairs asked for, between 2 and {len(SYNTHETIC)} can be drawn")
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index in range(count):
        synthetic_image(index, size).save(folder / f"synthetic_{index}.png")
        lines.append(json.dumps({"image": f"synthetic_{index}.png", "caption": SYNTHETIC[index][0]}))
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "pairs.jsonl"


def open_picture(pair: Pair) -> Image.Image:
    """8-bit RGB; 16-bit or float pictures are stretched as the specialist does (preprocess.to_rgb)."""
    try:
        with Image.open(pair.image) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "L", "LA", "P", "CMYK", "YCbCr"):
                return image.convert("RGB")
            return to_rgb(np.asarray(image))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{pair.where}: cannot read the image {pair.image} ({exc})") from None


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def mask_tokens(ids: list[int], special: set[int], ordinary: list[int], mask_id: int, rate: float,
                generator: torch.Generator) -> tuple[list[int], list[int]]:  # fmt: skip
    """BERT's masking of one caption: `rate` of its word pieces (at least one) are targets; of those 80 % become
    [MASK], 10 % a random one of `ordinary` (the vocabulary less the special tokens), 10 % stay.
    (masked ids, labels with -100 where nothing is predicted)"""
    positions = [i for i, token in enumerate(ids) if token not in special]
    masked, labels = list(ids), [-100] * len(ids)
    if not positions:
        return masked, labels
    chosen = [p for p in positions if float(torch.rand((), generator=generator)) < rate]
    if not chosen:
        chosen = [positions[int(torch.randint(len(positions), (), generator=generator))]]
    for p in chosen:
        labels[p] = ids[p]
        draw = float(torch.rand((), generator=generator))
        if draw < 0.8:
            masked[p] = mask_id
        elif draw < 0.9:
            masked[p] = ordinary[int(torch.randint(len(ordinary), (), generator=generator))]
    return masked, labels


class Captioned(torch.utils.data.Dataset):
    """Item `(index, epoch)`: the picture, transformed, and its caption's ids (plus masked ids and MLM labels). Read
    when a batch asks for it, in DataLoader workers with `train.num_workers`; random choices from (seed, epoch, index)."""

    def __init__(self, pairs: list[Pair], transform: Any, tokenizer: Any, max_length: int, seed: int,
                 mlm_rate: float | None) -> None:  # fmt: skip
        self.pairs, self.transform, self.seed, self.mlm_rate = pairs, transform, seed, mlm_rate
        self.tokenizer, self.max_length = tokenizer, max_length
        self.special = set(tokenizer.all_special_ids)
        self.ordinary = [t for t in range(len(tokenizer)) if t not in self.special]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        pair = self.pairs[index]
        seed = sample_seed(self.seed, epoch, index)
        picture = open_picture(pair)
        with torch.random.fork_rng(devices=[]):  # the crop's draws, without touching this process's random state
            torch.manual_seed(seed)
            pixels = self.transform(picture)
        ids = self.tokenizer(pair.caption, truncation=True, max_length=self.max_length)["input_ids"]
        item = {"pixels": pixels, "ids": ids, "epoch": epoch}
        if self.mlm_rate is not None:
            generator = torch.Generator().manual_seed(seed)
            item["mlm_ids"], item["mlm_labels"] = mask_tokens(
                ids, self.special, self.ordinary, self.tokenizer.mask_token_id, self.mlm_rate, generator
            )
        return item


def collate(batch: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    longest = max(len(item["ids"]) for item in batch)

    def padded(key: str, fill: int) -> torch.Tensor:
        rows = torch.full((len(batch), longest), fill, dtype=torch.long)
        for row, item in enumerate(batch):
            rows[row, : len(item[key])] = torch.tensor(item[key])
        return rows

    out: dict[str, Any] = {"pixels": torch.stack([item["pixels"] for item in batch]), "input_ids": padded("ids", pad_id)}
    out["attention_mask"] = (torch.arange(longest)[None] < torch.tensor([len(i["ids"]) for i in batch])[:, None]).long()
    if "mlm_ids" in batch[0]:
        out["mlm_ids"], out["mlm_labels"] = padded("mlm_ids", pad_id), padded("mlm_labels", -100)
    out["epoch"] = batch[0]["epoch"]
    return out


# --------------------------------------------------------------------------------------------------
# Model and objective


class Objective(torch.nn.Module):
    """PMC-CLIP's training forward (one module, so DDP sees every parameter that trains): normalised image and text
    features, the logit scale, and (with masked ids) the MLM loss through the fusion module and `mlm_projection`."""

    def __init__(self, model: PMCCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                mlm_ids: torch.Tensor | None = None, mlm_labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
        model = self.model
        image = model.encode_image(pixels)
        text = model.encode_text(input_ids, attention_mask)
        out = {"image": F.normalize(image.float(), dim=-1), "text": F.normalize(text.float(), dim=-1),
               "scale": model.logit_scale.exp().float()}  # fmt: skip
        if mlm_ids is not None:
            hidden = model.text_encoder(input_ids=mlm_ids, attention_mask=attention_mask).last_hidden_state
            tokens = hidden + model.positional_embedding[: hidden.shape[1]]
            first = (image + model.img_special_token[:, 0]).unsqueeze(1).to(tokens.dtype)
            sequence = torch.cat([first, tokens], dim=1)
            keep = torch.cat([torch.ones_like(attention_mask[:, :1]), attention_mask], dim=1).bool()
            blocked = torch.zeros(keep.shape, dtype=torch.float32, device=keep.device).masked_fill(~keep, float("-inf"))
            heads = model.config.fusion_heads
            attn_mask = blocked[:, None, None, :].expand(-1, heads, sequence.shape[1], -1).reshape(
                -1, sequence.shape[1], sequence.shape[1]
            )
            fused = model.ln_final(model.fusion_module(sequence, attn_mask=attn_mask)[:, 1:])
            logits = fused @ model.mlm_projection
            out["mlm"] = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), mlm_labels.reshape(-1),
                                         ignore_index=-100)  # fmt: skip
        return out


def build_tokenizer(captions: list[str], folder: Path, vocab_size: int) -> Any:
    """A small WordPiece tokenizer over the captions (smoke runs; real runs use PubMedBERT's vocab.txt): the
    pathology recipe's builder, as tests/pmcclip/conftest.py uses it."""
    from medagent.training.pathology.recipe import build_tokenizer as wordpiece

    return wordpiece([*captions, *(w for c in captions for w in c.split())], folder, vocab_size)


def build_model(model_cfg: dict[str, Any], captions: list[str], out: Path, run: Run) -> tuple[PMCCLIP, Any]:
    """(model, tokenizer): a published or retrained checkpoint folder (`model.init`), else a new model of
    `model.pmcclip`'s shape (null: the published RN50_fusion4) with `model.tokenizer`'s vocabulary (null: one built
    from the captions) and optionally `model.bert_init`, an HF BertModel folder (PubMedBERT) for the text tower."""
    if model_cfg.get("init"):
        loaded = load_pmcclip(Path(model_cfg["init"]).expanduser())
        return loaded.model, loaded.tokenizer
    if model_cfg.get("tokenizer"):
        tokenizer = load_tokenizer(Path(model_cfg["tokenizer"]).expanduser(), 512)
    else:
        run.on_main(build_tokenizer, captions, out, int(model_cfg.get("vocab_size", 128)))  # rank 0 writes it
        tokenizer = load_tokenizer(out, 512)  # every rank reads the very same vocabulary
    shape = dict(model_cfg.get("pmcclip") or published_config().to_dict())
    shape["bert"] = {**(shape.get("bert") or {}), "vocab_size": len(tokenizer)}
    shape["cls_token_id"] = tokenizer.cls_token_id
    config = PMCCLIPConfig.from_dict(shape)
    tokenizer.model_max_length = config.context_length
    model = PMCCLIP(config)
    if model_cfg.get("bert_init"):
        from transformers import BertModel

        bert = BertModel.from_pretrained(str(Path(model_cfg["bert_init"]).expanduser()), local_files_only=True)
        model.text_encoder.load_state_dict(bert.state_dict())
    return model, tokenizer


def decays(name: str, parameter: torch.nn.Parameter) -> bool:
    """open_clip's rule: weight decay on matrices and kernels only, not on gains, biases, norms or the temperature."""
    return parameter.ndim >= 2 and not any(part in name for part in ("bn", "ln", "bias", "logit_scale"))


def clip_loss(run: Run, train: dict[str, Any]) -> Any:
    from open_clip.loss import ClipLoss

    return ClipLoss(
        local_loss=bool(train.get("local_loss", True)), gather_with_grad=bool(train.get("gather_with_grad", True)),
        cache_labels=True, rank=run.rank, world_size=run.world,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry point's documented signature)
    cfg = load_config(config, overrides)
    with threads(cfg):  # a smoke run's `threads: 1`, restored afterwards (training/common.py)
        return train(cfg)


def train(cfg: dict[str, Any]) -> Path:
    """The whole run for one loaded config; returns the output folder (the checkpoint folder)."""
    seed = int(cfg.get("seed", 0))
    out = Path(cfg["output_dir"]).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    data_cfg, model_cfg, train_cfg = cfg["data"], cfg["model"], cfg["train"]

    # ---- data: a JSONL/CSV of pairs (smoke: synthetic pictures written as one first, by rank 0)
    if data_cfg.get("synthetic"):
        synthetic, path = data_cfg["synthetic"], out / "data" / "pairs.jsonl"
        run.on_main(write_synthetic, path.parent, int(synthetic["pairs"]), int(synthetic["image_size"]))
        data_cfg = {**data_cfg, "path": str(path), "image_root": None}
    pairs = read_pairs(data_cfg)

    # ---- tokenizer + model (seeded by setup: every rank builds the same initial weights)
    model, tokenizer = build_model(model_cfg, [p.caption for p in pairs], out, run)
    config = model.config
    if model_cfg.get("text_dropout") is not None:  # BERT's dropout (0.1 in its config) while training
        for module in model.text_encoder.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = float(model_cfg["text_dropout"])
    mlm = bool(train_cfg.get("mlm", False))
    if mlm and config.embed_dim != config.bert.hidden_size:
        raise ConfigError(f"train.mlm: the image feature ({config.embed_dim}) must be as wide as the text tower "
                         f"({config.bert.hidden_size}) to enter the fusion module")  # fmt: skip
    unused = [model.text_encoder.pooler] if model.text_encoder.pooler is not None else []
    if not mlm:  # kept for the checkpoint's keys, unchanged
        unused += [model.fusion_module, model.ln_final]
        for parameter in (model.img_special_token, model.positional_embedding, model.mlm_projection):
            parameter.requires_grad_(False)
    for module in unused:
        module.requires_grad_(False)
    objective = Objective(model).to(device)
    trained = ddp(objective, run)
    named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if decays(n, p)], "weight_decay": float(train_cfg.get("weight_decay", 0.0))},
         {"params": [p for n, p in named if not decays(n, p)], "weight_decay": 0.0}],
        lr=float(train_cfg["lr"]), betas=tuple(train_cfg.get("betas", (0.9, 0.999))), eps=float(train_cfg.get("eps", 1e-8)),
    )  # fmt: skip
    count = sum(p.numel() for _, p in named)
    run.log(f"pmcclip recipe: {len(pairs)} pairs, {count:,} trainable parameters, mlm {mlm}, device {device}, "
            f"world {run.world}")  # fmt: skip

    # ---- steps: each epoch every rank runs ceil(ceil(pairs / world) / batch) micro-batches; `accumulate` of them
    # make one optimizer step (training/common.py's Stepper)
    epochs, batch_size = int(train_cfg["epochs"]), int(train_cfg["batch_size"])
    per_epoch = len(rank_batches(len(pairs), batch_size, run, seed, 0))
    total = per_epoch * epochs
    steps = Stepper.steps_for(total, train_cfg)
    schedule = warmup_cosine(optimizer, steps, int(train_cfg.get("warmup", 0)), float(train_cfg.get("min_lr_ratio", 0.0)))
    stepper = Stepper(trained, optimizer, schedule, train_cfg, run, total, [p for _, p in named])
    resume = Resume(run, out, cfg)  # `resume: true` continues after out/resume.pt
    start = resume.load(objective, optimizer, schedule=schedule, scaler=stepper.scaler) * stepper.accumulate

    crop = data_cfg.get("crop_scale")
    if crop:
        from open_clip.transform import image_transform

        transform = image_transform(config.image_size, is_train=True, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                                    aug_cfg={"scale": (float(crop), 1.0)})  # fmt: skip
    else:
        transform = pmcclip_transform(config.image_size)
    dataset = Captioned(pairs, transform, tokenizer, config.context_length, seed,
                        float(train_cfg.get("mlm_rate", 0.15)) if mlm else None)  # fmt: skip
    workers = int(train_cfg.get("num_workers", 0))
    data = torch.utils.data.DataLoader(
        dataset, batch_sampler=BatchPlan(len(pairs), batch_size, run, seed, epochs, start), num_workers=workers,
        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id), pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),  # workers' seeds: not drawn from the state Resume restores
    )  # fmt: skip
    contrastive = clip_loss(run, train_cfg)
    mlm_weight = float(train_cfg.get("mlm_weight", 1.0))

    # ---- loop
    log = TrainLog(run, out, append=start > 0)
    log_every = int(train_cfg.get("log_every", 10))
    last_loss = float("nan")
    trained.train()
    for index, batch in enumerate(data, start=start):
        epoch = batch.pop("epoch")
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with stepper.micro(index):
            result = trained(**batch)
            loss_clip = contrastive(result["image"], result["text"], result["scale"])
            loss = loss_clip + mlm_weight * result["mlm"] if mlm else loss_clip
            stepper.backward(loss, index)
        if stepper.step(index):
            with torch.no_grad():  # open_clip's clamp: the temperature never goes below 1/100
                model.logit_scale.clamp_(0, math.log(100))
        record = {"step": index, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                  "clip": round(float(loss_clip.detach()), 5), "lr": schedule.get_last_lr()[0]}  # fmt: skip
        if mlm:
            record["mlm"] = round(float(result["mlm"].detach()), 5)
        last_loss = record["loss"]
        log.write(record)
        if index % log_every == 0 or index + 1 == total:
            extra = f" (clip {record['clip']:.4f}, mlm {record['mlm']:.4f})" if mlm else ""
            run.log(f"step {index} epoch {epoch} loss {record['loss']:.4f}{extra}")
        if stepper.closes(index) and index + 1 < total:
            resume.save(stepper.step_of(index), objective, optimizer, schedule=schedule, scaler=stepper.scaler)
    log.close()
    run.finished("pmcclip", steps, last_loss)  # optimizer steps

    # ---- checkpoint in the released layout (rank 0 writes, every rank waits for it)
    def save() -> None:
        state = {f"module.{k}": v.detach().cpu() for k, v in model.state_dict().items()}
        torch.save({"epoch": epochs, "name": "pmcclip", "state_dict": state}, out / "checkpoint.pt")
        (out / CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
        tokenizer.save_pretrained(str(out))
        (out / "train_config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
        print(f"PMC-CLIP checkpoint written to {out}", flush=True)

    run.on_main(save)
    resume.done()
    run.close()
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation (the smoke round trip)


@torch.inference_mode()
def own_caption_ranks(folder: Path, pairs: list[Pair]) -> list[int]:
    """Image -> text retrieval among the pairs' captions with the checkpoint in `folder`, loaded as the specialist
    loads it: the rank (0 = first) of each image's own caption."""
    from medagent.specialists.pmcclip.infer import PMCCLIPEncoder

    loaded = load_pmcclip(folder)
    encoder = PMCCLIPEncoder(loaded)
    images = torch.from_numpy(encoder.embed_images([open_picture(p) for p in pairs]))
    batch = loaded.tokenizer([p.caption for p in pairs], padding=True, truncation=True,
                             max_length=loaded.config.context_length, return_tensors="pt")  # fmt: skip
    texts = F.normalize(loaded.model.encode_text(batch["input_ids"], batch["attention_mask"]).float(), dim=-1)
    similarity = images @ texts.T
    own = similarity.diagonal()[:, None]
    others = ~torch.eye(len(pairs), dtype=torch.bool)
    return ((similarity >= own) & others).sum(dim=1).tolist()  # a tie counts against: untrained towers tie a lot
