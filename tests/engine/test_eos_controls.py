"""ignore_eos and min_tokens, the extensions benchmark tools send (tiny random Llama): EOS forced by a
logit bias either runs on as an ordinary token or cannot be drawn before min_tokens. And which end the
final event reports: the stop string that ended it, or none for an end token or max_tokens."""

from __future__ import annotations

import pytest

from app.engine.errors import InvalidRequest
from app.engine.types import FinishReason, SamplingParams
from tests.engine.helpers import make_core, make_sequence, run_alone, run_to_end


@pytest.fixture
def eos(tiny_loaded) -> int:
    return tiny_loaded.eos_token_ids[0]


def _ids(loaded) -> list[int]:
    return loaded.tokenizer.encode("The capital of France")


def test_eos_ends_a_request_by_default(tiny_loaded, eos):
    ids, _, reason = run_alone(tiny_loaded, _ids(tiny_loaded), SamplingParams(
        temperature=0, max_tokens=8, logit_bias=((eos, 100.0),)))
    assert ids == [eos] and reason == "stop"


def test_ignore_eos_runs_to_max_tokens_through_eos(tiny_loaded, eos):
    ids, _, reason = run_alone(tiny_loaded, _ids(tiny_loaded), SamplingParams(
        temperature=0, max_tokens=8, logit_bias=((eos, 100.0),), ignore_eos=True))
    assert ids == [eos] * 8 and reason == "length"


def test_min_tokens_keeps_eos_and_stop_ids_out_until_reached(tiny_loaded, eos):
    stop_id = tiny_loaded.tokenizer.encode(" Paris")[0]
    params = SamplingParams(temperature=0, max_tokens=20, min_tokens=5, stop_token_ids=(stop_id,),
                            logit_bias=((eos, 100.0), (stop_id, 90.0)))
    ids, _, reason = run_alone(tiny_loaded, _ids(tiny_loaded), params)
    assert len(ids) == 6 and eos not in ids[:5] and stop_id not in ids[:5]
    assert ids[5] == eos and reason == "stop"


def test_stop_strings_count_only_from_min_tokens_on(tiny_loaded):
    base = run_alone(tiny_loaded, _ids(tiny_loaded), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    early = base[1][:2]  # text the first tokens make: as a stop string it would end the output at once
    cut = run_alone(tiny_loaded, _ids(tiny_loaded), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                                   stop=(early,)))
    kept = run_alone(tiny_loaded, _ids(tiny_loaded), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                                    stop=(early,), min_tokens=12))
    assert cut[2] == "stop" and len(cut[0]) < 12
    assert kept == base  # all twelve tokens, the early "stop" text among them


async def test_min_tokens_above_max_tokens_is_refused_by_name(tiny_model_dir):
    from app.engine.engine import Engine, EngineConfig
    from tests.engine.helpers import tiny_load_config

    engine = Engine(EngineConfig(tiny_load_config(tiny_model_dir), "tiny"))
    await engine.start()
    try:
        with pytest.raises(InvalidRequest) as refused:
            engine.generate([1, 2, 3], SamplingParams(max_tokens=4, min_tokens=5))
        assert refused.value.param == "min_tokens"
    finally:
        await engine.stop()


def _final(loaded, params: SamplingParams):
    events: list = []
    run_to_end(make_core(loaded), {0: [make_sequence(loaded, "final", _ids(loaded), params, events)]})
    return events[-1]


def test_the_final_event_names_the_stop_string_that_ended_it(tiny_loaded, eos):
    text = run_alone(tiny_loaded, _ids(tiny_loaded), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[1]
    stop = text[2:4]
    by_string = _final(tiny_loaded, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True,
                                                  stop=("\x00never", stop)))
    assert by_string.finish_reason is FinishReason.STOP and by_string.stop_string == stop
    by_eos = _final(tiny_loaded, SamplingParams(temperature=0, max_tokens=8, logit_bias=((eos, 100.0),),
                                               stop=(stop,)))
    assert by_eos.finish_reason is FinishReason.STOP and by_eos.stop_string is None
    by_length = _final(tiny_loaded, SamplingParams(temperature=0, max_tokens=2, ignore_eos=True, stop=("\x00never",)))
    assert by_length.finish_reason is FinishReason.LENGTH and by_length.stop_string is None
