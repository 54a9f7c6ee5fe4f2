"""Measuring whether a call lets other Python threads run: a pure-Python counter thread's rate
while the call runs in another thread, as a fraction of its rate alone.

A call that holds the GIL stops the counter (dlib's CNN calls: about 0 to 5%); a call that
releases it, as torch's kernels do, leaves the counter most of a core (on 2 cores, with torch's
own threads busy, 50 to 95%).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable

WINDOW = 0.6
"""Seconds of each measurement."""


def _count(stop: threading.Event) -> int:
    """Count until told to stop."""
    total = 0
    while not stop.is_set():
        for _ in range(1000):
            total += 1
    return total


def _rate_beside(work: Callable[[], None] | None, seconds: float) -> float:
    """Counts per second of the counter thread while ``work`` runs again and again in this
    thread for ``seconds`` (or while this thread sleeps, for ``None``)."""
    stop = threading.Event()
    result: list[int] = []
    counter = threading.Thread(target=lambda: result.append(_count(stop)), daemon=True)
    start = time.perf_counter()
    counter.start()
    while time.perf_counter() - start < seconds:
        if work is None:
            time.sleep(0.01)
        else:
            work()
    stop.set()
    counter.join()
    return result[0] / (time.perf_counter() - start)


def counter_share(work: Callable[[], None], tries: int = 3) -> float:
    """The counter thread's rate beside ``work`` over its rate alone: the best of ``tries``
    paired measurements (other load on the machine only ever lowers it)."""
    work()  # warm up: first calls allocate and pick kernels
    best = 0.0
    for _ in range(tries):
        free = _rate_beside(None, WINDOW)
        busy = _rate_beside(work, WINDOW)
        best = max(best, busy / free)
    return best
