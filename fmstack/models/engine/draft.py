"""Draft-model speculation: a smaller model with the target's vocabulary proposes tokens.

The draft runs in its own llama.cpp context with one KV stream per engine slot, mirroring the
target's slots: before proposing, each slot's draft KV is brought up to the sequence's history
(only the tokens it lacks are decoded, all slots in one batch), then ``k`` greedy rounds
decode one token per sequence each. Proposals are greedy whatever the request samples with:
the engine verifies every draft by sampling the target as plain decoding would, so the draft
only decides how many tokens a step yields, never which.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fmstack.errors import ConfigError

if TYPE_CHECKING:
    from fmstack.models.backends.llamacpp import LlamaCppModel


class Drafter:
    def __init__(self, draft: LlamaCppModel, target: LlamaCppModel, *, n_slots: int,
                 n_ctx: int, n_batch: int) -> None:
        ll = draft._ll
        if draft._n_vocab != target._n_vocab or any(
                draft._piece(t, True) != target._piece(t, True)
                for t in range(0, target._n_vocab, max(1, target._n_vocab // 512))):
            raise ConfigError(f"draft model {draft.name} does not share the vocabulary of "
                              f"{target.name}: speculation needs the same tokens")
        self.model, self._ll = draft, ll
        params = ll.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_seq_max = n_slots
        params.kv_unified = False
        params.flash_attn_type = 1 if draft.flash_attn else 0
        params.n_threads = params.n_threads_batch = draft.n_threads
        params.no_perf = True
        self._ctx = ll.llama_init_from_model(draft._llm.model, params)
        if not self._ctx:
            raise ConfigError(f"llama.cpp could not make a draft context for {n_slots} slots")
        self._mem = ll.llama_get_memory(self._ctx)
        self._batch = ll.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        self._held: list[list[int]] = [[] for _ in range(n_slots)]  # each slot's draft KV

    def propose(self, wants: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each ``(slot, history, k)``, up to ``k`` greedy draft tokens after ``history``."""
        import numpy as np

        ll = self._ll
        last: dict[int, int] = {}  # slot -> batch row of its last fed token's logits
        rows: list[tuple[int, int, bool]] = []
        for slot, history, _ in wants:
            held = self._held[slot]
            same = 0
            for a, b in zip(held, history, strict=False):
                if a != b:
                    break
                same += 1
            same = min(same, len(history) - 1)  # decode at least the last token (its logits)
            ll.llama_memory_seq_rm(self._mem, slot, same, -1)
            del held[same:]
            for pos in range(same, len(history)):
                rows.append((slot, history[pos], pos == len(history) - 1))
        self._decode(rows, last)
        out: dict[int, list[int]] = {slot: [] for slot, _, _ in wants}
        live = [(slot, k) for slot, _, k in wants if k > 0]
        while live:
            for slot, _ in live:
                logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, last[slot]),
                                               shape=(self.model._n_vocab,))
                token = int(np.argmax(logits))
                out[slot].append(token)
            live = [(slot, k) for slot, k in live if len(out[slot]) < k]
            last.clear()
            if live:
                self._feed([(slot, out[slot][-1], True) for slot, _ in live], last)
        return [out[slot] for slot, _, _ in wants]

    def _decode(self, rows: list[tuple[int, int, bool]], last: dict[int, int]) -> None:
        """Feed ``(slot, token, logits?)`` rows: those without logits first, in batches of at
        most ``n_batch``, then the rows with logits in one last batch (a decode overwrites the
        previous one's logits, and there is at most one such row per slot)."""
        plain = [r for r in rows if not r[2]]
        wanted = [r for r in rows if r[2]]
        for start in range(0, len(plain), self.n_batch):
            self._feed(plain[start:start + self.n_batch], last)
        if wanted:
            self._feed(wanted, last)

    def _feed(self, part: list[tuple[int, int, bool]], last: dict[int, int]) -> None:
        ll, batch = self._ll, self._batch
        for i, (slot, token, want) in enumerate(part):
            batch.token[i] = token
            batch.pos[i] = len(self._held[slot])
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = slot
            batch.logits[i] = want
            self._held[slot].append(token)
            if want:
                last[slot] = i
        batch.n_tokens = len(part)
        if ll.llama_decode(self._ctx, batch) != 0:
            raise RuntimeError("llama_decode failed in the draft model")

    def close(self) -> None:
        self._ll.llama_batch_free(self._batch)
        self._ll.llama_free(self._ctx)
