"""Forward passes padded to a few row counts: a bounded set of shapes, and the answers and caches of exact rows."""
import pytest

from taskrouter.loading import load_model
from taskrouter.router import Router
from taskrouter.rows import padded
from taskrouter.schema import parse_request


def test_padded_counts_are_few_and_waste_at_most_7_rows_or_a_sixteenth():
    counts = [padded(n) for n in range(1, 4097)]
    assert all(c >= n and c % 8 == 0 and c - n <= max(7, n / 16) for n, c in zip(range(1, 4097), counts))
    assert len(set(counts)) == 96
    assert padded(100) == 104 and padded(265) == 272 and padded(1600) == 1600
    with pytest.raises(ValueError, match="rows"):
        padded(0)


def _turns(payload: dict) -> list[dict]:
    """A cold prompt, the next turn on its cached prefix, another task list, and free decoding (token by token)."""
    longer = {**payload, "messages": payload["messages"] + [
        {"role": "assistant", "content": "Here is the recap."}, {"role": "user", "content": "Now a quote for 40 seats."}],
        "current_task": "meeting_recap"}
    shared = {**payload, "tasks": [{"name": n} for n in ("reserve_car", "reserve_hotel", "reserve_restaurant")]}
    return [payload, longer, shared, {**longer, "decoding": "free"}]


def test_padded_passes_answer_and_cache_exactly_as_exact_rows(tiny_dir, request_payload):
    exact = Router(load_model(str(tiny_dir)), pad_rows=False)
    padded_router = Router(load_model(str(tiny_dir)))
    rows: list[int] = []
    padded_router.engine.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(kwargs["input_ids"].shape[1]), with_kwargs=True)
    for payload in _turns(request_payload):
        a, b = exact.route(parse_request(payload)), padded_router.route(parse_request(payload))
        assert (b.task, b.event, b.raw) == (a.task, a.event, a.raw)
        assert [c.task for c in b.candidates] == [c.task for c in a.candidates]
        assert [c.p for c in b.candidates] == pytest.approx([c.p for c in a.candidates], abs=1e-4)
    assert rows and all(n == padded(n) for n in rows)  # every pass ran at a padded row count
    assert padded_router.engine.stats.padding > 0 and exact.engine.stats.padding == 0
    # the padding never reaches the prefix cache: the same checkpoints, of the same sizes
    assert padded_router.engine.stats.tokens == exact.engine.stats.tokens
    assert (padded_router.cache.stats.entries, padded_router.cache.stats.bytes) == \
        (exact.cache.stats.entries, exact.cache.stats.bytes)
