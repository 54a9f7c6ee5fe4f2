"""Owned, cancellable concurrency for one pipeline: an error slot, cancellable queues, threads.

One :class:`ErrorState` belongs to one pipeline (never to a class or module). The first exception
recorded in it cancels every queue registered with it, which wakes every thread blocked on a
``put`` or ``get`` of those queues at once: no thread polls, no thread sleeps.
"""
from __future__ import annotations

import logging
import queue
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, TypeVar

from faceinfer.errors import PipelineClosedError

logger = logging.getLogger(__name__)

T = TypeVar("T")
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


class Cancelled(Exception):  # noqa: N818 (a control-flow signal, not an error to report)
    """Raised out of a blocking :class:`CancellableQueue` call once its pipeline is cancelled."""


class CancellableQueue(queue.Queue[T], Generic[T]):
    """A bounded :class:`queue.Queue` whose blocking ``put`` and ``get`` end with
    :class:`Cancelled` as soon as :meth:`cancel` is called, from any thread.

    Parameters
    ----------
    maxsize:
        The most items the queue holds before ``put`` blocks.
    """

    def __init__(self, maxsize: int = 1) -> None:
        super().__init__(maxsize)
        self._cancelled = False

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` has been called."""
        return self._cancelled

    def cancel(self) -> None:
        """Wake every waiting ``put`` and ``get`` and make them, and all later ones, raise."""
        with self.mutex:
            self._cancelled = True
            self.not_empty.notify_all()
            self.not_full.notify_all()

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        """Put an item, waiting for room. Raises :class:`Cancelled` if the queue is cancelled.

        ``block`` and ``timeout`` keep :class:`queue.Queue`'s meaning."""
        with self.not_full:
            if self._cancelled:
                raise Cancelled
            if not block:
                if self._qsize() >= self.maxsize > 0:
                    raise queue.Full
            elif timeout is None:
                while self._qsize() >= self.maxsize > 0 and not self._cancelled:
                    self.not_full.wait()
            elif not self.not_full.wait_for(
                    lambda: self._cancelled or not self._qsize() >= self.maxsize > 0, timeout):
                raise queue.Full
            if self._cancelled:
                raise Cancelled
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Take an item, waiting for one. Raises :class:`Cancelled` if the queue is cancelled.

        ``block`` and ``timeout`` keep :class:`queue.Queue`'s meaning."""
        with self.not_empty:
            if self._cancelled:
                raise Cancelled
            if not block:
                if not self._qsize():
                    raise queue.Empty
            elif timeout is None:
                while not self._qsize() and not self._cancelled:
                    self.not_empty.wait()
            elif not self.not_empty.wait_for(lambda: self._cancelled or self._qsize() > 0,
                                             timeout):
                raise queue.Empty
            if self._cancelled:
                raise Cancelled
            item = self._get()
            self.not_full.notify()
            return item


class ErrorState:
    """The error slot and cancel switch of one pipeline.

    The first recorded exception wins; recording one, or closing, cancels every registered queue.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._errors: list[ExcInfo] = []
        self._queues: list[CancellableQueue[Any]] = []
        self._closed = False

    @property
    def has_error(self) -> bool:
        """True if any exception has been recorded."""
        with self._lock:
            return bool(self._errors)

    @property
    def cancelled(self) -> bool:
        """True once an error was recorded or :meth:`close` was called."""
        with self._lock:
            return bool(self._errors) or self._closed

    @property
    def errors(self) -> list[ExcInfo]:
        """Every recorded exception, first first."""
        with self._lock:
            return list(self._errors)

    def watch(self, *queues: CancellableQueue[Any]) -> None:
        """Register queues to cancel when this state is cancelled (at once if it already is)."""
        with self._lock:
            self._queues.extend(queues)
            cancelled = bool(self._errors) or self._closed
        if cancelled:
            for item in queues:
                item.cancel()

    def set(self, exc_info: ExcInfo | None = None) -> None:
        """Record an exception (the one being handled if none is given) and cancel the queues."""
        if exc_info is None:
            got = sys.exc_info()
            if got[0] is None or got[1] is None:
                raise RuntimeError("ErrorState.set() needs an exception: none is being handled")
            exc_info = (got[0], got[1], got[2])
        with self._lock:
            self._errors.append(exc_info)
            queues = list(self._queues)
        for item in queues:
            item.cancel()

    def close(self) -> None:
        """Cancel every queue without recording an error: the owner is shutting down early."""
        with self._lock:
            self._closed = True
            queues = list(self._queues)
        for item in queues:
            item.cancel()

    def re_raise(self) -> None:
        """Raise the first recorded exception with its original traceback. If none was recorded
        but the state was closed, raise :class:`PipelineClosedError`. Otherwise do nothing."""
        with self._lock:
            first = self._errors[0] if self._errors else None
            closed = self._closed
        if first is not None:
            raise first[1].with_traceback(first[2])
        if closed:
            raise PipelineClosedError("the pipeline was closed")

    def clear(self) -> None:
        """Forget recorded errors. Queues already cancelled stay cancelled."""
        with self._lock:
            self._errors.clear()


class PipelineThread(threading.Thread):
    """A daemon thread that records any exception from its target in an :class:`ErrorState`.

    :class:`Cancelled` ends the thread quietly: it means another thread failed or the owner closed
    the pipeline.
    """

    def __init__(self, name: str, target: Callable[[], None], error_state: ErrorState) -> None:
        super().__init__(name=name, daemon=True)
        self._work = target
        self.error_state = error_state

    def run(self) -> None:
        """Run the target and record its exception, if any."""
        try:
            self._work()
        except Cancelled:
            logger.debug("Thread '%s' cancelled", self.name)
        except BaseException as err:
            logger.debug("Error in thread '%s': %s", self.name, err, exc_info=True)
            self.error_state.set()
