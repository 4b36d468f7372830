"""The transformers backend as a user configures it: dtype and device from `[llm]`, and replies constrained
to the planner's JSON schema. A tiny random Llama and a byte-level BPE tokenizer, both made here, are saved
to a folder and loaded the way real weights are (`make_backend` with `backend = "transformers"`)."""

from __future__ import annotations

import asyncio
import json
import time

import jsonschema
import pytest
import torch

from medagent.agent.llm.base import LLMError
from medagent.agent.llm.factory import make_backend
from medagent.tools.config import LLMSettings, Settings, load_settings
from medagent.tools.errors import ConfigError
from medagent.tools.pool import ModelPool

# Shaped like a planner reply: an enum, a bounded free-text string, integers, an array of enum items.
PLAN_SCHEMA = {
    "type": "object",
    "properties": {
        "tool": {"enum": ["imaging.ct_quant", "imaging.describe", "knowledge.lookup"]},
        "reason": {"type": "string", "maxLength": 40},
        "slices": {"type": "integer"},
        "priority": {"type": "integer", "minimum": 1, "maximum": 5},
        "attachments": {"type": "array", "items": {"enum": ["ct1", "xr2", "note"]}, "maxItems": 3},
    },
    "required": ["tool", "reason", "slices", "priority", "attachments"],
    "additionalProperties": False,
}
MAX_TOKENS = 160
CORPUS = [
    '{"tool": "imaging.ct_quant", "reason": "chest CT for nodules", "slices": 120, "priority": 2, "attachments": ["ct1"]}',
    "A 64-year-old with a cough for three weeks and weight loss. Chest CT and an X-ray are attached.",
    "### Instruction:\nPlan the tool calls for this case.\n\n### Input:\n<case>...</case>\n\n### Response:\n",
]


def cases(n: int) -> list[list[dict[str, str]]]:
    """n planner-like conversations that differ in the case text."""
    return [
        [{"role": "system", "content": "Plan tool calls as JSON."},
         {"role": "user", "content": f"<case>patient {i}: {30 + i} years, cough for {i + 1} days; CT attached</case>"}]
        for i in range(n)
    ]


def valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text), PLAN_SCHEMA)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A random-weight Llama (hidden 32, 2 layers, seeded) and a byte-level BPE trained on CORPUS, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(CORPUS * 4, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


def settings_for(folder, **llm) -> Settings:
    return Settings(llm=LLMSettings(backend="transformers", model_path=folder, template="alpaca", **llm))


async def replies(backend, schema, n=20):
    """Greedy and sampled replies, alternating, to n different cases."""
    torch.manual_seed(1)
    return [await backend.chat(m, schema=schema, max_tokens=MAX_TOKENS, temperature=0.0 if i % 2 == 0 else 1.0)
            for i, m in enumerate(cases(n))]


def test_constrained_replies_match_the_schema_and_free_ones_do_not(checkpoint):
    with ModelPool() as pool:
        backend = make_backend(settings_for(checkpoint, device="cpu"), pool)
        started = time.monotonic()
        constrained = asyncio.run(replies(backend, PLAN_SCHEMA))
        constrained_s = time.monotonic() - started
        started = time.monotonic()
        free = asyncio.run(replies(backend, None))
        free_s = time.monotonic() - started
    tokens = sum(r.completion_tokens for r in constrained)
    passing = [r.text for r in constrained if valid(r.text)]
    free_passing = [r.text for r in free if valid(r.text)]
    print(f"constrained: {len(passing)}/20 valid, {tokens} tokens in {constrained_s:.1f} s; "
          f"unconstrained: {len(free_passing)}/20 valid, {sum(r.completion_tokens for r in free)} tokens in {free_s:.1f} s")
    assert len(passing) == 20, [r.text for r in constrained if not valid(r.text)][:3]
    # The model ended each reply itself (end of the JSON), not the token limit.
    assert all(r.completion_tokens < MAX_TOKENS for r in constrained)
    assert len({r.text for r in constrained}) >= 10  # sampled replies differ: not one memorised string
    assert len(free_passing) == 0, free_passing


def test_a_streamed_constrained_reply_is_the_same_json(checkpoint):
    with ModelPool() as pool:
        backend = make_backend(settings_for(checkpoint, device="cpu"), pool)

        async def both():
            message = cases(1)[0]
            pieces = [p async for p in backend.stream(message, schema=PLAN_SCHEMA, max_tokens=MAX_TOKENS)]
            return pieces, await backend.chat(message, schema=PLAN_SCHEMA, max_tokens=MAX_TOKENS)

        pieces, whole = asyncio.run(both())
    assert len(pieces) > 1 and valid("".join(pieces)) and "".join(pieces) == whole.text


def test_a_schema_the_enforcer_cannot_follow_is_an_llm_error(checkpoint):
    with ModelPool() as pool:
        backend = make_backend(settings_for(checkpoint, device="cpu"), pool)
        unsupported = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]$", "maxLength": 1}}}
        with pytest.raises(LLMError, match="pattern and a min/max length"):
            asyncio.run(backend.chat(cases(1)[0], schema=unsupported, max_tokens=8))


def test_dtype_and_device_come_from_the_config(checkpoint):
    with ModelPool() as pool:
        auto = make_backend(settings_for(checkpoint), pool)
        half = make_backend(settings_for(checkpoint, dtype="bfloat16", device="cpu"), pool)
        assert auto is not half  # the pool keys on dtype and device
        expected = "cuda:0" if torch.cuda.is_available() else "cpu"
        assert {(p.dtype, str(p.device)) for p in auto.model.parameters()} == {
            (torch.bfloat16 if torch.cuda.is_available() else torch.float32, expected)}
        assert {(p.dtype, p.device.type) for p in half.model.parameters()} == {(torch.bfloat16, "cpu")}
        reply = asyncio.run(half.chat(cases(1)[0], schema=PLAN_SCHEMA, max_tokens=MAX_TOKENS))
    assert valid(reply.text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU; the refusal needs one without")
def test_a_cuda_device_without_a_gpu_is_refused_with_the_key(checkpoint):
    with ModelPool() as pool, pytest.raises(LLMError, match=r"llm.device = 'cuda:1', but torch sees no CUDA GPU"):
        make_backend(settings_for(checkpoint, device="cuda:1"), pool)


@pytest.mark.parametrize(("line", "says"), [
    ('dtype = "bf16"', "llm.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32'"),
    ('device = "gpu"', "llm.device: Value error, 'gpu' is not 'auto', 'cpu', 'cuda' or 'cuda:N'"),
    ('device = "cuda:x"', "llm.device: Value error, 'cuda:x' is not"),
])
def test_a_bad_dtype_or_device_is_refused_at_load_naming_the_key(tmp_path, line, says):
    config = tmp_path / "medagent.toml"
    config.write_text(f'[llm]\nbackend = "transformers"\n{line}\n')
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert "\n" not in str(refused.value) and says in str(refused.value)


@pytest.mark.gpu
def test_on_a_gpu_auto_is_bfloat16_and_constrained_replies_still_match(checkpoint):
    with ModelPool() as pool:
        backend = make_backend(settings_for(checkpoint), pool)
        assert (backend.dtype, backend.device) == (torch.bfloat16, "cuda:0")
        assert {p.device.type for p in backend.model.parameters()} == {"cuda"}
        started = time.monotonic()
        constrained = asyncio.run(replies(backend, PLAN_SCHEMA))
        seconds = time.monotonic() - started
    tokens = sum(r.completion_tokens for r in constrained)
    print(f"GPU {torch.cuda.get_device_name(0)}: constrained {sum(valid(r.text) for r in constrained)}/20 valid, "
          f"{tokens / seconds:.0f} tokens/s")
    assert all(valid(r.text) for r in constrained)
