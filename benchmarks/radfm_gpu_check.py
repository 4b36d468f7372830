"""GPU check for every specialist and recipe (run by hand on a CUDA machine, one GPU, under 10 minutes; never CI).

What it checks, in this order (exit code 0 only when every PARITY and RECIPE row passes):

1. Machine: GPU name and memory, torch version, CUDA version, whether the GPU does bf16.
2. Parity, one row per model: the tiny random-weight configuration of each specialist, built the way the repo's
   tests and smoke configs build it (radfm: specialists/radfm/tiny.py build_tiny; pathology: KEP-32 from
   training/pathology/configs/smoke.yaml; pmcclip: tests/pmcclip/conftest.py's tiny config; medvint: specialists/medvint/tiny.py build_tiny; sat: specialists/sat/load.py
   build_tiny (the text side encoded once, the segmenter compared); raddiag: the early-fusion
   tiny config of tests/raddiag/conftest.py; speech: training/speech/recipe.py build_model with smoke.yaml's dims;
   segmentation: the MONAI spleen bundle's UNet (tests/data/imaging, as tests/imaging builds it); planner:
   training/planner/recipe.py build_model with smoke.yaml's tiny Llama; knowledge: the packaged MiniLM embedder,
   real weights). One fixed seeded input goes through the float32 model on the CPU and through a bf16 copy on the
   device; the main output (logits, embeddings, mask probabilities) is compared:
       PASS when the bf16 output is finite, relative error ||bf16 - fp32|| / ||fp32|| <= 2e-2 and
       cosine(bf16, fp32) >= 0.999 (bf16 keeps 8 significant bits, ~4e-3 per rounding, ~1e-2 after a few layers).
   Each row: parameters, max|diff|, relative error, cosine, PASS/FAIL, bf16 forward ms (the second call) and peak
   CUDA memory of the bf16 copy (torch.cuda.max_memory_allocated after a reset; "n/a" on the CPU).
3. Recipes, one row per training recipe (medagent.cli.recipes.recipe_names()): its smoke.yaml run for 2 optimizer
   steps on the device through the real entry point in a subprocess, `python -m medagent.cli train NAME --config
   training/NAME/configs/smoke.yaml device=... output_dir=TMP/NAME ...` with the overrides in RECIPES below;
   recipes whose gpu.yaml says `strategy: fsdp` (planner, radfm) run as `python -m torch.distributed.run --standalone
   --nproc_per_node 1 -m medagent.cli train ... strategy=fsdp` (strategy=ddp with --device cpu: FSDP is CUDA-only).
   PASS when rc is 0, the run reports exactly 2 steps (`[rank 0/W] NAME: N steps, final loss L`) and a finite loss.
   Each row: steps, final loss, wall seconds, rc, peak GPU memory above idle (nvidia-smi memory.used, sampled).
4. RadFM at full size (information, no PASS/FAIL): parameter count and memory estimate per dtype (built on the meta
   device), the tiny bf16 model's generate(16), and on CUDA the peak memory of the full-size vision side for one
   512x512x64 scan.

    python benchmarks/radfm_gpu_check.py                        # everything, on cuda:0
    python benchmarks/radfm_gpu_check.py --only radfm,planner   # some models / recipes
    python benchmarks/radfm_gpu_check.py --device cpu --skip-recipes   # a dry run on a machine without a GPU
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

REPO = Path(__file__).resolve().parents[1]
REL_TOL = 2e-2  # relative error of the main output, bf16 on the device vs float32 on the CPU
COS_TOL = 0.999  # cosine similarity of the same
STEPS = 2  # optimizer steps each recipe must report
RECIPE_TIMEOUT_S = 300

# Overrides that cut each smoke run to 2 optimizer steps (read from each smoke.yaml and recipe.py), plus the
# precision settings the recipe's gpu.yaml uses, so the GPU path is the one a real run takes.
RECIPES: dict[str, list[str]] = {
    # train.steps counts optimizer steps
    "knowledge": ["train.steps=2"],
    # 15 knowledge texts / batch 18 = 1 stage-1 step per epoch, 21 pairs / batch 21 = 1 stage-2 step per epoch;
    # towers unfrozen so every tower gets a gradient; amp: gpu.yaml's bf16 autocast
    "pathology": ["stage1.epochs=1", "stage2.epochs=1", "stage2.freeze_epochs=0", "amp=true"],
    # train.steps; the examples are written here (the smoke test makes them from agent traces); bf16 +
    # gradient checkpointing as gpu.yaml (FSDP's bf16 MixedPrecision follows model.dtype)
    "planner": ["train.steps=2", "data.examples={examples}", "model.dtype=bf16", "model.gradient_checkpointing=true"],
    # 8 synthetic cases / batch 4 = 2 steps per epoch
    "raddiag": ["train.epochs=1"],
    # 8 synthetic pairs, one batch an epoch; bf16 autocast as gpu.yaml
    "pmcclip": ["train.epochs=2", "train.precision=bf16"],
    # 8 synthetic rows, one batch an epoch; bf16 autocast as gpu.yaml
    "medvint": ["train.epochs=2", "train.precision=bf16"],
    # data.limit 4 pairs (all 2D) / batch_size_2d 2 = 2 steps per epoch; bf16 + checkpointing as gpu.yaml, and a
    # resume checkpoint after step 0 (through torch.distributed.checkpoint under FSDP)
    "radfm": ["train.epochs=1", "model.dtype=bf16", "model.gradient_checkpointing=true", "train.precision=bf16",
              "train.checkpoint_every=1"],
    # train.steps; validation (sliding window) runs at the last step anyway
    "segmentation": ["train.steps=2", "train.val_every=2"],
    # train.steps; gpu.yaml trains in bf16 autocast
    "speech": ["train.steps=2", "train.precision=bf16"],
    # train.steps; AMP as gpu.yaml (bf16 autocast here: fp16 with its GradScaler is the same path on CUDA)
    "sat": ["train.steps=2", "train.precision=bf16"],
}
FSDP_RECIPES = ("planner", "radfm")  # their gpu.yaml says strategy: fsdp
PARITY_MODELS = ("radfm", "pathology", "pmcclip", "medvint", "sat", "raddiag", "speech", "segmentation", "planner",
                 "knowledge")  # fmt: skip


# ---------------------------------------------------------------------------------------------------- helpers


def smoke(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "training" / name / "configs" / "smoke.yaml").read_text(encoding="utf-8"))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_copy(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """A bf16 copy of `model` on `device`: parameters and saved buffers in bf16; computed (non-persistent) floating
    buffers such as rotary inverse frequencies stay float32, as the loaders leave them (from_pretrained, load_radfm)."""
    twin = copy.deepcopy(model)
    keep = {}
    for prefix, module in twin.named_modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.is_floating_point():
                keep[(prefix, name)] = buffer.float()
    twin.to(device=device, dtype=torch.bfloat16)
    modules = dict(twin.named_modules())
    for (prefix, name), buffer in keep.items():
        modules[prefix]._buffers[name] = buffer.to(device)
    return twin.eval()


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Floating tensors to bf16 on `device`, integer and bool tensors to `device`, anything else as is."""
    moved = {}
    for key, value in inputs.items():
        if torch.is_tensor(value):
            value = value.to(device, torch.bfloat16) if value.is_floating_point() else value.to(device)
        moved[key] = value
    return moved


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@dataclass
class ParityCase:
    """A tiny fp32 model on the CPU, its seeded inputs, the forward that returns the main output, and how to make
    the bf16 copy on the device (default bf16_copy)."""

    model: torch.nn.Module
    inputs: dict[str, Any]
    forward: Callable[[torch.nn.Module, dict[str, Any]], torch.Tensor]
    output: str
    bf16: Callable[[torch.device], torch.nn.Module] | None = None


# ---------------------------------------------------------------------------------------------------- models


def case_radfm(tmp: Path) -> ParityCase:
    from medagent.specialists.radfm.infer import encode_prompt
    from medagent.specialists.radfm.load import load_radfm
    from medagent.specialists.radfm.preprocess import image_to_tensor, stack_images, volume_to_tensor
    from medagent.specialists.radfm.tiny import build_tiny

    folder = build_tiny(tmp / "radfm", ["is there a mass yes no left right lung brain"])
    bundle = load_radfm(folder, dtype="fp32", device="cpu")
    size = bundle.config.vision.image_size
    rng = np.random.default_rng(0)
    picture = image_to_tensor((rng.random((96, 80)) * 255).astype(np.uint8), size)
    volume = volume_to_tensor(  # at most the tiny ViT's 16 frames
        rng.random((40, 40, 30)) * 2000 - 1000, size, hounsfield=True, max_depth=bundle.config.vision.frames
    )
    inputs = {"lang_x": encode_prompt(bundle, "is there a mass", 2), "vision_x": stack_images([picture, volume])}
    return ParityCase(
        bundle.model,
        inputs,
        lambda m, x: m(x["lang_x"], x["vision_x"]).logits,
        "logits",
        bf16=lambda device: load_radfm(folder, dtype="bf16", device=str(device)).model,  # the real bf16 load
    )


def case_pathology(tmp: Path) -> ParityCase:
    from medagent.specialists.pathology.model import KEPConfig, build_model

    spec = smoke("pathology")["model"]
    vocab = int(spec["vocab_size"])
    config = KEPConfig.from_dict({**spec["kep"], "bert": {**spec["kep"]["bert"], "vocab_size": vocab}})
    torch.manual_seed(0)
    model = build_model(config)
    g = generator()
    ids = torch.randint(5, vocab, (2, 16), generator=g)
    ids[:, 0], mask = 2, torch.ones(2, 16, dtype=torch.long)
    mask[1, 10:] = 0
    inputs = {"pixels": torch.randn(2, 3, config.image_size, config.image_size, generator=g), "ids": ids, "mask": mask}

    def forward(m: torch.nn.Module, x: dict[str, Any]) -> torch.Tensor:
        image, text, _ = m(x["pixels"], x["ids"], x["mask"])
        return torch.cat([image.flatten(), text.flatten()])

    return ParityCase(model, inputs, forward, "image+text embeddings")


def case_pmcclip(tmp: Path) -> ParityCase:
    from medagent.specialists.pmcclip.model import PMCCLIP, BertShape, PMCCLIPConfig

    vocab = 300
    bert = BertShape(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=80)  # fmt: skip
    config = PMCCLIPConfig(embed_dim=32, image_size=64, vision_layers=(1, 1, 1, 1), vision_width=32, bert=bert,
                           fusion_layers=1, fusion_heads=2, cls_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    model = PMCCLIP(config)
    g = generator()
    ids = torch.randint(5, vocab, (2, 16), generator=g)
    ids[:, 0], mask = 2, torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    inputs = {"pixels": torch.randn(2, 3, 64, 64, generator=g), "ids": ids, "mask": mask}

    def forward(m: torch.nn.Module, x: dict[str, Any]) -> torch.Tensor:
        image, text, _ = m(x["pixels"], x["ids"], x["mask"])
        return torch.cat([image.flatten(), text.flatten()])

    return ParityCase(model, inputs, forward, "image+text embeddings")


def case_medvint(tmp: Path) -> ParityCase:
    from medagent.specialists.medvint.load import load_medvint
    from medagent.specialists.medvint.tiny import build_tiny

    folder = build_tiny(tmp / "medvint", ["question is there a mass the answer is yes no left right"], seed=0)
    bundle = load_medvint(folder, dtype="fp32", device="cpu")
    size = bundle.config.image_size
    g = generator()
    ids = bundle.tokenizer("Question: is there a mass?The Answer is:", return_tensors="pt")["input_ids"]
    inputs = {"ids": ids, "pixels": torch.randn(1, 3, size, size, generator=g)}
    return ParityCase(
        bundle.model, inputs, lambda m, x: m(x["ids"], x["pixels"]), "logits",
        bf16=lambda device: load_medvint(folder, dtype="bf16", device=str(device)).model,  # the real bf16 load
    )  # fmt: skip


def case_sat(tmp: Path) -> ParityCase:
    from medagent.specialists.sat.load import build_tiny, load_sat

    folder = build_tiny(tmp / "sat", seed=0)
    loaded = load_sat(folder, device="cpu", dtype="fp32")
    queries = loaded.queries(["liver", "spleen"], "ct").detach()[None]  # (1, 2, query_dim): the text side once
    inputs = {"image": torch.randn(1, 3, 64, 64, 32, generator=generator()), "queries": queries}
    return ParityCase(
        loaded.segmenter, inputs, lambda m, x: torch.sigmoid(m(x["image"], x["queries"])), "mask probabilities",
        bf16=lambda device: load_sat(folder, device=str(device), dtype="bf16").segmenter,  # the real bf16 load
    )  # fmt: skip


def case_raddiag(tmp: Path) -> ParityCase:
    from medagent.specialists.raddiag.model import RadDiagConfig, build_model

    config = RadDiagConfig(fusion="early", resnet_layers=(1, 1, 1, 1), resnet_channels=(4, 8, 16, 16), stem_width=8,
                           image_size=16, max_depth=8, fuse_heads=4, dropout=0.0)  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config)
    g = generator()
    valid = torch.zeros(1, config.max_scans, config.max_depth, dtype=torch.bool)
    valid[0, 0], valid[0, 1, :5] = True, True  # two scans in the four early-fusion slots, the second 5 slices deep
    scans = torch.rand(1, config.max_scans, config.max_depth, 16, 16, generator=g) * valid[..., None, None]
    inputs = {"scans": scans, "valid": valid, "modality": torch.tensor([[1, 3, 0, 0]])}
    return ParityCase(model, inputs, lambda m, x: m(x["scans"], x["valid"], x["modality"])["logits"], "logits")


def case_speech(tmp: Path) -> ParityCase:
    from medagent.training.speech.recipe import PREFIX, build_model

    constants = {"suppress_tokens": [], "begin_suppress_tokens": [], "lang_ids": []}  # generation only
    torch.manual_seed(0)
    model = build_model(smoke("speech"), constants)
    g = generator()
    mels = torch.rand(1, model.config.num_mel_bins, 3000, generator=g) * 2 - 1  # log-mel range of Whisper
    ids = torch.tensor([PREFIX + torch.randint(220, 50000, (8,), generator=g).tolist()])
    inputs = {"features": mels, "ids": ids}
    return ParityCase(
        model, inputs, lambda m, x: m(input_features=x["features"], decoder_input_ids=x["ids"]).logits, "logits"
    )


def case_segmentation(tmp: Path) -> ParityCase:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "tests/data/imaging/spleen_ct_segmentation/configs/inference.json"))
    torch.manual_seed(0)
    model = parser.get_parsed_content("network_def", instantiate=True)
    inputs = {"image": torch.rand(1, 1, 48, 48, 32, generator=generator())}  # the ROI tests/imaging uses
    return ParityCase(model, inputs, lambda m, x: m(x["image"]).softmax(1)[:, 1], "mask probabilities")


class _Vocabulary:
    """What build_model reads of a tokenizer: its length and special ids (the smoke run trains a BPE of this size)."""

    def __init__(self, size: int) -> None:
        self.size, self.pad_token_id, self.bos_token_id, self.eos_token_id = size, 0, 1, 2

    def __len__(self) -> int:
        return self.size


def case_planner(tmp: Path) -> ParityCase:
    from medagent.training.planner.recipe import build_model

    spec = {**smoke("planner")["model"], "dtype": "fp32", "gradient_checkpointing": False}
    torch.manual_seed(0)
    model = build_model(spec, _Vocabulary(int(spec["vocab_size"])))
    g = generator()
    ids = torch.randint(3, int(spec["vocab_size"]), (2, 48), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    inputs = {"ids": ids, "mask": mask}
    return ParityCase(model, inputs, lambda m, x: m(input_ids=x["ids"], attention_mask=x["mask"]).logits, "logits")


def case_knowledge(tmp: Path) -> ParityCase:
    from medagent.specialists.knowledge.embed import load_embedder

    model = load_embedder(None, "cpu")
    texts = ["recurrent generalized tonic-clonic seizures", "absence of the left kidney", "short stature"]
    features = dict(model.preprocess(texts))

    def forward(m: torch.nn.Module, x: dict[str, Any]) -> torch.Tensor:
        return m(dict(x))["sentence_embedding"]

    return ParityCase(model, features, forward, "sentence embeddings")


CASES: dict[str, Callable[[Path], ParityCase]] = {
    "radfm": case_radfm,
    "pathology": case_pathology,
    "pmcclip": case_pmcclip,
    "medvint": case_medvint,
    "sat": case_sat,
    "raddiag": case_raddiag,
    "speech": case_speech,
    "segmentation": case_segmentation,
    "planner": case_planner,
    "knowledge": case_knowledge,
}


@dataclass
class Row:
    name: str
    passed: bool
    cells: list[str]


def parity_row(name: str, tmp: Path, device: torch.device) -> Row:
    try:
        case = CASES[name](tmp)
        model = case.model.eval()
        parameters = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            reference = case.forward(model, case.inputs).double().flatten()
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        twin = case.bf16(device) if case.bf16 else bf16_copy(case.model, device)
        inputs = to_device(case.inputs, device)
        with torch.no_grad():
            case.forward(twin, inputs)  # warm-up (kernel selection, lazy init)
            synchronize(device)
            start = time.perf_counter()
            output = case.forward(twin, inputs)
            synchronize(device)
        forward_ms = (time.perf_counter() - start) * 1000
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:.1f}" if device.type == "cuda" else "n/a"
        dtype = str(output.dtype).removeprefix("torch.")
        output = output.double().cpu().flatten()
        del twin, inputs
        finite = bool(torch.isfinite(output).all())
        diff = (output - reference).abs().max().item() if finite else math.inf
        rel = ((output - reference).norm() / reference.norm().clamp_min(1e-30)).item() if finite else math.inf
        cos = torch.nn.functional.cosine_similarity(output, reference, dim=0).item() if finite else math.nan
        passed = finite and rel <= REL_TOL and cos >= COS_TOL
        cells = [f"{parameters:,}", f"{case.output} ({dtype})", f"{diff:.2e}", f"{rel:.2e}", f"{cos:.6f}",
                 "PASS" if passed else "FAIL", f"{forward_ms:.1f}", peak]  # fmt: skip
        return Row(name, passed, cells)
    except Exception as exc:  # one model's failure is its row, not the end of the check
        error = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        return Row(name, False, ["-", error, "-", "-", "-", "FAIL", "-", "-"])
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- recipes


def planner_examples(path: Path) -> Path:
    """A few chat examples in agent/sft.py's format (system, <case> user turn, JSON calls as the reply)."""
    system = "You plan tool calls for a medical case. Reply with JSON: {\"calls\": [...]}."
    rows = []
    for n, (tool, kind) in enumerate([("imaging.describe", "image"), ("imaging.ct_quant", "volume")] * 4):
        user = f"<case>Patient {n}: pain for {n + 2} days. Attachment a{n} ({kind}).</case>"
        reply = json.dumps({"calls": [{"tool": tool, "arguments": {"attachment": f"a{n}"}}]})
        rows.append({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user},
                                  {"role": "assistant", "content": reply}]})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


class GpuMemory:
    """Peak `memory.used` of this GPU, sampled with nvidia-smi while a subprocess runs (MiB above the idle level)."""

    def __init__(self, device: torch.device) -> None:
        self.query: list[str] | None = None
        if device.type == "cuda":  # nvidia-smi numbers GPUs ignoring CUDA_VISIBLE_DEVICES: name it by UUID
            uuid = str(getattr(torch.cuda.get_device_properties(device), "uuid", "") or "")
            targets = [uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"] if uuid else []
            for target in [*targets, str(device.index or 0)]:
                self.query = ["nvidia-smi", f"--id={target}", "--query-gpu=memory.used",
                              "--format=csv,noheader,nounits"]  # fmt: skip
                if self.read() is not None:
                    break
                self.query = None
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> float | None:
        try:
            out = subprocess.run(self.query, capture_output=True, text=True, timeout=5).stdout.strip()
            return float(out.splitlines()[0])
        except Exception:
            return None

    def __enter__(self) -> GpuMemory:
        if self.query:
            self.idle = self.read() or 0.0
            self.peak = 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            used = self.read()
            if used is not None:
                self.peak = max(self.peak or 0.0, used - self.idle)

    def __exit__(self, *exc: object) -> None:
        if self._thread:
            self._stop.set()
            self._thread.join()

    def cell(self) -> str:
        return f"{self.peak:.0f}" if self.peak is not None else "n/a"


def finished_line(name: str, output: str) -> tuple[int | None, float | None]:
    """Steps and final loss from rank 0's `[rank 0/W] NAME: N steps, final loss L`; for a recipe that does not print
    it (knowledge), its last `step N/M loss L` progress line."""
    found = re.findall(rf"^\[rank 0/\d+\] {re.escape(name)}: (\d+) steps, final loss (\S+)\s*$", output, re.M)
    if not found:
        found = re.findall(r"^step (\d+)/\d+ loss (\S+)", output, re.M)
    if not found:
        return None, None
    steps, loss = found[-1]
    try:
        return int(steps), float(loss)
    except ValueError:
        return int(steps), None


def recipe_row(name: str, tmp: Path, device: torch.device, logs: Path) -> Row:
    config = REPO / "training" / name / "configs" / "smoke.yaml"
    overrides = [o.format(examples=planner_examples(tmp / "planner-examples.jsonl")) if "{examples}" in o else o
                 for o in RECIPES.get(name, [])]  # fmt: skip
    command = [sys.executable, "-m", "medagent.cli", "train", name, "--config", str(config)]
    shown = ""
    if name in FSDP_RECIPES:  # FSDP is CUDA-only: the CPU dry run keeps the launch, with ddp
        overrides.append(f"strategy={'fsdp' if device.type == 'cuda' else 'ddp'}")
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
        command = [*launch, *command[1:]]
        shown = "[torch.distributed.run x1] "
    shown += " ".join(overrides).replace(str(tmp), "TMP")
    overrides += [f"device={device}", f"output_dir={tmp / name}"]  # cuda:N: in one process the recipe takes N
    command += overrides
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    with GpuMemory(device) as memory:
        try:
            done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RECIPE_TIMEOUT_S)
            rc, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as exc:  # its partial output may come back as bytes
            rc = 124
            parts = [p.decode(errors="replace") if isinstance(p, bytes) else p for p in (exc.stdout, exc.stderr)]
            output = "".join(p for p in parts if p)
            output += f"\ntimed out after {RECIPE_TIMEOUT_S} s"
    seconds = time.perf_counter() - start
    log = logs / f"{name}.log"
    log.write_text(" ".join(command) + "\n\n" + output, encoding="utf-8")
    steps, loss = finished_line(name, output)
    passed = rc == 0 and steps == STEPS and loss is not None and math.isfinite(loss)
    cells = [str(steps) if steps is not None else "?", f"{loss:.4f}" if loss is not None else "?",
             f"{seconds:.1f}", str(rc), "PASS" if passed else "FAIL", memory.cell(), shown]  # fmt: skip
    if not passed:
        tail = [line for line in output.strip().splitlines() if line.strip()][-3:]
        cells[-1] += "\n      " + "\n      ".join(line[:200] for line in tail) + f"\n      (full log: {log})"
    return Row(name, passed, cells)


# ---------------------------------------------------------------------------------------------------- RadFM full size


def radfm_full_size(device: torch.device, tmp: Path) -> None:
    from medagent.specialists.radfm.infer import answer
    from medagent.specialists.radfm.load import DTYPES, load_radfm, memory_needed, parameter_count
    from medagent.specialists.radfm.model import RadFMConfig, RadFMEmbedding
    from medagent.specialists.radfm.preprocess import image_to_tensor, volume_to_tensor
    from medagent.specialists.radfm.tiny import build_tiny

    full = parameter_count(RadFMConfig())
    print(f"full-size RadFM: {full:,} parameters")
    for dtype in DTYPES:
        print(
            f"  {dtype}: weights {full * DTYPES[dtype].itemsize / 2**30:.1f} GiB, "
            f"estimate with activations {memory_needed(full, dtype) / 2**30:.1f} GiB"
        )
    folder = build_tiny(tmp / "radfm-generate", ["is there a mass yes no left right lung brain"])
    bundle = load_radfm(folder, dtype="bf16", device=str(device))
    size = bundle.config.vision.image_size
    rng = np.random.default_rng(0)
    picture = image_to_tensor((rng.random((96, 80)) * 255).astype(np.uint8), size)
    volume = volume_to_tensor(  # at most the tiny ViT's 16 frames
        rng.random((40, 40, 30)) * 2000 - 1000, size, hounsfield=True, max_depth=bundle.config.vision.frames
    )
    start = time.perf_counter()
    text = answer(bundle, "is there a mass", [picture, volume], max_new_tokens=16)
    print(f"tiny bf16 generate(16) on {device}: {(time.perf_counter() - start) * 1000:.1f} ms -> {text!r}")
    del bundle
    if device.type != "cuda":
        print("full-size vision side (one 512x512x64 scan): n/a without CUDA")
        return
    # Peak memory of one ViT+perceiver pass at the full vision size (512x512x64), bf16: the activation share.
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    with torch.device(device):
        embedding = RadFMEmbedding(RadFMConfig()).to(torch.bfloat16).eval()
    weights = torch.cuda.memory_allocated(device) / 2**30
    scan = torch.rand(1, 1, 3, 512, 512, 64, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        tokens = embedding.visual_tokens(scan)
    torch.cuda.synchronize(device)
    print(
        f"full-size vision side bf16: tokens {tuple(tokens.shape)}, weights {weights:.2f} GiB "
        f"(incl. the 32000x5120 text table), peak {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB "
        "for one 512x512x64 scan"
    )
    del embedding, scan, tokens
    torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------------- main


def table(header: list[str], rows: list[Row]) -> None:
    lines = [[row.name, *row.cells] for row in rows]
    last = len(header) - 1  # the last column is free text: not padded
    widths = [max(len(header[i]), *(len(line[i].split("\n")[0]) for line in lines)) for i in range(last)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)) + "  " + header[last])
    for line in lines:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[last])


def main(argv: list[str] | None = None) -> int:
    from medagent.cli.recipes import recipe_names

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for a dry run")
    parser.add_argument("--only", default="", help="NAME[,NAME]: only these models / recipes")
    parser.add_argument("--skip-recipes", action="store_true", help="no recipe runs")
    parser.add_argument("--skip-parity", action="store_true", help="no parity rows")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: nothing to check")
        return 1
    if device.type not in ("cuda", "cpu"):
        print(f"--device {args.device}: use cuda, cuda:N or cpu")
        return 2
    recipes = recipe_names()
    known = sorted(set(PARITY_MODELS) | set(recipes))
    only = {n.strip() for n in args.only.split(",") if n.strip()}
    if only - set(known):
        print(f"--only: unknown {', '.join(sorted(only - set(known)))}; known: {', '.join(known)}")
        return 2
    chosen = (lambda name: not only or name in only)

    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        print(f"machine: {props.name} ({props.total_memory / 2**30:.1f} GiB) as {device}, torch {torch.__version__}, "
              f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}")  # fmt: skip
    else:
        print(f"machine: CPU only ({torch.get_num_threads()} torch threads), torch {torch.__version__}, "
              f"CUDA {torch.version.cuda or 'none'} (not used): a dry run, bf16 on the CPU, memory n/a")  # fmt: skip

    started = time.perf_counter()
    failures: list[str] = []
    counted = 0
    with tempfile.TemporaryDirectory(prefix="medagent-gpu-check-") as name:
        tmp = Path(name)
        if not args.skip_parity:
            names = [n for n in PARITY_MODELS if chosen(n)]
            print(f"\n== parity: fp32 on cpu vs bf16 on {device}; PASS = finite, rel err <= {REL_TOL:g}, "
                  f"cosine >= {COS_TOL:g}")  # fmt: skip
            rows = []
            for model in names:
                rows.append(parity_row(model, tmp, device))
                print(f"  {model}: {rows[-1].cells[5]}", flush=True)
            header = ["model", "parameters", "output compared", "max|diff|", "rel err", "cosine", "result",
                      "fwd ms", "peak MiB"]  # fmt: skip
            table(header, rows)
            counted += len(rows)
            failures += [f"parity {r.name}" for r in rows if not r.passed]
        if not args.skip_recipes:
            names = [n for n in recipes if chosen(n)]
            if "knowledge" in names:
                print("\nknowledge is a torch recipe with a device key (MiniLM on torch): run like the others")
            unknown = [n for n in names if n not in RECIPES]
            if unknown:
                print(f"\nno 2-step overrides known for {', '.join(unknown)}: add them to RECIPES (they FAIL here)")
            print(f"\n== recipes: smoke.yaml, {STEPS} optimizer steps on {device}; PASS = rc 0, {STEPS} steps "
                  "reported, finite loss; a failed run's log is kept (its path is printed)")  # fmt: skip
            logs = Path(tempfile.mkdtemp(prefix="medagent-gpu-check-logs-"))
            rows = []
            for recipe in names:
                if device.type == "cuda":
                    gc.collect()
                    torch.cuda.empty_cache()
                rows.append(recipe_row(recipe, tmp, device, logs))
                print(f"  {recipe}: {rows[-1].cells[4]} ({rows[-1].cells[2]} s)", flush=True)
            header = ["recipe", "steps", "final loss", "wall s", "rc", "result", "peak MiB",
                      "overrides (+ device, output_dir)"]  # fmt: skip
            table(header, rows)
            counted += len(rows)
            failures += [f"recipe {r.name}" for r in rows if not r.passed]
            if all(r.passed for r in rows):
                for log in logs.iterdir():
                    log.unlink()
                logs.rmdir()
        if chosen("radfm"):
            print("\n== RadFM full size (information)")
            try:
                radfm_full_size(device, tmp)
            except Exception as exc:
                print(f"  error: {type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - started
    if not counted:
        print("\nsummary: no parity or recipe row was selected: nothing checked")
        return 1
    if failures:
        print(f"\nsummary: {counted - len(failures)}/{counted} rows pass on {device} in {seconds:.0f} s; "
              f"FAIL: {', '.join(failures)}")  # fmt: skip
        return 1
    print(f"\nsummary: all {counted} rows pass on {device} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
