"""Each family's chat format against its real published template (tests/data/chat_templates/): the registry
picks it, a conversation with tools, a call and its result renders, the family's call text parses into the
same calls fed whole or one character at a time, and its forced-call grammar accepts that text only."""

from __future__ import annotations

import json
from pathlib import Path

import llguidance
import pytest
import tokenizers
from tokenizers import AddedToken

from app.chat_formats import registry
from app.chat_formats.calls import ArgumentsPiece, CallOpened
from app.engine.text.chat_template import render

TEMPLATES = Path(__file__).resolve().parents[1] / "data" / "chat_templates"
SMOL = Path(__file__).resolve().parents[2] / "models" / "SmolLM2-135M-Instruct"
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call12345", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "12 C"},
]
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}
OSLO = ("get_weather", {"city": "Oslo"})

# template, format, whether the template renders tools itself, a call as the template renders one
# (so as the model writes it), the model's answer text around it, the calls it holds.
CASES = [
    ("Qwen-Qwen3-0.6B", "hermes", True,
     'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>',
     "Let me check.\n", [OSLO]),
    ("Qwen-Qwen2.5-7B-Instruct", "hermes", True,
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>',
     "\n", [OSLO, ("get_weather", {"city": "Rome"})]),
    ("NousResearch-Hermes-3-Llama-3.1-8B-tool_use", "hermes", True,
     '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "", [OSLO]),
    ("meta-llama-Llama-3.1-8B-Instruct", "llama3_json", True,
     '{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [OSLO]),
    ("meta-llama-Llama-3.2-3B-Instruct", "llama3_json", True,
     '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Oslo"}}', "", [OSLO]),
    ("mistralai-Mistral-Nemo-Instruct-2407", "mistral", True,
     'Checking.[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "abcdef123"}]',
     "Checking.", [OSLO]),
    ("Mistral-Small-3.2-24B-Instruct-2506", "mistral", True,
     '[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}[TOOL_CALLS]get_weather[ARGS]{"city": "Rome"}',
     "", [OSLO, ("get_weather", {"city": "Rome"})]),
    ("unsloth-mistral-Devstral-Small-2507", "mistral", True,
     'On it. [TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}', "On it. ", [OSLO]),
    ("openai-gpt-oss-120b", "harmony", True,
     '<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>'
     '{"city": "Oslo"}<|call|>', "", [OSLO]),
    ("google-gemma-4-31B-it", "gemma", True,
     'Sure.<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>', "Sure.", [OSLO]),
    ("google-gemma-2-2b-it", "gemma", False,
     'Let me look.\n```tool_code\nget_weather(city="Oslo")\n```', "Let me look.\n", [OSLO]),
]
IDS = [case[0] for case in CASES]


def _template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text()


def _parse(fmt, text: str, pieces: list[str]) -> tuple[str, list[tuple[str, dict]], list]:
    parser = fmt.parser({"get_weather", "get_time"})
    answer, events = [], []
    for piece in pieces:
        a, e = parser.feed(piece)
        answer.append(a)
        events += e
    a, e = parser.finish()
    answer.append(a)
    events += e
    calls: dict[int, list] = {}
    for event in events:
        if isinstance(event, CallOpened):
            assert event.index not in calls
            calls[event.index] = [event.name, ""]
        else:
            assert isinstance(event, ArgumentsPiece)
            calls[event.index][1] += event.text
    whole = [(call.name, json.loads(call.arguments)) for call in parser.calls]
    assert whole == [(name, json.loads(arguments)) for name, arguments in calls.values()]
    return "".join(answer), whole, events


@pytest.mark.parametrize(("name", "family", "renders", "output", "answer", "calls"), CASES, ids=IDS)
def test_the_registry_picks_the_family_from_the_template(name, family, renders, output, answer, calls):
    assert registry.format_for(_template(name)).name == family


def test_a_template_without_markers_is_hermes():
    assert registry.format_for((SMOL / "chat_template.jinja").read_text()).name == "hermes"
    assert registry.format_for(None).name == "hermes"


@pytest.mark.parametrize(("name", "family", "renders", "output", "answer", "calls"), CASES, ids=IDS)
def test_a_conversation_with_tools_a_call_and_its_result_renders(name, family, renders, output, answer, calls):
    template, fmt = _template(name), registry.format_for(_template(name))
    if renders:
        text = render(template, CONVERSATION, SPECIAL, tools=[WEATHER], add_generation_prompt=True)
    else:  # the format writes them in
        text = render(template, fmt.rewrite(CONVERSATION, [WEATHER]), SPECIAL, add_generation_prompt=True)
    assert "get_weather" in text and "Weather now" in text  # the tool
    assert "Oslo" in text.split("Weather in Oslo?", 1)[1] and "12 C" in text  # the earlier call, its result


@pytest.mark.parametrize(("name", "family", "renders", "output", "answer", "calls"), CASES, ids=IDS)
def test_the_family_call_text_parses_the_same_whole_and_streamed(name, family, renders, output, answer, calls):
    fmt = registry.format_for(_template(name))
    whole = _parse(fmt, output, [output])
    streamed = _parse(fmt, output, list(output))
    assert whole[:2] == streamed[:2] == (answer, calls)
    assert [e.name for e in streamed[2] if isinstance(e, CallOpened)] == [c[0] for c in calls]


@pytest.mark.parametrize(("name", "family", "renders", "output", "answer", "calls"), CASES, ids=IDS)
def test_answer_text_without_calls_is_released_as_it_comes(name, family, renders, output, answer, calls):
    fmt = registry.format_for(_template(name))
    parser = fmt.parser({"get_weather"})
    released = "".join(parser.feed(c)[0] for c in "The weather is fine. ")
    assert released == "The weather is fine. "[:len(released)] and len(released) >= len("The weather is fine")


@pytest.mark.parametrize("family", ["mistral", "harmony"])
def test_named_first_formats_stream_the_arguments(family):
    name = {"mistral": "Mistral-Small-3.2-24B-Instruct-2506", "harmony": "openai-gpt-oss-120b"}[family]
    output = dict((c[0], c[3]) for c in CASES)[name]
    parser = registry.format_for(_template(name)).parser({"get_weather"})
    cut = output.index('"Oslo"')
    _, first = parser.feed(output[:cut])
    assert [type(e) for e in first] == [CallOpened, ArgumentsPiece] and first[1].text == '{"city":'  # the space may yet end them


def test_markup_that_names_no_offered_tool_stays_text():
    for name, output in [("Qwen-Qwen3-0.6B", '<tool_call>{"name": "launch", "arguments": {}}</tool_call>'),
                         ("Mistral-Small-3.2-24B-Instruct-2506", "[TOOL_CALLS]launch[ARGS]{}"),
                         ("google-gemma-2-2b-it", "```tool_code\nlaunch()\n```")]:
        answer, calls, _ = _parse(registry.format_for(_template(name)), output, list(output))
        assert (answer, calls) == (output, [])


def test_harmony_drops_its_framing_from_the_final_answer():
    fmt = registry.format_for(_template("openai-gpt-oss-120b"))
    output = "<|start|>assistant<|channel|>final<|message|>It is 12 C.<|return|>"
    assert _parse(fmt, output, list(output))[:2] == ("It is 12 C.", [])
    assert fmt.reasoning_markers(()) == ("<|channel|>analysis<|message|>", "<|end|>")


# ---- forced calls: each family's grammar, with llguidance as the engine uses it ----------------

def _tokenizer(markup: tuple[str, ...]):
    """SmolLM2's tokenizer with the family's markup as special tokens, as its own tokenizer has them."""
    tokenizer = tokenizers.Tokenizer.from_file(str(SMOL / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken(m, special=True, normalized=False) for m in markup])
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    return tokenizer, llguidance.LLTokenizer(tokenizer.to_str(), n_vocab=size, eos_token=2)


def _accepts(grammar: str, tokenizer, ll, text: str) -> bool:
    matcher = llguidance.LLMatcher(ll, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return all(matcher.consume_token(i) for i in tokenizer.encode(text, add_special_tokens=False).ids) \
        and matcher.is_accepting()


FORCED = [  # (template, text the grammar must accept)
    ("meta-llama-Llama-3.1-8B-Instruct", '{"name": "get_weather", "parameters": {"city":"Oslo"}}'),
    ("mistralai-Mistral-Nemo-Instruct-2407", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city":"Oslo"}}]'),
    ("Mistral-Small-3.2-24B-Instruct-2506", '[TOOL_CALLS]get_weather[ARGS]{"city":"Oslo"}'),
    ("openai-gpt-oss-120b", '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Oslo"}'),
    ("google-gemma-4-31B-it", '<|tool_call>call:get_weather{city:<|"|>Oslo<|"|>}<tool_call|>'),
    ("google-gemma-2-2b-it", '```tool_code\nget_weather(city="Oslo")\n```'),
]


@pytest.mark.parametrize(("name", "text"), FORCED, ids=[f[0] for f in FORCED])
def test_a_forced_call_grammar_follows_the_family_format(name, text):
    fmt = registry.format_for(_template(name))
    tokenizer, ll = _tokenizer(fmt.markup)
    vocab = tokenizer.get_vocab(with_added_tokens=True)

    def token(markup: str) -> str:
        return f"<[{vocab[markup]}]>" if markup in vocab else json.dumps(markup)
    schema = {**WEATHER["function"]["parameters"], "additionalProperties": False}
    grammar = fmt.forced_grammar([("get_weather", schema), ("get_time", {"type": "object"})], False, token)
    assert _accepts(grammar, tokenizer, ll, text)
    assert not _accepts(grammar, tokenizer, ll, "The weather in Oslo is fine.")
    assert not _accepts(grammar, tokenizer, ll, text.replace("get_weather", "launch_rockets"))
    # What the grammar writes, the family's parser reads back as the call.
    assert _parse(fmt, text, list(text))[1] == [OSLO]


def test_hermes_forced_calls_keep_the_bare_json_grammar():
    assert not registry.format_for(_template("Qwen-Qwen3-0.6B")).forced_in_markup
