"""Chat templates come from the model's files and render in an ImmutableSandboxedEnvironment (transformers'
own, or app/engine/text/chat_template.py's copy of it):
message text is data, never template code, and a template cannot reach Python internals."""

from __future__ import annotations

import copy

import jinja2
import pytest

from app.engine.errors import InvalidRequest
from app.engine.text.prompts import PromptEncoder

TEMPLATE_SYNTAX = [
    "{{ 7*7 }}",
    "{% for x in range(3) %}x{% endfor %}",
    "{{ messages }}{# comment #}",
    "{% raw %}{{ raw }}{% endraw %}",
]


@pytest.fixture
def encoder(tiny_loaded) -> PromptEncoder:
    return PromptEncoder(tiny_loaded.tokenizer, len(tiny_loaded.tokenizer))


@pytest.mark.parametrize("text", TEMPLATE_SYNTAX)
def test_template_syntax_in_a_message_comes_out_literally(encoder, text):
    ids = encoder.encode_chat([{"role": "system", "content": text}, {"role": "user", "content": f"say {text}"}])
    rendered = encoder.decode(ids)
    assert f"<|im_start|>system\n{text}<|im_end|>\n" in rendered
    assert f"<|im_start|>user\nsay {text}<|im_end|>\n" in rendered
    assert "49" not in rendered and "xxx" not in rendered


@pytest.mark.parametrize("template", [
    "{{ messages.__class__.__mro__[1].__subclasses__() }}",  # the classic escape to Python
    "{% set _ = messages.append({'role': 'user', 'content': 'x'}) %}",  # immutable: no mutation
])
def test_a_hostile_model_template_is_stopped_by_the_sandbox(tiny_loaded, template):
    tokenizer = copy.deepcopy(tiny_loaded.tokenizer)
    tokenizer.chat_template = template
    encoder = PromptEncoder(tokenizer, len(tokenizer))
    with pytest.raises(jinja2.exceptions.SecurityError):
        encoder.encode_chat([{"role": "user", "content": "hi"}])


def test_a_template_that_refuses_the_messages_is_an_invalid_request(tiny_loaded):
    tokenizer = copy.deepcopy(tiny_loaded.tokenizer)
    tokenizer.chat_template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    with pytest.raises(InvalidRequest, match="user first") as caught:
        PromptEncoder(tokenizer, len(tokenizer)).encode_chat([{"role": "assistant", "content": "hi"}])
    assert caught.value.param == "prompt"  # the API names the field the client sent
