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
prefix) plus `raddiag_config.json` and `history.json`. Multi-GPU: `torchrun --nproc_per_node N -m
medagent.training.raddiag.recipe CONFIG` (DDP; rank 0 writes the checkpoint).
"""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medagent.specialists.raddiag.labels import vocabulary
from medagent.specialists.raddiag.load import load_raddiag, save_checkpoint
from medagent.specialists.raddiag.model import RadDiagConfig, build_model, published_config
from medagent.specialists.raddiag.preprocess import Scan, prepare_case
from medagent.tools.errors import MedagentError
from medagent.training.common import ddp, rank_share, setup, threads, warmup_cosine
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


def batch_of(cases: list[dict[str, Any]], config: RadDiagConfig, rng: random.Random, classes: int) -> dict:
    inputs, targets = [], torch.zeros(len(cases), classes)
    for n, case in enumerate(cases):
        chosen = case["scans"][: config.max_scans] if config.fusion == "early" else [rng.choice(case["scans"])]
        inputs.append(prepare_case([read_scan(p, m) for p, m in chosen], config))
        targets[n, case["columns"]] = 1.0
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
    net = ddp(model, run)
    train = cfg["train"]
    batch_size = int(train["batch_size"])
    steps_per_epoch = math.ceil(len(mine) / batch_size)
    total = steps_per_epoch * int(train["epochs"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(train["lr"]), weight_decay=float(train["weight_decay"]))
    warmup = max(1, round(total * float(train["warmup_ratio"])))
    scheduler = warmup_cosine(optimizer, total, warmup, float(train.get("min_lr_ratio", 0.0)))
    # The authors' start_class / end_class: train on a column range only (head / medium / tail training).
    start_class, end_class = train.get("start_class") or 0, train.get("end_class") or classes
    pos_weight = torch.full((end_class - start_class,), float(train["pos_weight"]), device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    # Loop
    rng = random.Random(cfg["seed"] + run.rank)
    history = []
    for epoch in range(int(train["epochs"])):
        order = list(mine)
        rng.shuffle(order)
        losses = []
        for start in range(0, len(order), batch_size):
            batch = batch_of(order[start : start + batch_size], config, rng, classes)
            logits = net(batch["scans"].to(device), batch["slice_valid"].to(device), batch["modality"].to(device))[
                "logits"
            ]
            if logits.dim() == 3:  # late fusion: one scan per item
                logits = logits[:, 0]
            logits, targets = logits[:, start_class:end_class], batch["targets"][:, start_class:end_class]
            loss = loss_fn(logits.clamp(-60, 60), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0]})
        if epoch % int(train.get("log_every", 1)) == 0 or epoch == int(train["epochs"]) - 1:
            run.log(f"epoch {epoch} loss {history[-1]['loss']:.4f}")
    run.finished("raddiag", len(history) * steps_per_epoch, history[-1]["loss"])

    # Checkpoint: the published layout, so `[raddiag] path = <output_dir>` serves it
    def write() -> None:
        save_checkpoint(model.cpu().eval(), out)
        (out / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")

    run.on_main(write)
    run.close()
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
