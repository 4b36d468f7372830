"""Fine-tune RadFM on question/answer (or report) pairs: LoRA on LLaMA, full training of perceiver + image embeddings.

Read top to bottom: config -> data -> model -> loop -> merge and save. The saved folder is in the published layout
(flat `pytorch_model.bin`, both tied keys) and loads with `medagent.specialists.radfm.load.load_radfm`.

Data: a JSONL file, one pair per line:
    {"question": "Is there a pneumothorax?", "answer": "No", "image": "images/x.jpg", "fold": "train"}
`image` (or a list `images`) is relative to `data.image_root` (default: the JSONL's folder); 2D pictures
(png/jpeg) and volumes (NIfTI `.nii`/`.nii.gz`, or a DICOM series folder) are both accepted; a batch never mixes
them. `fold` is optional; `data.fold` keeps only matching lines. VQA-RAD's dev.jsonl already has this shape. For
report generation, put the instruction in `question` and the report in `answer`. The authors train from per-data-set
CSVs (HF chaoyi-wu/RadFM_data_csv; columns differ by data set) read by their own dataset classes; this recipe does
not read those CSVs directly: write one JSONL line per (scan(s), question, answer) from them.

Multi-process: run under torchrun (training/common.py sets up the device and the process group). `strategy: fsdp`
shards the language model's decoder layers with FSDP (CUDA only, on one GPU too; not yet run on a multi-GPU
machine); `strategy: ddp` replicates the model (what the CPU/gloo test runs). Every rank gets the same number of
batches (the shuffled batch list is padded by its first batches up to a multiple of the world size).

A real run (training/common.py): `train.accumulate` micro-batches per optimizer step, a warm-up + cosine schedule
over the optimizer steps (`warmup`, `min_lr_ratio`), `precision` bf16/fp16 autocast on CUDA, `num_workers`
DataLoader processes that read and collate the scans, and `checkpoint_every` + `resume: true` to continue a killed
run with the same loss curve (tests/training/test_resume.py kills one and resumes it).
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import torch

from medagent.specialists.radfm.load import load_radfm, save_checkpoint
from medagent.specialists.radfm.preprocess import build_prompt, image_to_tensor, stack_images, volume_to_tensor
from medagent.specialists.radfm.tiny import build_tiny
from medagent.training.common import (
    Resume,
    Stepper,
    TrainLog,
    ddp,
    generator,
    rank_share,
    setup,
    uses_fsdp,
    warmup_cosine,
)  # fmt: skip
from medagent.training.config import load_config as read_config

VOLUME_SUFFIXES = (".nii", ".nii.gz")


# ---------------------------------------------------------------- config


# ---------------------------------------------------------------- data


def read_pairs(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(cfg["path"])
    root = Path(cfg["image_root"]) if cfg.get("image_root") else path.parent
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if cfg.get("fold") and row.get("fold", cfg["fold"]) != cfg["fold"]:
            continue
        images = row.get("images") or ([row["image"]] if row.get("image") else [])
        if not row.get("question") or not row.get("answer") or not images:
            raise ValueError(f"{path}:{number}: a pair needs question, answer and image(s)")
        files = [root / name for name in images]
        volume = [f.is_dir() or f.name.endswith(VOLUME_SUFFIXES) for f in files]
        if len(set(volume)) > 1:
            raise ValueError(f"{path}:{number}: mixes 2D pictures and volumes in one pair")
        pairs.append({"question": row["question"], "answer": str(row["answer"]), "files": files, "is_3d": volume[0]})
        if cfg.get("limit") and len(pairs) >= cfg["limit"]:
            break
    if not pairs:
        raise ValueError(f"{path}: no pairs (fold {cfg.get('fold')!r})")
    return pairs


_SCANS: dict[tuple[Path, int, int], torch.Tensor] = {}


def scan(file: Path, size: int, max_depth: int) -> torch.Tensor:
    """A scan as RadFM's tensor; cached, since every epoch reads the same files."""
    key = (file, size, max_depth)
    if key not in _SCANS:
        _SCANS[key] = _read_scan(file, size, max_depth)
    return _SCANS[key]


def _read_scan(file: Path, size: int, max_depth: int) -> torch.Tensor:
    from medagent.tools.medio import read_image, read_volume

    if file.is_dir():
        volume = read_volume(file, "dicom")
    elif file.name.endswith(VOLUME_SUFFIXES):
        volume = read_volume(file, "nifti")
    else:
        return image_to_tensor(read_image(file), size)
    return volume_to_tensor(
        volume.voxels, size, affine=volume.affine, hounsfield=volume.units == "HU", max_depth=max_depth
    )


def batches(pairs: list[dict[str, Any]], size_2d: int, size_3d: int, rng: random.Random) -> list[list[dict]]:
    """Shuffled batches, each only 2D or only 3D (the tensors could not be stacked otherwise)."""
    out = []
    for is_3d, size in ((False, size_2d), (True, size_3d)):
        group = [p for p in pairs if p["is_3d"] == is_3d]
        rng.shuffle(group)
        out += [group[i : i + size] for i in range(0, len(group), size)]
    rng.shuffle(out)
    return out


def collate(batch: list[dict], tokenizer: Any, num_latents: int, size: int, max_depth: int, max_length: int) -> dict:
    """Right-padded ids with the answer (+ eos) as the only labelled tokens; scans stacked as (B, S, 3, H, W, D)."""
    if len(batch) == 1 and batch[0]["is_3d"]:
        size = size // 2  # RadFM trains single 3D samples at half resolution (memory); positions are strided
    rows, labels = [], []
    for pair in batch:
        prompt = [
            1,
            *tokenizer(build_prompt(pair["question"], len(pair["files"]), num_latents), add_special_tokens=False)[
                "input_ids"
            ],
        ]
        target = tokenizer(" " + pair["answer"], add_special_tokens=False)["input_ids"] + [2]
        rows.append((prompt + target)[:max_length])
        labels.append(([-100] * len(prompt) + target)[:max_length])
    longest = max(len(r) for r in rows)
    lang_x = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    label_x = torch.full((len(rows), longest), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(zip(rows, labels, strict=True)):
        lang_x[i, : len(ids)], mask[i, : len(ids)], label_x[i, : len(lab)] = torch.tensor(ids), 1, torch.tensor(lab)
    counts = {len(pair["files"]) for pair in batch}
    if len(counts) > 1:
        raise ValueError("a batch must hold pairs with the same number of images; use batch size 1 for such data")
    # One stack for all scans of the batch, so depths agree (shallower scans repeat slices).
    flat = stack_images([scan(f, size, max_depth) for pair in batch for f in pair["files"]])[0]
    vision_x = flat.reshape(len(batch), counts.pop(), *flat.shape[1:])
    return {"lang_x": lang_x, "attention_mask": mask, "labels": label_x, "vision_x": vision_x}


# ---------------------------------------------------------------- main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry point's documented signature)
    cfg = read_config(config, overrides)
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    fsdp = uses_fsdp(cfg, run)  # `strategy: ddp | fsdp`; fsdp only with several CUDA processes

    # Data
    pairs = read_pairs(cfg["data"])

    # Model: the published weights, or (smoke) a tiny random one whose tokenizer knows the data's words
    base = cfg["model"]["base"]
    if cfg["model"].get("tiny"):
        sentences = [f"{p['question']} {p['answer']}" for p in pairs]
        run.on_main(build_tiny, out / "base", sentences, seed=cfg["seed"])  # rank 0 writes it, all ranks load it
        base = out / "base"
    bundle = load_radfm(Path(base), dtype=cfg["model"]["dtype"], device="cpu" if fsdp else str(device))
    model, tokenizer = bundle.model, bundle.tokenizer
    size = cfg["data"].get("image_size") or bundle.config.vision.image_size

    # LoRA on the language model; the embedding side trains fully (text embeddings stay frozen: they are LLaMA's)
    from peft import LoraConfig, get_peft_model

    for parameter in model.parameters():
        parameter.requires_grad_(False)
    lora = LoraConfig(
        r=cfg["lora"]["r"],
        lora_alpha=cfg["lora"]["alpha"],
        lora_dropout=cfg["lora"]["dropout"],
        target_modules=list(cfg["lora"]["target_modules"]),
    )
    model.lang_model = get_peft_model(model.lang_model, lora)
    embedding = model.embedding_layer
    trainable = [embedding.perceiver, embedding.fc]
    if cfg["train"]["vision_encoder"]:
        trainable.append(embedding.vision_encoder)
    for module in trainable:
        module.requires_grad_(True)
    embedding.figure_token_weight.requires_grad_(True)
    if cfg["model"]["gradient_checkpointing"]:
        model.lang_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if fsdp:
        from functools import partial

        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        policy = partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        model = FullyShardedDataParallel(model, auto_wrap_policy=policy, use_orig_params=True, device_id=device)
    else:
        model = ddp(model, run, find_unused_parameters=True)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    train = cfg["train"]
    optimizer = torch.optim.AdamW(parameters, lr=train["lr"], weight_decay=train["weight_decay"])
    count = sum(p.numel() for p in parameters)
    run.log(f"radfm recipe: {len(pairs)} pairs, {count:,} trainable parameters, device {device}, world {run.world}")

    # Steps: every rank gets ceil(batches / world) micro-batches an epoch; `accumulate` of them make one
    # optimizer step (training/common.py's Stepper: DDP no_sync, the precision's autocast, clipping, schedule).
    per_epoch = len(rank_share(batches(pairs, train["batch_size_2d"], train["batch_size_3d"], random.Random(0)), run))
    total = per_epoch * train["epochs"]
    steps = Stepper.steps_for(total, train)
    schedule = warmup_cosine(optimizer, steps, int(train.get("warmup", 0)), float(train.get("min_lr_ratio", 0.0)))
    stepper = Stepper(model, optimizer, schedule, train, run, total, parameters)
    resume = Resume(run, out, cfg)  # `resume: true` continues after out/resume.pt
    start = resume.load(model, optimizer, schedule=schedule, scaler=stepper.scaler) * stepper.accumulate
    log = TrainLog(run, out, append=start > 0)

    def collate_batch(batch: list[dict]) -> dict[str, torch.Tensor]:
        return collate(batch, tokenizer, bundle.config.perceiver.num_latents, size, cfg["data"]["max_depth"],
                       train["max_length"])  # fmt: skip

    # Loop: the batch list is drawn from one seed on every rank (then shared out by rank_share), so a resumed run
    # redraws the same lists and skips the micro-batches it already ran; workers read and collate the scans.
    rng = random.Random(cfg["seed"])
    last_loss = float("nan")
    index = 0
    for epoch in range(train["epochs"]):
        mine = rank_share(batches(pairs, train["batch_size_2d"], train["batch_size_3d"], rng), run)
        skip = min(len(mine), max(0, start - index))
        index += skip
        workers = int(train.get("num_workers", 0))
        data = torch.utils.data.DataLoader(mine[skip:], batch_size=None, collate_fn=collate_batch, num_workers=workers,
                                           generator=generator(cfg["seed"] + epoch, run))  # fmt: skip
        for tensors in data:
            tensors = {k: v.to(device) for k, v in tensors.items()}
            tensors["vision_x"] = tensors["vision_x"].to(bundle.model.embedding_layer.fc.weight.dtype)
            with stepper.micro(index):
                loss = model(**tensors).loss
                stepper.backward(loss, index)
            stepper.step(index)
            record = {"step": index, "epoch": epoch, "loss": round(float(loss.detach()), 5),
                      "lr": schedule.get_last_lr()[0]}  # fmt: skip
            last_loss = record["loss"]
            log.write(record)
            if index % train["log_every"] == 0:
                run.log(f"step {index} epoch {epoch} loss {record['loss']:.4f}")
            if stepper.closes(index) and index + 1 < total:
                resume.save(stepper.step_of(index), model, optimizer, schedule=schedule, scaler=stepper.scaler)
            index += 1
    log.close()
    run.finished("radfm", steps, last_loss)  # optimizer steps

    # Merge LoRA into the weights and save in the published layout. Under FSDP the parameters are gathered to
    # their full shapes first (summon_full_params), so the merge sees whole matrices.
    # Rank 0 writes; every rank waits for it (training/common.py's on_main).
    if fsdp:
        with FullyShardedDataParallel.summon_full_params(model, writeback=False, offload_to_cpu=True):
            run.on_main(_merge_and_save, bundle, tokenizer, out, cfg)
    else:
        run.on_main(_merge_and_save, bundle, tokenizer, out, cfg)
    resume.done()
    run.close()
    return out / "model"


def _merge_and_save(bundle: Any, tokenizer: Any, out: Path, cfg: dict) -> Path:
    target = out / "model"
    bundle.model.lang_model = bundle.model.lang_model.merge_and_unload()
    bundle.model.tie_embeddings()
    bundle.model.eval()
    save_checkpoint(bundle.model, tokenizer, target)
    # The whole run's curve from train_log.jsonl (a resumed run logged some steps twice: the last record wins).
    records = {r["step"]: r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}
    (out / "history.json").write_text(json.dumps([records[k] for k in sorted(records)]), encoding="utf-8")
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str), encoding="utf-8")
    return target


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), sys.argv[2:]))
