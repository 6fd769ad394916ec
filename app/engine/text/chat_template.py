"""Rendering a model's chat template as transformers' `apply_chat_template(..., tokenize=False)` does.

Without importing transformers (half a second of every start-up). The template is model-supplied code,
so it runs in jinja2's ImmutableSandboxedEnvironment with the options and helpers transformers gives
it (trim_blocks, lstrip_blocks, loop controls, a `{% generation %}` block that just renders its body,
a `tojson` that keeps non-ASCII and takes json.dumps' options, `raise_exception`, `strftime_now`,
and `dict` / `namespace` that refuse underscore names), and sees the same data: the messages with
their None fields dropped and their reasoning under every name templates read it by, the tools,
`add_generation_prompt`, the tokenizer's special tokens, then any extra variables.
tests/engine/test_fast_tokenizer.py renders every case both ways and compares.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

# Where templates look for a message's reasoning; the first is the standard one.
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _GenerationBlock(Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks; rendering it is
    rendering its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller) -> str:
        return caller()


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    raise TemplateError(message)


def _strftime_now(format_: str) -> str:
    return datetime.now().strftime(format_)


class _Dict:
    """`dict(...)` for templates, without the class's attributes to climb through."""

    def __call__(self, *args, **kwargs) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja2's namespace, refusing underscore names (a way towards CPython's internals)."""

    def __init__(*args, **kwargs):  # noqa: N805 - jinja2's own signature trick: `self` may be a keyword
        self, args = args[0], args[1:]
        values = dict(*args, **kwargs)
        for name in values:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, values)

    def __setitem__(self, name, value) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot set underscore-prefixed names on a namespace: {name!r}")


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[_GenerationBlock, "jinja2.ext.loopcontrols"])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now, dict=_Dict(),
                               namespace=_Namespace)
    return environment.from_string(source)


def _plain(value):
    """Plain JSON-like data (a template must not reach an object's methods)."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    return str(value)


def _message(message: Mapping) -> dict:
    """A message as templates see it: no None fields, reasoning under each name they read it by."""
    message = {key: value for key, value in _plain(message).items() if value is not None}
    reasoning = next((message[key] for key in REASONING_FIELDS if message.get(key) is not None), None)
    if reasoning is not None:
        message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
    return message


def select_template(templates: str | Mapping[str, str], tools: Sequence | None) -> str:
    """A tokenizer's template, or, from named ones, "tool_use" when tools are offered, else "default"."""
    if isinstance(templates, str):
        return templates
    if tools is not None and "tool_use" in templates:
        return templates["tool_use"]
    if "default" in templates:
        return templates["default"]
    raise ValueError(f"the model has several chat templates and no default: {sorted(templates)}")


def render(templates: str | Mapping[str, str], messages: Sequence[Mapping], special_tokens: Mapping[str, str],
           tools: Sequence[Mapping] | None = None, add_generation_prompt: bool = False, **variables) -> str:
    """The rendered prompt (TemplateError: the template refused these messages)."""
    if not messages:
        raise ValueError("cannot apply a chat template to an empty conversation")
    template = compile_template(select_template(templates, tools))
    return template.render(messages=[_message(m) for m in messages], tools=_plain(tools), documents=None,
                           add_generation_prompt=add_generation_prompt,
                           **{**special_tokens, **_plain(variables)})
