"""iterate_ahead on its own: items in order from a worker thread that does not wait for
the consumer, errors after the items before them, and an early stop that stops the thread."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time

import pytest

from p2med.serve_apps.background import iterate_ahead


def test_items_arrive_in_order_computed_off_the_event_loop():
    threads: list[int] = []

    def items():
        for i in range(5):
            threads.append(threading.get_ident())
            yield i

    async def scenario():
        return [item async for item in iterate_ahead(items())], threading.get_ident()

    received, loop_thread = asyncio.run(scenario())
    assert received == [0, 1, 2, 3, 4]
    assert loop_thread not in threads


def test_the_thread_runs_ahead_of_a_slow_consumer():
    made: list[int] = []

    def items():
        for i in range(5):
            made.append(i)
            yield i

    async def scenario():
        seen_at_second = None
        async for item in iterate_ahead(items()):
            if item == 0:
                await asyncio.sleep(0.3)  # the consumer is busy; the thread goes on
            elif item == 1:
                seen_at_second = list(made)
        return seen_at_second

    assert asyncio.run(scenario()) == [0, 1, 2, 3, 4]


def test_an_error_of_the_items_comes_after_the_items_before_it():
    def items():
        yield "a"
        yield "b"
        raise ValueError("the model failed at step 3")

    async def scenario():
        received = []
        with pytest.raises(ValueError, match="step 3"):
            async for item in iterate_ahead(items()):
                received.append(item)
        return received

    assert asyncio.run(scenario()) == ["a", "b"]


def test_stopping_early_stops_the_thread_before_the_close_returns():
    made = itertools.count()
    last = [0]

    def endless():
        while True:
            last[0] = next(made)
            time.sleep(0.001)
            yield last[0]

    async def scenario():
        async with contextlib.aclosing(iterate_ahead(endless())) as items:
            async for item in items:
                if item >= 3:
                    break
        stopped_at = last[0]
        await asyncio.sleep(0.1)
        return stopped_at, last[0]

    stopped_at, later = asyncio.run(scenario())
    assert stopped_at == later  # nothing was made after the close returned
