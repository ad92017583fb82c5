"""The pool's queue without threads: lanes in order, batches within a budget, re-queued batches at the head,
failed requests dropped; and a request's vectors delivered once each."""

from __future__ import annotations

import numpy as np

from embedding.pool_queue import EmbeddingError, EmbedRequest, Item, Lane, Lanes


def items(request: EmbedRequest, tokens: list[int]) -> list[Item]:
    return [Item(request, i, f"text {i}", n) for i, n in enumerate(tokens)]


def test_interactive_work_goes_first_and_batches_stay_within_the_budget() -> None:
    lanes = Lanes()
    bulk = EmbedRequest(4, 2, Lane.BULK, 100)
    urgent = EmbedRequest(1, 2, Lane.INTERACTIVE, 5)
    lanes.add(Lane.BULK, items(bulk, [10, 40, 20, 30]))
    lanes.add(Lane.INTERACTIVE, items(urgent, [5]))
    assert [i.request for i in lanes.take(lambda _n: 1000, 8)] == [urgent]
    first = lanes.take(lambda _n: 80, 8)  # longest first: 40 + 30 pad to 80 tokens, a third would make 120
    assert [i.tokens for i in first] == [40, 30]
    assert [i.tokens for i in lanes.queued(Lane.BULK)] == [20, 10] and lanes.queued(Lane.INTERACTIVE) == []
    lanes.push_front(first)  # back at the head of its lane, longest first
    assert [i.tokens for i in lanes.queued()] == [40, 30, 20, 10]
    assert [i.tokens for i in lanes.take(lambda _n: 1000, 3)] == [40, 30, 20]  # max_items caps the batch


def test_a_failed_request_leaves_the_queue_and_is_not_requeued() -> None:
    lanes = Lanes()
    kept, failed = EmbedRequest(2, 2, Lane.BULK, 20), EmbedRequest(2, 2, Lane.BULK, 20)
    lanes.add(Lane.BULK, items(kept, [10, 10]))
    lanes.add(Lane.BULK, items(failed, [10, 10]))
    batch = lanes.take(lambda _n: 30, 8)
    assert {i.request for i in batch} == {kept, failed}
    assert failed.fail(EmbeddingError("out of attempts")) and not failed.fail(EmbeddingError("again"))
    lanes.drop(failed)
    lanes.push_front(batch)
    assert {i.request for i in lanes.queued()} == {kept} and len(lanes.queued()) == 2
    lanes.clear()
    assert lanes.take(lambda _n: 30, 8) == []


def test_a_request_is_done_with_its_last_vector_and_refuses_a_second_one() -> None:
    request = EmbedRequest(2, 2, Lane.BULK, 20)
    assert request.put(1, np.array([0.0, 1.0])) and not request.done()
    assert not request.put(1, np.array([1.0, 0.0]))  # a duplicate is refused, not written
    assert request.put(0, np.array([1.0, 0.0])) and request.done()
    assert request.result(0).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert not request.fail(EmbeddingError("too late"))
    assert EmbedRequest(0, 2, Lane.BULK, 0).done()
