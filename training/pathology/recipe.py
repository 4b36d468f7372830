"""KEP training recipe: stage 1 knowledge encoder, stage 2 knowledge-enhanced image-text pretraining.

Read top to bottom: config -> data -> tokenizer -> stage 1 -> stage 2 -> checkpoint.

Stage 1 trains a BERT (+ MLP) by metric learning over disease knowledge: every text about one
disease (name, synonyms, definitions, histology features) is a positive for the others and texts
of other diseases are negatives. KEP's default is the AdaSP loss; this recipe uses the
multi-positive InfoNCE (supervised contrastive) form of the same pull-together / push-apart idea.

Stage 2 is CLIP-style (open_clip's ClipLoss): image<->caption InfoNCE (weight 1.0) plus caption<->knowledge InfoNCE
(weight 0.3) against a *frozen* copy of the stage-1 encoder, normalised by the weight sum; pairs that
share a label (the optional `label` field, else an identical caption) are masked out of each other's
negatives, as KEP's masked loss does for duplicate labels. The text
tower starts from the stage-1 encoder; image and text towers are frozen for the first
`freeze_epochs` (only the heads and the temperature move).

Output folder = a KEP checkpoint that specialists/pathology loads: `pytorch_model.bin`
(`{'state_dict': ...}` in the published key layout, plus the frozen `knowledge.*` BERT as KEP's
training checkpoints carry), `kep_config.json`, and the tokenizer files.

Data. The authors' stage 2 reads a tab-separated CSV (`DATASET.CSV_SEPARATOR '\t'`) with an `image_name` and a
`caption` column, image names relative to `DATASET.IMG_DIR` (their `dataset/OpenPath_train_example.csv`); their
stage 1 reads PathKT CSVs of synonyms, definitions and histology/cytology features per disease (not released).
Ours (gpu.yaml): image-text pairs as JSONL (`{"image": path, "caption": text}`, optional `"label"`) or a
comma-separated CSV with `image` and `caption` (optional `label`) columns (OpenPath / Quilt-1M exports), image paths
relative to `image_root`; knowledge as JSONL `{"disease": name, "text": one fact}`. `smoke.yaml` makes synthetic
H&E-like pairs and knowledge texts itself. Multi-GPU: launch with torchrun (training/common.py: both stages under
DDP, every rank the same number of batches; features are gathered across ranks for the contrastive losses).

A real run (training/common.py): each stage's optimizer steps are `accumulate` micro-batches (Stepper: DDP
no_sync, clipping with `grad_clip`, the warm-up + cosine schedule over optimizer steps), `train.precision`
bf16/fp16 autocast for both stages (the old top-level `amp: true` still means bf16 on CUDA), stage 2's images
decoded and transformed in `stage2.num_workers` DataLoader processes. Resumable: `train.checkpoint_every` optimizer
steps, counted over stage 1 and then stage 2 as one run, write `resume.pt`; `resume: true` continues after it (a run
interrupted in stage 2 skips stage 1: the text tower and the frozen knowledge copy, stage 1's result, come from the
checkpoint) with the same loss curve in `train_log.jsonl` (tests/training/test_resume.py kills one in stage 2).
"""

from __future__ import annotations

import copy
import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from medagent.specialists.pathology.labels import TEMPLATES
from medagent.specialists.pathology.load import CONFIG_NAME, load_tokenizer
from medagent.specialists.pathology.model import KEP, KEPConfig, PathBert, published_config, published_state_dict
from medagent.specialists.pathology.preprocess import kep_transform, to_rgb
from medagent.training.common import Resume, Run, Stepper, TrainLog, ddp, rank_batches, setup, threads, warmup_cosine
from medagent.training.config import load_config

# --------------------------------------------------------------------------------------------------
# Config


def shared_settings(cfg: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """`train:`, what both stages share (precision, checkpoint_every); a stage's own keys win over it. A config
    from before `train.precision` with the top-level `amp: true` gets bf16 autocast on CUDA (fp32 on CPU), as then."""
    shared = dict(cfg.get("train") or {})
    if "precision" not in shared and cfg.get("amp"):
        shared["precision"] = "bf16" if device.type == "cuda" else "fp32"
    return shared


# --------------------------------------------------------------------------------------------------
# Data


def read_pairs(data: dict[str, Any]) -> list[tuple[Any, str, str]]:
    """(image path, caption, duplicate key) rows; the key is the optional `label` field, else the caption."""
    path = Path(data["pairs"]).expanduser()
    root = Path(data.get("image_root") or path.parent).expanduser()
    rows: list[dict[str, str]]
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(root / row["image"], row["caption"], duplicate_key(row["caption"], row.get("label"))) for row in rows]


def duplicate_key(caption: str, label: str | None = None) -> str:
    """Pairs with the same key are not each other's negatives (KEP's masked loss for duplicate labels)."""
    return (label or caption).strip().lower()


def read_knowledge(path: str) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for line in Path(path).expanduser().read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            groups.setdefault(row["disease"], []).append(row["text"])
    return groups


SYNTHETIC_CLASSES = {
    # label: (synonyms, knowledge facts) -- what a tiny knowledge tree would say about each tissue
    "tumor": (("carcinoma",), ("crowded atypical nuclei", "high nuclear density", "malignant epithelial cells")),
    "stroma": (("connective tissue",), ("pink collagen fibres", "sparse spindle nuclei", "fibrous tissue")),
    "adipose tissue": (("fat",), ("empty round fat cells", "thin membranes", "pale vacuolated tissue")),
}


class PairImages(torch.utils.data.Dataset):
    """(pixels, index) of pair `index`: its image decoded and transformed when a batch asks for it, in
    `stage2.num_workers` DataLoader processes (0: in this one)."""

    def __init__(self, pairs: list[tuple[Any, str, str]], transform: Any) -> None:
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.pairs[index][0]
        if isinstance(item, Image.Image):  # synthetic pairs hold their images
            return self.transform(to_rgb(item)), index
        with Image.open(item) as picture:
            return self.transform(to_rgb(picture)), index


def synthetic_image(label: str, size: int, seed: int) -> Image.Image:
    """A synthetic H&E-like field whose texture depends on the label."""
    rng = np.random.default_rng(seed)
    fat = label == "adipose tissue"
    base = np.array((250, 248, 250) if fat else (236, 170, 200), dtype=np.float32)
    image = Image.fromarray(np.clip(base + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    if label == "tumor":
        for _ in range(size * size // 120):
            x, y, r = rng.integers(0, size), rng.integers(0, size), rng.integers(3, 6)
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(80, 45, 125))
    elif label == "stroma":
        for _ in range(size * size // 300):
            x, y = rng.integers(0, size), rng.integers(0, size)
            draw.line((x, y, x + rng.integers(10, 30), y + rng.integers(-4, 4)), fill=(200, 90, 150), width=2)
    else:
        step = max(8, size // 5)
        for y in range(0, size, step):
            for x in range(0, size, step):
                draw.ellipse((x, y, x + step, y + step), outline=(236, 170, 200), width=2)
    return image


def synthetic_data(per_class: int, size: int, seed: int) -> tuple[list[tuple[Any, str, str]], dict[str, list[str]]]:
    """(image, caption, label) pairs; the label marks same-class pairs as duplicates for the masked loss."""
    pairs = []
    for index, (label, (synonyms, _)) in enumerate(SYNTHETIC_CLASSES.items()):
        phrases = (label, *synonyms)
        for k in range(per_class):
            # Captions take the prompt templates in turn, so with per_class >= len(TEMPLATES) every template
            # zero-shot classification will use has been seen with every class.
            caption = TEMPLATES[k % len(TEMPLATES)].format(phrases[k % len(phrases)])
            pairs.append((synthetic_image(label, size, seed * 1000 + index * 100 + k), caption, label))
    knowledge = {label: [label, *synonyms, *facts] for label, (synonyms, facts) in SYNTHETIC_CLASSES.items()}
    return pairs, knowledge


def build_tokenizer(texts: list[str], folder: Path, vocab_size: int) -> Any:
    """A small lower-casing WordPiece tokenizer (smoke runs; real runs use PubMedBERT's).

    The vocabulary is built directly rather than by the `tokenizers` WordPiece trainer, whose token
    numbering and tie-breaking change from run to run: here every character (alone and as `##`
    continuation) plus the most frequent whole words, in sorted order, so one seed gives one run.
    """
    from collections import Counter

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    counts: Counter[str] = Counter(
        word for text in texts for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = sorted({char for word in counts for char in word})
    alphabet = characters + ["##" + char for char in characters]
    room = max(0, vocab_size - len(special) - len(alphabet))
    frequent = [w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in set(alphabet)][:room]
    vocab = special + alphabet + sorted(frequent)
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(str(folder))
    return load_tokenizer(folder)


# --------------------------------------------------------------------------------------------------
# Losses


def gather(features: torch.Tensor) -> torch.Tensor:
    """All ranks' features (with gradients) so every rank sees the whole global batch as negatives."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return features
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(features))


def clip_loss() -> Any:
    """open_clip's ClipLoss (symmetric InfoNCE, features gathered across ranks with gradients), extended with KEP's
    duplicate mask: with `groups`, other rows of the same group are masked out of the negatives (two pictures of
    stroma captioned "stroma" should not be pushed apart). Without `groups` it is ClipLoss unchanged."""
    from open_clip.loss import ClipLoss

    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if distributed else (0, 1)

    class MaskedClipLoss(ClipLoss):
        def forward(self, a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor,
                    groups: torch.Tensor | None = None) -> torch.Tensor:
            if groups is None:
                return super().forward(a, b, scale)
            logits_ab, logits_ba = self.get_logits(a, b, scale)
            target = self.get_ground_truth(a.device, logits_ab.shape[0])
            groups = gather(groups)
            duplicate = (groups[:, None] == groups[None, :]) & (target[:, None] != target[None, :])
            low = torch.finfo(logits_ab.dtype).min
            logits_ab, logits_ba = logits_ab.masked_fill(duplicate, low), logits_ba.masked_fill(duplicate, low)
            return (F.cross_entropy(logits_ab, target) + F.cross_entropy(logits_ba, target)) / 2

    return MaskedClipLoss(gather_with_grad=True, rank=rank, world_size=world)


def multi_positive_nce(features: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss: texts of the same disease are positives, all others negatives.

    Written here: open_clip has no multi-positive loss (its ClipLoss has exactly one positive per row)."""
    features, groups = gather(features), gather(groups)
    logits = features @ features.T / temperature
    self_mask = torch.eye(len(features), dtype=torch.bool, device=features.device)
    logits = logits.masked_fill(self_mask, -1e4)
    positives = (groups[:, None] == groups[None, :]) & ~self_mask
    log_prob = logits.log_softmax(dim=1)
    has_positive = positives.any(dim=1)
    per_anchor = -(log_prob * positives).sum(1)[has_positive] / positives.sum(1)[has_positive]
    return per_anchor.mean()


# --------------------------------------------------------------------------------------------------
# Loop helpers


def micro_batches(count: int, batch_size: int, run: Run, seed: int, epochs: int, start: int) -> Iterator[list[int]]:
    """This rank's index batches, epoch after epoch (rank_batches: shuffled by seed + epoch, padded so every rank
    has as many), from micro-batch `start` on: a resumed run redraws the same batches and skips those it has run."""
    per_epoch = len(rank_batches(count, batch_size, run, seed, 0))
    for epoch in range(start // per_epoch, epochs):
        yield from rank_batches(count, batch_size, run, seed, epoch)[max(0, start - epoch * per_epoch) :]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry-point signature)
    cfg = load_config(config, overrides)
    with threads(cfg):  # a smoke run's `threads: 1`, restored afterwards (training/common.py)
        return train(cfg)


def train(cfg: dict[str, Any]) -> Path:
    """The whole run for one loaded config: stage 1, stage 2, checkpoint; returns the output folder."""
    # ---- seed, device, processes, precision (training/common.py)
    seed = int(cfg.get("seed", 0))
    run: Run = setup(cfg)
    device = run.device
    shared = shared_settings(cfg, device)
    out = Path(cfg["output_dir"]).expanduser()
    out.mkdir(parents=True, exist_ok=True)

    # ---- data
    data = cfg["data"]
    if data.get("synthetic"):
        syn = data["synthetic"]
        pairs, knowledge = synthetic_data(int(syn["per_class"]), int(syn["image_size"]), seed)
    else:
        pairs, knowledge = read_pairs(data), read_knowledge(data["knowledge"])
    knowledge_texts = [(text, gid) for gid, texts in enumerate(knowledge.values()) for text in texts]
    group_ids = {key: i for i, key in enumerate(dict.fromkeys(key for _, _, key in pairs))}
    pair_groups = torch.tensor([group_ids[key] for _, _, key in pairs])

    # ---- tokenizer
    model_cfg = cfg["model"]
    if model_cfg.get("tokenizer"):
        tokenizer = load_tokenizer(Path(model_cfg["tokenizer"]).expanduser())
    else:
        corpus = [c for _, c, _ in pairs] + [t for t, _ in knowledge_texts]
        corpus += [t.format(w) for t in TEMPLATES for w in knowledge]
        run.on_main(build_tokenizer, corpus, out, int(model_cfg.get("vocab_size", 300)))  # rank 0 writes it
        tokenizer = load_tokenizer(out)  # every rank reads the very same vocabulary
    run.on_main(tokenizer.save_pretrained, str(out))

    # ---- model
    if model_cfg.get("kep"):
        kep_cfg = KEPConfig.from_dict(
            {**model_cfg["kep"], "bert": {**model_cfg["kep"].get("bert", {}), "vocab_size": len(tokenizer)}}
        )
    else:
        kep_cfg = published_config(model_cfg.get("variant", "kep32"), vocab_size=len(tokenizer))
    model = KEP(kep_cfg).to(device)
    if model_cfg.get("bert_init"):  # e.g. a local PubMedBERT folder
        from transformers import BertModel

        model.text.bert_model.load_state_dict(BertModel.from_pretrained(model_cfg["bert_init"]).state_dict())
    if model_cfg.get("visual_init"):  # a state_dict of the image tower in the published layout (visual.*)
        visual = torch.load(model_cfg["visual_init"], map_location="cpu", weights_only=True)
        model.visual.load_state_dict({k.removeprefix("visual."): v for k, v in visual.items()})
    max_len = kep_cfg.max_text_length

    def tokens(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return batch["input_ids"].to(device), batch["attention_mask"].to(device)

    # ---- steps: a stage's micro-batches per rank are epochs x its batches an epoch (the same on every rank);
    # `accumulate` of them make one optimizer step. One step counter runs over both stages: stage 1's steps
    # 0 .. steps1-1, then stage 2's; resume.pt (every train.checkpoint_every of them) holds the stage it was in.
    shared = {"grad_clip": 0.0, **shared}  # KEP does not clip gradients (Stepper's default would clip at 1.0)
    s1, s2 = {**shared, **cfg["stage1"]}, {**shared, **cfg["stage2"]}
    per_epoch1 = len(rank_batches(len(knowledge_texts), int(s1["batch_size"]), run, seed + 1, 0))
    per_epoch2 = len(rank_batches(len(pairs), int(s2["batch_size"]), run, seed + 2, 0))
    total1, total2 = int(s1["epochs"]) * per_epoch1, int(s2["epochs"]) * per_epoch2
    steps1, steps2 = Stepper.steps_for(total1, s1), Stepper.steps_for(total2, s2)
    resume = Resume(run, out, cfg)  # `resume: true` continues after out/resume.pt
    after = resume.saved_step()  # -1: a new run; < steps1: interrupted in stage 1; else in stage 2
    log = TrainLog(run, out, append=after >= 0)

    # ---- stage 1: knowledge encoder
    encoder = model.text
    last = float("nan")  # the last optimizer step's loss: the mean over its micro-batches
    if after < steps1:
        train_encoder = ddp(encoder, run, find_unused_parameters=True)  # gradients averaged: ranks stay identical
        encoder_opt = torch.optim.AdamW(
            encoder.parameters(), lr=float(s1["lr"]), weight_decay=float(s1["weight_decay"])
        )
        sched1 = warmup_cosine(encoder_opt, steps1, int(s1.get("warmup", 0)), float(s1.get("min_lr_ratio", 0.0)))
        stepper = Stepper(train_encoder, encoder_opt, sched1, s1, run, total1)
        start = resume.load(encoder, encoder_opt, schedule=sched1, scaler=stepper.scaler) * stepper.accumulate
        encoder.train()
        losses: list[float] = []
        batches = micro_batches(len(knowledge_texts), int(s1["batch_size"]), run, seed + 1, int(s1["epochs"]), start)
        for index, idx in enumerate(batches, start=start):
            epoch = index // per_epoch1
            ids, mask = tokens([knowledge_texts[i][0] for i in idx])
            groups = torch.tensor([knowledge_texts[i][1] for i in idx], device=device)
            with stepper.micro(index):
                loss = multi_positive_nce(
                    F.normalize(train_encoder(ids, mask).float(), dim=-1), groups, float(s1["temperature"])
                )
                stepper.backward(loss, index)
            losses.append(loss.item())
            if stepper.step(index):
                step, last, losses = stepper.step_of(index), mean(losses), []
                log.write({"stage": 1, "step": step, "epoch": epoch, "loss": round(last, 6),
                           "lr": sched1.get_last_lr()[0]})  # fmt: skip
                if step + 1 < steps1 + steps2:  # the encoder only: the rest of the model is still as it was built
                    resume.save(step, encoder, encoder_opt, schedule=sched1, scaler=stepper.scaler)
            if (index + 1) % per_epoch1 == 0 and (epoch + 1) % int(s1.get("log_every", 1)) == 0:
                run.log(f"stage1 epoch {epoch + 1}: loss {loss.item():.4f}")
        del train_encoder  # its DDP hooks go with it; stage 2 wraps the whole model
    else:
        run.log(f"stage1: done before the interruption (step {after}); its encoder comes from {resume.path}")
    run.finished("pathology stage1", steps1, last)

    # ---- stage 2: knowledge-enhanced VLP (text tower starts from stage 1; a frozen copy gives targets)
    knowledge_bert: PathBert = copy.deepcopy(encoder).eval().requires_grad_(False)
    towers = [model.visual, model.text.bert_model]
    train_model = ddp(model, run, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(s2["lr"]), weight_decay=float(s2["weight_decay"]))
    sched2 = warmup_cosine(optimizer, steps2, int(s2.get("warmup", 0)), float(s2.get("min_lr_ratio", 0.0)))
    stepper = Stepper(train_model, optimizer, sched2, s2, run, total2)
    freeze_epochs = int(s2.get("freeze_epochs", 0))

    def freeze_towers(index: int) -> bool:
        """Image and BERT towers frozen for micro-batch `index` when it is in one of the first freeze_epochs."""
        frozen = index // per_epoch2 < freeze_epochs
        for tower in towers:
            tower.requires_grad_(not frozen)
        return frozen

    start = 0
    if after >= steps1:  # interrupted in stage 2: the model (stage 1's text tower with it) and the frozen copy
        start = (after + 1 - steps1) * stepper.accumulate
        # The towers as they were at the checkpoint: still frozen, they have no optimizer state in it, and
        # set_state_dict gives every trainable parameter without one a new state (AdamW step 1) that the
        # interrupted run did not have: their first step after unfreezing would differ.
        freeze_towers(start - 1)
        resume.load(model, optimizer, schedule=sched2, scaler=stepper.scaler, knowledge=knowledge_bert)

    def checkpoint(step: int) -> None:
        # Resume keeps only the parameters that train: towers frozen for freeze_epochs (stage 1's BERT, the image
        # tower's start) are marked trainable while it saves, and the frozen knowledge copy goes in whole.
        held = [p for p in model.parameters() if not p.requires_grad]
        for parameter in held:
            parameter.requires_grad_(True)
        resume.save(step, model, optimizer, schedule=sched2, scaler=stepper.scaler, knowledge=knowledge_bert)
        for parameter in held:
            parameter.requires_grad_(False)

    weights = (float(s2["loss_weights"]["image_text"]), float(s2["loss_weights"]["text_knowledge"]))
    contrastive = clip_loss()
    images = torch.utils.data.DataLoader(
        PairImages(pairs, kep_transform(kep_cfg.image_size, kep_cfg.variant)),
        batch_sampler=micro_batches(len(pairs), int(s2["batch_size"]), run, seed + 2, int(s2["epochs"]), start),
        num_workers=int(s2.get("num_workers", 0)),
        generator=torch.Generator().manual_seed(seed),  # workers' seeds from here, not from torch's global draw
    )
    model.train()
    last = float("nan")
    parts: list[tuple[float, float, float]] = []
    for index, (pixels, idx) in enumerate(images, start=start):
        epoch = index // per_epoch2
        frozen = freeze_towers(index)
        pixels = pixels.to(device)
        ids, mask = tokens([pairs[i][1] for i in idx.tolist()])
        groups = pair_groups[idx].to(device)
        with stepper.micro(index):
            image_features, text_features, scale = train_model(pixels, ids, mask)
            with torch.no_grad():
                targets = F.normalize(knowledge_bert(ids, mask).float(), dim=-1)
            scale = scale.clamp(max=100.0)
            loss_it = contrastive(image_features.float(), text_features.float(), scale, groups)
            loss_tk = contrastive(text_features.float(), targets, scale, groups)
            loss = (weights[0] * loss_it + weights[1] * loss_tk) / sum(weights)
            stepper.backward(loss, index)
        parts.append((loss.item(), loss_it.item(), loss_tk.item()))
        if stepper.step(index):
            step = steps1 + stepper.step_of(index)
            last, mean_it, mean_tk = (mean([p[k] for p in parts]) for k in range(3))
            log.write({"stage": 2, "step": step, "epoch": epoch, "loss": round(last, 6),
                       "image_text": round(mean_it, 6), "text_knowledge": round(mean_tk, 6),
                       "lr": sched2.get_last_lr()[0]})  # fmt: skip
            parts = []
            if step + 1 < steps1 + steps2:
                checkpoint(step)
        if (index + 1) % per_epoch2 == 0 and (epoch + 1) % int(s2.get("log_every", 1)) == 0:
            run.log(
                f"stage2 epoch {epoch + 1}{' (towers frozen)' if frozen else ''}: loss {loss.item():.4f} "
                f"(image-text {loss_it.item():.4f}, text-knowledge {loss_tk.item():.4f})"
            )
    log.close()
    run.finished("pathology", steps1 + steps2, last)

    # ---- checkpoint in the layout specialists/pathology loads (rank 0 writes, every rank waits for it)
    def save() -> None:
        state = {k: v.detach().cpu() for k, v in published_state_dict(model).items()}
        state.update({f"knowledge.{k}": v.detach().cpu() for k, v in knowledge_bert.state_dict().items()})
        torch.save({"state_dict": state, "epoch": int(s2["epochs"])}, out / "pytorch_model.bin")
        (out / CONFIG_NAME).write_text(json.dumps(kep_cfg.to_dict(), indent=2), encoding="utf-8")
        print(f"KEP checkpoint written to {out}", flush=True)

    run.on_main(save)
    resume.done()  # the run is complete: nothing left to resume
    run.close()
    return out
