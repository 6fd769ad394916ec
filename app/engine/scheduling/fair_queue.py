"""FairQueue: the sequences waiting for admission, shared between tenants (API keys).

The next one admitted is the oldest waiting sequence of the tenant that comes first by (priority,
recent tokens per unit of weight, arrival). A tenant's usage counts every token computed for it
(a prompt's uncached tokens when it is admitted, one per decode row per step) and halves every
`half_life_s`, so the order follows what each tenant gets now, not what it got an hour ago. Usage
rather than deficit round robin: a generation's cost is unknown when it is admitted (it ends at its
EOS), so tokens are charged as they are computed and the queue picks by what each tenant received.

With `fair=False` it is first in, first out across tenants, the order before tenants existed.
Capacity (decode rows, places in the queue) is shared by `share_of`: a tenant below its weighted
share may go a little past a full limit, so a newcomer never waits for the heavy user's turn.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.engine.scheduling.sequence import Sequence
    from app.engine.types import Share

HALF_LIFE_S = 30.0


class TenantUsage:
    """Tokens computed per tenant, decaying exponentially with time."""

    def __init__(self, half_life_s: float = HALF_LIFE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = math.log(2) / half_life_s
        self._clock = clock
        self._usage: dict[str, tuple[float, float]] = {}  # tenant -> (tokens, at)

    def charge(self, tokens: dict[str, int]) -> None:
        now = self._clock()
        for tenant, count in tokens.items():
            self._usage[tenant] = (self._decayed(tenant, now) + count, now)

    def of(self, tenant: str, now: float | None = None) -> float:
        return self._decayed(tenant, self._clock() if now is None else now)

    def now(self) -> float:
        return self._clock()

    def _decayed(self, tenant: str, now: float) -> float:
        tokens, at = self._usage.get(tenant, (0.0, now))
        return tokens * math.exp(-self._rate * (now - at))


def share_of(tenant: str, weights: dict[str, float], capacity: int) -> float:
    """A tenant's weighted share of `capacity` among the tenants in `weights` (those with work)."""
    total = sum(weights.values())
    return capacity * weights[tenant] / total if total > 0 else float(capacity)


def may_exceed(share: Share, held: int, wanted: int, weights: dict[str, float], capacity: int,
               total: int, headroom: int) -> bool:
    """Whether `wanted` more places for `share`'s tenant fit: within `capacity`, or past it by at
    most `headroom` while the tenant holds less than its weighted share (never cuts anyone off)."""
    if total + wanted <= capacity:
        return True
    weights = {**weights, share.tenant: share.weight}
    return total + wanted <= capacity + headroom and held + wanted <= share_of(share.tenant, weights, capacity)


class FairQueue:
    def __init__(self, fair: bool = True, usage: TenantUsage | None = None) -> None:
        self.fair = fair
        self.usage = usage or TenantUsage()
        self._queues: dict[str, deque[tuple[int, Sequence]]] = {}  # tenant -> (arrival number, sequence)
        self._numbers = itertools.count()
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def __bool__(self) -> bool:
        return self._length > 0

    def __iter__(self) -> Iterator[Sequence]:
        return (sequence for queue in self._queues.values() for _, sequence in queue)

    def __contains__(self, sequence: object) -> bool:
        return any(s is sequence for s in self)

    def append(self, sequence: Sequence) -> None:
        self._queues.setdefault(sequence.share.tenant, deque()).append((next(self._numbers), sequence))
        self._length += 1

    def peek(self, passed: Iterable[str] = ()) -> Sequence | None:
        """The sequence to admit next (left in the queue), or None when none waits; tenants in `passed`
        are skipped (their head cannot be admitted now)."""
        heads = [queue[0] for tenant, queue in self._queues.items() if tenant not in passed]
        if not heads:
            return None
        if not self.fair:
            return min(heads, key=lambda head: head[0])[1]
        now = self.usage.now()
        return min(heads, key=lambda head: self._rank(head, now))[1]

    def _rank(self, head: tuple[int, Sequence], now: float) -> tuple[int, float, int]:
        number, sequence = head
        share = sequence.share
        return share.priority, self.usage.of(share.tenant, now) / share.weight, number

    def pop(self, sequence: Sequence) -> None:
        """Take `sequence` (a tenant's head, as peek() returned it) out of the queue."""
        queue = self._queues[sequence.share.tenant]
        assert queue[0][1] is sequence, "only a tenant's oldest sequence is admitted"
        queue.popleft()
        self._dropped(sequence.share.tenant)

    def remove(self, sequence: Sequence) -> None:
        queue = self._queues.get(sequence.share.tenant, deque())
        for entry in queue:
            if entry[1] is sequence:
                queue.remove(entry)
                self._dropped(sequence.share.tenant)
                return

    def _dropped(self, tenant: str) -> None:
        self._length -= 1
        if not self._queues[tenant]:
            del self._queues[tenant]

    def weights(self) -> dict[str, float]:
        """Tenants with a sequence waiting, and their weights."""
        return {tenant: queue[0][1].share.weight for tenant, queue in self._queues.items()}


def weights_of(sequences: Iterable[Sequence]) -> dict[str, float]:
    return {s.share.tenant: s.share.weight for s in sequences}
