"""KV slots: the engine's memory budget and its prefix cache.

Each slot is one llama.cpp sequence with its own KV stream (``kv_unified=False``), so a slot
holds up to ``n_ctx / n_slots`` positions and sequences never share cells. A slot remembers the
tokens its KV holds after its request ends; that is the prefix cache.

Placement. The busy slots are kept in as few runs of consecutive sequence ids as possible:
llama.cpp decodes a batch over per-slot streams in micro-batches of consecutive ids
(``llama_batch_allocr::split_equal``), each a whole pass over the weights, so four sequences in
slots 3, 7, 11 and 15 cost four passes per step where slots 0-3 cost one. Among the free slots
that keep the runs fewest, a prompt goes to one whose own cache holds the longest reusable
prefix found anywhere (only the rest is computed); otherwise that prefix is copied in from the
slot holding it (``llama_memory_seq_cp``: one copy of a stream, paid once, where a split costs
a pass per step for the request's whole life), overwriting the candidate whose own cache is
worth least, least recently used first.

Granularity. By default every cached token but the prompt's last (whose logits start the
generation) is reused, as llama.cpp's server does. That is not bit-exact: llama.cpp's CPU
kernels can give a token other numbers when its prompt is cut at another place, and in
``bench/engine_features.py`` the warm greedy answers after a 1,500-token shared prompt were
not all equal to the cold ones (5 pairs compared). ``granularity=chunk`` (the engine's
``exact_prefix``) reuses whole prefill chunks only, where the engine always cuts prompts, so
a warm prompt computes exactly the numbers a cold one does; it loses every prompt shorter
than a chunk (time to first token at 16 concurrent short chat requests, in-process: 1.96 s
p50 chunk-aligned, 0.18 s token-granular).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Slot:
    seq_id: int  # the llama.cpp sequence (KV stream) it owns
    tokens: list[int] = field(default_factory=list)  # what its KV holds, in order
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class Placement:
    """Where a prompt goes: ``slot``, keeping its first ``reuse`` cached tokens, after copying
    the KV of ``copy_from`` into it (None: the slot's own cache)."""

    slot: Slot
    reuse: int
    copy_from: Slot | None = None


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class SlotPool:
    def __init__(self, n_slots: int, granularity: int = 1) -> None:
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]
        self.granularity = granularity
        self.hits = 0  # prompts that reused a cached prefix
        self.saved_tokens = 0  # prompt tokens not recomputed thanks to it
        self.copies = 0  # prefixes copied from another slot

    @property
    def free(self) -> int:
        return sum(not s.busy for s in self.slots)

    @property
    def busy(self) -> int:
        return len(self.slots) - self.free

    def reusable(self, cached: list[int], prompt: list[int]) -> int:
        """Tokens of ``prompt`` a cache holding ``cached`` saves: the common prefix, leaving at
        least the last prompt token to compute, cut to a multiple of ``granularity``."""
        n = min(_common(cached, prompt), len(prompt) - 1)
        return n // self.granularity * self.granularity

    def place(self, prompt: list[int]) -> Placement | None:
        """Take a free slot for ``prompt`` (None when every slot is busy)."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        busy = {s.seq_id for s in self.slots if s.busy}

        def new_runs(slot: Slot) -> int:
            # How the number of runs of consecutive busy slots changes if ``slot`` is taken:
            # -1 when it closes a gap, 0 when it extends a run, +1 when it starts a new one.
            return 1 - ((slot.seq_id - 1) in busy) - ((slot.seq_id + 1) in busy)

        fewest = min(new_runs(s) for s in free)
        candidates = [s for s in free if new_runs(s) == fewest]
        reuse = {s.seq_id: self.reusable(s.tokens, prompt) for s in self.slots}
        donor = max(self.slots, key=lambda s: reuse[s.seq_id])
        best = reuse[donor.seq_id]
        own = [s for s in candidates if best and reuse[s.seq_id] == best]
        if own:
            placement = Placement(min(own, key=lambda s: s.last_used), best)
        else:
            # Overwrite the candidate whose own cache is worth least (LRU among equals).
            target = min(candidates, key=lambda s: (reuse[s.seq_id], s.last_used))
            placement = Placement(target, best, donor if best else None)
            if best:
                self.copies += 1
        placement.slot.busy = True
        if placement.reuse:
            self.hits += 1
            self.saved_tokens += placement.reuse
        return placement

    def release(self, slot: Slot) -> None:
        slot.busy = False
        slot.last_used = time.monotonic()
