"""Constrained decoding: a grammar's mask never allows a token that breaks it, and outputs parse.

The tiny random Llama prefers no particular text, so whatever it samples inside the mask is a fair
test of the mask; masks span the model's vocabulary.
"""

from __future__ import annotations

import json
import random

import jsonschema
import pytest
import torch

from app.engine.errors import InvalidRequest
from app.engine.text.grammar import GrammarCompiler, apply_grammars, unpack_bitmask
from app.engine.types import Constraint, FinishReason, SamplingParams
from tests.engine.helpers import make_core, make_request, output_of, run_to_end

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 8},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "kind": {"enum": ["cat", "dog"]},
    "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2}},
    "required": ["name", "age", "kind"], "additionalProperties": False}


@pytest.fixture(scope="module")
def compiler(tiny_loaded):
    vocab = tiny_loaded.dims.vocab_size
    return GrammarCompiler(tiny_loaded.tokenizer, vocab, tiny_loaded.eos_token_ids)


def _generate(loaded, grammar, params):
    events: list = []
    prompt = loaded.tokenizer.encode("Reply in JSON:")
    run_to_end(make_core(loaded), {0: [make_request(loaded, "r", prompt, params, events, grammar)]})
    return events


@pytest.mark.parametrize("seed", range(4))
def test_sampled_output_parses_and_validates(tiny_loaded, compiler, seed):
    grammar = compiler.compile(Constraint("json_schema", json.dumps(SCHEMA)))
    params = SamplingParams(temperature=1.0, seed=seed, max_tokens=200, n=2)
    events = _generate(tiny_loaded, grammar, params)
    finals = [e for e in events if e.finish_reason is not None]
    assert len(finals) == 2
    for index in (0, 1):
        text = "".join(e.text for e in events if e.index == index)
        if next(e for e in finals if e.index == index).finish_reason is FinishReason.STOP:
            jsonschema.validate(json.loads(text), SCHEMA)
        else:  # cut by max_tokens: still a valid prefix, never a wrong token
            assert text.startswith("{")


def test_every_allowed_token_keeps_the_grammar_and_every_other_breaks_it(tiny_loaded, compiler):
    grammar = compiler.compile(Constraint("json_schema", json.dumps(SCHEMA)))
    matcher = grammar.matcher()
    vocab = compiler.vocab_size
    rng = random.Random(0)
    for _ in range(25):
        bitmask = torch.empty((1, (vocab + 31) // 32), dtype=torch.int32)
        matcher.fill(bitmask, 0)
        allowed = unpack_bitmask(bitmask, vocab)[0]
        allowed_ids = allowed.nonzero().flatten().tolist()
        assert allowed_ids, "a live grammar always allows something"
        for token_id in rng.sample(range(vocab), 40) + allowed_ids[:40]:
            trial = matcher._matcher.deep_copy()
            assert trial.consume_token(token_id) == bool(allowed[token_id]), token_id
        if matcher.is_finished:
            break
        matcher.accept(rng.choice(allowed_ids))


def test_masked_rows_only_and_logits_of_other_rows_untouched(tiny_loaded, compiler):
    grammar = compiler.compile(Constraint("json"))
    vocab = compiler.vocab_size
    logits = torch.randn(3, vocab)
    masked = apply_grammars([None, grammar.matcher(), None], logits.clone())
    assert torch.equal(masked[0], logits[0]) and torch.equal(masked[2], logits[2])
    allowed = masked[1].isfinite().nonzero().flatten().tolist()
    assert allowed and all(tiny_loaded.tokenizer.decode([t]).lstrip().startswith("{") for t in allowed)


def test_the_mask_is_as_wide_as_the_models_vocabulary(tiny_loaded):
    vocab = tiny_loaded.dims.vocab_size + 37  # a model with padded embeddings
    wide = GrammarCompiler(tiny_loaded.tokenizer, vocab, tiny_loaded.eos_token_ids)
    logits = torch.zeros(1, vocab)
    masked = apply_grammars([wide.compile(Constraint("json")).matcher()], logits)
    assert masked.shape == (1, vocab) and not masked[0, -37:].isfinite().any()


@pytest.mark.parametrize("constraint", [
    Constraint("json_schema", json.dumps({"type": "object", "properties": 5})),
    Constraint("json_schema", "{not json"),
    Constraint("json_schema", json.dumps({"type": "object", "not": {"required": ["a"]}})),
    Constraint("regex", "(("),
    Constraint("sql", "select"),
])
def test_a_grammar_that_cannot_compile_is_an_invalid_request(compiler, constraint):
    with pytest.raises(InvalidRequest) as caught:
        compiler.compile(constraint)
    assert caught.value.param == "constraint" and str(caught.value)


@pytest.mark.parametrize("ignore_eos", [False, True])
def test_greedy_constrained_output_ends_with_eos_as_stop(tiny_loaded, compiler, ignore_eos):
    # A finished grammar allows only EOS: it ends the output even when the request ignores EOS
    # (benchmark tools send ignore_eos with every request, response_format included).
    grammar = compiler.compile(Constraint("regex", "(yes|no)"))
    events = _generate(tiny_loaded, grammar, SamplingParams(temperature=0, max_tokens=10, ignore_eos=ignore_eos))
    ids, text, reason = output_of(events)
    assert text in ("yes", "no") and reason == "stop" and ids[-1] in tiny_loaded.eos_token_ids
