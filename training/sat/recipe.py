"""SAT training recipe: text-prompted 3D segmentation, the network and its text queries trained per named structure.

Read top to bottom: config -> data -> model -> objective -> loop -> checkpoint. The saved folder is what
`medagent.specialists.sat.load.load_sat(folder)` reads strictly, and `specialists/sat/infer.py`'s `segment` runs:
the network as the authors' training saves it (`{'model_state_dict': {'module.<key>': …}}` with the conv/norm twins
and the 12 deep-supervision keys, which the loader drops as the authors' inference does), the text encoder in the
same layout, the tokenizer files and `sat_config.json` (the sizes, for a network that is neither Nano nor Pro).

What the recipe takes from the authors (../shared/MODELS.md section 7 and its corrections, SAT items 5-11):
- Network: SAT-Nano (`UNET`) or SAT-Pro (`UNET-L`) built with the deep-supervision heads (`--deep_supervision
  True`), from scratch, or from a SAT folder (`model.init`, e.g. the released Nano, to fine-tune).
- Text encoder: initialised from the knowledge-pre-trained checkpoint (`model.text_encoder`: a folder with the text
  encoder's .pth and the BioLORD-2023-C tokenizer files; the one published beside SAT-Nano/Pro is that). Only
  `modality_embed` trains (`train.text_encoder: modality`, the authors' `open_bert_layer 12`, `open_modality_embed
  True`); `all` trains the whole encoder (a random tower needs it: the smoke run).
- Loss, per text query: binary Dice (p = 2: sum(p*g) over sum(p^2) + sum(g^2), smooth 1e-7) + BCE-with-logits, each
  averaged over the valid queries of the batch (a crop pads its queries up to the batch's longest list). Deep
  supervision: the logits at full resolution, 1/2, 1/4 and 1/8 (`deep_supervision_logits`), weighted 1, 1/2, 1/4,
  1/8 normalised to sum 1, each against the masks downsampled by nearest neighbours.
- Optimisation (gpu.yaml): AdamW (betas 0.9 / 0.999, eps 1e-8, weight decay 0.01: AdamW's default, since their
  train.py never passes its `--weight_decay` 0.0, MODELS_corrections SAT 10), lr 1e-4 with 20k warm-up steps then cosine, 200k
  steps, fp16 autocast with a GradScaler (their AMP), batch 2 crops per GPU (Nano; Pro 1), crops 288 x 288 x 64, up
  to 32 queries per crop; DDP under torchrun (their SyncBatchNorm changes nothing: InstanceNorm has no statistics).

Data (`data.path`): a JSONL file, one scan a line, paths relative to the file's folder:
    {"image": "ct_1.nii.gz", "modality": "ct", "label": "seg_1.nii.gz", "classes": {"1": "liver", "2": "spleen"}}
    {"image": "mr_2.nii.gz", "modality": "MR", "masks": {"liver": "mr_2_liver.nii.gz"}}
`label` is a label map with `classes` naming its values; `masks` one binary mask per structure. Names are SAT terms
(any text trains, as SAT takes any prompt; the vocabulary is checked only by the tool that asks). The modality is
read as SAT codes it (specialists/sat/vocabulary.py's sat_modality: CT, MR/MRI, PET, US). The authors train on
SAT-DS (zhaoziheng/SAT-DS: 72 datasets, their own preprocessed layout, not read here): convert it to these lines.
A line without image, modality or masks fails with `file:line: ...`.

Preprocessing: specialists/sat/preprocess.py's `prepare`, the very steps inference takes (RAS, 1 x 1 x 3 mm
bilinear, the raw-intensity foreground crop, CT clipped to [-500, 1000] / MR and PET to the 0.5-99.5 percentiles,
then z-scored); the masks follow the same geometry with nearest neighbours. Each item is a random crop of
`data.crop` voxels (zero-padded where the scan is smaller), placed uniformly [I: the authors' crop sampling is not
in MODELS.md], with the scan's structures as queries (at most `data.max_queries`, a random subset beyond).
`data.cache: true` keeps the preprocessed scans in memory (small data sets; each DataLoader worker its own copy).
`data.synthetic: {cases: N, shape: [H, W, D]}` (smoke) draws N CT volumes with a liver and a spleen (ellipsoids at
the patient's right and left, of different size and density) and writes them as such a JSONL under
`output_dir/data/`, so the smoke run reads what a real run reads.

Model sizes: `model.segmenter` nano | pro | tiny (specialists/sat/model.py's configs), `model.segmenter_overrides`
SATConfig fields on top; `model.text_encoder: tiny` builds specialists/sat/text.py's tiny MPNet (with
`model.text_overrides`) and a word-level tokenizer over SAT's class names and the data's, as load.build_tiny does.

Batches, steps, resume: as the other recipes (training/common.py). Every rank takes its padded share of each epoch's
shuffled order (`rank_batches` through `BatchPlan`), crops and query subsets are drawn from (seed, epoch, index), the
run is `train.steps` optimizer steps of `train.accumulate` micro-batches (Stepper: DDP no_sync, `precision`
autocast, clipping, the schedule), `train.checkpoint_every` + `resume: true` continue a killed run (Resume).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medagent.specialists.sat.load import (
    CONFIG_NAME,
    WEIGHT_SUFFIXES,
    load_segmenter,
    load_text_encoder,
    load_tokenizer,
    read_checkpoint,
    role_of,
    save_checkpoint,
    tiny_tokenizer,
)
from medagent.specialists.sat.model import SATConfig, SATSegmenter, nano_config, pro_config, tiny_config
from medagent.specialists.sat.preprocess import Prepared, prepare, resample, to_ras
from medagent.specialists.sat.text import MODALITY_CODES, SATTextEncoder, TextConfig, tiny_text_config, tokenize_prompts
from medagent.specialists.sat.vocabulary import VocabularyError, load_vocabulary, sat_modality
from medagent.tools.errors import ConfigError
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

SEGMENTERS = {"nano": nano_config, "pro": pro_config, "tiny": tiny_config}
DICE_SMOOTH = 1e-7  # the authors' smooth term

# --------------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Case:
    image: Path
    modality: str  # SAT's code: ct, mri, us, pet
    masks: tuple[tuple[str, Path], ...]  # (term, binary mask file), or one label map shared by several terms
    values: tuple[int, ...] | None  # the label map's value of each term (None: binary mask files)
    where: str  # "file:line", for messages

    @property
    def terms(self) -> list[str]:
        return [term for term, _ in self.masks]


def read_cases(data: dict[str, Any]) -> list[Case]:
    """The scans of a JSONL file (format in the module docstring); a bad line fails naming file and line."""
    path = Path(data["path"]).expanduser()
    if not path.is_file():
        raise ConfigError(f"{path}: no such data file (data.path)")
    root = path.parent
    cases = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{where}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("image"), str):
            raise ConfigError(f"{where}: a scan needs an 'image' path")
        try:
            modality = sat_modality(str(row.get("modality", "")))
        except VocabularyError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if isinstance(row.get("masks"), dict) and row["masks"]:
            masks = tuple((str(term).lower(), root / str(file)) for term, file in row["masks"].items())
            values = None
        elif isinstance(row.get("label"), str) and isinstance(row.get("classes"), dict) and row["classes"]:
            classes = sorted((int(value), str(term).lower()) for value, term in row["classes"].items())
            masks = tuple((term, root / row["label"]) for _, term in classes)
            values = tuple(value for value, _ in classes)
        else:
            raise ConfigError(f"{where}: a scan needs 'masks' {{term: file}} or a 'label' map with its 'classes'")
        cases.append(Case(root / row["image"], modality, masks, values, where))
        if data.get("limit") and len(cases) >= int(data["limit"]):
            break
    if not cases:
        raise ConfigError(f"{path}: no scans")
    return cases


def write_synthetic(folder: Path, cases: int, shape: list[int], seed: int) -> Path:
    """`cases` synthetic CT volumes (1 x 1 x 3 mm, RAS) with a liver and a spleen as a label map, and their JSONL.

    Soft tissue at 40 HU, a liver of 120 HU (an ellipsoid of a fifth of the width, on the patient's right: +x in
    RAS) and a smaller spleen of 70 HU on the left, each jittered in place and size, Gaussian noise of 10 HU."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = np.array(shape, dtype=float)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    affine = np.diag([1.0, 1.0, 3.0, 1.0])
    lines = []
    import nibabel as nib

    for index in range(cases):
        image = 40.0 + rng.normal(0.0, 10.0, shape)
        label = np.zeros(shape, dtype=np.uint8)
        for value, side, radius, hounsfield in ((1, 0.7, 0.2, 120.0), (2, 0.28, 0.15, 70.0)):
            centre = size * np.array([side, 0.5, 0.5]) + rng.uniform(-1, 1, 3) * size * np.array([0.06, 0.1, 0.1])
            radii = size * radius * rng.uniform(0.85, 1.15)
            inside = (((grid - centre) / radii) ** 2).sum(-1) <= 1.0
            label[inside] = value
            image[inside] = hounsfield + rng.normal(0.0, 10.0, int(inside.sum()))
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), folder / f"ct_{index}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), folder / f"seg_{index}.nii.gz")
        lines.append(json.dumps({"image": f"ct_{index}.nii.gz", "modality": "ct", "label": f"seg_{index}.nii.gz",
                                 "classes": {"1": "liver", "2": "spleen"}}))  # fmt: skip
    (folder / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "cases.jsonl"


def to_processed(mask: np.ndarray, affine: np.ndarray, prepared: Prepared) -> np.ndarray:
    """A mask on the scan's input grid moved onto `prepared`'s grid as `prepare` moved the image: reoriented to
    RAS, resampled to 1 x 1 x 3 mm with nearest neighbours, cropped to the image's foreground box."""
    canonical, canonical_affine = to_ras(mask.astype(np.float32), affine)
    resampled = resample(canonical, canonical_affine, prepared.resampled_affine, prepared.resampled_shape, "nearest")
    return resampled[prepared.crop] > 0.5


def load_case(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, D) float32, masks (N, H, W, D) bool) in SAT's processed grid."""
    import nibabel as nib

    try:
        scan = nib.load(str(case.image))
        voxels, affine = np.asarray(scan.dataobj, dtype=np.float32), scan.affine
        prepared = prepare(voxels, affine, case.modality)
        masks = []
        for (term, file), value in zip(case.masks, case.values or (None,) * len(case.masks), strict=True):
            raw = np.asarray(nib.load(str(file)).dataobj)
            if raw.shape != voxels.shape:
                raise ConfigError(f"{case.where}: the mask of {term!r} is {raw.shape}, the image {voxels.shape}")
            masks.append(to_processed(raw == value if value is not None else raw > 0, affine, prepared))
    except (OSError, nib.filebasedimages.ImageFileError) as exc:
        raise ConfigError(f"{case.where}: cannot read the scan or its masks ({exc})") from None
    return prepared.image, np.stack(masks)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class Crops(torch.utils.data.Dataset):
    """Item `(index, epoch)`: a `crop`-sized random crop of scan `index` with its structures' masks and names (at most
    `max_queries`), drawn from (seed, epoch, index); read when a batch asks for it (DataLoader workers)."""

    def __init__(self, cases: list[Case], crop: list[int], max_queries: int, seed: int, cache: bool) -> None:
        self.cases, self.crop, self.max_queries, self.seed = cases, tuple(int(n) for n in crop), int(max_queries), seed
        self.cached: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.cases)

    def scan(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cached is None:
            return load_case(self.cases[index])
        if index not in self.cached:
            self.cached[index] = load_case(self.cases[index])
        return self.cached[index]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, epoch = key
        image, masks = self.scan(index)
        rng = np.random.default_rng(sample_seed(self.seed, epoch, index))
        pad = [(0, max(0, c - s)) for c, s in zip(self.crop, image.shape, strict=True)]
        image, masks = np.pad(image, pad), np.pad(masks, [(0, 0), *pad])
        corner = [int(rng.integers(0, s - c + 1)) for c, s in zip(self.crop, image.shape, strict=True)]
        box = tuple(slice(a, a + c) for a, c in zip(corner, self.crop, strict=True))
        chosen = np.arange(len(masks))
        if len(chosen) > self.max_queries:
            chosen = np.sort(rng.choice(len(masks), self.max_queries, replace=False))
        terms = self.cases[index].terms
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image[box]))[None],
            "masks": torch.from_numpy(np.ascontiguousarray(masks[(chosen, *box)])),
            "terms": [terms[i] for i in chosen],
            "modality": self.cases[index].modality,
            "epoch": epoch,
        }


def collate(batch: list[dict[str, Any]], tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Images (B, 1, H, W, D); the batch's distinct (term, modality) prompts tokenised once; `which` (B, N) points each
    query at its prompt, `valid` (B, N) marks the real ones, `masks` (B, N, H, W, D) their targets."""
    prompts = list(dict.fromkeys((term, item["modality"]) for item in batch for term in item["terms"]))
    ids, attention = tokenize_prompts(tokenizer, [term for term, _ in prompts], max_length)
    queries = max(len(item["terms"]) for item in batch)
    which = torch.zeros(len(batch), queries, dtype=torch.long)
    valid = torch.zeros(len(batch), queries, dtype=torch.bool)
    masks = torch.zeros(len(batch), queries, *batch[0]["image"].shape[1:], dtype=torch.uint8)
    for row, item in enumerate(batch):
        for column, term in enumerate(item["terms"]):
            which[row, column] = prompts.index((term, item["modality"]))
            valid[row, column] = True
            masks[row, column] = item["masks"][column]
    return {
        "image": torch.stack([item["image"] for item in batch]),
        "ids": ids,
        "attention": attention.long(),
        "modality": torch.tensor([MODALITY_CODES[modality] for _, modality in prompts], dtype=torch.long),
        "which": which,
        "valid": valid,
        "masks": masks,
        "epoch": batch[0]["epoch"],
    }


# --------------------------------------------------------------------------------------------------
# Model and objective


class Objective(torch.nn.Module):
    """Network + text encoder as one module (one DDP wrapper): the prompts' queries, then the four logit scales."""

    def __init__(self, segmenter: SATSegmenter, text_encoder: SATTextEncoder) -> None:
        super().__init__()
        self.segmenter, self.text_encoder = segmenter, text_encoder

    def forward(self, image: torch.Tensor, ids: torch.Tensor, attention: torch.Tensor, modality: torch.Tensor,
                which: torch.Tensor) -> list[torch.Tensor]:  # fmt: skip
        prompts = self.text_encoder(ids, attention, modality)  # (P, query_dim), one per distinct prompt
        return self.segmenter.deep_supervision_logits(image, prompts[which])


def sat_loss(logits: list[torch.Tensor], masks: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, mean Dice coefficient of the full-resolution output) over the valid queries: per scale, binary Dice
    (p = 2) + BCE-with-logits against the masks downsampled by nearest neighbours, scales weighted 1, 1/2, 1/4, ...
    normalised to sum 1."""
    weights = [0.5**k for k in range(len(logits))]
    weights = [w / sum(weights) for w in weights]
    keep = valid.float()
    total, coefficient = logits[0].new_zeros((), dtype=torch.float32), None
    for weight, logit in zip(weights, logits, strict=True):
        logit = logit.float()
        target = F.interpolate(masks.float(), size=logit.shape[2:], mode="nearest")
        prob = torch.sigmoid(logit)
        overlap = (prob * target).flatten(2).sum(-1)
        squares = (prob**2).flatten(2).sum(-1) + (target**2).flatten(2).sum(-1)
        dice = (2 * overlap + DICE_SMOOTH) / (squares + DICE_SMOOTH)  # (B, N)
        bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none").flatten(2).mean(-1)
        per_query = (1 - dice) + bce
        total = total + weight * (per_query * keep).sum() / keep.sum().clamp(min=1)
        if coefficient is None:
            coefficient = (dice.detach() * keep).sum() / keep.sum().clamp(min=1)
    return total, coefficient


def checkpoint_file(folder: Path, role: str) -> Path:
    """The `role` checkpoint in a SAT folder: the file whose keys are `module.backbone.*` (segmenter) or
    `module.text_tower.*` (text encoder)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such SAT folder (model.init / model.text_encoder)")
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        if role_of(read_checkpoint(path)) == role:
            return path
    raise ConfigError(f"{folder}: no SAT {role.replace('_', ' ')} checkpoint in it")


def tokenizer_for(terms: list[str]) -> Any:
    """build_tiny's word-level tokenizer over SAT's class names, plus the words of `terms`."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.BertPreTokenizer()
    names = [*load_vocabulary().terms(), *terms]
    return tiny_tokenizer([word.lower() for name in names for word, _ in split.pre_tokenize_str(name)])


def build_models(model_cfg: dict[str, Any], terms: list[str]) -> tuple[SATSegmenter, SATTextEncoder, Any]:
    """The network (with its deep-supervision heads), the text encoder and its tokenizer (seeded by setup: every
    rank builds the same initial weights)."""
    name = str(model_cfg.get("segmenter", "nano"))
    if name not in SEGMENTERS:
        raise ConfigError(f"model.segmenter: '{name}' is not one of {', '.join(SEGMENTERS)}")
    overrides = dict(model_cfg.get("segmenter_overrides") or {})
    try:
        config = SATConfig.from_dict({**SEGMENTERS[name]().to_dict(), **overrides, "deep_supervision": True})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.segmenter_overrides: {exc}") from None
    segmenter = SATSegmenter(config)
    if model_cfg.get("init"):  # a SAT folder's network; the strict loader reads it without the deep-supervision
        # heads (the released inference checkpoints lack them), which then start from scratch
        inference = SATConfig.from_dict({**config.to_dict(), "deep_supervision": False})
        loaded, _ = load_segmenter(checkpoint_file(Path(model_cfg["init"]), "segmenter"), inference)
        segmenter.load_state_dict(loaded.state_dict(), strict=False)
    source = str(model_cfg.get("text_encoder", "tiny"))
    if source == "tiny":
        tokenizer = tokenizer_for(terms)
        text_overrides = dict(model_cfg.get("text_overrides") or {})
        base = tiny_text_config(vocab_size=len(tokenizer)).to_dict()
        text_config = TextConfig.from_dict({**base, **text_overrides, "query_dim": config.query_dim})
        text_encoder = SATTextEncoder(text_config)
    else:
        tokenizer = load_tokenizer(Path(source).expanduser())
        text_encoder, _ = load_text_encoder(checkpoint_file(Path(source), "text_encoder"))
    if text_encoder.config.query_dim != config.query_dim:
        raise ConfigError(f"model: the text encoder makes {text_encoder.config.query_dim}-wide queries, the network "
                          f"wants {config.query_dim}")  # fmt: skip
    return segmenter.train(), text_encoder.train(), tokenizer


def trainable(segmenter: SATSegmenter, text_encoder: SATTextEncoder, which: str) -> None:
    """`which` of the text encoder trains (modality: the authors' choice; all); the network trains in full, except what
    never runs (each decoder layer's norm1, the MPNet pooler), frozen so DDP sees no unused parameter."""
    if which not in ("modality", "all"):
        raise ConfigError(f"train.text_encoder: '{which}' is not modality or all")
    text_encoder.requires_grad_(which == "all")
    text_encoder.modality_embed.requires_grad_(True)
    if text_encoder.text_tower.biolord.pooler is not None:
        text_encoder.text_tower.biolord.pooler.requires_grad_(False)
    for layer in segmenter.transformer_decoder.layers:
        layer.norm1.requires_grad_(False)


# --------------------------------------------------------------------------------------------------
# Main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry point's documented signature)
    cfg = load_config(config, overrides)
    with threads(cfg):  # a smoke run's `threads: 1`, restored afterwards (training/common.py)
        return train(cfg)


def train(cfg: dict[str, Any]) -> Path:
    """The whole run for one loaded config; returns the checkpoint folder (`output_dir/model`)."""
    seed = int(cfg.get("seed", 0))
    out = Path(cfg["output_dir"]).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    data_cfg, model_cfg, train_cfg = cfg["data"], cfg["model"], cfg["train"]

    # ---- data: a JSONL of scans (smoke: synthetic volumes written as one first, by rank 0)
    if data_cfg.get("synthetic"):
        synthetic, path = data_cfg["synthetic"], out / "data" / "cases.jsonl"
        run.on_main(write_synthetic, path.parent, int(synthetic["cases"]), list(synthetic["shape"]), seed)
        data_cfg = {**data_cfg, "path": str(path)}
    cases = read_cases(data_cfg)
    terms = sorted({term for case in cases for term in case.terms})

    # ---- model
    segmenter, text_encoder, tokenizer = build_models(model_cfg, terms)
    trainable(segmenter, text_encoder, str(train_cfg.get("text_encoder", "modality")))
    crop = [int(n) for n in data_cfg["crop"]]
    if any(n % segmenter.config.stride for n in crop):
        raise ConfigError(f"data.crop: {crop} must be multiples of the network's {segmenter.config.stride} voxels")
    objective = Objective(segmenter, text_encoder).to(device)
    trained = ddp(objective, run)
    named = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [p for _, p in named], lr=float(train_cfg["lr"]), betas=tuple(train_cfg.get("betas", (0.9, 0.999))),
        eps=float(train_cfg.get("eps", 1e-8)), weight_decay=float(train_cfg.get("weight_decay", 0.01)),
    )  # fmt: skip
    count = sum(p.numel() for _, p in named)
    run.log(f"sat recipe: {len(cases)} scans, {len(terms)} structures, SAT {segmenter.config.variant}, "
            f"{count:,} trainable parameters, device {device}, world {run.world}")  # fmt: skip

    # ---- steps: `train.steps` optimizer steps of `accumulate` micro-batches over as many epochs as that takes
    batch_size = int(train_cfg["batch_size"])
    steps = int(train_cfg["steps"])
    total = steps * int(train_cfg.get("accumulate", 1) or 1)
    per_epoch = len(rank_batches(len(cases), batch_size, run, seed, 0))
    epochs = math.ceil(total / per_epoch)
    schedule = warmup_cosine(
        optimizer, steps, int(train_cfg.get("warmup", 0)), float(train_cfg.get("min_lr_ratio", 0.0))
    )
    stepper = Stepper(trained, optimizer, schedule, train_cfg, run, total, [p for _, p in named])
    resume = Resume(run, out, cfg)  # `resume: true` continues after out/resume.pt
    start = resume.load(objective, optimizer, schedule=schedule, scaler=stepper.scaler) * stepper.accumulate

    dataset = Crops(cases, crop, int(data_cfg.get("max_queries", 32)), seed, bool(data_cfg.get("cache", False)))
    data = torch.utils.data.DataLoader(
        dataset, batch_sampler=BatchPlan(len(cases), batch_size, run, seed, epochs, start),
        num_workers=int(train_cfg.get("num_workers", 0)), pin_memory=device.type == "cuda",
        collate_fn=partial(collate, tokenizer=tokenizer, max_length=text_encoder.config.max_length),
        generator=torch.Generator().manual_seed(seed),  # workers' seeds: not drawn from the state Resume restores
    )  # fmt: skip

    # ---- loop
    log = TrainLog(run, out, append=start > 0)
    log_every = int(train_cfg.get("log_every", 10))
    last_loss = float("nan")
    trained.train()
    for index, batch in enumerate(data, start=start):
        if index >= total:
            break
        epoch = batch.pop("epoch")
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with stepper.micro(index):
            logits = trained(batch["image"], batch["ids"], batch["attention"], batch["modality"], batch["which"])
            loss, dice = sat_loss(logits, batch["masks"], batch["valid"])
            stepper.backward(loss, index)
        stepper.step(index)
        record = {"step": index, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                  "dice": round(float(dice), 4), "lr": schedule.get_last_lr()[0]}  # fmt: skip
        last_loss = record["loss"]
        log.write(record)
        if index % log_every == 0 or index + 1 == total:
            run.log(f"step {index} epoch {epoch} loss {record['loss']:.4f} dice {record['dice']:.3f}")
        if stepper.closes(index) and index + 1 < total:
            resume.save(stepper.step_of(index), objective, optimizer, schedule=schedule, scaler=stepper.scaler)
    log.close()
    run.finished("sat", steps, last_loss)  # optimizer steps

    # ---- checkpoint in the authors' training layout (rank 0 writes, every rank waits for it)
    folder = out / "model"

    def save() -> None:
        save_checkpoint("segmenter", segmenter, folder / f"sat_{segmenter.config.variant}.pth")
        save_checkpoint("text_encoder", text_encoder, folder / "sat_text_encoder.pth")
        tokenizer.save_pretrained(str(folder))
        inference = SATConfig.from_dict({**segmenter.config.to_dict(), "deep_supervision": False})
        sizes = {"segmenter": inference.to_dict(), "text_encoder": text_encoder.config.to_dict()}
        (folder / CONFIG_NAME).write_text(json.dumps(sizes, indent=1), encoding="utf-8")
        (out / "train_config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
        print(f"SAT checkpoint written to {folder}", flush=True)

    run.on_main(save)
    resume.done()
    run.close()
    return folder
