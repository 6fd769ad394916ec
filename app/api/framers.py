"""Building a request's Framer from its body and what the engine knows of the model."""

from __future__ import annotations

from app.api.framing import ChatFramer, Framer
from app.api.logprob_format import LogprobFormatter
from app.api.schemas import ChatCompletionRequest, CompletionRequest
from app.api.tool_schema import NamedToolChoice
from app.api.engine_port import ServingEngine


async def _logprob_formatter(engine: ServingEngine) -> LogprobFormatter:
    await engine.token_bytes_ready()  # built just after start-up; waited for here, not on each token
    return LogprobFormatter(engine.token_bytes)


async def completion_framer(body: CompletionRequest, id_: str, model: str, engine: ServingEngine,
                            echo: str | None, prompt_ids: list[int]) -> Framer:
    formatter = None if body.logprobs is None else await _logprob_formatter(engine)
    return Framer(id_, model, include_usage=body.include_usage, n=body.n, formatter=formatter, echo_text=echo,
                  prompt_ids=prompt_ids)


async def chat_framer(body: ChatCompletionRequest, id_: str, model: str, engine: ServingEngine,
                      reasoning_open: bool, split_reasoning: bool = True) -> ChatFramer:
    assert engine.info is not None
    formatter = await _logprob_formatter(engine) if body.logprobs else None
    if isinstance(body.tool_choice, NamedToolChoice):  # validation put it among the tools
        names: tuple[str, ...] = (body.tool_choice.function.name,)
    else:
        names = tuple(tool.function.name for tool in body.tools or [])
    # A grammar shapes the whole output (JSON, a call): no reasoning block can be in it.
    markers = None if body.is_constrained or not split_reasoning else engine.info.reasoning_markers
    return ChatFramer(id_, model, include_usage=body.include_usage, n=body.n, formatter=formatter,
                      reasoning_markers=markers, reasoning_open=reasoning_open,
                      tool_mode=body.tool_mode, tool_names=names, parallel_tool_calls=body.parallel_tool_calls,
                      chat_format=engine.info.chat_format)
