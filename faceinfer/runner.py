"""Runners: the threads and queues that run one handler, chained into a pipeline.

A chain is built by calling handlers in order, ``Align(...)(Detect(...)())``; each call returns
an :class:`ExtractRunner`. The last runner is the pipeline: ``put``, ``put_media``, ``flush`` and
``stop`` on it feed the first runner (by delegation), and iterating it yields one
:class:`~faceinfer.objects.FrameFaces` per frame put in, in order::

    with Mask("test-mask")(Align("test-landmarks")(Detect("test-blobs")())) as pipeline:
        feeder = threading.Thread(target=feed, args=(pipeline,))  # puts frames, then stop()
        feeder.start()
        for frame in pipeline:
            ...

Every stage has one thread per processor (pre_process, process, post_process) joined by bounded
queues. All runners of a chain share one :class:`~faceinfer.threads.ErrorState`: the first
exception in any thread cancels every queue, and the caller's next ``put`` or ``next`` re-raises
it with its original traceback once every thread has ended.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import uuid as uuid_module
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, Literal, NoReturn, TypeVar, overload

import numpy as np
import numpy.typing as npt

from faceinfer.errors import PipelineClosedError, PipelineError
from faceinfer.formats.types import PNGSource
from faceinfer.handler import ExtractHandler, ProcessorName
from faceinfer.iterator import (
    ExtractIterator,
    InboundIterator,
    InputIterator,
    InterimIterator,
    OutputIterator,
)
from faceinfer.objects import DetectedFace, ExtractBatch, ExtractSignal, FrameFaces
from faceinfer.threads import CancellableQueue, Cancelled, ErrorState, PipelineThread

logger = logging.getLogger(__name__)

HandlerT = TypeVar("HandlerT", bound=ExtractHandler)
"""The type of handler a runner runs."""

QUEUE_SIZE = 2
"""Items each queue between two threads holds before the producer waits."""


class PluginThreads:
    """The threads running one plugin's processors.

    Parameters
    ----------
    name:
        The plugin's name, used to name its threads.
    error_state:
        The pipeline's error state. Default: a new one.
    """

    def __init__(self, name: str, error_state: ErrorState | None = None) -> None:
        self._name = name
        self._error_state = ErrorState() if error_state is None else error_state
        self._threads: list[PipelineThread] = []

    @property
    def enabled(self) -> list[str]:
        """The names of the registered threads."""
        return [thread.name for thread in self._threads]

    @property
    def error_state(self) -> ErrorState:
        """The error state the threads report to."""
        return self._error_state

    def register_external_error_state(self, state: ErrorState) -> None:
        """Report to another error state, so that a thread outside the pipeline (a frame
        reader, say) can stop a pipeline that has no threads of its own.

        Raises
        ------
        RuntimeError
            If threads are already registered.
        """
        if self._threads:
            raise RuntimeError(f"{self._name}: an external error state can only be registered "
                               "before any thread")
        self._error_state = state

    def register_thread(self, name: str,
                        target: Callable[[ProcessorName], None]) -> None:
        """Register a thread that runs ``target(name)`` for the processor ``name``."""
        processor: Any = name
        self._threads.append(PipelineThread(f"{self._name}.{name}", lambda: target(processor),
                                            self._error_state))

    def start(self) -> None:
        """Start every registered thread."""
        for thread in self._threads:
            thread.start()

    def is_alive(self) -> bool:
        """True if any thread is alive."""
        return any(thread.is_alive() for thread in self._threads)

    def join(self) -> None:
        """Wait for every started thread to end."""
        for thread in self._threads:
            if thread.ident is not None:
                thread.join()


class _Pipeline:
    """What the runners of one chain share: their order, error state and progress."""

    def __init__(self) -> None:
        self.runners: list[ExtractRunner[Any]] = []
        self.error_state = ErrorState()
        self.external_states: list[ErrorState] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.stopped = False
        self.finished = False

    def all_queues(self) -> list[CancellableQueue[Any]]:
        found: dict[int, CancellableQueue[Any]] = {}
        for runner in self.runners:
            for item in runner.queues:
                found[id(item)] = item
        return list(found.values())

    def join(self) -> None:
        for runner in self.runners:
            runner.threads.join()

    def raise_error(self) -> NoReturn:
        """Wait for every thread to end, then raise the first error (or a closed error)."""
        self.join()
        for state in (self.error_state, *self.external_states):
            state.re_raise()
        raise PipelineClosedError("the pipeline was closed")


class ExtractRunner(Generic[HandlerT]):
    """Runs one handler's processors on threads, chained to the runners before and after it.

    Parameters
    ----------
    handler:
        The handler to run.
    """

    def __init__(self, handler: HandlerT) -> None:
        self._handler = handler
        self._uuid: str | None = None
        self._pipeline: _Pipeline | None = None
        self._previous: ExtractRunner[Any] | None = None
        self._next: ExtractRunner[Any] | None = None
        self._in_queue: CancellableQueue[Any] | None = None
        self._stage_queues: dict[ProcessorName, CancellableQueue[Any]] = {}
        self._out_queue: CancellableQueue[Any] | None = None
        self._threads = PluginThreads(handler.plugin_name)
        self._output: OutputIterator | None = None
        self._started = False

    def __repr__(self) -> str:
        return f"ExtractRunner({self._handler!r})"

    # ----------------------------------------------------------------------------------- build
    def __call__(self, input_runner: ExtractRunner[Any] | None, profile: bool) -> None:
        """Build this runner's queues and threads, chain it after ``input_runner`` (None for the
        first runner), and start its threads unless ``profile`` is True.

        Raises
        ------
        ValueError
            If this runner was already called, or the input runner was not called yet, already
            feeds another runner, or belongs to a stopped pipeline.
        """
        self._check_input(input_runner)
        pipeline = _Pipeline() if input_runner is None else input_runner._pipeline
        assert pipeline is not None
        self._threads = PluginThreads(self._handler.plugin_name, pipeline.error_state)
        self._out_queue = CancellableQueue(QUEUE_SIZE)
        if self._handler.processors:
            # The first queue holds single frames: room for a batch of them lets the caller
            # run ahead instead of waking the first thread once per frame.
            self._in_queue = (CancellableQueue(max(QUEUE_SIZE, self._handler.batch_size))
                              if input_runner is None else input_runner.out_queue)
            for processor in self._handler.processors[1:]:
                self._stage_queues[processor] = CancellableQueue(QUEUE_SIZE)
        else:
            self._in_queue = self._out_queue
        pipeline.error_state.watch(*self.queues)
        for state in pipeline.external_states:
            state.watch(*self.queues)
        self._pipeline = pipeline
        self._previous = input_runner
        if input_runner is not None:
            input_runner._next = self
        pipeline.runners.append(self)
        self._uuid = uuid_module.uuid4().hex
        for processor in self._handler.processors:
            self._threads.register_thread(processor, self._run_processor)
        if not profile:
            self.start()

    def _check_input(self, input_runner: ExtractRunner[Any] | None) -> None:
        if self._uuid is not None:
            raise ValueError(f"{self!r} has already been called")
        if input_runner is None:
            return
        if input_runner._uuid is None or input_runner._pipeline is None:
            raise ValueError(f"the input runner {input_runner!r} must be called before {self!r}")
        if input_runner._next is not None:
            raise ValueError(f"{input_runner!r} already feeds {input_runner._next!r}")
        if input_runner._pipeline.stopped:
            raise ValueError(f"{input_runner!r} belongs to a pipeline that was stopped")
        if not self._handler.processors:
            raise ValueError(f"{self!r} runs no threads, so it cannot follow another runner")

    def start(self) -> None:
        """Start the threads (once). When compiling, the model is loaded and compiled here, in
        the calling thread, before the threads start."""
        if self._started:
            return
        if self._uuid is None:
            raise PipelineError(f"{self!r} must be called before it is started")
        self._started = True
        if self._handler.do_compile:
            self._handler.init_model()
        self._threads.start()

    @property
    def started(self) -> bool:
        """True once :meth:`start` has been called."""
        return self._started

    def set_batch_size(self, batch_size: int) -> None:
        """Set the plugin's batch size before the threads start (the profiler's choice): on
        the plugin and its config, and on the first runner's input queue, which holds a
        batch of frames. The threads' iterators read it when they start.

        Raises
        ------
        ValueError
            If ``batch_size`` is below 1.
        PipelineError
            If the threads have started, or the runner has no plugin.
        """
        if batch_size < 1:
            raise ValueError(f"expected a batch size >= 1, got {batch_size}")
        if self._started:
            raise PipelineError(f"{self!r}: the batch size can only change before the threads "
                                "start")
        if self._handler.plugin_type == "file":
            raise PipelineError(f"{self!r} has no plugin, so no batch size")
        plugin = self._handler.plugin
        plugin.batch_size = batch_size
        plugin.config = dataclasses.replace(plugin.config, batch_size=batch_size)
        if self._previous is None and self._handler.processors and self._in_queue is not None:
            with self._in_queue.mutex:
                self._in_queue.maxsize = max(QUEUE_SIZE, batch_size)

    @property
    def handler(self) -> HandlerT:
        """The handler this runner runs."""
        return self._handler

    @property
    def threads(self) -> PluginThreads:
        """The threads running this runner's processors."""
        return self._threads

    @property
    def uuid(self) -> str:
        """Unique identifier of this runner, set when it is called.

        Raises
        ------
        ValueError
            If the runner has not been called.
        """
        if self._uuid is None:
            raise ValueError(f"{self!r} has not been called, so it has no uuid")
        return self._uuid

    @property
    def out_queue(self) -> CancellableQueue[Any]:
        """This runner's output queue: the next runner's input."""
        if self._out_queue is None:
            raise ValueError(f"{self!r} has not been called, so it has no queues")
        return self._out_queue

    @property
    def queues(self) -> list[CancellableQueue[Any]]:
        """Every queue this runner reads or writes."""
        found = [self._in_queue, *self._stage_queues.values(), self._out_queue]
        return [item for item in found if item is not None]

    def _first(self) -> ExtractRunner[Any]:
        runner: ExtractRunner[Any] = self
        while runner._previous is not None:
            runner = runner._previous
        return runner

    def _last(self) -> ExtractRunner[Any]:
        runner: ExtractRunner[Any] = self
        while runner._next is not None:
            runner = runner._next
        return runner

    def _ready_pipeline(self) -> _Pipeline:
        if self._pipeline is None:
            raise PipelineError(f"{self!r} must be called before data is put into it")
        return self._pipeline

    # ---------------------------------------------------------------------------------- threads
    def _source(self, processor: ProcessorName) -> ExtractIterator[Any, Any]:
        pipeline = self._ready_pipeline()
        name = f"{self._handler.plugin_name}.{processor}"
        kind = self._handler.plugin_type
        size = self._handler.batch_size
        if processor == self._handler.processors[0]:
            assert self._in_queue is not None
            cls = InputIterator if self._previous is None else InboundIterator
            return cls(self._in_queue, name, kind, size, pipeline.error_state)
        return InterimIterator(self._stage_queues[processor], name, kind, size,
                               pipeline.error_state)

    def _target(self, processor: ProcessorName) -> CancellableQueue[Any]:
        processors = self._handler.processors
        index = processors.index(processor)
        if index + 1 < len(processors):
            return self._stage_queues[processors[index + 1]]
        return self.out_queue

    def _run_processor(self, processor: ProcessorName) -> None:
        """Thread body: run one processor over every batch, passing signals on."""
        handler = self._handler
        if processor == "process" and not handler.do_compile:
            handler.init_model()
        work = getattr(handler, processor)
        target = self._target(processor)
        last = processor == handler.processors[-1]
        skip_empty = handler.plugin_type != "detect"
        for item in self._source(processor):
            if isinstance(item, ExtractBatch) and not (skip_empty and item.num_faces == 0):
                work(item)
                if last:
                    item.clear_transient()
            target.put(item)
        target.put(ExtractSignal.SHUTDOWN)
        if last:
            handler.output_info()

    # ------------------------------------------------------------------------------------ input
    @overload
    def put(self, filename: str, image: npt.NDArray[np.uint8],
            detected_faces: list[DetectedFace] | None = None, source: str | None = None,
            is_aligned: bool = False, frame_metadata: PNGSource | None = None,
            passthrough: Literal[False] = False) -> None: ...

    @overload
    def put(self, filename: str, image: npt.NDArray[np.uint8],
            detected_faces: list[DetectedFace] | None = None, source: str | None = None,
            is_aligned: bool = False, frame_metadata: PNGSource | None = None, *,
            passthrough: Literal[True]) -> FrameFaces: ...

    def put(self, filename: str, image: npt.NDArray[np.uint8],
            detected_faces: list[DetectedFace] | None = None, source: str | None = None,
            is_aligned: bool = False, frame_metadata: PNGSource | None = None,
            passthrough: bool = False) -> FrameFaces | None:
        """Put a frame into the pipeline (always into its first runner).

        Parameters
        ----------
        filename:
            The frame's file name.
        image:
            The frame, uint8 BGR (H, W, 3).
        detected_faces:
            Faces already known in the frame, or None.
        source:
            The folder or video the frame came from.
        is_aligned:
            True if the image is an aligned face.
        frame_metadata:
            The metadata of an aligned face image.
        passthrough:
            True to send the frame straight through and return its result. The pipeline must
            be idle, and the caller must not be iterating it at the same time.

        Returns
        -------
        The frame's result when ``passthrough``, else None.

        Raises
        ------
        ValueError
            If the image is not a uint8 (H, W, 3) array.
        PipelineError
            If the pipeline was stopped, or passthrough is asked for while frames are in flight.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
                or image.shape[2] != 3 or 0 in image.shape:
            got = (f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray)
                   else type(image).__name__)
            raise ValueError(f"{filename}: expected a uint8 BGR image of shape (H, W, 3), "
                             f"got {got}")
        media = FrameFaces(filename, image, source=source, is_aligned=is_aligned,
                           frame_metadata=frame_metadata, passthrough=passthrough)
        if detected_faces:
            single = ExtractBatch([filename], [image], [source], is_aligned=is_aligned)
            single.from_detected_faces(detected_faces)
            found = single.to_frame_faces()[0]
            media = found
            media.frame_metadata, media.passthrough = frame_metadata, passthrough
        return self.put_media(media)

    def put_media(self, media: FrameFaces) -> FrameFaces | None:
        """Put a frame held in a :class:`FrameFaces` into the pipeline's first runner.

        Returns
        -------
        The frame's result when ``media.passthrough`` is True, else None.
        """
        first = self._first()
        pipeline = first._ready_pipeline()
        if media.passthrough:
            with pipeline.lock:
                busy = pipeline.in_flight
            if busy:
                raise PipelineError(f"{media.filename}: passthrough needs an idle pipeline, but "
                                    f"{busy} frame(s) are still in it")
        first._send(media)
        if media.passthrough:
            return next(self._last())
        return None

    def _send(self, item: FrameFaces | ExtractSignal) -> None:
        pipeline = self._ready_pipeline()
        if pipeline.error_state.cancelled or any(s.has_error for s in pipeline.external_states):
            pipeline.raise_error()
        with pipeline.lock:
            if pipeline.stopped:
                what = "a frame" if isinstance(item, FrameFaces) else item.name
                raise PipelineError(f"cannot put {what} into the pipeline: stop() was already "
                                    "called")
            if isinstance(item, FrameFaces):
                pipeline.in_flight += 1
            elif item is ExtractSignal.SHUTDOWN:
                pipeline.stopped = True
        assert self._in_queue is not None
        try:
            self._in_queue.put(item)
        except Cancelled:
            pipeline.raise_error()

    def flush(self) -> None:
        """Release every partly filled batch and drain every stage. The pipeline keeps
        working afterwards."""
        self._first()._send(ExtractSignal.FLUSH)

    def stop(self) -> None:
        """Say that no more frames will come: every stage drains, then iteration ends. Calling
        it again does nothing."""
        first = self._first()
        pipeline = first._ready_pipeline()
        with pipeline.lock:
            if pipeline.stopped:
                return
        first._send(ExtractSignal.SHUTDOWN)

    def register_external_error_state(self, state: ErrorState) -> None:
        """Let an error recorded in ``state`` (by a frame reader thread, say) stop this
        pipeline. Only for a runner with no threads (the file handler).

        Raises
        ------
        RuntimeError
            If this runner has threads.
        """
        self._threads.register_external_error_state(state)
        pipeline = self._ready_pipeline()
        pipeline.external_states.append(state)
        state.watch(*pipeline.all_queues())

    # ----------------------------------------------------------------------------------- output
    def __iter__(self) -> ExtractRunner[HandlerT]:
        return self

    def __next__(self) -> FrameFaces:
        """The next frame out of the pipeline, with its faces, in input order.

        Raises
        ------
        RuntimeError
            If this is not the last runner of its chain.
        StopIteration
            After ``stop()``, once every frame has been returned and every thread has ended.
        """
        pipeline = self._ready_pipeline()
        if self._next is not None:
            raise RuntimeError(f"You can only iterate the final runner of a pipeline; {self!r} "
                               f"feeds {self._next!r}")
        if pipeline.finished:
            raise StopIteration
        if self._output is None:
            self._output = OutputIterator(self.out_queue, f"{self._handler.plugin_name}.output",
                                          self._handler.plugin_type, 1, pipeline.error_state)
        try:
            media = next(self._output)
        except Cancelled:
            pipeline.raise_error()
        except StopIteration:
            pipeline.join()
            pipeline.finished = True
            if self._handler.plugin_type == "file":
                self._handler.output_info()
            raise
        with pipeline.lock:
            pipeline.in_flight -= 1
        return media

    def close(self) -> None:
        """Stop every thread now, dropping whatever is still in the pipeline, and wait for them
        to end. Later calls to ``put`` raise :class:`PipelineClosedError`. Safe to call at any
        time, more than once."""
        pipeline = self._pipeline
        if pipeline is None:
            return
        pipeline.error_state.close()
        pipeline.join()

    def __enter__(self) -> ExtractRunner[HandlerT]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- direct
    def put_direct(self, filename: str, image: npt.NDArray[np.uint8],
                   detected_faces: list[DetectedFace], is_aligned: bool = False,
                   frame_size: tuple[int, int] | None = None) -> ExtractBatch:
        """Run one frame through this runner's handler alone, in the calling thread, and return
        the result. Safe while the pipeline runs: inference is serialised with its threads.

        Parameters
        ----------
        filename:
            The frame's file name.
        image:
            The frame, uint8 BGR, or an aligned face image when ``is_aligned``.
        detected_faces:
            The faces to process.
        is_aligned:
            True if ``image`` is an aligned face (mask and identity stages only).
        frame_size:
            The (height, width) of the frame an aligned face came from; required when
            ``is_aligned``.

        Raises
        ------
        ValueError
            If this is the first runner of its chain, or the aligned-image data is incomplete
            or given to a stage that takes frames.
        """
        self._ready_pipeline()
        if self._previous is None:
            raise ValueError(f"put_direct() needs a runner after the first of its pipeline; "
                             f"use put() on {self!r}")
        if is_aligned and self._handler.plugin_type in ("detect", "align"):
            raise ValueError(f"{filename}: the {self._handler.plugin_type} stage takes frames, "
                             "not aligned faces")
        if is_aligned and frame_size is None:
            raise ValueError(f"{filename}: an aligned face needs the frame_size of its frame")
        batch = ExtractBatch([filename], [image], is_aligned=is_aligned,
                             frame_sizes=None if frame_size is None else [frame_size])
        batch.from_detected_faces(detected_faces)
        handler = self._handler
        handler.init_model()
        if batch.num_faces == 0:
            return batch
        result: ExtractBatch | None = None
        for part in batch.split(handler.batch_size, handler.batch_size):
            for processor in handler.processors:
                getattr(handler, processor)(part)
            part.clear_transient()
            if result is None:
                result = part
            else:
                result.append(part)
        assert result is not None
        return result


def get_pipeline(runner: ExtractRunner[Any]) -> list[ExtractRunner[Any]]:
    """The runners of the chain that ``runner`` belongs to, from input to output.

    Raises
    ------
    ValueError
        If the runner has not been called.
    """
    if runner._pipeline is None:
        raise ValueError(f"{runner!r} has not been called, so it belongs to no pipeline")
    return list(runner._pipeline.runners)
