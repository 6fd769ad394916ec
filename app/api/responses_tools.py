"""The Responses API's function tools on the wire, and their translation to chat's.

Responses flattens chat's tool shapes (`{"type": "function", "name", "parameters"}`, a named choice
`{"type": "function", "name"}`) and carries a conversation's calls and results as input items of
their own (`function_call`, `function_call_output`); here each becomes what /v1/chat/completions reads.
Hosted tools (web search, file search, code interpreter, MCP...) need OpenAI's servers: refused by name.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.api.responses_items import ItemId, function_call_item, function_call_output_item
from app.api.tool_schema import STRICT, FunctionName, Text

CallId = Annotated[Text, Field(min_length=1, max_length=256)]


class FunctionTool(BaseModel):
    model_config = STRICT

    type: Literal["function"]
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def for_chat(self) -> dict:
        function = {"name": self.name, "description": self.description, "parameters": self.parameters,
                    "strict": self.strict}
        return {"type": "function", "function": {k: v for k, v in function.items() if v is not None}}


class FunctionToolChoice(BaseModel):
    model_config = STRICT

    type: Literal["function"]
    name: FunctionName

    def for_chat(self) -> dict:
        return {"type": "function", "function": {"name": self.name}}


class FunctionCallItem(BaseModel):
    """A call the model made earlier, as the client sends its previous output back."""

    model_config = STRICT

    type: Literal["function_call"]
    call_id: CallId
    name: FunctionName
    arguments: str  # JSON text
    id: ItemId | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    def as_item(self) -> dict:
        return function_call_item(self.call_id, self.name, self.arguments, self.status or "completed", self.id)


class FunctionCallOutputItem(BaseModel):
    """A call's result, as the client ran it (text; usually JSON)."""

    model_config = STRICT

    type: Literal["function_call_output"]
    call_id: CallId
    output: Text
    id: ItemId | None = None

    def as_item(self) -> dict:
        return function_call_output_item(self.call_id, self.output, self.id)


def refuse_hosted_tools(tools: Any) -> Any:
    """A `tools` validator (before parsing): name every tool type other than function."""
    if isinstance(tools, list):
        others = sorted({str(tool.get("type")) for tool in tools if isinstance(tool, dict)} - {"function"})
        if others:
            raise ValueError(f"tool types {', '.join(others)} are not supported by this server (only function tools)")
    return tools
