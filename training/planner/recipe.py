"""LoRA SFT for the planner: teach a medical LLM medagent's tool-call format from agent traces.

Read top to bottom: config → examples (trace → chat via agent/sft.py, the converter evals also use)
→ tokenizer and base model → LoRA (peft) → a plain training loop (loss on the reply only) →
adapter + base written where the transformers backend loads them (`[llm] backend = "transformers"`,
`model_path = <out>/base`, `adapter_path = <out>/adapter`).

Configs: `gpu.yaml` (MMed-Llama-3-8B-EnIns, bf16, FSDP over `torchrun --nproc_per_node N`, gradient
checkpointing, max length 4096) and `smoke.yaml` (a tiny random Llama built from a config and a
byte-level BPE tokenizer trained on the examples, a few CPU steps). The GPU path is not yet verified.
Several processes (training/common.py): `strategy: fsdp` (CUDA only; the adapter is gathered to full shapes
before rank 0 saves it) or `strategy: ddp` (what the CPU/gloo test runs); every rank runs `train.steps` steps.

    medagent train planner --config training/planner/configs/smoke.yaml data.traces='[run1/trace.jsonl]'

Data: `data.traces` (medagent trace.jsonl files: each planning step becomes one example) and/or `data.examples`,
a JSONL (or JSON list) of `{"messages": [...]}` chats (agent/sft.py writes them) or of Alpaca records
`{"instruction", "input", "output"}` as the authors' SFT data comes (PMC-LLaMA's axiong/pmc_llama_instructions,
MMedLM's instruction sets). Real runs (training/common.py): `train.accumulate`, `precision`, a warm-up + cosine
schedule, `checkpoint_every` + `resume: true` (tests/training/test_resume.py kills a run and resumes it).
"""

from __future__ import annotations

import glob
import json
import math
import time
from pathlib import Path
from typing import Any

from medagent.agent.llm.base import render_alpaca
from medagent.tools.errors import ConfigError
from medagent.training.common import Resume, Stepper, TrainLog, ddp, rank_share, setup, uses_fsdp
from medagent.training.config import load_config


# -- data ------------------------------------------------------------------------------------------
def load_examples(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Chat examples from `examples` (JSONL written by agent/sft.py) and/or `traces` (trace.jsonl files)."""
    from medagent.agent.sft import trace_examples
    from medagent.tools.trace import read_trace

    examples: list[dict[str, Any]] = []
    if data.get("examples"):
        path = Path(data["examples"])
        if not path.is_file():
            raise ConfigError(f"data.examples {path}: not found")
        text = path.read_text(encoding="utf-8")
        rows = json.loads(text) if text.lstrip().startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
        examples += [as_chat(row, f"{path}:{number}") for number, row in enumerate(rows, start=1)]
    for pattern in data.get("traces") or []:
        paths = sorted(glob.glob(str(pattern)))
        if not paths:
            raise ConfigError(f"data.traces {pattern}: no trace files match")
        for trace in paths:
            examples += trace_examples(read_trace(Path(trace)))
    if not examples:
        raise ConfigError("data: no training examples (set data.examples or data.traces; rule-planner traces need a planner llm_turn or the cases)")
    return examples


def as_chat(row: dict[str, Any], where: str) -> dict[str, Any]:
    """An example as chat messages: agent/sft.py's `{"messages": [...]}`, or the Alpaca record PMC-LLaMA's and
    MMedLM's SFT data use (`{"instruction", "input", "output"}`, e.g. axiong/pmc_llama_instructions): the
    instruction becomes the system turn, the input (when there is one) the user turn, the output the reply, so
    render_alpaca gives back the authors' `### Instruction / ### Input / ### Response` prompt."""
    if "messages" in row:
        return row
    if "instruction" in row and "output" in row:
        messages = [{"role": "system", "content": str(row["instruction"])}]
        if str(row.get("input") or "").strip():
            messages.append({"role": "user", "content": str(row["input"])})
        return {"messages": [*messages, {"role": "assistant", "content": str(row["output"])}]}
    raise ConfigError(f"{where}: an example needs `messages` or Alpaca's `instruction` and `output`")


def split(example: dict[str, Any], template: str, tokenizer: Any) -> tuple[str, str]:
    """(prompt, reply): exactly the text the transformers backend will build at inference time."""
    prompt_messages = [m for m in example["messages"] if m["role"] != "assistant"]
    reply = next(m["content"] for m in example["messages"] if m["role"] == "assistant")
    if template == "alpaca" or not getattr(tokenizer, "chat_template", None):
        return render_alpaca(prompt_messages), reply
    return tokenizer.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True), reply


def encode(prompt: str, reply: str, tokenizer: Any, max_length: int) -> tuple[list[int], list[int]]:
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    reply_ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    # Truncate the prompt from the left so the reply (what we learn) always survives.
    prompt_ids = prompt_ids[-max(1, max_length - len(reply_ids)) :]
    return prompt_ids + reply_ids, [-100] * len(prompt_ids) + reply_ids


# -- tokenizer and model ---------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int, folder: Path) -> Any:
    """A byte-level BPE tokenizer learned from the examples (smoke runs have no pretrained one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def build_model(cfg: dict[str, Any], tokenizer: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.get("dtype", "fp32")]
    if cfg.get("path"):
        model = AutoModelForCausalLM.from_pretrained(cfg["path"], torch_dtype=dtype)
    else:
        tiny = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"], num_key_value_heads=cfg.get("kv_heads", cfg["heads"]),
            max_position_embeddings=cfg.get("max_positions", 4096), bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        )
        model = LlamaForCausalLM(tiny).to(dtype)
    if cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    return model


def main(config: Path, overrides: list[str] = []) -> Path:  # noqa: B006 (the entry-point signature)
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = load_config(config, overrides)
    out = Path(cfg["output_dir"]).expanduser()
    base_dir = out / "base"
    base_dir.mkdir(parents=True, exist_ok=True)
    run = setup(cfg)  # seed, device, process group (training/common.py)
    device = run.device
    fsdp = uses_fsdp(cfg, run)  # `strategy: ddp | fsdp`; fsdp only with several CUDA processes

    # 1. data
    examples = load_examples(cfg["data"])
    template = cfg["model"].get("template", "alpaca")

    # 2. tokenizer and base model
    if cfg["model"].get("path"):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(cfg["model"]["path"])
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        run.on_main(tokenizer.save_pretrained, str(base_dir))
    else:
        # BPE training may break ties differently run to run: rank 0 learns it, every rank loads that one.
        texts = [piece for e in examples for piece in split(e, "alpaca", None)]
        run.on_main(train_tokenizer, texts, cfg["model"].get("vocab_size", 800), base_dir)
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(base_dir))
    model = build_model(cfg["model"], tokenizer)
    if not cfg["model"].get("path"):
        run.on_main(model.save_pretrained, str(base_dir))  # the adapter's base must be loadable later

    # 3. LoRA
    lora = cfg["lora"]
    model = get_peft_model(model, LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora["target_modules"], task_type="CAUSAL_LM",
        # A random smoke base has no useful embeddings: train them fully there.
        modules_to_save=lora.get("modules_to_save"),
    ))
    model.to(device)
    if fsdp:
        import functools

        from torch.distributed.fsdp import FullyShardedDataParallel, MixedPrecision
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer

        policy = functools.partial(transformer_auto_wrap_policy, transformer_layer_cls={LlamaDecoderLayer})
        precision = MixedPrecision(param_dtype=torch.bfloat16, reduce_dtype=torch.bfloat16) if cfg["model"].get("dtype") == "bf16" else None
        model = FullyShardedDataParallel(model, auto_wrap_policy=policy, mixed_precision=precision, use_orig_params=True, device_id=torch.cuda.current_device())
    else:
        model = ddp(model, run)

    # 4. the loop
    train = cfg["train"]
    encoded = [encode(*split(e, template, tokenizer), tokenizer, train["max_length"]) for e in examples]
    encoded = rank_share(encoded, run)  # every rank an equal share (padded); each draws its batches from its own
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=train["lr"], weight_decay=train.get("weight_decay", 0.0))
    # `train.steps` optimizer steps of `accumulate` micro-batches (training/common.py's Stepper: DDP no_sync,
    # precision autocast, clipping at max_grad_norm); warm-up over `warmup` (a fraction) of them.
    steps, accumulate = int(train["steps"]), int(train.get("accumulate", 1))
    # Linear warm-up times one cosine over the whole run (the warm-up steps included): the shape the smoke round
    # trip was tuned with (training/common.py's warmup_cosine starts its cosine after the warm-up and, measured, left
    # the tiny planner reproducing 5 plans where the round-trip test asks for 6).
    warmup = max(1, int(steps * float(train.get("warmup", 0.03))))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps))
    )
    stepper = Stepper(model, optimizer, schedule, {**train, "grad_clip": train.get("max_grad_norm", 1.0)}, run,
                      steps * accumulate, parameters)  # fmt: skip
    batch_size = train["batch_size"]
    generator = torch.Generator().manual_seed(cfg.get("seed", 0))  # each rank draws from its own share
    resume = Resume(run, out, cfg)  # `resume: true` continues after out/resume.pt
    start = resume.load(model, optimizer, schedule=schedule, scaler=stepper.scaler, draw=generator) * accumulate
    log = TrainLog(run, out, append=start > 0)
    model.train()
    started = time.monotonic()
    for index in range(start, stepper.total):
        batch = [encoded[i] for i in torch.randint(len(encoded), (batch_size,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id)
        labels = torch.full((batch_size, width), -100)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for row, (tokens, targets) in enumerate(batch):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            labels[row, : len(targets)] = torch.tensor(targets)
            mask[row, : len(tokens)] = 1
        with stepper.micro(index):
            loss = model(input_ids=ids.to(device), attention_mask=mask.to(device), labels=labels.to(device)).loss
            stepper.backward(loss, index)
        if not stepper.step(index):
            continue
        step = stepper.step_of(index)  # from 0 in train_log.jsonl and the checkpoints, from 1 on screen
        log.write({"step": step, "loss": round(loss.item(), 5), "lr": schedule.get_last_lr()[0]})
        if (step + 1) % train.get("log_every", 10) == 0 or step + 1 == steps:
            run.log(f"step {step + 1}/{steps} loss {loss.item():.4f} ({time.monotonic() - started:.1f} s, {width} tokens)")
        if step + 1 < steps:
            resume.save(step, model, optimizer, schedule=schedule, scaler=stepper.scaler, draw=generator)
    log.close()
    run.finished("planner", steps, loss.item())

    # 5. checkpoint: the adapter, beside the base it belongs to (rank 0 writes, every rank waits)
    unwrapped = model.module if hasattr(model, "module") else model

    def save() -> None:
        unwrapped.save_pretrained(str(out / "adapter"))
        records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        curve = list({r["step"]: r for r in records}.values())  # a resumed run logged some steps twice
        (out / "train_log.json").write_text(json.dumps({"examples": len(examples), "template": template, "log": curve}, indent=1))

    if fsdp:  # FSDP shards the adapter too: gather full tensors first, or rank 0 would save only its shard
        from torch.distributed.fsdp import FullyShardedDataParallel

        with FullyShardedDataParallel.summon_full_params(model, writeback=False, offload_to_cpu=True):
            run.on_main(save)
    else:
        run.on_main(save)
    resume.done()
    run.close()
    return out
