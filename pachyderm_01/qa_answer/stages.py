"""Compute the items of an iterable ahead of their consumer in a background thread, through a bounded queue.

Chaining two ``prefetch`` calls gives a three-stage pipeline (e.g. tokenize -> forward pass -> decode) whose
stages overlap while memory stays bounded: each stage runs at most ``depth + 1`` items ahead of the next.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_ITEM, _ERROR, _DONE = "item", "error", "done"
#: How often a blocked producer checks whether the consumer has gone away.
_POLL_SECONDS = 0.05


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Yield ``items`` in order while a thread computes up to ``depth`` of them ahead (plus one in hand).

    An exception raised while producing re-raises in the consumer at that position. When the consumer stops
    early (an error, ``break``, ``close()``), the producer stops after its current item and is joined, and
    ``items`` is closed in the producer's thread, so chained stages shut down in order.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    channel: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(message: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                channel.put(message, timeout=_POLL_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((_ITEM, item)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, which decides
            put((_ERROR, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="qa-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = channel.get()
            if kind == _DONE:
                return
            if kind == _ERROR:
                assert isinstance(payload, BaseException)
                raise payload
            yield payload  # type: ignore[misc]
    finally:
        stop.set()
        thread.join()
