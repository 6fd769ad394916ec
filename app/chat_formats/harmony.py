"""OpenAI harmony (gpt-oss): output is messages on channels. `analysis` is reasoning (up to <|end|>),
`final` the answer, and a call is a `commentary` message addressed `to=functions.NAME` whose body is
the arguments, ended by <|call|>. The channel headers are special tokens: output keeps them."""

from __future__ import annotations

import json

from app.chat_formats.call_stream import Block, CallStream
from app.chat_formats.conversation import written_out
from app.chat_formats.format import ChatFormat, json_rule, literal

CHANNEL, MESSAGE, CONSTRAIN, END, CALL = "<|channel|>", "<|message|>", "<|constrain|>", "<|end|>", "<|call|>"
REASONING = (f"{CHANNEL}analysis{MESSAGE}", END)
# Either `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>` or, as the template
# renders earlier calls, `to=functions.NAME<|channel|>commentary json<|message|>`.
_HEADER = r"(?P<name>[^\s<]+)\s*(?:<\|channel\|>\s*commentary)?\s*(?:<\|constrain\|>)?\s*(?:json)?\s*<\|message\|>"
# Framing around the answer and calls, dropped from the answer text.
_FRAMING = ("<|start|>assistant", f"{CHANNEL}final{MESSAGE}", f"{CHANNEL}commentary{MESSAGE}",
            f"{CHANNEL}commentary", END, "<|return|>", CALL)


class Harmony(ChatFormat):
    name = "harmony"
    special_markup = True
    markup = (CHANNEL, MESSAGE, CONSTRAIN)

    def matches(self, template: str) -> bool:
        return CHANNEL in template and MESSAGE in template

    def reasoning_markers(self, vocab):
        return REASONING

    def rewrite(self, messages, tools):
        def instructions() -> str:
            lines = [f"// {t['function'].get('description', '')}\ntype {t['function']['name']} = "
                     f"(_: {json.dumps(t['function'].get('parameters', {}))}) => any;" for t in tools or []]
            return "# Tools\n\n## functions\n\nnamespace functions {\n\n" + "\n\n".join(lines) + "\n\n} // namespace functions"
        return written_out(messages, tools, instructions, call_text, lambda content: f"functions result: {content}")

    def parser(self, tool_names):
        blocks = [Block(opener, lambda body, names: None, (CALL, END), header=_HEADER)
                  for opener in (" to=functions.", "to=functions.")]
        return CallStream(blocks, tool_names, drop=_FRAMING)

    def forced_grammar(self, functions, parallel, token=literal):
        # One call per message: <|call|> ends the turn.
        calls = " | ".join(f'{token(CHANNEL)} {literal(f"commentary to=functions.{name} ")} {token(CONSTRAIN)} "json" '
                           f"{token(MESSAGE)} args{i}" for i, (name, _) in enumerate(functions))
        return "\n".join([f"start: {calls}", *(json_rule(f"args{i}", s) for i, (_, s) in enumerate(functions))])


def call_text(name: str, arguments: object) -> str:
    return f"{CHANNEL}commentary to=functions.{name} {CONSTRAIN}json{MESSAGE}{json.dumps(arguments, ensure_ascii=False)}{CALL}"


FORMAT = Harmony()
