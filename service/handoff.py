"""Answers computed on a worker thread handed to callers awaiting them on their event loops."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any


def answer_callers(answers: Iterable[tuple[asyncio.AbstractEventLoop, asyncio.Future, Any]]) -> None:
    """From any thread: set each future's outcome (an exception instance is raised to its caller), with one
    `call_soon_threadsafe` per event loop, not one per caller: each wake-up of a loop costs a syscall and a turn."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future, Any]]] = {}
    for loop, future, outcome in answers:
        by_loop.setdefault(loop, []).append((future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits for these answers
            loop.call_soon_threadsafe(_settle_all, settled)


def _settle_all(answers: list[tuple[asyncio.Future, Any]]) -> None:
    """On the callers' loop. A future already done was cancelled: its caller went away."""
    for future, outcome in answers:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
