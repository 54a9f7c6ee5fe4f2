"""Iterators that read a stage's queue and hand its processors batches of the right size.

* :class:`InputIterator`: frames put into the pipeline -> batches for the first stage.
* :class:`InboundIterator`: the previous stage's batches -> batches of this stage's size.
* :class:`InterimIterator`: batches passed between one stage's own processors, unchanged.
* :class:`OutputIterator`: the last stage's batches -> one :class:`FrameFaces` per frame.

Each blocks on its queue's ``get``, which the pipeline's error state can cancel: a cancelled
pipeline ends every iterator with :class:`~faceinfer.threads.Cancelled`.
"""
from __future__ import annotations

import logging
import queue
from abc import ABC, abstractmethod
from collections import deque
from typing import Generic, Literal, TypeVar

import numpy as np

from faceinfer.objects import ExtractBatch, ExtractSignal, FrameFaces
from faceinfer.threads import ErrorState

logger = logging.getLogger(__name__)

QueueItemInT = TypeVar("QueueItemInT")
"""Type of item received from the input queue."""
QueueItemOutT = TypeVar("QueueItemOutT")
"""Type yielded by the iterator."""
PluginTypeName = Literal["detect", "align", "mask", "identity", "file"]

EMPTY_FRAME_RELEASE = 2
"""A partly filled batch is released early once it holds this many times the batch size of
frames without faces, so faceless stretches of video neither fill memory nor stall output."""


class ExtractIterator(ABC, Generic[QueueItemInT, QueueItemOutT]):
    """Base class of the pipeline's iterators.

    Parameters
    ----------
    queue:
        The queue to read from.
    name:
        The plugin and processor reading, for logs.
    plugin_type:
        The type of plugin being served.
    batch_size:
        The batch size to produce: frames for detectors, faces otherwise.
    error_state:
        The pipeline's error state.
    """

    def __init__(self, queue: queue.Queue[QueueItemInT | ExtractSignal], name: str,
                 plugin_type: PluginTypeName, batch_size: int, error_state: ErrorState) -> None:
        if batch_size < 1:
            raise ValueError(f"expected a batch size >= 1, got {batch_size}")
        self._queue = queue
        self._name = name
        self._plugin_type = plugin_type
        self._batch_size = batch_size
        self._error_state = error_state

    def __iter__(self) -> ExtractIterator[QueueItemInT, QueueItemOutT]:
        return self

    @abstractmethod
    def __next__(self) -> QueueItemOutT | ExtractSignal:
        """The next batch (or frame, on output) or signal.

        Raises
        ------
        StopIteration
            Once SHUTDOWN has arrived and everything before it was handed on.
        """


class _FaceBatcher:
    """Re-batches a stream of batches to a fixed number of faces per batch.

    Full batches leave at once; one partly filled batch waits for more faces, a signal, or too
    many faceless frames. Batches with no faces at all leave at once, as there is nothing to
    wait for. A passthrough batch leaves at once, split to the batch size.
    """

    def __init__(self, batch_size: int, name: str) -> None:
        self._size = batch_size
        self._name = name
        self.pending: ExtractBatch | None = None

    def add(self, batch: ExtractBatch) -> list[ExtractBatch]:
        """Take a batch; return the batches now ready, in order."""
        if batch.passthrough:
            if self.pending is not None:
                raise RuntimeError(f"{self._name}: a passthrough frame arrived while other "
                                   "frames were still in the pipeline")
            return batch.split(self._size, self._size)
        room = self._size if self.pending is None else self._size - self.pending.num_faces
        parts = batch.split(room, self._size)
        if self.pending is None:
            self.pending = parts[0]
        else:
            self.pending.append(parts[0])
        ready: list[ExtractBatch] = []
        for part in parts[1:]:
            ready.append(self.pending)
            self.pending = part
        pending = self.pending
        if (pending.num_faces >= self._size or pending.num_faces == 0
                or int(np.count_nonzero(pending.lengths == 0))
                >= EMPTY_FRAME_RELEASE * self._size):
            ready.append(pending)
            self.pending = None
        return ready

    def release(self) -> ExtractBatch | None:
        """Hand over the partly filled batch, if any."""
        pending, self.pending = self.pending, None
        return pending


class _BatchingIterator(ExtractIterator[QueueItemInT, ExtractBatch]):
    """Shared signal handling: a signal releases what is pending, then is passed on (FLUSH) or
    ends iteration (SHUTDOWN)."""

    def __init__(self, queue: queue.Queue[QueueItemInT | ExtractSignal], name: str,
                 plugin_type: PluginTypeName, batch_size: int, error_state: ErrorState) -> None:
        super().__init__(queue, name, plugin_type, batch_size, error_state)
        self._ready: deque[ExtractBatch | ExtractSignal] = deque()
        self._done = False

    @abstractmethod
    def _add(self, item: QueueItemInT) -> None:
        """Take one item from the queue, queueing any batch that is ready."""

    @abstractmethod
    def _release(self) -> None:
        """Queue whatever is pending."""

    def __next__(self) -> ExtractBatch | ExtractSignal:
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._done:
                raise StopIteration
            item = self._queue.get()
            if item is ExtractSignal.FLUSH:
                self._release()
                self._ready.append(ExtractSignal.FLUSH)
            elif item is ExtractSignal.SHUTDOWN:
                self._release()
                self._done = True
            else:
                self._add(item)


class InputIterator(_BatchingIterator[FrameFaces]):
    """Turns the frames put into a pipeline into batches for its first stage: batches of
    ``batch_size`` frames for a detector, of ``batch_size`` faces for any other stage. Numbers
    every frame in arrival order.

    Raises ValueError (in the stage's thread, stopping the pipeline) if aligned and
    non-aligned frames are mixed in one batch.
    """

    def __init__(self, queue: queue.Queue[FrameFaces | ExtractSignal], name: str,
                 plugin_type: PluginTypeName, batch_size: int, error_state: ErrorState) -> None:
        super().__init__(queue, name, plugin_type, batch_size, error_state)
        self._frames: list[FrameFaces] = []
        self._next_number = 0
        self._by_frames = plugin_type == "detect"
        self._faces = _FaceBatcher(batch_size, name)

    def _numbers(self, count: int) -> np.ndarray:
        numbers = np.arange(self._next_number, self._next_number + count, dtype=np.int64)
        self._next_number += count
        return numbers

    def _add(self, item: FrameFaces) -> None:
        if item.passthrough:
            self._release()
        if self._by_frames:
            self._frames.append(item)
            if item.passthrough or len(self._frames) >= self._batch_size:
                self._release()
            return
        batch = ExtractBatch.from_frames([item], self._numbers(1))
        self._ready.extend(self._faces.add(batch))

    def _release(self) -> None:
        if self._frames:
            frames, self._frames = self._frames, []
            self._ready.append(ExtractBatch.from_frames(frames, self._numbers(len(frames))))
        pending = self._faces.release()
        if pending is not None:
            self._ready.append(pending)


class InboundIterator(_BatchingIterator[ExtractBatch]):
    """Re-batches the previous stage's batches to this stage's batch size in faces. A frame
    whose faces do not fit is split across batches and joined again on output."""

    def __init__(self, queue: queue.Queue[ExtractBatch | ExtractSignal], name: str,
                 plugin_type: PluginTypeName, batch_size: int, error_state: ErrorState) -> None:
        super().__init__(queue, name, plugin_type, batch_size, error_state)
        self._faces = _FaceBatcher(batch_size, name)

    def _add(self, item: ExtractBatch) -> None:
        self._ready.extend(self._faces.add(item))

    def _release(self) -> None:
        pending = self._faces.release()
        if pending is not None:
            self._ready.append(pending)


class InterimIterator(ExtractIterator[ExtractBatch, ExtractBatch]):
    """Reads the batches one processor of a stage hands the next, unchanged. FLUSH is passed
    on; SHUTDOWN ends iteration."""

    def __next__(self) -> ExtractBatch | ExtractSignal:
        item = self._queue.get()
        if item is ExtractSignal.SHUTDOWN:
            raise StopIteration
        return item


class OutputIterator(ExtractIterator[ExtractBatch | FrameFaces, FrameFaces]):
    """Turns the last stage's batches into one :class:`FrameFaces` per frame, in input order.
    A frame split across batches is returned once its last part has arrived. Signals are not
    returned: SHUTDOWN ends iteration."""

    def __init__(self, queue: queue.Queue[ExtractBatch | FrameFaces | ExtractSignal], name: str,
                 plugin_type: PluginTypeName, batch_size: int, error_state: ErrorState) -> None:
        super().__init__(queue, name, plugin_type, batch_size, error_state)
        self._ready: deque[FrameFaces] = deque()
        self._partial: FrameFaces | None = None
        self._partial_number = -1
        self._done = False

    def __next__(self) -> FrameFaces:
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._done:
                raise StopIteration
            item = self._queue.get()
            if item is ExtractSignal.SHUTDOWN:
                if self._partial is not None:
                    raise RuntimeError(f"{self._name}: the pipeline shut down with frame "
                                       f"'{self._partial.filename}' incomplete")
                self._done = True
            elif isinstance(item, FrameFaces):
                self._ready.append(item)
            elif isinstance(item, ExtractBatch):
                self._split(item)

    def _split(self, batch: ExtractBatch) -> None:
        numbers = batch.frame_numbers.tolist()
        complete = batch.frame_complete.tolist()
        for part, number, done in zip(batch.to_frame_faces(), numbers, complete, strict=True):
            media = part
            if self._partial is not None:
                if number != self._partial_number:
                    raise RuntimeError(f"{self._name}: frame '{self._partial.filename}' was "
                                       f"not completed before frame '{part.filename}'")
                self._partial.append(part)
                media, self._partial = self._partial, None
            if done:
                self._ready.append(media)
            else:
                self._partial, self._partial_number = media, number
