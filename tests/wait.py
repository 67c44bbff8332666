"""Waiting in tests: poll for the condition itself, up to a deadline, never sleep for a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

INTERVAL_S = 0.01
"""How often a condition is polled: often enough to add next to nothing to a test, seldom enough to cost no CPU."""


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = INTERVAL_S) -> T:
    """Poll `predicate` until it returns something truthy, and return that; an AssertionError naming `what` if it
    has not within `timeout` seconds (the predicate is tried once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], timeout: float, what: str, interval: float = INTERVAL_S
) -> T:
    """`wait_until` in an event loop, which runs on while the condition is polled; `predicate` may be a coroutine
    function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        value = cast(T, value)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)
