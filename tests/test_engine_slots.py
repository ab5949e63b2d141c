"""Slot placement (pure Python): busy slots stay in as few runs of consecutive ids as possible
(llama.cpp decodes each run as its own micro-batch), then the longest cached prefix wins, then
least recently used."""

from __future__ import annotations

from fmstack.models.engine.slots import SlotPool


def take(pool: SlotPool, prompt: list[int]) -> int:
    placement = pool.place(prompt)
    assert placement is not None
    return placement.slot.seq_id


def test_new_prompts_fill_slots_from_the_start_and_close_gaps() -> None:
    pool = SlotPool(16)
    assert [take(pool, [100 + i, 1, 2]) for i in range(4)] == [0, 1, 2, 3]
    pool.release(pool.slots[1])  # the most recently freed slot, yet it closes the gap
    assert take(pool, [200, 1, 2]) == 1
    pool.release(pool.slots[0])
    pool.release(pool.slots[3])
    # Slots 1-2 are busy: 0 and 3 both extend the run, 5 would start a second one.
    assert take(pool, [300, 1, 2]) in (0, 3)


def test_a_prefix_in_a_far_slot_is_copied_next_to_the_run() -> None:
    pool = SlotPool(16)
    pool.slots[9].tokens = [7, 8, 9, 10, 11]
    for _ in range(2):
        take(pool, [1, 2, 3])
    placement = pool.place([7, 8, 9, 10, 99])
    assert placement is not None
    assert placement.slot.seq_id == 2 and placement.copy_from is pool.slots[9]
    assert placement.reuse == 4 and pool.copies == 1 and pool.saved_tokens == 4


def test_a_candidate_holding_the_prefix_is_used_without_a_copy() -> None:
    pool = SlotPool(8)
    pool.slots[1].busy = pool.slots[2].busy = True
    pool.slots[3].tokens, pool.slots[3].last_used = [5, 6, 7, 8], 5.0
    # As good and less recently used, but not next to the run.
    pool.slots[6].tokens, pool.slots[6].last_used = [5, 6, 7, 8], 1.0
    placement = pool.place([5, 6, 7, 8, 9])
    assert placement is not None
    assert placement.slot.seq_id == 3 and placement.copy_from is None and placement.reuse == 4


def test_among_equal_candidates_the_least_recently_used_cache_is_overwritten() -> None:
    pool = SlotPool(4)
    pool.slots[1].busy = pool.slots[2].busy = True
    pool.slots[0].tokens, pool.slots[0].last_used = [40, 41], 2.0
    pool.slots[3].tokens, pool.slots[3].last_used = [50, 51], 1.0
    assert take(pool, [60, 61]) == 3
    assert pool.hits == 0 and pool.copies == 0


def test_a_full_pool_places_nothing() -> None:
    pool = SlotPool(2)
    take(pool, [1])
    take(pool, [2])
    assert pool.place([3]) is None
