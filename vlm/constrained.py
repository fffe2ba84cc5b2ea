"""Constrained decoding for the fine-tuned model: the answer can only be JSON of the proposal schema
(`vlm.prompts.proposal_json_schema`: real parameter names, each value of its parameter's type and range).

xgrammar (the grammar engine vLLM uses) compiles the schema to a token mask applied at every step through a
transformers logits processor. Imported only in processes that hold a model (the worker, training); off with
VLM_CONSTRAINED_DECODING=0. Compiled grammars are cached per schema, so asking about one model again costs nothing.
"""
from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict

log = logging.getLogger(__name__)

_CACHE_ITEMS = 16


def enabled() -> bool:
    return os.environ.get("VLM_CONSTRAINED_DECODING", "1").strip().lower() not in {"0", "false", "no", "off"}


class SchemaConstraint:
    """One per tokenizer: `processor(schema)` is a fresh logits processor for one generation (it keeps state)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]):
        import xgrammar as xgr

        self._xgr = xgr
        # the model's own end-of-turn ends a finished answer (the tokenizer's eos is another token in ChatML)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=stop_token_ids)
        self._compiler = xgr.GrammarCompiler(info)
        self._grammars: OrderedDict[str, object] = OrderedDict()
        self._control_ids = control_character_tokens(tokenizer, vocab_size)

    def processor(self, schema: dict):
        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            # The grammar writes properties in the schema's order (summary, changes; parameter, value, reason: the
            # prompt's format), so compile the schema as given, not the sorted key. Compact JSON: a random or
            # barely trained model would otherwise pad the answer with whitespace.
            grammar = self._compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, strict_mode=True)
            self._grammars[key] = grammar
            while len(self._grammars) > _CACHE_ITEMS:
                self._grammars.popitem(last=False)
        else:
            self._grammars.move_to_end(key)
        return _Masked(self._xgr.contrib.hf.LogitsProcessor(grammar), self._control_ids)


def control_character_tokens(tokenizer, vocab_size: int) -> list[int]:
    """Ids of tokens that decode to a raw control character. xgrammar's JSON strings admit them (a random model
    wrote NUL bytes into a summary), but JSON forbids them unescaped and a compact answer never needs them."""
    count = min(vocab_size, len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in range(count)])  # one call: ~1 s for a 150k vocabulary
    special = set(tokenizer.all_special_ids)
    return [i for i, text in enumerate(texts) if i not in special and any(ord(ch) < 0x20 for ch in text)]


class _Masked:
    """The grammar's logits processor, then the control-character tokens masked out."""

    def __init__(self, grammar_processor, masked_ids: list[int]):
        self._grammar, self._masked = grammar_processor, masked_ids

    def __call__(self, input_ids, scores):
        scores = self._grammar(input_ids, scores)
        if self._masked:
            scores[:, self._masked] = float("-inf")
        return scores


def make_constraint(model, tokenizer) -> SchemaConstraint | None:
    """The model's constraint (build it once per loaded model), or None when off or unavailable."""
    if not enabled():
        return None
    try:
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        eos = model.generation_config.eos_token_id
        stops = [int(t) for t in (eos if isinstance(eos, list) else [eos]) if t is not None]
        return SchemaConstraint(tokenizer, int(config.vocab_size), stops or [int(tokenizer.eos_token_id)])
    except Exception as exc:  # noqa: BLE001 - decoding still works unconstrained; the parser validates anyway
        log.warning("constrained decoding is not available (%s: %s); answers are validated after the fact",
                    type(exc).__name__, exc)
        return None
