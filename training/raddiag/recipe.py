"""RadDiag training recipe: multi-label BCE over the 5,569 disorders, cosine schedule with warm-up, torchrun DDP.

Read top to bottom: config -> data -> model -> loop -> checkpoint.

Data: a JSONL manifest, one case per line, `{"scans": [{"path": ..., "modality": "CT"}, ...], "labels": [disorder
names]}` (paths relative to `data.root`; NIfTI files or DICOM series folders, read by medagent's own readers and
prepared exactly as `imaging.diagnose` prepares them). Early fusion takes each case's first 4 scans; late fusion
takes one scan chosen at random per epoch, as the authors' late dataset does. `smoke.yaml` writes its own
synthetic volumes (two disorders, told apart by a bright sphere or a bright slab) as NIfTI and a manifest.

Model: the architecture of specialists/raddiag, optionally started from a RadDiag checkpoint (`model.init`) or,
for the ResNet only, from torchvision's ImageNet ResNet-50 file the user supplies (`model.resnet_init`,
IMAGENET1K_V1 = `resnet50-0676ba61.pth`, as the authors start); nothing is downloaded.

Loss: BCEWithLogits on logits clamped to [-60, 60] (as the authors' MultiLabelLoss), with a positive-class
weight `train.pos_weight`. The authors' code defines pos_weights but never passes them (MODELS_corrections
§RadDiag 6), so `gpu.yaml` keeps 1.0 to reproduce it. `train.start_class` / `end_class` restrict the loss to a
column range, as the authors' head / medium / tail runs do. The early model's 0.001 x key-slice attention loss is not
implemented (it needs the key-slice index the RP3D data carry).

Output folder: the published layout that specialists/raddiag loads (`pytorch_model.bin`, a flat state_dict without
prefix) plus `raddiag_config.json`, `train_log.jsonl` (one record per optimizer step) and `history.json` (per epoch).
Multi-GPU: `torchrun --nproc_per_node N -m medagent.training.raddiag.recipe CONFIG` (DDP; rank 0 writes the
checkpoint; every rank the same number of cases, the list padded by its first cases).

A real run (training/common.py): `train.accumulate` micro-batches per optimizer step (Stepper: DDP no_sync,
`grad_clip`, the warm-up + cosine schedule over optimizer steps), `precision` bf16/fp16 autocast on CUDA,
`num_workers` DataLoader processes that read and prepare the scans. Resumable: every `checkpoint_every` optimizer
steps `resume.pt` is written and `resume: true` continues after it with the same loss curve (tests/training/
test_resume.py kills a run and resumes it). Each epoch's order and scans come from one per-rank random stream: a
resumed run draws the epochs it has done again (cheap: an order and a choice per case), skips their micro-batches,
and trains on what the interrupted run would have.

The authors' data (RP3D-Diag `Dataset/dataset.py`): one JSON object `{case: {"Modalities": [...], "Samples":
[{"image_data_path": [.npy volume per view], "image_key_path": [.npy key-slice index], "articles": [disorder
names], ...}]}}`, names mapped to columns by `sorted_disease_label_dict.json`, volumes exported to `.npy` beforehand; ours is the
JSONL manifest above over the original NIfTI / DICOM files, prepared by the code that serves the model.
"""

from __future__ import annotations

import json
import math
import random
import sys
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medagent.specialists.raddiag.labels import vocabulary
from medagent.specialists.raddiag.load import load_raddiag, save_checkpoint
from medagent.specialists.raddiag.model import RadDiagConfig, build_model, published_config
from medagent.specialists.raddiag.preprocess import Scan, prepare_case
from medagent.tools.errors import MedagentError
from medagent.training.common import Resume, Stepper, TrainLog, ddp, rank_share, setup, threads, warmup_cosine
from medagent.training.config import load_config

# ---------------------------------------------------------------- data


def write_synthetic(folder: Path, spec: dict[str, Any], seed: int) -> Path:
    """NIfTI volumes of two disorders (a bright central sphere / a bright slab) with noise, and their manifest."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    size, depth = int(spec["size"]), int(spec["depth"])
    labels = spec["labels"]
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in (size, size, depth)), indexing="ij"))
    rows = []
    for n in range(int(spec["per_label"]) * len(labels)):
        label = labels[n % len(labels)]
        volume = rng.normal(0.0, 0.15, (size, size, depth))
        if n % len(labels) == 0:
            centre = rng.uniform(-0.2, 0.2, 3)[:, None, None, None]
            volume += (np.sqrt(((grid - centre) ** 2).sum(0)) < rng.uniform(0.4, 0.6)).astype(float)
        else:
            volume += (np.abs(grid[0] - rng.uniform(-0.3, 0.3)) < rng.uniform(0.15, 0.25)).astype(float)
        name = f"case{n:02d}.nii.gz"
        nib.save(nib.Nifti1Image(volume.astype(np.float32), np.eye(4)), folder / name)
        rows.append({"scans": [{"path": name, "modality": "CT"}], "labels": [label]})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return manifest


def read_cases(manifest: Path, root: Path) -> list[dict[str, Any]]:
    """Manifest rows with their label columns; an unknown disorder name or a missing scan is one clear error."""
    labels = vocabulary()
    cases = []
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        columns = []
        for name in row.get("labels", []):
            column = labels.index(name)
            if column is None:
                raise MedagentError(f"{manifest}:{number}: label '{name}' is not one of RadDiag's 5,569 disorders")
            columns.append(column)
        scans = [(root / s["path"], s.get("modality")) for s in row.get("scans", [])]
        missing = [str(p) for p, _ in scans if not p.exists()]
        if not scans or missing:
            raise MedagentError(f"{manifest}:{number}: no scans, or missing: {', '.join(missing)}")
        cases.append({"scans": scans, "columns": columns})
    if not cases:
        raise MedagentError(f"{manifest}: no cases")
    return cases


def read_scan(path: Path, modality: str | None) -> Scan:
    from medagent.tools.medio import read_volume, sniff

    volume = read_volume(path, sniff(path).format, modality)
    return Scan(volume.voxels, volume.modality or modality, volume.affine, name=path.name)


Item = tuple[list[tuple[Path, str | None]], list[int]]  # one case in a micro-batch: its chosen scans, its columns


def draw_epoch(cases: list[dict], batch_size: int, config: RadDiagConfig, rng: random.Random) -> list[list[Item]]:
    """One epoch's micro-batches: the cases shuffled, then each case's scans (early fusion: the first `max_scans`;
    late: one at random, as the authors' late dataset does)."""
    order = list(cases)
    rng.shuffle(order)
    return [
        [(c["scans"][: config.max_scans] if config.fusion == "early" else [rng.choice(c["scans"])], c["columns"])
         for c in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]  # fmt: skip


def batch_of(items: list[Item], config: RadDiagConfig, classes: int) -> dict:
    """A micro-batch's tensors: its scans read and prepared (in `train.num_workers` DataLoader processes)."""
    inputs, targets = [], torch.zeros(len(items), classes)
    for n, (chosen, columns) in enumerate(items):
        inputs.append(prepare_case([read_scan(p, m) for p, m in chosen], config))
        targets[n, columns] = 1.0
    return {
        "scans": torch.cat([p.scans for p in inputs]),
        "slice_valid": torch.cat([p.slice_valid for p in inputs]),
        "modality": torch.cat([p.modality for p in inputs]),
        "targets": targets,
    }


# ---------------------------------------------------------------- model


def build(cfg: dict[str, Any]) -> torch.nn.Module:
    spec = cfg["model"]
    if spec.get("init"):
        return load_raddiag(Path(spec["init"])).model.train()
    config = RadDiagConfig.from_dict(spec["raddiag"]) if spec.get("raddiag") else published_config(spec["fusion"])
    model = build_model(config)
    if spec.get("resnet_init"):  # torchvision's ImageNet ResNet-50 file: the same names as timm's ResNet-50
        model.resnet2D.load_state_dict(torch.load(spec["resnet_init"], map_location="cpu", weights_only=True))
    return model


# ---------------------------------------------------------------- main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry point's documented signature)
    cfg = load_config(config, overrides)
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with threads(cfg):  # a smoke run's `threads: 1`, restored afterwards
        return train(cfg, out)


def train(cfg: dict[str, Any], out: Path) -> Path:
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device

    # Data
    data = cfg["data"]
    if data.get("synthetic"):
        manifest, root = write_synthetic(out / "synthetic", data["synthetic"], cfg["seed"]), out / "synthetic"
    else:
        manifest, root = Path(data["manifest"]).expanduser(), Path(data.get("root") or ".").expanduser()
    cases = read_cases(manifest, root)
    mine = rank_share(cases, run)  # the same number of cases on every rank

    # Model
    model = build(cfg).to(device).train()
    config = model.config
    classes = config.num_classes
    # Some parameters never run (the ResNet's 1000-class fc, the template layers the authors' TransformerEncoder keeps
    # registered): DDP must not wait for their gradients.
    net = ddp(model, run, find_unused_parameters=True)
    train = cfg["train"]
    batch_size = int(train["batch_size"])
    # Steps: every rank runs ceil(cases / batch) micro-batches an epoch; `accumulate` of them make one optimizer
    # step (training/common.py's Stepper: DDP no_sync, the precision's autocast, clipping, the schedule).
    per_epoch = math.ceil(len(mine) / batch_size)
    epochs = int(train["epochs"])
    total = per_epoch * epochs
    steps = Stepper.steps_for(total, train)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(train["lr"]), weight_decay=float(train["weight_decay"]))
    warmup = max(1, round(steps * float(train["warmup_ratio"])))
    scheduler = warmup_cosine(optimizer, steps, warmup, float(train.get("min_lr_ratio", 0.0)))
    stepper = Stepper(net, optimizer, scheduler, train, run, total)
    # The authors' start_class / end_class: train on a column range only (head / medium / tail training).
    start_class, end_class = train.get("start_class") or 0, train.get("end_class") or classes
    pos_weight = torch.full((end_class - start_class,), float(train["pos_weight"]), device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    # Resume: with `resume: true`, continue after the last checkpoint of an interrupted run (model, optimizer,
    # schedule, step, random states; training/common.py)
    resume = Resume(run, out, cfg)
    start = resume.load(model, optimizer, schedule=scheduler, scaler=stepper.scaler) * stepper.accumulate
    log = TrainLog(run, out, append=start > 0)

    # Loop: every epoch is drawn, also those a resumed run has done (the same stream, so the same draws after them)
    rng = random.Random(cfg["seed"] + run.rank)
    workers = int(train.get("num_workers", 0))
    losses, epoch_losses = [], []
    for epoch in range(epochs):
        batches = draw_epoch(mine, batch_size, config, rng)
        skip = min(len(batches), max(0, start - epoch * per_epoch))
        if skip == len(batches):
            continue
        loader = torch.utils.data.DataLoader(
            batches[skip:], batch_size=None, num_workers=workers,
            collate_fn=partial(batch_of, config=config, classes=classes),
            generator=torch.Generator().manual_seed(cfg["seed"] + epoch),  # workers' seeds: not torch's global draw
        )  # fmt: skip
        epoch_losses = []
        for index, batch in enumerate(loader, start=epoch * per_epoch + skip):
            with stepper.micro(index):
                scans, valid, modality = (batch[k].to(device) for k in ("scans", "slice_valid", "modality"))
                logits = net(scans, valid, modality)["logits"]
                if logits.dim() == 3:  # late fusion: one scan per item
                    logits = logits[:, 0]
                logits, targets = logits[:, start_class:end_class], batch["targets"][:, start_class:end_class]
                loss = loss_fn(logits.clamp(-60, 60), targets.to(device))
                stepper.backward(loss, index)
            losses.append(float(loss.detach()))
            if not stepper.step(index):
                continue
            step = stepper.step_of(index)
            record = {"step": step, "epoch": epoch, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0]}
            epoch_losses.append(record["loss"])
            log.write({**record, "loss": round(record["loss"], 6)})
            losses = []
            if step + 1 < steps:
                resume.save(step, model, optimizer, schedule=scheduler, scaler=stepper.scaler)
        if epoch_losses and (epoch % int(train.get("log_every", 1)) == 0 or epoch == epochs - 1):
            run.log(f"epoch {epoch} loss {sum(epoch_losses) / len(epoch_losses):.4f}")
    log.close()
    # The last epoch's mean loss over the steps this process ran (history.json has every epoch's)
    run.finished("raddiag", steps, sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan"))

    # Checkpoint: the published layout, so `[raddiag] path = <output_dir>` serves it
    def write() -> None:
        save_checkpoint(model.cpu().eval(), out)
        # Per epoch from train_log.jsonl (a resumed run logged some steps twice: the last record wins)
        records = {r["step"]: r for r in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())}
        per_epoch_records: dict[int, list[dict]] = {}
        for step in sorted(records):
            per_epoch_records.setdefault(records[step]["epoch"], []).append(records[step])
        history = [{"epoch": e, "loss": sum(r["loss"] for r in rs) / len(rs), "lr": rs[-1]["lr"]}
                   for e, rs in per_epoch_records.items()]  # fmt: skip
        (out / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")

    run.on_main(write)
    resume.done()  # the run is complete: nothing left to resume
    run.close()
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
