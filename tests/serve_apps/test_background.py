"""iterate_ahead on its own: items in order from a worker thread that does not wait for
the consumer, errors after the items before them, and an early stop that stops the thread.

Nothing here sleeps: the tests' item generators block on events the test sets, so each
assertion is about order. `GUARD_S` only ends a test whose behaviour broke so that it
would wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest

from p2med.serve_apps.background import iterate_ahead

GUARD_S = 60.0


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


def test_the_thread_runs_ahead_of_a_consumer_that_has_not_asked_for_more():
    all_made = threading.Event()

    def items():
        yield from range(5)
        all_made.set()  # the thread asked for the item after the last one

    async def scenario():
        async with contextlib.aclosing(iterate_ahead(items())) as stream:
            first = await anext(stream)
            # the consumer holds item 0 and asks for nothing more until the thread has made all
            made_meanwhile = await asyncio.to_thread(all_made.wait, GUARD_S)
            return first, made_meanwhile, [item async for item in stream]

    assert asyncio.run(scenario()) == (0, True, [1, 2, 3, 4])


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
    made: list[int] = []
    item_4 = threading.Event()  # the thread is making item 4 (a model step) until the test sets it

    def many():  # enough that a thread that did not stop would be seen making more
        for i in range(1000):
            if i == 4:
                item_4.wait(GUARD_S)
            made.append(i)
            yield i

    async def scenario():
        stream = iterate_ahead(many())
        async for item in stream:
            if item == 3:
                break
        closing = asyncio.create_task(stream.aclose())
        for _ in range(5):  # the close gets turns of the event loop while item 4 is being made
            await asyncio.sleep(0)
        closed_while_making = closing.done()
        item_4.set()
        await asyncio.wait_for(closing, GUARD_S)
        return closed_while_making, list(made)

    closed_while_making, made_at_close = asyncio.run(scenario())  # its end joins the worker threads
    assert not closed_while_making  # the close waited for the thread
    assert made_at_close == [0, 1, 2, 3, 4]  # the thread stopped before its next item
    assert made == made_at_close  # nothing was made after the close returned
