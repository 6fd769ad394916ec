"""Writing tools, earlier calls and tool results into a conversation as text, for templates that drop them."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from app.chat_formats.json_calls import as_mapping


def written_out(messages: Sequence[Mapping], tools: Sequence[Mapping] | None, instructions: Callable[[], str],
                call_text: Callable[[str, object], str], result_text: Callable[[str], str], *,
                system_role: bool = True, alternate: bool = False) -> list[dict]:
    """The conversation with calls and results as text and the tool instructions up front.

    `system_role` False: instructions and any system text open the first user turn (Gemma 2 has no system
    role); `alternate`: consecutive turns of one role are joined (templates that insist on alternation)."""
    rewritten = [_rewrite(m, call_text, result_text) for m in messages]
    if tools:
        rewritten = _with_instructions(rewritten, instructions(), system_role)
    elif not system_role and rewritten and rewritten[0]["role"] == "system":
        rewritten = _with_instructions(rewritten[1:], rewritten[0]["content"], False)
    if alternate:
        rewritten = _joined(rewritten)
    return rewritten


def _rewrite(message: Mapping, call_text, result_text) -> dict:
    if message.get("role") == "tool":
        return {"role": "user", "content": result_text(message.get("content", ""))}
    if message.get("tool_calls"):
        text = message.get("content") or ""
        calls = [call.get("function", {}) for call in message["tool_calls"]]
        blocks = "\n".join(call_text(f.get("name"), as_mapping(f.get("arguments", {}))) for f in calls)
        return {"role": "assistant", "content": f"{text}\n{blocks}" if text else blocks}
    return {key: value for key, value in message.items() if key in ("role", "content")}


def _with_instructions(messages: list[dict], instructions: str, system_role: bool) -> list[dict]:
    first = messages[0] if messages else None
    if system_role:
        if first is not None and first["role"] == "system":
            return [{"role": "system", "content": f"{first['content']}\n\n{instructions}"}, *messages[1:]]
        return [{"role": "system", "content": instructions}, *messages]
    if first is not None and first["role"] == "system":
        instructions, messages = f"{first['content']}\n\n{instructions}", messages[1:]
    if messages and messages[0]["role"] == "user":
        return [{"role": "user", "content": f"{instructions}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "user", "content": instructions}, *messages]


def _joined(messages: list[dict]) -> list[dict]:
    joined: list[dict] = []
    for message in messages:
        if joined and joined[-1]["role"] == message["role"]:
            joined[-1] = {**joined[-1], "content": f"{joined[-1]['content']}\n\n{message['content']}"}
        else:
            joined.append(dict(message))
    return joined
