"""Blocking iteration in a worker thread that runs ahead of its async consumer.

    async for step in iterate_ahead(decode_steps()):   # the steps compute back to back
        send(step)

`asyncio.to_thread(next, items)` per item stalls the computation at every item: the thread
waits while the event loop wakes, takes the item and hands out the next call, a stall
that adds up over a decode's many items in a Serve replica (docs/performance.md, serve).
Here the thread never waits for the loop; each item is posted to it as soon as it is made.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar, cast

T = TypeVar("T")

_END = object()


async def iterate_ahead(items: Iterator[T]) -> AsyncIterator[T]:
    """The items of `items`, computed in a worker thread as fast as it can.

    An exception raised by `items` is raised here, after the items before it. When the
    consumer stops early (it closes this generator, or an exception ends its loop), the
    thread stops before its next item, and this generator returns only once the thread
    has: work that holds a resource (a model) has ended when iteration has."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()

    def post(item: object, error: BaseException | None = None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (item, error))

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                post(item)
        except BaseException as error:  # handed to the consumer, which raises it
            post(_END, error)
        else:
            post(_END)

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            item, error = await queue.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield cast(T, item)
    finally:
        stop.set()
        await worker
