"""OpenAI wire types. The only place OpenAI field names live; every bound is a Field constraint.

Requests convert themselves into engine SamplingParams; responses and chunks are built in framing.py.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from app.engine.types import SamplingParams

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
MAX_LOGIT_BIAS = 300
MAX_REQUEST_TIMEOUT_S = 86_400.0


def _valid_unicode(text: str) -> str:
    # JSON may escape lone surrogates ("\ud800"); they are not text and would fail in the tokenizer.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains an unpaired surrogate at position {exc.start}; not valid Unicode") from exc
    return text


def _top_k(value: int) -> int:
    if value == 0:
        raise ValueError("must be -1 (disabled) or at least 1")
    return value


Text = Annotated[str, AfterValidator(_valid_unicode)]

Temperature = Annotated[float, Field(ge=0.0, le=2.0, description="0 = greedy; higher = more random")]
TopP = Annotated[float, Field(gt=0.0, le=1.0, description="nucleus sampling mass")]
TopK = Annotated[int, Field(ge=-1, description="-1 disables; otherwise keep the k most likely"), AfterValidator(_top_k)]
MinP = Annotated[float, Field(ge=0.0, le=1.0, description="drop tokens below min_p * top probability")]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0, description="OpenAI additive penalty")]
RepetitionPenalty = Annotated[float, Field(gt=0.0, le=10.0, description="HF multiplicative penalty; 1 = off")]
MaxTokens = Annotated[int, Field(ge=1, description="tokens to generate; default: the rest of the context")]
Seed = Annotated[int, Field(ge=-(2**63), lt=2**64, description="same seed, same text")]
StopString = Annotated[Text, Field(min_length=1, max_length=MAX_STOP_LENGTH)]
Stop = StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None
Timeout = Annotated[float, Field(gt=0, le=MAX_REQUEST_TIMEOUT_S,
                                 description="seconds until generation ends with finish_reason timeout")]
LogitBias = Annotated[dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]], Field(max_length=MAX_LOGIT_BIAS)]


# Strict: OpenAI refuses "2" for an integer or "yes" for a boolean; so do we (ints still pass as floats).
STRICT = ConfigDict(strict=True, extra="ignore")


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
    n: Annotated[int, Field(ge=1, le=1, description="choices per request; only 1 is served")] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Text | None = None
    timeout: Timeout | None = None  # extension; the server's own deadline still applies when shorter

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
        )


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]
PromptText = Annotated[Text, Field(min_length=1)]


class CompletionRequest(_GenerationRequest):
    prompt: PromptText | Annotated[list[PromptText], Field(min_length=1, max_length=1)] | TokenIds | Annotated[
        list[TokenIds], Field(min_length=1, max_length=1)]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> CompletionRequest:
        if self.suffix:
            raise ValueError("suffix (fill-in-the-middle) is not supported by this server")
        if self.logprobs is not None:
            raise ValueError("logprobs are not supported by this server")
        return self

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

    @model_validator(mode="after")
    def _has_content(self) -> ChatMessage:
        if self.content is None:
            raise ValueError(f"a {self.role} message needs content")
        return self

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content or [])


class ChatCompletionRequest(_GenerationRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @model_validator(mode="after")
    def _unsupported(self) -> ChatCompletionRequest:
        if self.logprobs or self.top_logprobs:
            raise ValueError("logprobs are not supported by this server")
        return self

    def _max_tokens(self) -> int | None:
        # OpenAI's newer name wins when both are given.
        return self.max_completion_tokens or self.max_tokens

    def template_messages(self) -> list[dict[str, str]]:
        return template_messages(self.messages)


def template_messages(messages: list[ChatMessage] | list[InputMessage]) -> list[dict[str, str]]:
    # "developer" is OpenAI's newer name for "system"; model templates know only the latter.
    return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]


# ---- tokenizer endpoints (vLLM's shape) ---------------------------------------------------------


class TokenizeRequest(BaseModel):
    """`prompt` (text, encoded as /v1/completions does) or `messages` (the chat template applied, as
    /v1/chat/completions does); exactly one."""

    model_config = STRICT

    model: Text
    prompt: PromptText | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # default: what the generation endpoint does (text yes, chat no)

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("send exactly one of prompt or messages")
        return self

    def template_messages(self) -> list[dict[str, str]]:
        return template_messages(self.messages or [])


class DetokenizeRequest(BaseModel):
    model_config = STRICT

    model: Text
    tokens: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1 << 20)]


# ---- the Responses API (stateless) --------------------------------------------------------------


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

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ResponsesRequest(BaseModel):
    model_config = STRICT

    model: Text
    input: PromptText | Annotated[list[InputMessage], Field(min_length=1)]
    instructions: Text | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    stream: bool = False
    user: Text | None = None
    metadata: Annotated[dict[str, Annotated[Text, Field(max_length=512)]], Field(max_length=16)] | None = None
    store: bool = False  # accepted; nothing is stored: the server is stateless
    previous_response_id: Text | None = None
    tools: list[dict] | None = None
    text: dict | None = None  # only {"format": {"type": "text"}} is served

    @model_validator(mode="after")
    def _unsupported(self) -> ResponsesRequest:
        text_format = (self.text or {}).get("format") or {}
        if isinstance(text_format, dict) and text_format.get("type", "text") != "text":
            raise ValueError(f"text.format {text_format.get('type')!r} (structured output) is not supported on "
                             "/v1/responses by this server; only plain text")
        if self.previous_response_id:
            raise ValueError("previous_response_id is not supported: this server stores no responses; "
                             "send the whole conversation as input")
        if self.tools:
            raise ValueError("tools are not supported on /v1/responses by this server")
        return self

    def template_messages(self) -> list[dict[str, str]]:
        """instructions first (as a system message), then the input items, for the chat template."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions else []
        if isinstance(self.input, str):
            return messages + [{"role": "user", "content": self.input}]
        return messages + template_messages(self.input)

    def to_sampling_params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_output_tokens)

    def echoed_fields(self) -> dict:
        """The request fields a Response object repeats."""
        return {"instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "metadata": self.metadata or {},
                "user": self.user}
