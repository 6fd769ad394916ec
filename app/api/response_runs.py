"""ResponseRun: a response generating through a relay (app/api/stream_relay.py), as a streamed or a
background response does: one frame per Responses event, so the relay's positions are the events'
`sequence_number`s and a resume `starting_after=N` is the relay's `after=N`; and its stored record kept at
its latest status as it changes (in_progress, then how it ended, a cancel included), whoever reads the
stream or none.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from app.api.response_records import ResponseRecords, StoredResponse
from app.api.responses_framing import TERMINAL, ResponsesFramer, event_frame, stream_response_events
from app.api.stream_relay import StreamRelay
from app.engine.types import TokenEvent

log = logging.getLogger(__name__)


class ResponseRun:
    def __init__(self, framer: ResponsesFramer, events: AsyncIterator[TokenEvent], queued: bool,
                 record: StoredResponse | None, records: ResponseRecords, owner: str) -> None:
        self.framer, self.events, self.queued = framer, events, queued
        self.record, self.records, self.owner = record, records, owner
        self.relay: StreamRelay | None = None  # set as soon as the hub opened it: a cancel's reason is there
        self._last_frames: list[str] | None = None
        self._saving: set[asyncio.Task] = set()

    async def frames(self) -> AsyncIterator[str]:
        ended: dict | None = None  # the final Response, once its event is out
        try:
            async for body in stream_response_events(self.events, self.framer, self.queued):
                # Sent before its record is saved: a cancel during the save cannot leave a numbered event unsent.
                yield event_frame(body)
                if "response" in body:
                    ended = body["response"] if body["response"]["status"] in TERMINAL else None
                    await self._save(body["response"])
        except asyncio.CancelledError:  # the relay was cancelled: end the response here, and store how
            if ended is not None:  # it had ended already: only its record was still being saved
                self._last_frames, final = [], ended
            else:
                self._last_frames, final = self._cut(self.relay.cancelled if self.relay else None)
            await self._save(final)
            raise

    def ending(self, reason: str) -> list[str]:
        """The relay's last frames after a cancel (made, and stored, by `frames` as it stopped)."""
        if self._last_frames is None:  # cancelled before it began
            self._last_frames, final = self._cut(reason)
            task = asyncio.create_task(self._save(final))
            self._saving.add(task)
            task.add_done_callback(self._saving.discard)
        return self._last_frames

    def _cut(self, reason: str | None) -> tuple[list[str], dict]:
        bodies = [self.framer.event(type_, **fields) for type_, fields in self.framer.cut(reason or "cancelled")]
        return [event_frame(body) for body in bodies], bodies[-1]["response"]

    async def _save(self, response: dict) -> None:
        record = self.record
        if record is None or record.response["status"] == response["status"]:
            return
        record.response = response
        try:
            if not await self.records.update(record, self.owner):
                self.record = None  # deleted meanwhile: never written again
        except Exception as exc:  # noqa: BLE001 - the stream goes on; the record keeps its last state
            log.warning("response %s: storing its %s state failed: %r", record.id, response["status"], exc)
