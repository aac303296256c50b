"""Work on the next item in one worker thread while the caller uses the current one: the embedder tokenises the next
block of texts while the device reads the current block (the fast tokenizer runs in Rust without Python's lock, so
the two overlap)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

THREAD_NAME = "longctx-prefetch"


@contextmanager
def prefetched(fn: Callable[[T], R], items: Sequence[T]) -> Iterator[Iterator[tuple[T, R]]]:
    """``with prefetched(fn, items) as results:`` yields ``(item, fn(item))`` for every item, in order; ``fn`` of the
    next item runs in one worker thread while the caller works on the current result (one item ahead, no more).

    An exception raised by ``fn`` is raised where its result is taken. Leaving the ``with`` block (normally, by an
    exception, or with items left) drops the work not yet started and waits for the worker to stop, so no thread
    outlives it. With a single item nothing runs in a thread."""
    if len(items) <= 1:
        yield ((item, fn(item)) for item in items)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)

    def results() -> Iterator[tuple[T, R]]:
        ahead: Future = pool.submit(fn, items[0])
        for k, item in enumerate(items):
            current = ahead
            if k + 1 < len(items):
                ahead = pool.submit(fn, items[k + 1])
            yield item, current.result()

    try:
        yield results()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
