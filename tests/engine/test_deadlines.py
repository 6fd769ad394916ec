"""Request deadlines: a sequence past its deadline ends with finish_reason timeout between steps,
wherever it is (waiting, prefilling, decoding), its held-back text is flushed, and its rows are freed
exactly like other finished rows (tiny random Llama)."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.engine.engine import Engine, EngineConfig
from app.engine.scheduling.sequence import SequenceStatus
from app.engine.types import FinishReason, SamplingParams
from tests.engine.helpers import make_core, make_sequence, output_of, run_alone, run_to_end, tiny_load_config

LONG = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
PAST = 0.0  # a monotonic time that has always passed


def _ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer.encode(text)


def test_a_running_row_times_out_and_the_others_are_unchanged(tiny_loaded_fp32):
    """fp32 whatever TOKENWIRE_DTYPE says: the other row is compared token for token with running alone."""
    tiny_loaded = tiny_loaded_fp32
    core = make_core(tiny_loaded)
    short = _ids(tiny_loaded, "The capital of France")
    other = _ids(tiny_loaded, "Hello world! How are you")
    mine, theirs = [], []
    late = make_sequence(tiny_loaded, "late", short, LONG, mine)
    core.add(late)
    core.add(make_sequence(tiny_loaded, "other", other, LONG, theirs))
    for _ in range(5):
        core.step()
    assert late.status is SequenceStatus.RUNNING and core.store.num_rows == 2
    late.deadline = PAST
    core.step()
    last = mine[-1]
    assert last.finish_reason is FinishReason.TIMEOUT and last.token_ids == ()
    assert last.num_completion_tokens == len(mine) - 1 == 5
    assert all(e.finish_reason is None for e in mine[:-1])
    assert late.status is SequenceStatus.FINISHED_TIMEOUT and core.store.num_rows == 1
    run_to_end(core)
    assert core.scheduler.num_unfinished == 0 and core.kv_cache_bytes == 0
    assert output_of(theirs) == run_alone(tiny_loaded, other, LONG)


def test_waiting_and_prefilling_sequences_time_out_too(tiny_loaded):
    # A 16-token step budget: "chunked" prefills in chunks while the others wait behind it.
    core = make_core(tiny_loaded, max_running=2, max_batched_tokens=16)
    long_prompt = _ids(tiny_loaded, "Hello world! How are you today? I am fine, thank you. " * 3)
    events = {name: [] for name in ("chunked", "first", "queued")}
    chunked = make_sequence(tiny_loaded, "chunked", long_prompt, LONG, events["chunked"])
    core.add(chunked)
    core.add(make_sequence(tiny_loaded, "first", _ids(tiny_loaded, "Hi"), LONG, events["first"]))
    queued = make_sequence(tiny_loaded, "queued", _ids(tiny_loaded, "Tokyo"), LONG, events["queued"])
    core.add(queued)
    core.step()
    assert chunked.status is SequenceStatus.PREFILLING and core.kv_cache_bytes > 0
    assert queued.status is SequenceStatus.WAITING
    chunked.deadline = queued.deadline = PAST
    core.step()
    for name in ("chunked", "queued"):
        assert [(e.text, e.num_completion_tokens, e.finish_reason) for e in events[name]] == \
            [("", 0, FinishReason.TIMEOUT)]
    run_to_end(core)
    assert core.scheduler.num_unfinished == 0 and core.kv_cache_bytes == 0
    assert events["first"][-1].finish_reason is FinishReason.LENGTH


def test_expiry_flushes_text_held_back_for_a_stop_string(tiny_loaded):
    params = SamplingParams(temperature=0, max_tokens=40, stop=("world",))
    events = []
    sequence = make_sequence(tiny_loaded, "held", [1, 2], params, events)
    for token_id in _ids(tiny_loaded, "Hello wor"):
        events.append(sequence.append_token(token_id))
    assert "".join(e.text for e in events) == "Hello "  # "wor" may still become "world"
    final = sequence.expire()
    assert final.text == "wor" and final.finish_reason is FinishReason.TIMEOUT
    assert sequence.status.is_finished


def test_the_deadline_defaults_to_timeout_s_from_creation(tiny_loaded):
    before = time.monotonic()
    sequence = make_sequence(tiny_loaded, "t", [1, 2], SamplingParams(max_tokens=3, timeout_s=30), [])
    assert before + 30 <= sequence.deadline <= time.monotonic() + 30
    assert make_sequence(tiny_loaded, "u", [1, 2], SamplingParams(max_tokens=3), []).deadline is None


# ---- through the async engine -----------------------------------------------------------------


@pytest.fixture
async def engine(tiny_model_dir):
    config = EngineConfig(tiny_load_config(tiny_model_dir), "tiny",
                          request_timeout_s=60)
    engine = Engine(config)
    await engine.start()
    yield engine
    await engine.stop()


@pytest.mark.parametrize(("requested", "effective"), [(None, 60), (5, 5), (600, 60)])
async def test_a_request_may_shorten_the_server_deadline_but_not_extend_it(engine, requested, effective):
    resolved = engine.resolve_params(3, SamplingParams(max_tokens=4, timeout_s=requested))
    assert resolved.timeout_s == effective


async def test_a_request_past_its_deadline_ends_with_timeout(engine):
    ids = await engine.encode_text("The capital of France")
    params = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True, timeout_s=1e-6)
    events = [e async for e in engine.generate(ids, params)]
    assert events[-1].finish_reason is FinishReason.TIMEOUT
    deadline = asyncio.get_running_loop().time() + 5
    while engine.num_active_requests or engine.num_running or engine.kv_cache_bytes:
        assert asyncio.get_running_loop().time() < deadline, "the engine did not go idle"
        await asyncio.sleep(0.01)
