"""The exact-response cache: a repeated deterministic request is answered from memory.

Only requests whose answer is fixed are cached: greedy decoding (``temperature`` 0) or a
fixed ``seed``. The key is the served name plus the request as the model sees it (messages or
prompt and every sampling parameter), so any change to either misses. Entries live in memory
(LRU, ``max_entries``); a restarted server starts cold, which is the safe default for a cache
whose entries a new model file would make stale.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

from fmstack.models.types import Completion, Request


def deterministic(request: Request) -> bool:
    p = request.params
    return p.temperature == 0.0 or p.seed is not None


class ResponseCache:
    def __init__(self, max_entries: int = 1024) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, Completion] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(route: str, request: Request) -> str:
        body = request.model_dump(mode="json", exclude={"tags"})
        text = json.dumps([route, body], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def get(self, key: str) -> Completion | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return hit

    def put(self, key: str, completion: Completion) -> None:
        with self._lock:
            self._entries[key] = completion
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
