"""PrefixCache: KV of recent prompts (and finished conversations), reused by prompts that start alike.

A chat front-end resends the whole conversation each turn, and agents resend one long system prompt:
the longest stored prefix of a new prompt is copied into its prefill cache and only the rest is
computed. Entries are whole, contiguous KV rows (mlx-lm's prompt cache is the model): our decode rows
are contiguous slabs, not pages, so a radix tree of shared blocks would buy nothing until a paged
store exists; one LRU list of rows, compared by longest common prefix, is enough and exact.

Bounded by bytes: inserting evicts least-recently-used entries to fit, and the scheduler asks for
bytes back (`release`) before it would make a request wait for memory. Entries are immutable copies,
so an aborted or failed request can never leave a half-written one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PrefixCacheConfig:
    max_bytes: int = 2 << 30  # the cache's share of the KV budget
    min_tokens: int = 64  # shorter shared prefixes are prefilled again: a hit skips grouped prefill
    max_entries: int = 256  # bounds the lookup's linear scan


@dataclass(frozen=True)
class PrefixCacheStats:
    """Counters since start (hits, misses, evictions, reused tokens) and what is held now."""

    bytes: int = 0
    entries: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    reused_tokens: int = 0


class CachedPrefix:
    """Token ids and their KV per layer, (keys, values) each [1, heads, columns, dim], owned copies: the
    last columns of the row, all of them but where a sliding layer forgot the oldest (KVStore), so a hit
    must reuse at least `first_reusable` tokens."""

    def __init__(self, token_ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]],
                 first_reusable: int = 0) -> None:
        self.token_ids = torch.tensor(token_ids, dtype=torch.long)
        self.first_reusable = first_reusable
        self.layers = [(keys.clone(), values.clone()) for keys, values in layers]
        self.nbytes = sum(keys.nbytes + values.nbytes for keys, values in self.layers)

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    def common_prefix(self, token_ids: torch.Tensor) -> int:
        """How many leading tokens `token_ids` shares with this entry."""
        n = min(self.num_tokens, int(token_ids.shape[0]))
        mismatch = (self.token_ids[:n] != token_ids[:n]).nonzero()
        return n if mismatch.numel() == 0 else int(mismatch[0])


class PrefixCache:
    def __init__(self, config: PrefixCacheConfig) -> None:
        self.config = config
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()  # least recently used first
        self._next_key = 0
        self._bytes = 0
        self._hits = self._misses = self._evictions = self._reused = 0

    @property
    def num_bytes(self) -> int:
        return self._bytes

    @property
    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._bytes, len(self._entries), self._hits, self._misses, self._evictions,
                                self._reused)

    def lookup(self, prompt_ids: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry sharing the longest prefix with the prompt and how many tokens to reuse.

        At most len(prompt) - 1: the last prompt token is always run, for the first token's logits.
        Prefixes under min_tokens count as misses, and so do those shorter than an entry's
        first_reusable (its sliding layers forgot keys such a prefix's continuation would need).
        """
        wanted = torch.tensor(prompt_ids, dtype=torch.long)
        best, length = None, 0
        for entry in self._entries.values():
            shared = min(entry.common_prefix(wanted), len(prompt_ids) - 1)
            if shared > length and shared >= entry.first_reusable:
                best, length = entry, shared
        if best is None or length < self.config.min_tokens:
            self._misses += 1
            return None, 0
        self._touch(best)
        self._hits += 1
        self._reused += length
        return best, length

    def insert(self, token_ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]], limit_bytes: int,
               first_reusable: int = 0) -> bool:
        """Store a copy of this KV unless it is too short or already covered; evicts LRU entries so the
        cache stays within min(its share, limit_bytes). False when nothing was stored. `first_reusable`:
        the shortest prefix of it a hit may reuse (CachedPrefix)."""
        if len(token_ids) < self.config.min_tokens:
            return False
        size = sum(keys.nbytes + values.nbytes for keys, values in layers)
        limit = min(self.config.max_bytes, limit_bytes)
        if size > limit:  # checked first: a prompt too big to keep must not cost its prefix's entry
            return False
        wanted = torch.tensor(token_ids, dtype=torch.long)
        for key, entry in list(self._entries.items()):
            shared = entry.common_prefix(wanted)
            # An entry serving every hit the new one would (it holds all of it, as reusably) covers it;
            # a new one extending an entry just as reusably replaces it.
            if shared == len(token_ids) and entry.first_reusable <= first_reusable:
                self._touch(entry)
                return False
            if shared == entry.num_tokens and first_reusable <= entry.first_reusable:
                self._drop(key)
        self._evict_until(limit - size)
        while len(self._entries) >= self.config.max_entries:
            self._evict_oldest()
        self._entries[self._next_key] = CachedPrefix(token_ids, layers, first_reusable)
        self._next_key += 1
        self._bytes += size
        return True

    def release(self, nbytes: int, sparing: list[int] | None = None) -> int:
        """Evict least-recently-used entries until at least `nbytes` are freed (or none is left).

        `sparing`: the prompt being admitted; the entry it would hit goes last, so making room for a
        request does not throw away the very prefix it is about to reuse.
        """
        if sparing:
            wanted = torch.tensor(sparing, dtype=torch.long)
            best = max(self._entries.values(), key=lambda entry: entry.common_prefix(wanted), default=None)
            if best is not None:
                self._touch(best)
        before = self._bytes
        self._evict_until(max(before - nbytes, 0))
        return before - self._bytes

    def clear(self) -> None:
        self.release(self._bytes)

    def _touch(self, entry: CachedPrefix) -> None:
        for key, held in self._entries.items():
            if held is entry:
                self._entries.move_to_end(key)
                return

    def _evict_until(self, bytes_left: int) -> None:
        while self._entries and self._bytes > bytes_left:
            self._evict_oldest()

    def _evict_oldest(self) -> None:
        self._drop(next(iter(self._entries)))
        self._evictions += 1

    def _drop(self, key: int) -> None:
        self._bytes -= self._entries.pop(key).nbytes
