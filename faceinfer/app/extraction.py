"""The extract application: find the faces in videos and image folders, save them as aligned face
PNGs with their metadata, and record every frame in a crash-safe alignments file.

Flow (the reference is faceswap's ``scripts/extract.py``; see
``../shared/reference/faceswap-behaviour.md`` sections 4 and 5):

1. Everything is checked before any model loads: the settings (:class:`ExtractSettings`), the
   sources, the config file, the device, the filter images, and, when resuming (``-s``/``-e``),
   each source's alignments file, which gives the frames to skip.
2. The pipeline is built: Detect -> Align -> Mask(s) -> Identity(s). With filter references their
   embeddings are computed first, through the same pipeline.
3. A feeder thread reads each source with a :class:`~faceinfer.sources.FrameReader` (decoding
   ahead in its own thread) and puts the frames into the pipeline. Frames that cannot be read
   are counted and named in a warning; the run goes on.
4. The calling thread takes each frame out of the pipeline, in order, writes its face PNGs (each
   atomically), and then appends the frame's record to its source's alignments file. A frame
   whose record is in the file has all its faces on disk, so a run killed at any point resumes
   with ``-s`` where it stopped, redoing only the frames that were in flight.

Ctrl-C stops feeding, closes the pipeline, closes the alignments files (everything written so
far is kept) and returns the summary marked as interrupted; a second Ctrl-C raises
:class:`KeyboardInterrupt` at once.
"""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from faceinfer.align import Align
from faceinfer.app.output import FrameWritten, SourceOutput, SourcePlan, plan_source
from faceinfer.app.progress import Progress, format_duration
from faceinfer.app.settings import ExtractSettings, OutputFormat
from faceinfer.config import load_config_file
from faceinfer.detect import Detect
from faceinfer.device import resolve_device
from faceinfer.errors import ConfigError, PipelineClosedError
from faceinfer.handler import ExtractHandler
from faceinfer.identity import FilterLoader, Identity
from faceinfer.mask import Mask
from faceinfer.profile import Profiler
from faceinfer.runner import ExtractRunner
from faceinfer.sources import FrameReader, InputSource, find_sources

__all__ = ["ExtractSettings", "ExtractSummary", "Extraction", "OutputFormat", "extract"]

logger = logging.getLogger(__name__)

_FEEDER_JOIN_S = 60.0


@dataclass
class ExtractSummary:
    """What an extraction did. Filled in as it runs, so it is complete up to the point where
    an error stopped it."""

    sources: int = 0
    """Videos and image folders found."""
    frames_in_input: int = 0
    """Frames (or images) in the sources."""
    frames_to_process: int = 0
    """Frames to process after ``-N`` and the frames skipped as already done."""
    frames_processed: int = 0
    """Frames that went through the pipeline and were recorded."""
    faces: int = 0
    """Faces found and recorded."""
    frames_with_several_faces: int = 0
    """Frames holding more than one face."""
    faces_saved: int = 0
    """Face PNGs written."""
    faces_not_saved: dict[str, int] = field(default_factory=dict)
    """Faces recorded but not saved as PNG, by reason."""
    faces_filtered: dict[str, int] = field(default_factory=dict)
    """Faces dropped by the identity filter, by kind (filter, nfilter)."""
    skipped_existing: int = 0
    """Frames skipped because the alignments file already has them (``-s``/``-e``)."""
    failed: list[str] = field(default_factory=list)
    """One message per file or frame that could not be read, naming it."""
    alignments_files: list[Path] = field(default_factory=list)
    """The alignments files written (and ``.fsa`` files with the faceswap format)."""
    faces_dirs: list[Path] = field(default_factory=list)
    """The folders face PNGs were written to."""
    elapsed: float = 0.0
    """Seconds the run took, model loading included."""
    interrupted: bool = False
    """True if Ctrl-C stopped the run."""

    @property
    def exit_code(self) -> int:
        """130 when interrupted; 1 when there was something to do and nothing could be
        processed; else 0."""
        if self.interrupted:
            return 130
        nothing = not self.frames_processed and (self.frames_to_process or self.failed)
        return 1 if nothing else 0

    def lines(self) -> list[str]:
        """The summary as lines of text for people."""
        rate = self.frames_processed / self.elapsed if self.elapsed > 0 else math.nan
        skipped = f", {self.skipped_existing} skipped as already done" \
            if self.skipped_existing else ""
        out = [("Interrupted: " if self.interrupted else "Done: ")
               + f"{self.frames_processed} of {self.frames_to_process} frames processed"
               + f" in {format_duration(self.elapsed)}"
               + (f" ({rate:.1f} frames/s)" if math.isfinite(rate) else ""),
               f"  Input: {self.sources} source(s), {self.frames_in_input} frames{skipped}",
               f"  Faces found: {self.faces}"
               + (f" ({self.frames_with_several_faces} frames with several faces)"
                  if self.frames_with_several_faces else "")]
        if self.faces_dirs:
            out.append(f"  Faces saved: {self.faces_saved} in "
                       + ", ".join(str(path) for path in self.faces_dirs))
        out.extend(f"  Faces not saved: {count} {reason}"
                   for reason, count in self.faces_not_saved.items())
        out.extend(f"  Faces dropped by the identity {kind}: {count}"
                   for kind, count in self.faces_filtered.items() if count)
        if self.alignments_files:
            out.append("  Alignments: " + ", ".join(str(p) for p in self.alignments_files))
        if self.failed:
            out.append(f"  Failed to read: {len(self.failed)}")
            out.extend(f"    {message}" for message in self.failed)
        return out


class _Interruption:
    """Turns the first Ctrl-C (SIGINT) into a call of ``on_interrupt`` on a watcher thread; a
    second one raises :class:`KeyboardInterrupt`. Installed only on the main thread (Python
    delivers signals nowhere else); the previous handler comes back on exit.

    The signal handler itself only sets a flag and an event: it may run while the main thread
    holds any lock (a queue's, a log handler's), so the work is left to the watcher."""

    def __init__(self, on_interrupt: Callable[[], None]) -> None:
        self.interrupted = False
        """True once Ctrl-C was pressed."""
        self._on_interrupt = on_interrupt
        self._wake = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="faceinfer-interrupt",
                                         daemon=True)
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _Interruption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
            self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False
            self._wake.set()
            self._watcher.join()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True
        self._wake.set()

    def _watch(self) -> None:
        self._wake.wait()
        if self.interrupted:
            logger.warning("Interrupted: stopping, and saving what is done (Ctrl-C again to "
                           "force)")
            self._on_interrupt()


class Extraction:
    """One extraction run. :attr:`summary` is filled in as it goes, so a caller that catches
    an error from :meth:`run` can still report what was done.

    Parameters
    ----------
    settings:
        What to extract and how.
    """

    def __init__(self, settings: ExtractSettings) -> None:
        self.settings = settings
        self.summary = ExtractSummary()
        """What the run did so far."""
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pipeline: ExtractRunner[Any] | None = None
        self._reader: FrameReader | None = None
        self._feed_error: BaseException | None = None

    # -------------------------------------------------------------------------------- checks
    def _prepare(self) -> tuple[list[InputSource], str, FilterLoader | None]:
        """What is checked first: sources, device, config file and filter images."""
        settings = self.settings
        if settings.batch_mode and settings.alignments_path is not None:
            logger.warning("-p/--alignments is ignored in batch mode: each source gets its own "
                           "alignments file beside it")
        if settings.output_format == "faceinfer" and settings.save_interval:
            logger.info("-v/--save-interval only applies to --format faceswap: faceinfer's "
                        "alignments file is saved frame by frame")
        if settings.config_file is not None:
            load_config_file(settings.config_file)
        device = resolve_device(settings.device)
        loader = None
        if settings.filter_files or settings.nfilter_files:
            loader = FilterLoader(settings.threshold,
                                  [str(path) for path in settings.filter_files] or None,
                                  [str(path) for path in settings.nfilter_files] or None)
        elif settings.threshold is not None:
            logger.warning("-l/--ref-threshold is ignored without -f/--filter or -n/--nfilter")
        sources = find_sources(settings.input_path, settings.batch_mode)
        if settings.batch_mode and settings.output_dir is not None:
            out = settings.output_dir.resolve()
            inside = [s for s in sources if s.path.resolve().is_relative_to(out)]
            for source in inside:
                logger.info("Skipping '%s': it is inside the output folder", source.path)
            sources = [s for s in sources if s not in inside]
            names = Counter(source.name for source in sources)
            clash = sorted(name for name, count in names.items() if count > 1)
            if clash:
                raise ConfigError(f"batch mode: several inputs are named {', '.join(clash)}; "
                                  "their faces would share one output folder: rename them")
        return sources, device, loader

    def _plan(self, sources: list[InputSource], block: int) -> list[SourcePlan]:
        """Each source's plan (reading its alignments file when resuming), and the totals."""
        plans = [plan_source(source, self.settings, block) for source in sources]
        summary = self.summary
        summary.sources = len(plans)
        summary.frames_in_input = sum(plan.frames_in_source for plan in plans)
        summary.frames_to_process = sum(plan.total for plan in plans)
        summary.skipped_existing = sum(plan.skipped for plan in plans)
        return plans

    # ------------------------------------------------------------------------------ pipeline
    def _handlers(self, device: str) -> list[ExtractHandler]:
        """Detect, Align, Mask(s), Identity(s): made (their plugins' settings checked), not
        started."""
        settings = self.settings
        config = None if settings.config_file is None else str(settings.config_file)
        compile_models = settings.compile_models
        handlers: list[ExtractHandler] = [
            Detect(settings.detector, rotation=settings.rotation, min_size=settings.min_size,
                   max_size=settings.max_size, compile_model=compile_models,
                   config_file=config, device=device),
            Align(settings.aligner, re_feeds=settings.re_feed, re_align=settings.re_align,
                  normalization=settings.normalization, filters=settings.align_filters,
                  compile_model=compile_models, config_file=config, device=device)]
        handlers.extend(Mask(name, compile_model=compile_models, config_file=config,
                             device=device) for name in settings.maskers)
        identities = settings.identities
        if (settings.filter_files or settings.nfilter_files) and not identities:
            logger.info("Identity filter: adding the 'dlib-resnet' identity plugin (-I)")
            identities = ("dlib-resnet",)
        handlers.extend(Identity(name, threshold=settings.threshold,
                                 compile_model=compile_models, config_file=config,
                                 device=device) for name in identities)
        return handlers

    @staticmethod
    def _chain(handlers: list[ExtractHandler], profile: bool = False
               ) -> tuple[ExtractRunner[Any], ExtractRunner[Any] | None]:
        """Chain the handlers as one pipeline, its threads started unless ``profile``; returns
        its last runner and the first identity runner."""
        runner: ExtractRunner[Any] | None = None
        first_identity: ExtractRunner[Any] | None = None
        try:
            for handler in handlers:
                runner = handler(runner, profile=profile)
                if isinstance(handler, Identity) and first_identity is None:
                    first_identity = runner
        except BaseException:
            if runner is not None:
                runner.close()
            raise
        assert runner is not None
        logger.info("Pipeline: %s", " -> ".join(repr(handler) for handler in handlers))
        return runner, first_identity

    def _profile(self, pipeline: ExtractRunner[Any]) -> None:
        """``-k``: choose the torch plugins' batch sizes, then start the pipeline's threads."""
        settings = self.settings
        Profiler(pipeline, warmup_time=settings.profile_warmup, run_time=settings.profile_time,
                 save_config=settings.config_file if settings.profile_save else None)()

    # --------------------------------------------------------------------------------- feeding
    def _feed(self, pipeline: ExtractRunner[Any], plans: list[SourcePlan],
              progress: Progress) -> None:
        """Feeder thread: read every source's frames and put them into the pipeline, flushing
        it between blocks (see :attr:`SourcePlan.block`) so that no batch mixes two."""
        every_n = self.settings.extract_every_n
        block: tuple[str, int] | None = None
        try:
            for plan in plans:
                if not plan.to_read:
                    continue
                with FrameReader([plan.source], every_n, plan.skip.__contains__) as reader:
                    with self._lock:
                        self._reader = reader
                    for frame in reader:
                        if self._stop.is_set():
                            return
                        here = (plan.key, plan.block_of(frame.index, every_n))
                        if block is not None and here != block:
                            pipeline.flush()
                        block = here
                        if frame.image is None:
                            self._failed(frame.error or f"{frame.name}: unreadable", progress)
                            continue
                        pipeline.put(frame.name, frame.image, source=plan.key)
                with self._lock:
                    self._reader = None
                if self._stop.is_set():
                    return
            pipeline.stop()
        except PipelineClosedError:
            return  # closed from the output side: an interruption, or an error it reports
        except BaseException as err:  # noqa: BLE001 (re-raised by the calling thread)
            self._feed_error = err
            pipeline.close()

    def _failed(self, message: str, progress: Progress) -> None:
        logger.warning("%s: skipped", message)
        with self._lock:
            self.summary.failed.append(message)
        progress.update(1)

    def _cancel(self) -> None:
        """Stop feeding and close the pipeline (from any thread)."""
        self._stop.set()
        with self._lock:
            reader, pipeline = self._reader, self._pipeline
        if reader is not None:
            reader.close()
        if pipeline is not None:
            pipeline.close()

    # ------------------------------------------------------------------------------------ run
    def run(self) -> ExtractSummary:
        """Run the extraction and return its summary.

        Raises
        ------
        FaceInferError
            For bad settings, input or config (before any work), or an error that stopped the
            pipeline (after closing the alignments files with everything done so far).
        KeyboardInterrupt
            On a second Ctrl-C.
        """
        start = time.perf_counter()
        try:
            sources, device, loader = self._prepare()
            handlers = self._handlers(device)
            plans = self._plan(sources, handlers[0].batch_size)
            if not any(plan.to_read for plan in plans):
                logger.info("Nothing to do: every frame is already in the alignments file")
                return self.summary
            pipeline, identity = self._chain(handlers, self.settings.profile)
            with self._lock:
                self._pipeline = pipeline
            with pipeline:
                if self.settings.profile:
                    self._profile(pipeline)
                    if handlers[0].batch_size != plans[0].block:
                        plans = self._plan(sources, handlers[0].batch_size)
                if loader is not None and identity is not None:
                    loader.add_identity_plugin(identity)
                    loader.get_embeddings(pipeline)
                self._run_pipeline(pipeline, plans)
            if identity is not None:
                counts = identity.handler.identity_filter.counts
                self.summary.faces_filtered = {kind: counts[kind] for kind in
                                               ("filter", "nfilter") if counts[kind]}
        finally:
            self.summary.elapsed = time.perf_counter() - start
        return self.summary

    def _opened(self, output: SourceOutput) -> None:
        self.summary.alignments_files.extend(output.paths)
        if output.plan.faces_dir is not None:
            self.summary.faces_dirs.append(output.plan.faces_dir)

    def _count(self, written: FrameWritten) -> None:
        summary = self.summary
        summary.frames_processed += 1
        summary.faces += written.faces
        summary.frames_with_several_faces += written.faces > 1
        summary.faces_saved += written.saved
        for reason in written.not_saved:
            summary.faces_not_saved[reason] = summary.faces_not_saved.get(reason, 0) + 1

    def _run_pipeline(self, pipeline: ExtractRunner[Any], plans: list[SourcePlan]) -> None:
        shown = self.settings.show_progress
        progress = Progress(self.summary.frames_to_process, tty=None if shown else False,
                            interval=10.0 if shown else math.inf)
        by_key = {plan.key: plan for plan in plans}
        feeder = threading.Thread(target=self._feed, args=(pipeline, plans, progress),
                                  name="faceinfer-feeder", daemon=True)
        output: SourceOutput | None = None
        with _Interruption(self._cancel) as interruption, progress.over_logging():
            feeder.start()
            try:
                for media in pipeline:
                    plan = by_key[str(media.source)]
                    if output is None or output.plan is not plan:
                        if output is not None:
                            output.close()
                        output = SourceOutput(plan, self.settings)
                        self._opened(output)
                    written = output.write(media)
                    self._count(written)
                    progress.update(1, written.faces)
                    if self._stop.is_set():
                        break
            except PipelineClosedError:
                if not interruption.interrupted and self._feed_error is None:
                    raise
            finally:
                try:
                    if output is not None:
                        output.close()
                finally:
                    self._cancel()
                    feeder.join(_FEEDER_JOIN_S)
                    if self.settings.show_progress:
                        progress.close()
            self.summary.interrupted = interruption.interrupted
        if feeder.is_alive():
            logger.warning("The frame reader did not stop within %.0f s", _FEEDER_JOIN_S)
        if self._feed_error is not None:
            raise self._feed_error


def extract(input_path: str | Path, output_dir: str | Path | None = None,
            **options: Any) -> ExtractSummary:
    """Extract the faces of a video or image folder: the Python form of ``faceinfer extract``.

    Parameters
    ----------
    input_path:
        A video file, a folder of images, or with ``batch_mode=True`` a folder of them.
    output_dir:
        Where to save the face PNGs; None writes the alignments file only.
    options:
        Any field of :class:`ExtractSettings`, e.g. ``maskers=("components",)``,
        ``skip_existing=True``, ``size=256``.

    Returns
    -------
    The run's :class:`ExtractSummary`.

    Raises
    ------
    ConfigError
        For invalid settings, before any work starts.
    FaceInferError
        For bad input as a whole (no such file, nothing readable) or an error that stopped the
        run (everything done before it is saved).

    Example
    -------
    >>> summary = extract("clip.mp4", "faces", maskers=("components",))  # doctest: +SKIP
    >>> print("\\n".join(summary.lines()))  # doctest: +SKIP
    """
    settings = ExtractSettings(input_path=Path(input_path),
                               output_dir=None if output_dir is None else Path(output_dir),
                               **options)
    return Extraction(settings).run()
