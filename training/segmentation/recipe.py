"""Segmentation recipe: train a MONAI network with DiceCE loss and write a MONAI bundle.

Read top to bottom: config -> data -> network -> loop (AMP on GPU, sliding-window validation) ->
bundle (configs/metadata.json, configs/inference.json, models/model.pt as {"model": state_dict}).
The bundle's network_def is the very dict the network was built from, and its preprocessing is the
validation preprocessing, so `medagent.specialists.imaging.bundle` loads and runs it unchanged.
Multi-GPU: launch with torchrun; each process trains on its shard under DDP (training/common.py: a padded
DistributedSampler, so every rank runs the same steps; rank 0 writes the data folder and the bundle).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medagent.training.common import Resume, Stepper, TrainLog, ddp, generator, sampler, setup
from medagent.training.config import load_config


def synthetic_data(cfg: dict[str, Any], folder: Path) -> list[dict[str, str]]:
    """Volumes with spheres (monai.data.synthetic) written as NIfTI, so training reads files like real data."""
    import nibabel as nib
    from monai.data.synthetic import create_test_image_3d

    data = cfg["data"]
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(int(data["count"])):
        size = int(data["size"])
        image, label = create_test_image_3d(
            size,
            size,
            size,
            num_objs=int(data["num_objs"]),
            rad_max=int(data["rad_max"]),
            noise_max=float(data["noise_max"]),
            num_seg_classes=1,
            random_state=np.random.RandomState(cfg["seed"] + index),
        )
        paths = synthetic_paths(index + 1, folder)[index]
        nib.save(nib.Nifti1Image(image.astype(np.float32), np.eye(4)), paths["image"])
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), paths["label"])
        items.append(paths)
    return items


def synthetic_paths(count: int, folder: Path) -> list[dict[str, str]]:
    """Where synthetic_data writes volume `i`: <folder>/image_i.nii.gz and label_i.nii.gz."""
    return [{k: str(folder / f"{k}_{i}.nii.gz") for k in ("image", "label")} for i in range(count)]


def msd_data(cfg: dict[str, Any]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Medical Segmentation Decathlon layout: dataset.json's training list, the last part held out."""
    root = Path(cfg["data"]["dir"])
    listing = json.loads((root / "dataset.json").read_text())["training"]
    items = [{k: str(root / v) for k, v in item.items()} for item in listing]
    held_out = max(1, int(len(items) * float(cfg["data"]["val_fraction"])))
    return items[:-held_out], items[-held_out:]


def preprocessing(cfg: dict[str, Any], keys: list[str]) -> list[dict[str, Any]]:
    """MONAI dictionary transforms as bundle config entries (`_target_` dicts), shared by training and the bundle."""
    pre = cfg["preprocessing"]
    low, high = pre["intensity_range"]
    steps: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": keys},
        {"_target_": "EnsureChannelFirstd", "keys": keys},
        {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
    ]
    if pre.get("pixdim"):
        modes = ["bilinear", "nearest"][: len(keys)]
        steps.append({"_target_": "Spacingd", "keys": keys, "pixdim": pre["pixdim"], "mode": modes})
    steps.append(
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": low,
            "a_max": high,
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": True,
        }
    )
    steps.append({"_target_": "EnsureTyped", "keys": keys})
    return steps


def build(entries: dict[str, Any], key: str) -> Any:
    """Instantiate one config entry with monai.bundle's parser, exactly as a bundle loader will."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(entries))
    return parser.get_parsed_content(key, instantiate=True)


def write_bundle(cfg: dict[str, Any], state_dict: dict[str, torch.Tensor], folder: Path, best_dice: float) -> Path:
    """configs/metadata.json, configs/inference.json and models/model.pt in the MONAI bundle layout."""
    import monai

    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    labels = {str(k): str(v) for k, v in cfg["labels"].items()}
    metadata = {
        "version": str(cfg["version"]),
        "name": cfg["name"],
        "task": f"{cfg['name']} segmentation",
        "description": "Trained by medagent's training/segmentation recipe",
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "eval_metrics": {"mean_dice": round(best_dice, 4)},
        "intended_use": "Research use only; not for diagnostic purposes",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "modality": cfg["modality"], "num_channels": 1, "dtype": "float32"}},
            "outputs": {
                "pred": {"type": "image", "format": "segmentation", "num_channels": len(labels), "channel_def": labels}
            },
        },
    }
    inference = {
        "bundle_root": ".",
        "image_key": "image",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": cfg["network"],
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing(cfg, ["image"])},
        "inferer": {"_target_": "SlidingWindowInferer", **cfg["inference"]},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": "@image_key",
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    torch.save({"model": state_dict}, folder / "models" / "model.pt")
    return folder


class Best:
    """The best validation Dice so far and the weights that gave it (kept in the resume checkpoint)."""

    def __init__(self) -> None:
        self.dice, self.state = -1.0, None

    def update(self, dice: float, network: torch.nn.Module) -> None:
        if dice > self.dice:
            self.dice, self.state = dice, {k: v.detach().cpu().clone() for k, v in network.state_dict().items()}

    def state_dict(self) -> dict:
        return {"dice": self.dice, "state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.dice, self.state = state["dice"], state["state"]


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 - the recipe entry point's signature
    """Train as `config` says and return the bundle folder written under output_dir."""
    from monai.data import CacheDataset, DataLoader, decollate_batch
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.metrics import DiceMetric
    from monai.transforms import AsDiscrete, Compose
    from monai.utils import set_determinism

    # --- setup: config, device, distributed ---------------------------------------------------
    cfg = load_config(config, overrides)
    output = Path(cfg["output_dir"])
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    set_determinism(seed=int(cfg["seed"]))
    amp = bool(cfg.get("amp")) and device.type == "cuda"

    # --- data ----------------------------------------------------------------------------------
    if cfg["data"]["source"] == "synthetic":
        run.on_main(synthetic_data, cfg, output / "data")  # rank 0 writes the NIfTI files, the others wait
        items = synthetic_paths(int(cfg["data"]["count"]), output / "data")
        train_items, val_items = items, items[: int(cfg["data"]["val_count"])]
    elif cfg["data"]["source"] == "msd":
        train_items, val_items = msd_data(cfg)
    else:
        raise ValueError(f"data.source: '{cfg['data']['source']}' is not 'synthetic' or 'msd'")
    steps = preprocessing(cfg, ["image", "label"])
    patch = cfg["preprocessing"].get("patch")
    if patch:
        steps.append(
            {
                "_target_": "RandCropByPosNegLabeld",
                "keys": ["image", "label"],
                "label_key": "label",
                "spatial_size": patch,
                "pos": 1,
                "neg": 1,
                "num_samples": 4,
            }
        )
    train_transform = build({"t": {"_target_": "Compose", "transforms": steps}}, "t")
    val_transform = build({"t": {"_target_": "Compose", "transforms": preprocessing(cfg, ["image", "label"])}}, "t")
    train_set = CacheDataset(train_items, train_transform, progress=False)
    train_sampler = sampler(train_set, run, seed=int(cfg["seed"]))
    train_loader = DataLoader(
        train_set,
        batch_size=int(cfg["train"]["batch_size"]),
        sampler=train_sampler,
        num_workers=int(cfg["train"]["num_workers"]),
        generator=generator(int(cfg["seed"]), run),
    )
    val_set = CacheDataset(val_items, val_transform, progress=False)

    # --- network, loss, optimiser --------------------------------------------------------------
    network = build({"network_def": cfg["network"]}, "network_def").to(device)
    model = ddp(network, run)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.Adam(model.parameters(), lr=float(cfg["train"]["lr"]))
    dice_metric = DiceMetric(include_background=False, reduction="mean")
    out_channels = int(cfg["network"]["out_channels"])
    to_label = Compose([AsDiscrete(argmax=True, to_onehot=out_channels)])
    to_onehot = Compose([AsDiscrete(to_onehot=out_channels)])

    # --- steps: `train.steps` optimizer steps of `accumulate` micro-batches (training/common.py's Stepper: DDP
    # no_sync, clipping if `grad_clip`, fp16 autocast + GradScaler on CUDA with `amp: true`, as MONAI's spleen
    # recipe trains); `checkpoint_every` + `resume: true` continue a killed run (Resume).
    train = dict(cfg["train"])
    train.setdefault("precision", "fp16" if amp else "fp32")
    train.setdefault("grad_clip", 0)  # MONAI's spleen recipe does not clip
    total = int(train["steps"])
    stepper = Stepper(model, optimiser, None, train, run, total * int(train.get("accumulate", 1)))
    best = Best()
    resume = Resume(run, output, cfg)
    start = resume.load(model, optimiser, scaler=stepper.scaler, best=best) * stepper.accumulate
    log = TrainLog(run, output, append=start > 0)

    # --- loop: the epoch's order comes from the sampler (set_epoch) and its random crops from the transforms'
    # seed + epoch, so a resumed run replays the epoch it was in and skips the batches already trained on.
    index, epoch, per_epoch = 0, 0, len(train_loader)
    while index < stepper.total:
        train_sampler.set_epoch(epoch)
        train_transform.set_random_state(seed=int(cfg["seed"]) + epoch)
        if index + per_epoch <= start:  # the whole epoch is done already
            index, epoch = index + per_epoch, epoch + 1
            continue
        epoch += 1
        for batch in train_loader:
            if index < start:  # replayed for the crops' random state, not trained on
                index += 1
                continue
            model.train()
            images, labels = batch["image"].to(device), batch["label"].to(device)
            with stepper.micro(index):
                loss = loss_fn(model(images), labels)
                stepper.backward(loss, index)
            stepped = stepper.step(index)
            index += 1
            if not stepped:
                continue
            step = stepper.step_of(index - 1) + 1
            log.write({"step": step - 1, "loss": round(loss.item(), 5)})  # from 0, as the checkpoints count
            if step % int(train["val_every"]) == 0 or step == total:
                model.eval()
                with torch.no_grad(), stepper.autocast():
                    for sample in val_set:
                        image = sample["image"].unsqueeze(0).to(device)
                        logits = sliding_window_inference(
                            image,
                            cfg["inference"]["roi_size"],
                            cfg["inference"]["sw_batch_size"],
                            network,
                            overlap=cfg["inference"]["overlap"],
                        )
                        preds = [to_label(p) for p in decollate_batch(logits.float())]
                        dice_metric(y_pred=preds, y=[to_onehot(sample["label"].to(device))])
                dice = float(dice_metric.aggregate().item())
                dice_metric.reset()
                run.log(f"step {step}/{total} loss {loss.item():.4f} val dice {dice:.4f}")
                best.update(dice, network)
            if step < total:
                resume.save(step - 1, model, optimiser, scaler=stepper.scaler, best=best)
            if index >= stepper.total:
                break
    log.close()
    step = total
    run.finished("segmentation", step, loss.item())

    # --- checkpoint: a MONAI bundle (rank 0 writes it, every rank waits) ------------------------
    bundle = output / "bundle" / cfg["name"]
    run.on_main(write_bundle, cfg, best.state or network.state_dict(), bundle, best.dice)
    resume.done()
    run.close()
    return bundle


if __name__ == "__main__":
    # python -m medagent.training.segmentation.recipe CONFIG [key=value ...] (the documented launch is medagent.cli)
    print(main(Path(sys.argv[1]), sys.argv[2:]))
