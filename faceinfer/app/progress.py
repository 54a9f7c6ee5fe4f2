"""A progress display for long runs: frames done of a total, frames per second, time left and
faces found so far.

On a terminal it is one bar redrawn in place on its stream (at most ten times a second); log
records written to the same stream clear the bar first and it is drawn again after them. On
anything else (a file, a pipe, a CI log) it writes a plain log line every ``interval`` seconds
instead, so logs stay readable.
"""
from __future__ import annotations

import contextlib
import logging
import math
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TextIO

logger = logging.getLogger(__name__)

_REDRAW_S = 0.1
_RATE_WINDOW_S = 30.0


def format_duration(seconds: float) -> str:
    """``m:ss`` or ``h:mm:ss``; ``--:--`` when unknown (NaN or infinite)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts frames and faces and shows how far a run is.

    Parameters
    ----------
    total:
        The number of frames expected (0: unknown, no percentage or time left is shown).
    stream:
        Where to draw. Default: ``sys.stderr``.
    tty:
        True to draw a bar, False for log lines. Default: whether ``stream`` is a terminal.
    interval:
        Seconds between log lines when not drawing a bar.
    clock:
        A monotonic clock in seconds (for tests).
    """

    def __init__(self, total: int, stream: TextIO | None = None, tty: bool | None = None,
                 interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(tty if tty is not None else getattr(self.stream, "isatty", bool)())
        self.total = max(0, total)
        """Frames expected."""
        self.done = 0
        """Frames done so far (processed, or failed to read)."""
        self.faces = 0
        """Faces found so far."""
        self._interval = interval
        self._clock = clock
        self._lock = threading.RLock()  # a log record during a redraw clears the bar
        self._samples: deque[tuple[float, int]] = deque()
        self._last_draw = -math.inf
        self._shown = False
        self._logged = -1
        encoding = (getattr(self.stream, "encoding", None) or "").lower()
        self._fill, self._empty = ("\u2588", "\u2591") if "utf" in encoding else ("#", "-")

    # ---------------------------------------------------------------------------------- counts
    def update(self, frames: int = 1, faces: int = 0) -> None:
        """Count ``frames`` more frames done and ``faces`` more faces, and show it when due."""
        with self._lock:
            self.done += frames
            self.faces += faces
            now = self._clock()
            self._samples.append((now, self.done))
            while len(self._samples) > 2 and now - self._samples[0][0] > _RATE_WINDOW_S:
                self._samples.popleft()
            due = _REDRAW_S if self.tty else self._interval
            if now - self._last_draw >= due:
                self._show(now)

    @property
    def rate(self) -> float:
        """Frames per second over the last half minute (NaN before two frames are done)."""
        if len(self._samples) < 2:
            return math.nan
        (first, done_first), (last, done_last) = self._samples[0], self._samples[-1]
        return (done_last - done_first) / (last - first) if last > first else math.nan

    @property
    def eta(self) -> float:
        """Seconds left at the current rate (NaN when unknown)."""
        rate = self.rate
        if not self.total or not rate > 0:
            return math.nan
        return max(0, self.total - self.done) / rate

    def text(self) -> str:
        """The figures, without the bar: ``410/910 frames, 4.3 frames/s, ETA 1:56, 405 faces``."""
        rate = self.rate
        shown_rate = f"{rate:.1f}" if math.isfinite(rate) else "--"
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        return (f"{count} frames, {shown_rate} frames/s, ETA {format_duration(self.eta)}, "
                f"{self.faces} faces")

    # --------------------------------------------------------------------------------- drawing
    def _bar_line(self) -> str:
        text = self.text()
        if not self.total:
            return text
        fraction = min(1.0, self.done / self.total)
        width = shutil.get_terminal_size((80, 24)).columns - len(text) - 9
        bar = ""
        if width >= 10:
            filled = round(fraction * width)
            bar = f"|{self._fill * filled}{self._empty * (width - filled)}| "
        return f"{fraction * 100:3.0f}% {bar}{text}"

    def _show(self, now: float) -> None:
        self._last_draw = now
        if self.tty:
            self.stream.write("\r" + self._bar_line() + "\x1b[K")
            self.stream.flush()
            self._shown = True
        else:
            percent = f" ({self.done / self.total:.0%})" if self.total else ""
            logger.info("Progress: %s%s", self.text(), percent)
            self._logged = self.done

    def clear(self) -> None:
        """Wipe the bar off its line (before something else is written to the stream)."""
        if not self.tty:
            return
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False
                self._last_draw = -math.inf  # draw again at the next update

    def close(self) -> None:
        """Show the final figures (unless that line was just logged) and end the line."""
        with self._lock:
            if self.tty or self._logged != self.done:
                self._show(self._clock())
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
                self._shown = False

    @contextlib.contextmanager
    def over_logging(self) -> Iterator[Progress]:
        """While active, log records handled by the root logger's stream handlers that write to
        this bar's stream clear the bar before they are written."""
        handlers = [handler for handler in logging.getLogger().handlers
                    if isinstance(handler, logging.StreamHandler)
                    and getattr(handler, "stream", None) is self.stream]
        barrier = _ClearBar(self)
        for handler in handlers:
            handler.addFilter(barrier)
        try:
            yield self
        finally:
            for handler in handlers:
                handler.removeFilter(barrier)


class _ClearBar(logging.Filter):
    """A filter that lets every record through, clearing the bar before it is written."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress

    def filter(self, record: logging.LogRecord) -> bool:
        self._progress.clear()
        return True
