"""Stored responses: a Response as last returned (its latest status), with the input items it was made
from and the conversation before them (a `previous_response_id` chain's earlier inputs and outputs), kept
in the store (app/api/store/) under the response's id for the API key that made it. Nothing is kept for
`store: false`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from app.api.errors import PreviousResponseNotFound, ResponseStateConflict
from app.api.store import Store


@dataclass
class StoredResponse:
    response: dict  # the Response object, in its latest state
    input_items: list[dict]  # this request's input, normalized (each with its id)
    earlier: list[dict] = field(default_factory=list)  # the chain's items before this input
    streamed: bool = False  # its events are in the store: GET ?stream=true can replay them

    @property
    def id(self) -> str:
        return self.response["id"]

    @property
    def background(self) -> bool:
        return bool(self.response.get("background"))

    def conversation(self) -> list[dict]:
        """What a response chained after this one follows on: every item before, then this one's output."""
        return [*self.earlier, *self.input_items, *self.response["output"]]


class ResponseRecords:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def save(self, record: StoredResponse, owner: str) -> None:
        await self.store.put_record(record.id, owner, json.dumps(asdict(record), ensure_ascii=False,
                                                                 separators=(",", ":")))

    async def update(self, record: StoredResponse, owner: str) -> bool:
        """Save a new state of a response still stored; False (and nothing written) once it was deleted."""
        if await self.store.get_record(record.id, owner) is None:
            return False
        await self.save(record, owner)
        return True

    async def load(self, response_id: str, owner: str) -> StoredResponse | None:
        text = await self.store.get_record(response_id, owner)
        return None if text is None else StoredResponse(**json.loads(text))

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self.store.delete_record(response_id, owner)

    async def conversation_before(self, previous_response_id: str | None, owner: str) -> list[dict]:
        """The items a response chained after `previous_response_id` follows on ([] without one); its
        instructions are not carried over (OpenAI's rule: each request gives its own)."""
        if previous_response_id is None:
            return []
        previous = await self.load(previous_response_id, owner)
        if previous is None:
            raise PreviousResponseNotFound(previous_response_id)
        if previous.response["status"] in ("queued", "in_progress"):
            raise ResponseStateConflict(f"previous response {previous_response_id!r} is still "
                                        f"{previous.response['status']}: chain after it once it ended")
        return previous.conversation()
