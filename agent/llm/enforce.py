"""JSON-schema-constrained decoding for the transformers backend, with lm-format-enforcer.

At each step only the tokens that keep the text a prefix of some JSON document matching the schema keep
their logits; the rest get -inf. lm-format-enforcer 0.11.3's own transformers integration
(`lmformatenforcer.integrations.transformers`) cannot be imported with transformers 5: it imports
`PreTrainedTokenizerBase` from `transformers.tokenization_utils`, a module transformers 5 no longer has,
and raises ImportError. So the vocabulary table and the logits processor are built here on the library's
core API (`TokenEnforcerTokenizerData`, `TokenEnforcer`, `JsonSchemaParser`), which does not import
transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from lmformatenforcer import (
    CharacterLevelParser,
    CharacterLevelParserConfig,
    JsonSchemaParser,
    TokenEnforcer,
    TokenEnforcerTokenizerData,
    UnionParser,
)
from lmformatenforcer.jsonschemaparser import NumberParsingState
from lmformatenforcer.tokenizerprefixtree import JsonFreetextTokenCache
from transformers import LogitsProcessor

from medagent.agent.llm.base import LLMError

# Whitespace runs the parser allows between JSON tokens: enough for pretty-printing, and a model that
# drifts into spaces cannot spend its token budget on them.
MAX_WHITESPACE = 4


def _text(tokenizer: Any, ids: list[int]) -> str:
    # No clean-up pass: it would drop the space before punctuation, and the parser must see every character.
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def tokenizer_data(tokenizer: Any, vocab_size: int, eos_ids: list[int]) -> TokenEnforcerTokenizerData:
    """What the enforcer knows of a vocabulary: each ordinary token's text, and whether it starts a word.

    SentencePiece drops a token's leading space when it is decoded alone, so each token is decoded after a
    fixed anchor token and the anchor's text cut off: a token whose text then is longer than alone starts a
    word (the enforcer reads it alone; the others it decodes together with the tokens before them, which
    also joins the bytes of a character split over byte-level tokens). A trailing U+FFFD (half a character)
    is dropped from decoded text for the same reason.
    """
    anchor = tokenizer.encode("0", add_special_tokens=False)[-1]
    anchor_text = _text(tokenizer, [anchor])
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(min(vocab_size, len(tokenizer))) if i not in special]
    after_anchor = tokenizer.batch_decode([[anchor, i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    alone = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    regular = []
    for token_id, joined, single in zip(ids, after_anchor, alone, strict=True):
        text = joined[len(anchor_text):] if joined.startswith(anchor_text) else single
        # A byte-level piece of a character (it decodes to U+FFFD alone) is left out: the enforcer counts it
        # as one character, or none, while the joined bytes decode to another, so string lengths and even
        # where a string ends went wrong. Characters a vocabulary holds whole are unaffected.
        if "\ufffd" not in text:
            regular.append((token_id, text, len(text) > len(single)))

    def decode(token_ids: list[int]) -> str:
        return _text(tokenizer, token_ids).rstrip("\ufffd")

    data = TokenEnforcerTokenizerData(regular, decode, eos_ids, False, vocab_size)
    # JSON forbids raw control characters (U+0000-U+001F, tab included) inside strings, and strict json.loads
    # refuses them, but 0.11.3 lets them into string values: its single-character alphabet (the characters
    # a string may hold) is every one-character token, and its table of tokens allowed in free text only
    # tests tokens with a newline or a backslash. A random byte-level model found both at once. Both are
    # rebuilt without such tokens; between JSON tokens the parser allows its own whitespace set, unaffected.
    data.tokenizer_alphabet = "".join(c for c in data.tokenizer_alphabet if not _control(c))
    free_text = JsonFreetextTokenCache(False, vocab_size)
    for token_id, text, _ in data.regular_tokens:
        if not any(_control(c) for c in text):
            free_text.add_token(text, token_id)
    free_text.freeze()
    data.tokenizer_tree.json_freetext_tokens = free_text
    return data


def _control(character: str) -> bool:
    return ord(character) < 0x20


class SchemaLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the schema; `prompt_length` tokens of each row are the prompt."""

    def __init__(self, data: TokenEnforcerTokenizerData, schema: dict[str, Any], prompt_length: int) -> None:
        config = CharacterLevelParserConfig(alphabet=data.tokenizer_alphabet, max_consecutive_whitespaces=MAX_WHITESPACE)
        try:
            parser = JsonSchemaParser(_parser_schema(schema), config)
        except Exception as exc:  # noqa: BLE001 - the library raises plain errors for schema features it lacks
            raise LLMError(f"lm-format-enforcer cannot constrain to this schema: {exc}") from exc
        # TokenEnforcer overwrites the config of the parser it is given (the wrapper) with one of its own that
        # allows 12 whitespaces in a row; the schema parser inside keeps `config`.
        self.enforcer = TokenEnforcer(data, _WholeIntegers(parser, config))
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        mask = torch.full_like(scores, float("-inf"))
        for row, tokens in enumerate(input_ids[:, self.prompt_length:].tolist()):
            allowed = self.enforcer.get_allowed_tokens(tokens).allowed_tokens
            mask[row, allowed] = 0.0
        return scores + mask


# An integer range up to this wide is given to the parser as the list of its values (which it enforces).
MAX_ENUMERATED_RANGE = 256


def _parser_schema(schema: Any) -> Any:
    """The schema the parser gets; the caller validates the reply against the original. Two keywords the
    parser mishandles are rewritten: it ignores `minimum`/`maximum`, so a small integer range also lists
    its values as an enum; and it does not count whitespace at the start of a string (up to MAX_WHITESPACE
    characters), so a `maxLength` is lowered by that much."""
    if isinstance(schema, list):
        return [_parser_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _parser_schema(value) for key, value in schema.items()}
    low, high = out.get("minimum"), out.get("maximum")
    if (out.get("type") == "integer" and "enum" not in out and isinstance(low, int) and isinstance(high, int)
            and 0 <= high - low < MAX_ENUMERATED_RANGE):
        out["enum"] = list(range(low, high + 1))
    if isinstance(out.get("maxLength"), int) and out["maxLength"] > MAX_WHITESPACE:
        out["maxLength"] -= MAX_WHITESPACE
    return out


class _WholeIntegers(CharacterLevelParser):
    """The schema parser, except that an integer takes no exponent: 0.11.3 allows one, so an integer field
    could come out as 4269e31 (read as a float) or 1e999 (infinity). Range keywords (minimum, maximum) beyond
    what `_parser_schema` lists are not enforced; the caller's validation after decoding catches those."""

    def __init__(self, inner: CharacterLevelParser, config: CharacterLevelParserConfig) -> None:
        super().__init__(config)
        self.inner = inner  # a JsonSchemaParser, or (inside an anyOf) a UnionParser of them

    def add_character(self, new_character: str) -> CharacterLevelParser:
        return _WholeIntegers(self.inner.add_character(new_character), self.config)

    def get_allowed_characters(self) -> str:
        return "".join(set(_allowed(self.inner)))

    def can_end(self) -> bool:
        return self.inner.can_end()

    def shortcut_key(self) -> Any:
        return self.inner.shortcut_key()

    def cache_key(self) -> Any:
        return self.inner.cache_key()


def _allowed(parser: CharacterLevelParser) -> str:
    if isinstance(parser, UnionParser):
        return "".join(_allowed(option) for option in parser.parsers)
    allowed = parser.get_allowed_characters()
    top = parser.object_stack[-1] if isinstance(parser, JsonSchemaParser) and parser.object_stack else None
    if isinstance(top, NumberParsingState) and not top.allow_floating_point:
        allowed = allowed.replace("e", "").replace("E", "")  # after a number only , ] } or space follow
    return allowed
