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

Data (gpu.yaml): image-text pairs as JSONL (`{"image": path, "caption": text}`, optional `"label"`) or
CSV with `image` and `caption` (optional `label`) columns (OpenPath / Quilt-1M exports), image paths relative to `image_root`;
knowledge as JSONL `{"disease": name, "text": one fact}`. `smoke.yaml` makes synthetic H&E-like
pairs and knowledge texts itself. Multi-GPU: launch with torchrun (training/common.py: both stages under DDP,
every rank the same number of batches; features are gathered across ranks for the contrastive losses).
"""

from __future__ import annotations

import copy
import csv
import json
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
from medagent.training.common import Run, ddp, rank_batches, setup, threads, warmup_cosine
from medagent.training.config import load_config

# --------------------------------------------------------------------------------------------------
# Config


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
    amp = bool(cfg.get("amp", False)) and device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
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

    # ---- stage 1: knowledge encoder
    s1 = cfg["stage1"]
    encoder = model.text
    train_encoder = ddp(encoder, run, find_unused_parameters=True)  # gradients averaged: ranks stay identical
    encoder_opt = torch.optim.AdamW(encoder.parameters(), lr=float(s1["lr"]), weight_decay=float(s1["weight_decay"]))
    per_epoch1 = len(rank_batches(len(knowledge_texts), int(s1["batch_size"]), run, seed + 1, 0))
    steps1 = int(s1["epochs"]) * per_epoch1
    sched1 = warmup_cosine(encoder_opt, steps1, int(s1.get("warmup", 0)), float(s1.get("min_lr_ratio", 0.0)))
    encoder.train()
    step = 0
    for epoch in range(int(s1["epochs"])):
        for idx in rank_batches(len(knowledge_texts), int(s1["batch_size"]), run, seed + 1, epoch):
            ids, mask = tokens([knowledge_texts[i][0] for i in idx])
            groups = torch.tensor([knowledge_texts[i][1] for i in idx], device=device)
            with autocast:
                loss = multi_positive_nce(
                    F.normalize(train_encoder(ids, mask).float(), dim=-1), groups, float(s1["temperature"])
                )
            encoder_opt.zero_grad(set_to_none=True)
            loss.backward()
            encoder_opt.step()
            sched1.step()
            step += 1
        if (epoch + 1) % int(s1.get("log_every", 1)) == 0:
            run.log(f"stage1 epoch {epoch + 1}: loss {loss.item():.4f}")
    run.finished("pathology stage1", step, loss.item())
    del train_encoder  # its DDP hooks go with it; stage 2 wraps the whole model

    # ---- stage 2: knowledge-enhanced VLP (text tower starts from stage 1; a frozen copy gives targets)
    s2 = cfg["stage2"]
    knowledge_bert: PathBert = copy.deepcopy(encoder).eval().requires_grad_(False)
    towers = [model.visual, model.text.bert_model]
    train_model = ddp(model, run, find_unused_parameters=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(s2["lr"]), weight_decay=float(s2["weight_decay"]))
    steps2 = int(s2["epochs"]) * len(rank_batches(len(pairs), int(s2["batch_size"]), run, seed + 2, 0))
    sched2 = warmup_cosine(optimizer, steps2, int(s2.get("warmup", 0)), float(s2.get("min_lr_ratio", 0.0)))
    weights = (float(s2["loss_weights"]["image_text"]), float(s2["loss_weights"]["text_knowledge"]))
    transform = kep_transform(kep_cfg.image_size, kep_cfg.variant)
    contrastive = clip_loss()

    def image(item: Any) -> torch.Tensor:
        picture = item if isinstance(item, Image.Image) else Image.open(item)
        return transform(to_rgb(picture))

    for epoch in range(int(s2["epochs"])):
        frozen = epoch < int(s2.get("freeze_epochs", 0))
        for tower in towers:
            tower.requires_grad_(not frozen)
        model.train()
        for idx in rank_batches(len(pairs), int(s2["batch_size"]), run, seed + 2, epoch):
            pixels = torch.stack([image(pairs[i][0]) for i in idx]).to(device)
            ids, mask = tokens([pairs[i][1] for i in idx])
            groups = pair_groups[idx].to(device)
            with autocast:
                image_features, text_features, scale = train_model(pixels, ids, mask)
                with torch.no_grad():
                    targets = F.normalize(knowledge_bert(ids, mask).float(), dim=-1)
                scale = scale.clamp(max=100.0)
                loss_it = contrastive(image_features.float(), text_features.float(), scale, groups)
                loss_tk = contrastive(text_features.float(), targets, scale, groups)
                loss = (weights[0] * loss_it + weights[1] * loss_tk) / sum(weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sched2.step()
            step += 1
        if (epoch + 1) % int(s2.get("log_every", 1)) == 0:
            run.log(
                f"stage2 epoch {epoch + 1}{' (towers frozen)' if frozen else ''}: loss {loss.item():.4f} "
                f"(image-text {loss_it.item():.4f}, text-knowledge {loss_tk.item():.4f})"
            )

    run.finished("pathology", step, loss.item())

    # ---- checkpoint in the layout specialists/pathology loads (rank 0 writes, every rank waits for it)
    def save() -> None:
        state = {k: v.detach().cpu() for k, v in published_state_dict(model).items()}
        state.update({f"knowledge.{k}": v.detach().cpu() for k, v in knowledge_bert.state_dict().items()})
        torch.save({"state_dict": state, "epoch": int(s2["epochs"])}, out / "pytorch_model.bin")
        (out / CONFIG_NAME).write_text(json.dumps(kep_cfg.to_dict(), indent=2), encoding="utf-8")
        print(f"KEP checkpoint written to {out}", flush=True)

    run.on_main(save)
    run.close()
    return out
