"""Our cached loop against transformers' own reference paths, on a tiny random Llama.

Token-for-token comparisons run in fp32 whatever TOKENWIRE_DTYPE says (exact only there); logit
comparisons run in the dtype under test, within that dtype's rounding."""

from __future__ import annotations

import torch

from app.engine.types import SamplingParams
from tests.engine.helpers import logit_tolerance, run_alone

PROMPTS = ["The capital of France", "Hello world! How", "東京は日本の", "def main():\n"]


def _hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    input_ids = torch.tensor([prompt_ids], device=model.device)
    out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt_ids):].tolist()


def test_greedy_matches_model_generate(tiny_loaded_fp32, tiny_reference_fp32):
    tiny_loaded = tiny_loaded_fp32
    for prompt in PROMPTS:
        ids = tiny_loaded.tokenizer.encode(prompt)
        ours, _, reason = run_alone(tiny_loaded, ids, SamplingParams(temperature=0, max_tokens=24,
                                                                   ignore_eos=True))
        assert ours == _hf_greedy(tiny_reference_fp32, ids, 24), prompt
        assert reason == "length"
    assert len(set(ours)) > 3, "the tiny model should not just repeat one token"


def test_chunked_prefill_gives_the_same_tokens(tiny_loaded_fp32):
    tiny_loaded = tiny_loaded_fp32
    ids = tiny_loaded.tokenizer.encode(" ".join(PROMPTS) * 3)
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    whole, _, _ = run_alone(tiny_loaded, ids, params, max_batched_tokens=4096)
    chunked, _, _ = run_alone(tiny_loaded, ids, params, max_batched_tokens=16)
    assert len(ids) > 48 and chunked == whole


def test_incremental_logits_match_full_forward(tiny_loaded, tiny_reference):
    from tests.engine.helpers import make_core, reference_logits

    core = make_core(tiny_loaded)
    runner = core.runner
    ids = tiny_loaded.tokenizer.encode("The capital of France is Paris. Hello world!")
    cache = runner.new_cache()
    split = len(ids) // 2
    runner.prefill(cache, ids[:split], 0)
    last = runner.prefill(cache, ids[split:-3], split)
    full = reference_logits(tiny_reference, ids)
    torch.testing.assert_close(last, full[len(ids) - 4], **logit_tolerance(tiny_loaded.dtype))
    core.store.join(["row"], cache, torch.ones((1, len(ids) - 3), dtype=torch.long, device=tiny_loaded.device))
    for position in range(len(ids) - 3, len(ids)):
        step = core.runner.decode(core.store, [ids[position]])[0]
        torch.testing.assert_close(step, full[position], **logit_tolerance(tiny_loaded.dtype))


def test_padded_group_prefill_matches_each_prompt_alone(tiny_loaded):
    from tests.engine.helpers import make_core

    runner = make_core(tiny_loaded).runner
    prompts = [tiny_loaded.tokenizer.encode(p) for p in PROMPTS]
    _, mask, logits = runner.prefill_batch(prompts)
    assert mask.sum(dim=1).tolist() == [len(p) for p in prompts]
    for row, prompt in enumerate(prompts):
        alone = runner.prefill(runner.new_cache(), prompt, 0)
        torch.testing.assert_close(logits[row], alone, **logit_tolerance(tiny_loaded.dtype))
