"""``prefetch``: the bounded producer/consumer behind the overlapping GPU stages, exercised on the CPU."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from qa_answer.stages import prefetch

#: Only a bound for a failing test: a correct prefetch never waits anywhere near this long.
DEADLINE_S = 30


def test_yields_every_item_in_order():
    assert list(prefetch(iter(range(100)), depth=2)) == list(range(100))
    assert list(prefetch([], depth=1)) == []


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_producer_runs_at_most_depth_plus_one_items_ahead(depth):
    started: list[int] = []

    def items() -> Iterator[int]:
        for i in range(30):
            started.append(i)
            yield i

    most_ahead = 0
    for received in prefetch(items(), depth):
        threading.Event().wait(0.005)  # a slow consumer: give the producer every chance to run too far ahead
        most_ahead = max(most_ahead, len(started) - 1 - received)
    assert most_ahead <= depth + 1  # that it runs ahead at all: test_stages_overlap


def test_stages_overlap():
    """The consumer's work on item 0 can finish only once the producer has started item 1 by itself."""
    second_started = threading.Event()

    def items() -> Iterator[int]:
        yield 0
        second_started.set()
        yield 1

    stream = prefetch(items(), depth=1)
    assert next(stream) == 0
    assert second_started.wait(DEADLINE_S)  # sequential code would wait forever here
    assert list(stream) == [1]


def test_an_error_while_producing_reaches_the_consumer_in_place():
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise RuntimeError("tokenizer broke on item 3")

    got = []
    with pytest.raises(RuntimeError, match="tokenizer broke on item 3"):
        for item in prefetch(items(), depth=4):
            got.append(item)
    assert got == [1, 2]


def test_stopping_early_stops_and_closes_the_chained_producers():
    closed = threading.Event()
    produced: list[int] = []

    def items() -> Iterator[int]:
        try:
            for i in range(10_000):
                produced.append(i)
                yield i
        finally:
            closed.set()

    before = threading.active_count()
    chained = prefetch((i * 2 for i in prefetch(items(), depth=2)), depth=2)
    assert [next(chained) for _ in range(3)] == [0, 2, 4]
    chained.close()
    assert closed.is_set()  # closed by the time close() returns: both threads were joined
    assert threading.active_count() == before
    assert len(produced) < 20


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth must be >= 1, got 0"):
        next(prefetch([1], depth=0))
