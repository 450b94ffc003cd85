"""Plain building blocks for long work written as generators.

A task is a generator function that takes a :class:`CancelToken`, yields :class:`Progress`
records and returns its result. The GUI runs it in a worker thread; tests and the command line
simply iterate it (:func:`run_to_completion`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generator, TypeVar

T = TypeVar("T")


class Cancelled(Exception):
    """Raised inside a task when its cancel token was set."""


class CancelToken:
    """A thread-safe flag a task checks between units of work."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled()


NEVER_CANCELLED = CancelToken()


@dataclass(frozen=True)
class Progress:
    """One progress point of a task: ``done`` of ``total`` units (``total`` 0 if unknown)."""

    stage: str
    done: int
    total: int
    detail: str = ""

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


def run_to_completion(gen: Generator[object, None, T]) -> T:
    """Drive a task generator to its end and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def remaining_text(done: int, total: int, elapsed_s: float) -> str:
    """"about 2 min 10 s left" from the pace so far; "" until there is a pace to go by."""
    if done <= 0 or total <= done or elapsed_s <= 0:
        return ""
    left = elapsed_s / done * (total - done)
    if left < 1:
        return "less than a second left"
    minutes, seconds = divmod(round(left), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"about {hours} h {minutes} min left"
    return f"about {minutes} min {seconds} s left" if minutes else f"about {seconds} s left"
