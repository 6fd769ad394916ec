"""OpenAI wire types. The only place OpenAI field names live; every bound is a Field constraint.

Requests convert themselves into engine SamplingParams; responses and chunks are built in framing.py.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from dataclasses import replace

from pydantic import (AfterValidator, BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, ValidationInfo,
                      field_validator, model_validator)

from app.durations import duration_seconds
from app.api.responses_items import ItemId, chat_messages, message_input_item, new_item_id, reasoning_item
from app.api.responses_tools import (FunctionCallItem, FunctionCallOutputItem, FunctionTool, FunctionToolChoice,
                                     refuse_hosted_tools)
from app.api.tool_schema import STRICT, NamedToolChoice, Text, Tool, ToolCall, tool_constraint
from app.chat_formats.registry import DEFAULT as DEFAULT_FORMAT
from app.engine.errors import InvalidRequest
from app.engine.types import Constraint, ModelInfo, SamplingParams

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS = 300
MAX_REQUEST_TIMEOUT_S = 86_400.0
MAX_CHOICES = 128  # the engine refuses more than its decode batch holds
MAX_TOP_LOGPROBS = 20  # OpenAI's bound
MAX_TOOLS = 128


def _top_k(value: int) -> int:
    if value == 0:
        raise ValueError("must be -1 (disabled) or at least 1")
    return value


Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="0 = greedy; higher = more random")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="nucleus sampling mass")]
TopK = Annotated[int, Field(ge=-1, description="-1 disables; otherwise keep the k most likely"), AfterValidator(_top_k)]
MinP = Annotated[float, Field(ge=0.0, le=1.0, description="drop tokens below min_p * top probability")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, description="OpenAI additive penalty")]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0, description="HF multiplicative penalty; 1 = off")]
MaxTokens = Annotated[int, Field(ge=1, description="tokens to generate; default: the rest of the context")]
MinTokens = Annotated[int, Field(ge=0, description="extension (vLLM): tokens before EOS or a stop string may "
                                 "end the output")]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64, description="same seed, same text")]
StopString = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None
Timeout = Annotated[float, Field(gt=0, le=MAX_REQUEST_TIMEOUT_S,
                                 description="seconds until generation ends with finish_reason timeout")]
Choices = Annotated[int, Field(ge=1, le=MAX_CHOICES, description="choices to generate from one prefill")]
TopLogprobs = Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)]
LogitBias = Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=MAX_LOGIT_BIAS)]

KeepAlive = Annotated[float | Annotated[str, Field(max_length=64)], AfterValidator(duration_seconds),
                      Field(description="extension (Ollama): how long the model stays loaded after this request "
                            "(seconds or a duration like \"5m\"; 0: unload now; negative: keep loaded)")]


EXAMPLE_MODEL = "SmolLM2-135M-Instruct"  # the default model's served name, for the OpenAPI examples


def with_example(example: dict) -> ConfigDict:
    """STRICT plus one request body the default server answers with a 200 (the OpenAPI `examples`)."""
    return ConfigDict(**STRICT, json_schema_extra={"examples": [{"model": EXAMPLE_MODEL, **example}]})


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Fields shared by both endpoints."""

    model_config = STRICT

    model: Text
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = -1
    min_p: MinP = 0.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    repetition_penalty: RepetitionPenalty = 1.0
    logit_bias: LogitBias | None = None
    seed: Seed | None = None
    stop: Stop = None
    n: Choices = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    timeout: Timeout | None = None  # extension; the server's own deadline still applies when shorter
    # Extensions benchmark tools send (vLLM, llama.cpp): EOS as an ordinary token; a floor on the length.
    ignore_eos: bool = False
    min_tokens: MinTokens = 0
    keep_alive: KeepAlive | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.removeprefix("-").isdecimal():
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    def engine_params(self) -> dict[str, str]:
        """Engine parameter name -> the field this request sent it as (errors name the latter)."""
        return {}

    def to_sampling_params(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            min_p=self.min_p,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=tuple((int(k), float(v)) for k, v in (self.logit_bias or {}).items()),
            seed=self.seed,
            max_tokens=self._max_tokens(),
            stop=stop,
            timeout_s=self.timeout,
            n=self.n,
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
        )


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
PromptText = Annotated[Text, Field(min_length=1)]


class CompletionRequest(_GenerationRequest):
    model_config = with_example({"prompt": "Say hello.", "max_tokens": 8})

    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=1)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1, max_length=1)]
    echo: bool = False
    suffix: str | None = None
    logprobs: TopLogprobs | None = None
    best_of: Choices | None = None
    response_format: ResponseFormat | None = None  # not in OpenAI's legacy API; vLLM's extension, honoured

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        # best_of > n ranks hidden candidates by logprob; this server returns every choice it makes.
        n = info.data.get("n", 1)
        if value is not None and value != n:
            raise ValueError(f"must equal n ({n}) here: choices are not ranked and dropped")
        return value

    def engine_params(self) -> dict[str, str]:
        return {"prompt_logprobs": "logprobs", "constraint": "response_format"}

    def to_sampling_params(self) -> SamplingParams:
        params = super().to_sampling_params()
        prompt_logprobs = self.logprobs if self.echo else None
        constraint = self.response_format.constraint() if self.response_format else None
        return replace(params, logprobs=self.logprobs, prompt_logprobs=prompt_logprobs, constraint=constraint)

    def prompt_text(self) -> str | None:
        if isinstance(self.prompt, str):
            return self.prompt
        if isinstance(self.prompt[0], str):
            return self.prompt[0]
        return None

    def prompt_ids(self) -> list[int] | None:
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], int):
            return list(self.prompt)  # type: ignore[arg-type]
        if isinstance(self.prompt, list) and isinstance(self.prompt[0], list):
            return list(self.prompt[0])
        return None


class TextPart(BaseModel):
    model_config = STRICT

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = STRICT

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | Annotated[list[TextPart], Field(min_length=1)] | None = None
    name: Text | None = None
    tool_calls: Annotated[list[ToolCall], Field(min_length=1)] | None = None  # assistant only
    tool_call_id: Text | None = None  # tool only: the call this message answers
    reasoning_content: Text | None = None  # assistant only: a reasoning model's earlier thinking
    reasoning: Text | None = None  # the same, as some front-ends name it

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only assistant messages carry tool_calls")
        if self.content is None and not self.tool_calls:
            raise ValueError(f"a {self.role} message needs content")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs the tool_call_id it answers")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content or [])

    def for_template(self) -> dict:
        """The message as Hugging Face chat templates read it (tool calls' arguments as objects)."""
        message: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role,
                                   "content": self.text()}
        if self.tool_calls:
            message["tool_calls"] = [call.for_template() for call in self.tool_calls]
        if self.tool_call_id:
            message["tool_call_id"] = self.tool_call_id
        if self.name and self.role == "tool":
            message["name"] = self.name
        thinking = self.reasoning_content or self.reasoning
        if thinking:
            message["reasoning_content"] = thinking
        return message


def output_constraint(format_type: str, schema: dict[str, Any] | None) -> Constraint | None:
    """The grammar an output format asks for (chat's response_format, Responses' text.format); None for text."""
    if format_type == "json_object":
        return Constraint("json")
    if format_type == "json_schema":
        return Constraint("json_schema", json.dumps(schema or {}))
    return None


class JsonSchemaFormat(BaseModel):
    model_config = STRICT

    name: Annotated[Text, Field(min_length=1, max_length=64)]
    description: Text | None = None
    schema_: Annotated[dict[str, Any], Field(alias="schema")] = Field(default_factory=dict)
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = STRICT

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        return self

    def constraint(self) -> Constraint | None:
        return output_constraint(self.type, self.json_schema.schema_ if self.json_schema else None)


def refuse(what: str):
    """A validator for an OpenAI field that would change the output in a way this server cannot."""
    def check(cls, value):
        if value is not None:
            raise ValueError(f"{what} is not supported by this server")
        return value
    return classmethod(check)


class ChatCompletionRequest(_GenerationRequest):
    model_config = with_example({"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # OpenAI fields that change what is generated and that this server does not do: a 400 names each.
    audio: Any = None
    modalities: list[Literal["text"]] | None = None
    functions: Any = None
    function_call: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    # Accepted and ignored: they do not change the tokens (prediction only speeds up OpenAI's decoding).
    metadata: Any = None
    service_tier: Any = None
    store: Any = None
    safety_identifier: Any = None
    prompt_cache_key: Any = None
    prediction: Any = None

    refuse_audio = field_validator("audio")(refuse("audio output"))
    refuse_functions = field_validator("functions", "function_call")(
        refuse("the deprecated functions/function_call (use tools and tool_choice)"))
    refuse_search = field_validator("web_search_options")(refuse("web search"))
    refuse_effort = field_validator("reasoning_effort", "verbosity")(
        refuse("steering reasoning_effort/verbosity"))

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        names = {tool.function.name for tool in self.tools or []}
        if isinstance(self.tool_choice, NamedToolChoice) and self.tool_choice.function.name not in names:
            raise ValueError(f"tool_choice names {self.tool_choice.function.name!r}, which is not in tools")
        if self.tool_choice == "required" and not names:
            raise ValueError("tool_choice required needs tools")
        if self.forces_tool_call and self.response_format is not None and self.response_format.type != "text":
            raise ValueError("response_format cannot be combined with a forced tool_choice")
        return self

    @property
    def tool_mode(self) -> str | None:
        """None (no tools offered), "auto", "required" or "named" (a forced function)."""
        if not self.tools or self.tool_choice == "none":
            return None
        if isinstance(self.tool_choice, NamedToolChoice):
            return "named"
        return self.tool_choice or "auto"

    @property
    def forces_tool_call(self) -> bool:
        return self.tool_mode in ("named", "required")

    @property
    def is_constrained(self) -> bool:
        """A grammar shapes the whole output (a forced call, or JSON)."""
        return self.forces_tool_call or (self.response_format is not None and self.response_format.type != "text")

    def _max_tokens(self) -> int | None:
        # OpenAI's newer name wins when both are given.
        return self.max_completion_tokens or self.max_tokens

    def engine_params(self) -> dict[str, str]:
        constraint = "tools" if self.forces_tool_call else "response_format"
        max_tokens = "max_completion_tokens" if self.max_completion_tokens else "max_tokens"
        return {"prompt": "messages", "max_tokens": max_tokens, "logprobs": "top_logprobs",
                "constraint": constraint}

    def to_sampling_params(self, model: ModelInfo | None = None) -> SamplingParams:
        """`model`: the served model, whose chat format shapes a forced call and may need special tokens kept."""
        params = super().to_sampling_params()
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        chat_format = model.chat_format if model is not None else DEFAULT_FORMAT
        if chat_format.special_markup:  # its calls and channels are special tokens: the text must keep them
            params = replace(params, skip_special_tokens=False)
        if self.forces_tool_call:
            chosen = self.tool_choice.function.name if isinstance(self.tool_choice, NamedToolChoice) else None
            constraint = tool_constraint(self.tools or [], chosen, self.parallel_tool_calls, chat_format,
                                         dict(model.markup_token_ids) if model is not None else None)
            # The grammar ends the call; a stop string could only cut its arguments short.
            params = replace(params, stop=())
        else:
            constraint = self.response_format.constraint() if self.response_format else None
        return replace(params, logprobs=logprobs, constraint=constraint)

    def template_messages(self) -> list[dict]:
        return [m.for_template() for m in self.messages]

    def template_tools(self) -> list[dict] | None:
        """The offered tools for the chat template (none when tool_choice is none)."""
        return None if self.tool_mode is None else [tool.model_dump(exclude_none=True) for tool in self.tools or []]


# ---- tokenizer endpoints (vLLM's shape) ---------------------------------------------------------


class TokenizeRequest(BaseModel):
    """`prompt` (text, encoded as /v1/completions does) or `messages` (the chat template applied, as
    /v1/chat/completions does); exactly one."""

    model_config = with_example({"prompt": "Say hello."})

    model: Text
    prompt: PromptText | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # default: what the generation endpoint does (text yes, chat no)

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        return self

    def engine_params(self) -> dict[str, str]:
        return {} if self.messages is None else {"prompt": "messages"}

    def template_messages(self) -> list[dict]:
        return [m.for_template() for m in self.messages or []]


class DetokenizeRequest(BaseModel):
    model_config = with_example({"tokens": [1, 2, 3]})

    model: Text
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1 << 20)]


# ---- the Responses API --------------------------------------------------------------


class InputText(BaseModel):
    model_config = STRICT

    type: Literal["input_text", "output_text"]
    text: Text


class InputMessage(BaseModel):
    """One item of `input`: a message whose content is a string or text parts."""

    model_config = STRICT

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | Annotated[list[InputText], Field(min_length=1)]
    id: ItemId | None = None  # an earlier output message sent back keeps its id

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)

    def as_item(self) -> dict:
        return message_input_item(self.role, self.text(), self.id)


class ReasoningText(BaseModel):
    model_config = STRICT

    type: Literal["reasoning_text", "summary_text"]
    text: Text


class ReasoningItem(BaseModel):
    """A reasoning model's earlier thinking, sent back: carried to the template with the assistant turn
    after it (most templates drop an earlier turn's thinking)."""

    model_config = STRICT

    type: Literal["reasoning"]
    id: ItemId | None = None
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None

    def as_item(self) -> dict:
        text = "".join(part.text for part in self.content or self.summary)
        return reasoning_item(self.id or new_item_id("rs_"), text, "completed")


class TextFormat(BaseModel):
    """The Responses API's `text.format`: plain text, any JSON object, or JSON matching a schema."""

    model_config = STRICT

    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[Text, Field(max_length=64)] | None = None
    description: Text | None = None
    schema_: Annotated[dict[str, Any] | None, Field(alias="schema")] = None
    strict: bool | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> TextFormat:
        if self.type == "json_schema" and self.schema_ is None:
            raise ValueError("type json_schema needs a schema")
        return self

    def constraint(self) -> Constraint | None:
        return output_constraint(self.type, self.schema_)


class ResponseText(BaseModel):
    model_config = STRICT

    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one that asks nothing of the model


def _item_type(item: Any) -> str | None:
    # A message item may leave its type out; the type picks the shape, so errors name the right one.
    return item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)


InputItem = Annotated[Annotated[InputMessage, Tag("message")] | Annotated[FunctionCallItem, Tag("function_call")]
                      | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
                      | Annotated[ReasoningItem, Tag("reasoning")], Discriminator(_item_type)]


class ResponsesRequest(BaseModel):
    """Translated to the chat request /v1/chat/completions serves (`to_chat()`): its template, tools,
    parsers and grammars; responses_framing.py turns the chat framer's output into Response items.
    With `store` (the default) the Response and its input items are kept (app/api/response_records.py);
    `previous_response_id` puts the stored chain before `input`; `background` runs it with no client."""

    model_config = with_example({"input": "Say hello.", "max_output_tokens": 16})

    model: Text
    input: PromptText | Annotated[list[InputItem], Field(min_length=1)]
    instructions: Text | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stream: bool = False
    user: Text | None = None
    metadata: Annotated[dict[str, Annotated[Text, Field(max_length=512)]], Field(max_length=16)] | None = None
    store: bool = True  # keep the Response and its input items, for GET, input_items and previous_response_id
    previous_response_id: Annotated[Text, Field(max_length=256)] | None = None
    background: bool = False  # answer at once (queued); the generation runs with no client connected
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool = True
    text: ResponseText | None = None
    truncation: Literal["disabled"] | None = None  # "auto" would drop input; a too-long input is a 400
    # Fields that would change the output and that this server does not do: a 400 names each.
    reasoning: Any = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: Any = None
    include: Any = None
    # Accepted and ignored: they do not change the tokens.
    service_tier: Any = None
    safety_identifier: Any = None
    prompt_cache_key: Any = None
    max_tool_calls: Any = None
    keep_alive: KeepAlive | None = None  # extension, as on the other endpoints

    refuse_reasoning = field_validator("reasoning")(refuse("steering reasoning"))
    refuse_state = field_validator("conversation", "prompt")(
        refuse("server-side conversations and stored prompts (send the whole input)"))
    refuse_logprobs = field_validator("top_logprobs")(refuse("logprobs on /v1/responses"))

    @field_validator("include")
    @classmethod
    def _nothing_to_include(cls, value: Any) -> Any:
        if value:
            raise ValueError("extra output (include) is not supported by this server")
        return value

    @field_validator("tools", mode="before")
    @classmethod
    def _function_tools_only(cls, tools: Any) -> Any:
        return refuse_hosted_tools(tools)

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, choice: Any, info: ValidationInfo) -> Any:
        names = {tool.name for tool in info.data.get("tools") or []}
        if isinstance(choice, FunctionToolChoice) and choice.name not in names:
            raise ValueError(f"names {choice.name!r}, which is not in tools")
        if choice == "required" and not names:
            raise ValueError("required needs tools")
        return choice

    @model_validator(mode="after")
    def _unsupported(self) -> ResponsesRequest:
        if self.background and not self.store:
            raise ValueError("background responses are stored: they need store: true")
        if self.forces_tool_call and self._format().type != "text":
            raise ValueError("text.format cannot be combined with a forced tool_choice")
        return self

    @property
    def forces_tool_call(self) -> bool:
        return bool(self.tools) and (self.tool_choice == "required" or isinstance(self.tool_choice, FunctionToolChoice))

    def _format(self) -> TextFormat:
        return self.text.format if self.text and self.text.format else TextFormat(type="text")

    def engine_params(self) -> dict[str, str]:
        constraint = "tools" if self.forces_tool_call else "text.format"
        return {"prompt": "input", "max_tokens": "max_output_tokens", "constraint": constraint}

    def input_items(self) -> list[dict]:
        """`input` as the items OpenAI lists and stores, each with an id (msg_, fc_, fco_, rs_)."""
        if isinstance(self.input, str):
            return [message_input_item("user", self.input)]
        return [item.as_item() for item in self.input]

    def to_chat(self, conversation: list[dict]) -> ChatCompletionRequest:
        """The chat request for `instructions` and the conversation's items (earlier turns, then input)."""
        fields: dict[str, Any] = {
            "model": self.model, "messages": chat_messages(self.instructions, conversation), "max_tokens": self.max_output_tokens,
            "temperature": self.temperature, "top_p": self.top_p, "user": self.user, "keep_alive": self.keep_alive,
            "parallel_tool_calls": self.parallel_tool_calls, "response_format": self._response_format()}
        if self.tools:
            fields["tools"] = [tool.for_chat() for tool in self.tools]
        if self.tool_choice is not None:
            choice = self.tool_choice
            fields["tool_choice"] = choice.for_chat() if isinstance(choice, FunctionToolChoice) else choice
        try:
            return ChatCompletionRequest.model_validate(fields)
        except ValidationError as exc:  # items valid alone that make no conversation (reasoning alone: no turn)
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            raise InvalidRequest(f"input makes no conversation the model can answer: {where}: {error['msg']}",
                                 param="input") from None

    def _response_format(self) -> dict:
        # Chat's response_format names the schema; Responses' text.format may leave the name out.
        text_format = self._format()
        if text_format.type != "json_schema":
            return {"type": text_format.type}
        return {"type": "json_schema", "json_schema": {"name": text_format.name or "output",
                                                        "schema": text_format.schema_, "strict": text_format.strict}}

    def echoed_fields(self) -> dict:
        """The request fields a Response object repeats."""
        choice = self.tool_choice or "auto"
        return {"instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "metadata": self.metadata or {},
                "user": self.user, "text": {"format": self._format().model_dump(by_alias=True, exclude_none=True)},
                "tools": [tool.model_dump() for tool in self.tools or []],
                "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
                "parallel_tool_calls": self.parallel_tool_calls, "store": self.store, "background": self.background,
                "previous_response_id": self.previous_response_id}


CompletionRequest.model_rebuild()  # its response_format type is defined further down


class ModelRequest(BaseModel):
    """POST /models/load and /models/unload (llama-server's router names)."""

    model_config = ConfigDict(**STRICT, json_schema_extra={"examples": [{"model": EXAMPLE_MODEL}]})

    model: Text
