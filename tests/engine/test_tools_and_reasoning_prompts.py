"""Tools reach the model through its own template when it renders them, and are written into the
conversation (Hermes/Qwen style) when it does not; reasoning markers come from the tokenizer."""

from __future__ import annotations

import copy
import json

from app.engine.text.prompts import PromptEncoder

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CONVERSATION = [
    {"role": "user", "content": "Weather in Oslo?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
    {"role": "tool", "content": "12 C", "tool_call_id": "call_1"},
]
# A template that renders tools and calls itself, as Qwen's and Llama 3.1's do.
TOOL_TEMPLATE = (
    "{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} {{ c.function.arguments | tojson }}{% endfor %}"
    "<|im_end|>\n{% endfor %}<|im_start|>assistant\n")


def _encoder(tiny_loaded, template: str | None = None, extra_tokens: list[str] = ()) -> PromptEncoder:
    tokenizer = copy.deepcopy(tiny_loaded.tokenizer)
    if template is not None:
        tokenizer.chat_template = template
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens), special_tokens=True)
    return PromptEncoder(tokenizer, len(tokenizer))


def test_a_template_that_renders_tools_gets_them_natively(tiny_loaded):
    encoder = _encoder(tiny_loaded, TOOL_TEMPLATE)
    assert encoder.renders_tools
    text = encoder.decode(encoder.encode_chat(CONVERSATION, tools=[WEATHER]))
    assert text.startswith("TOOLS:get_weather;")
    assert 'CALL get_weather {"city": "Oslo"}' in text and "<|im_start|>tool\n12 C" in text
    assert "<tool_call>" not in text


def test_a_template_that_ignores_tools_gets_them_written_into_the_conversation(tiny_loaded):
    encoder = _encoder(tiny_loaded)  # the tiny model's plain ChatML template
    assert not encoder.renders_tools
    text = encoder.decode(encoder.encode_chat(CONVERSATION, tools=[WEATHER]))
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\n") and json.dumps(WEATHER) in system and "<tool_call>" in system
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n12 C\n</tool_response>" in text
    # Without tools the conversation is rendered as it is, apart from calls and results in text form.
    plain = encoder.decode(encoder.encode_chat([{"role": "user", "content": "hi"}]))
    assert "<tools>" not in plain


def test_a_system_message_keeps_its_text_before_the_tool_instructions(tiny_loaded):
    encoder = _encoder(tiny_loaded)
    text = encoder.decode(encoder.encode_chat([{"role": "system", "content": "Be brief."}, *CONVERSATION[:1]],
                                              tools=[WEATHER]))
    assert text.startswith("<|im_start|>system\nBe brief.\n\n") and text.count("<|im_start|>system") == 1


def test_reasoning_markers_come_from_the_tokenizer_and_an_opened_block_is_seen(tiny_loaded):
    assert _encoder(tiny_loaded).reasoning_markers is None
    template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                "<|im_start|>assistant\n<think>\n")
    encoder = _encoder(tiny_loaded, template, ["<think>", "</think>"])
    assert encoder.reasoning_markers == ("<think>", "</think>")
    opened = encoder.encode_chat([{"role": "user", "content": "2+2?"}])
    assert encoder.opens_reasoning(opened)
    closed = encoder.encode_text("<think>a</think> 4")
    assert not encoder.opens_reasoning(closed)
