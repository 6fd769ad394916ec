"""Gemma. Gemma 4's template renders tools itself and calls as `<|tool_call>call:NAME{key:value,...}<tool_call|>`
(strings between <|"|> marks), reasoning as `<|channel>thought ...<channel|>`. Gemma 2's template has no
tools (nor a system role), so the conversation is written in the convention Google documents for Gemma:
a call is a Python-style ```tool_code block, `name(key=value)`, and a result a ```tool_output block."""

from __future__ import annotations

import ast
import json
import re

from app.chat_formats.call_stream import Block, CallStream
from app.chat_formats.calls import Call
from app.chat_formats.conversation import written_out
from app.chat_formats.format import ChatFormat, literal

NATIVE_OPEN, NATIVE_CLOSE, QUOTE = "<|tool_call>", "<tool_call|>", '<|"|>'
CODE_OPEN, CODE_CLOSE = "```tool_code", "```"
THOUGHT = ("<|channel>thought\n", "<channel|>")

_INSTRUCTIONS = (
    "You have access to functions. If you decide to invoke any of them, write the call in a ```tool_code "
    "block, as Python: ```tool_code\nfunction_name(argument=value)\n```\nThe results come back in a "
    "```tool_output block. The functions:\n{signatures}"
)
# Gemma's value syntax, for a forced call: JSON with bare keys and <|"|> strings.
_NATIVE_VALUES = r'''
value: string | NUMBER | "true" | "false" | "null" | object | array
object: "{" (pair ("," pair)*)? "}"
pair: KEY ":" value
array: "[" (value ("," value)*)? "]"
string: quote /[^<]*/ quote
KEY: /[A-Za-z_][A-Za-z0-9_\-]*/
NUMBER: /-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?/
'''
_PYTHON_VALUES = r'''
value: STRING | NUMBER | "True" | "False" | "None" | dict | list
dict: "{" (STRING ": " value (", " STRING ": " value)*)? "}"
list: "[" (value (", " value)*)? "]"
STRING: /"([^"\\\n]|\\.)*"/
NUMBER: /-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?/
'''


class Gemma(ChatFormat):
    name = "gemma"

    def __init__(self, native: bool = False) -> None:
        self.native = native  # Gemma 4's own markup (else Gemma 2's tool_code convention)
        self.special_markup = native
        self.markup = (NATIVE_OPEN, NATIVE_CLOSE, QUOTE) if native else ()

    def matches(self, template: str) -> bool:
        return NATIVE_OPEN in template or "<start_of_turn>" in template

    def for_template(self, template: str) -> Gemma:
        return Gemma(native=NATIVE_OPEN in template)

    def reasoning_markers(self, vocab):
        return THOUGHT if self.native else super().reasoning_markers(vocab)

    def rewrite(self, messages, tools):
        def instructions() -> str:
            return _INSTRUCTIONS.format(signatures="\n".join(json.dumps(t, ensure_ascii=False) for t in tools or []))
        return written_out(messages, tools, instructions, code_call,
                           lambda content: f"```tool_output\n{content}\n```", system_role=False, alternate=True)

    def parser(self, tool_names):
        return CallStream([Block(NATIVE_OPEN, read_native, (NATIVE_CLOSE,)),
                           Block(CODE_OPEN, read_code, (CODE_CLOSE,))], tool_names)

    def forced_grammar(self, functions, parallel, token=literal):
        repeat = "+" if parallel else ""
        if self.native:
            calls = " | ".join(f'{token(NATIVE_OPEN)} {literal(f"call:{name}")} object {token(NATIVE_CLOSE)}'
                               for name, _ in functions)
            return f"start: call{repeat}\ncall: {calls}\nquote: {token(QUOTE)}\n{_NATIVE_VALUES}"
        calls = " | ".join(f'{literal(f"{name}(")} (kwarg (", " kwarg)*)? ")"' for name, _ in functions)
        block = f'{literal(CODE_OPEN + chr(10))} call {literal(chr(10) + CODE_CLOSE)}'
        return (f"start: block{repeat}\nblock: {block}\ncall: {calls}\n"
                f'kwarg: /[A-Za-z_][A-Za-z0-9_]*/ "=" value\n{_PYTHON_VALUES}')


def read_native(body: str, tool_names) -> list[Call] | None:
    """`call:NAME{key:value,...}` -> the call, its arguments as JSON text."""
    match = re.fullmatch(r"\s*call:(?P<name>[^{\s]+)(?P<args>\{.*\})\s*", body, re.DOTALL)
    if match is None or match["name"] not in tool_names:
        return None
    strings: list[str] = []

    def stash(found: re.Match) -> str:
        strings.append(json.dumps(found[1], ensure_ascii=False))
        return f"\x00{len(strings) - 1}\x00"
    text = re.sub(re.escape(QUOTE) + "(.*?)" + re.escape(QUOTE), stash, match["args"], flags=re.DOTALL)
    text = re.sub(r'([{,]\s*)([A-Za-z_][\w\-]*)\s*:', r'\1"\2":', text)  # bare keys -> JSON keys
    text = re.sub("\x00(\\d+)\x00", lambda found: strings[int(found[1])], text)
    try:
        return [Call(match["name"], json.dumps(json.loads(text), ensure_ascii=False))]
    except ValueError:
        return None


def read_code(body: str, tool_names) -> list[Call] | None:
    """`name(key=value, ...)` lines with literal values -> calls (nothing is evaluated)."""
    try:
        tree = ast.parse(body.strip())
    except SyntaxError:
        return None
    calls = []
    for statement in tree.body:
        call = statement.value if isinstance(statement, ast.Expr) else None
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.args:
            return None
        if call.func.id not in tool_names or any(k.arg is None for k in call.keywords):
            return None
        try:
            arguments = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        except ValueError:
            return None
        calls.append(Call(call.func.id, json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def code_call(name: str, arguments: object) -> str:
    items = arguments.items() if isinstance(arguments, dict) else []
    return f"```tool_code\n{name}({', '.join(f'{key}={_python(value)}' for key, value in items)})\n```"


def _python(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_python(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_python(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


FORMAT = Gemma()
