"""Anthropic Messages API wire types. The only place Anthropic request field names live.

A request translates itself into the chat request `/v1/chat/completions` serves (`to_chat()`), so both
APIs share one path through templates, tools, grammars and the engine: `system` becomes a system
message, `tool_result` blocks tool messages, `tool_use` blocks the assistant's tool_calls, `tools`
function tools and `tool_choice` its OpenAI counterpart. Earlier thinking blocks are dropped from the
prompt; images and documents are refused by name.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from app.api.schemas import (MAX_STOP_STRINGS, MAX_TOOLS, ChatCompletionRequest, KeepAlive, MaxTokens, StopString,
                             Text, TopP, refuse, with_example)
from app.api.tool_schema import STRICT, FunctionName

# Anthropic's temperature range is 0-1 (OpenAI's is 0-2); our sampler reads both the same way.
Temperature = Annotated[float, Field(ge=0.0, le=1.0, description="0 = greedy; 1 = the model's distribution")]
TopK = Annotated[int, Field(ge=1, description="keep the k most likely tokens")]
# Anthropic's smallest thinking budget.
MIN_THINKING_BUDGET = 1024


class TextBlock(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: Text


class ToolUseBlock(BaseModel):
    """A call the assistant made earlier in the conversation."""

    model_config = STRICT

    type: Literal["tool_use"]
    id: Text
    name: FunctionName
    input: dict[str, Any]

    def for_chat(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": json.dumps(self.input, ensure_ascii=False)}}


class ToolResultBlock(BaseModel):
    """A tool's answer to one of the assistant's calls. `is_error` is accepted; the content says what failed."""

    model_config = STRICT

    type: Literal["tool_result"]
    tool_use_id: Annotated[Text, Field(min_length=1)]
    content: Text | list[TextBlock] = ""
    is_error: bool = False

    def for_chat(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(block.text for block in self.content)
        return {"role": "tool", "tool_call_id": self.tool_use_id, "content": text}


class ThinkingBlock(BaseModel):
    """Earlier thinking sent back by a client (as Anthropic asks with tools): dropped from the prompt."""

    model_config = STRICT

    type: Literal["thinking", "redacted_thinking"]


class MediaBlock(BaseModel):
    """Images and documents: this server reads text only."""

    model_config = STRICT

    type: Literal["image", "document"]

    @model_validator(mode="after")
    def _refused(self) -> MediaBlock:
        raise ValueError(f"{self.type} content is not supported by this server (text only)")


ContentBlock = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | MediaBlock,
                         Field(discriminator="type")]


class Message(BaseModel):
    model_config = STRICT

    role: Literal["user", "assistant"]
    content: Text | Annotated[list[ContentBlock], Field(min_length=1)]

    @model_validator(mode="after")
    def _blocks_fit_the_role(self) -> Message:
        kinds = {block.type for block in self.content} if isinstance(self.content, list) else set()
        if self.role == "user" and kinds & {"tool_use", "thinking", "redacted_thinking"}:
            raise ValueError("tool_use and thinking blocks belong to assistant messages")
        if self.role == "assistant" and "tool_result" in kinds:
            raise ValueError("tool_result blocks belong to user messages")
        return self

    def for_chat(self) -> list[dict]:
        """Chat messages in order: a user turn's tool results become tool messages around its text."""
        if isinstance(self.content, str):
            return [{"role": self.role, "content": self.content}]
        if self.role == "assistant":
            return [self._assistant_message()]
        messages: list[dict] = []
        for block in self.content:
            if isinstance(block, ToolResultBlock):
                messages.append(block.for_chat())
            elif messages and messages[-1]["role"] == "user":
                messages[-1]["content"] += block.text
            else:
                messages.append({"role": "user", "content": block.text})
        return messages

    def _assistant_message(self) -> dict:
        text = "".join(block.text for block in self.content if isinstance(block, TextBlock))
        calls = [block.for_chat() for block in self.content if isinstance(block, ToolUseBlock)]
        return {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {})}


class AnthropicTool(BaseModel):
    """A client tool; Anthropic's server tools (web search, code execution...) have another `type`."""

    model_config = STRICT

    name: FunctionName
    description: Text | None = None
    input_schema: dict[str, Any]
    type: Literal["custom"] | None = None

    def for_chat(self) -> dict:
        function = {"name": self.name, "parameters": self.input_schema,
                    **({"description": self.description} if self.description is not None else {})}
        return {"type": "function", "function": function}


class ToolChoice(BaseModel):
    model_config = STRICT

    type: Literal["auto", "any", "tool", "none"]
    name: FunctionName | None = None
    disable_parallel_tool_use: bool = False

    @model_validator(mode="after")
    def _named_when_tool(self) -> ToolChoice:
        if (self.type == "tool") != (self.name is not None):
            raise ValueError("name is required with type tool, and only with it")
        return self

    def for_chat(self) -> str | dict:
        if self.type == "tool":
            return {"type": "function", "function": {"name": self.name}}
        return {"auto": "auto", "any": "required", "none": "none"}[self.type]


class ThinkingEnabled(BaseModel):
    """Accepted: a reasoning model's thinking comes back as thinking blocks; the budget is not enforced."""

    model_config = STRICT

    type: Literal["enabled"]
    budget_tokens: Annotated[int, Field(ge=MIN_THINKING_BUDGET)]


class ThinkingDisabled(BaseModel):
    model_config = STRICT

    type: Literal["disabled"]


class Metadata(BaseModel):
    model_config = STRICT

    user_id: Annotated[Text, Field(max_length=256)] | None = None


class _MessagesBody(BaseModel):
    """What /v1/messages and /v1/messages/count_tokens share: the conversation and the tools."""

    model_config = STRICT

    model: Text
    messages: Annotated[list[Message], Field(min_length=1)]
    system: Text | Annotated[list[TextBlock], Field(min_length=1)] | None = None
    tools: Annotated[list[AnthropicTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Annotated[ThinkingEnabled | ThinkingDisabled, Field(discriminator="type")] | None = None
    keep_alive: KeepAlive | None = None  # extension (Ollama's), as on the other endpoints
    # Fields that change the output in a way this server cannot: a 400 names each.
    mcp_servers: Any = None
    container: Any = None
    context_management: Any = None
    output_format: Any = None
    output_config: Any = None

    refuse_servers = field_validator("mcp_servers", "container")(refuse("server-side tools (MCP servers, containers)"))
    refuse_context = field_validator("context_management")(refuse("context management"))
    refuse_output = field_validator("output_format", "output_config")(refuse("structured output settings"))

    @model_validator(mode="after")
    def _tool_choice_fits(self) -> _MessagesBody:
        names = {tool.name for tool in self.tools or []}
        choice = self.tool_choice
        if choice is not None and choice.type == "tool" and choice.name not in names:
            raise ValueError(f"tool_choice names {choice.name!r}, which is not in tools")
        if choice is not None and choice.type == "any" and not names:
            raise ValueError("tool_choice any needs tools")
        return self

    def engine_params(self) -> dict[str, str]:
        """Engine parameter name -> the field this request sent it as (errors name the latter)."""
        return {"prompt": "messages", "constraint": "tools"}

    def chat_fields(self) -> dict[str, Any]:
        """The fields of the equivalent chat request."""
        messages = [message for turn in self.messages for message in turn.for_chat()]
        if self.system is not None:
            system = self.system if isinstance(self.system, str) else "".join(b.text for b in self.system)
            messages.insert(0, {"role": "system", "content": system})
        fields: dict[str, Any] = {"model": self.model, "messages": messages, "keep_alive": self.keep_alive}
        if self.tools:
            fields["tools"] = [tool.for_chat() for tool in self.tools]
        if self.tool_choice is not None:
            fields["tool_choice"] = self.tool_choice.for_chat()
            fields["parallel_tool_calls"] = not self.tool_choice.disable_parallel_tool_use
        return fields

    def to_chat(self) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate(self.chat_fields())


class MessagesRequest(_MessagesBody):
    model_config = with_example({"max_tokens": 8, "messages": [{"role": "user", "content": "Say hello."}]})

    max_tokens: MaxTokens
    stop_sequences: Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK | None = None
    stream: bool = False
    metadata: Metadata | None = None
    # Accepted and ignored: they do not change the tokens (this server's prefix cache needs no markers).
    service_tier: Any = None
    cache_control: Any = None
    inference_geo: Any = None

    @model_validator(mode="after")
    def _budget_below_max_tokens(self) -> MessagesRequest:
        if isinstance(self.thinking, ThinkingEnabled) and self.thinking.budget_tokens >= self.max_tokens:
            raise ValueError("thinking.budget_tokens must be less than max_tokens")
        return self

    def chat_fields(self) -> dict[str, Any]:
        return {**super().chat_fields(), "max_tokens": self.max_tokens, "stop": self.stop_sequences,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k or -1,
                "user": self.metadata.user_id if self.metadata else None}


class CountTokensRequest(_MessagesBody):
    model_config = with_example({"messages": [{"role": "user", "content": "Say hello."}]})
