"""Function tools on the wire: what a request offers (`tools`, `tool_choice`), the assistant's
earlier calls in a conversation, and the grammar that forces a call when tool_choice demands one.

A forced call is written in the model family's markup where its chat format gives a grammar (Mistral's
[TOOL_CALLS], harmony's commentary channel, Gemma's, Llama 3.x's object: app/chat_formats). Otherwise
(Hermes, the default) it follows vLLM's approach: a named function's output is its arguments object, matched
against the function's `parameters` schema (closed to undeclared keys unless the schema allows them);
`required` is a JSON array of {"name", "arguments"} objects, one schema branch per tool (one item
when parallel_tool_calls is false).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.chat_formats.format import ChatFormat
from app.chat_formats.registry import DEFAULT as DEFAULT_FORMAT
from app.engine.types import Constraint


def _valid_unicode(text: str) -> str:
    # JSON may escape lone surrogates ("\ud800"); they are not text and would fail in the tokenizer.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains an unpaired surrogate at position {exc.start}; not valid Unicode") from exc
    return text


# Every request's text (schemas.py imports it from here, as STRICT).
Text = Annotated[str, AfterValidator(_valid_unicode)]

# Strict: OpenAI refuses "2" for an integer or "yes" for a boolean; so do we (ints still pass as floats).
# Every request model uses it (app/api/schemas.py imports it from here: it imports this module).
STRICT = ConfigDict(strict=True, extra="ignore")
FunctionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
# An empty parameters schema means "no arguments": the arguments are then an empty object.
_NO_PARAMETERS = {"type": "object", "properties": {}}


class FunctionDefinition(BaseModel):
    model_config = STRICT

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def arguments_schema(self) -> dict[str, Any]:
        """The schema a forced call's arguments follow: `parameters`, closed to undeclared keys unless it
        says otherwise (what OpenAI's strict mode requires; a small model otherwise invents keys)."""
        schema = dict(self.parameters or _NO_PARAMETERS)
        if schema.get("type") == "object":
            schema.setdefault("additionalProperties", False)
        return schema


class Tool(BaseModel):
    model_config = STRICT

    type: Literal["function"]
    function: FunctionDefinition


class ChosenFunction(BaseModel):
    model_config = STRICT

    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = STRICT

    type: Literal["function"]
    function: ChosenFunction


class CalledFunction(BaseModel):
    model_config = STRICT

    name: FunctionName
    arguments: str  # JSON text, as OpenAI sends it


class ToolCall(BaseModel):
    """A call the assistant made earlier in the conversation."""

    model_config = STRICT

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction

    def for_template(self) -> dict[str, Any]:
        # Chat templates expect the arguments as a mapping; text that is not JSON stays text.
        try:
            arguments: Any = json.loads(self.function.arguments)
        except ValueError:
            arguments = self.function.arguments
        return {"id": self.id, "type": "function",
                "function": {"name": self.function.name, "arguments": arguments}}


def tool_constraint(tools: list[Tool], chosen: str | None, parallel: bool, chat_format: ChatFormat = DEFAULT_FORMAT,
                    markup_token_ids: Mapping[str, int] | None = None) -> Constraint:
    """The grammar of a forced call: in the model family's markup where its chat format has one, else
    the chosen function's arguments, or an array of calls."""
    if chat_format.forced_in_markup:
        functions = [(t.function.name, t.function.arguments_schema()) for t in tools
                     if chosen is None or t.function.name == chosen]
        ids = markup_token_ids or {}
        return Constraint("lark", chat_format.forced_grammar(
            functions, parallel, lambda text: f"<[{ids[text]}]>" if text in ids else json.dumps(text)))
    if chosen is not None:
        function = next(t.function for t in tools if t.function.name == chosen)
        return Constraint("json_schema", json.dumps(function.arguments_schema()))
    branches = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                                  "arguments": t.function.arguments_schema()},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    schema: dict[str, Any] = {"type": "array", "items": {"anyOf": branches}, "minItems": 1}
    if not parallel:
        schema["maxItems"] = 1
    return Constraint("json_schema", json.dumps(schema))
