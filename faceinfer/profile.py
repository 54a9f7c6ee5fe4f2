"""Batch sizes chosen by measurement: the profiler behind ``faceinfer extract -k``.

:class:`Profiler` takes a chain built with ``profile=True`` (threads not started), runs the
torch plugins of the chain concurrently on random input shaped from each plugin's spec, and
searches their batch sizes together: the plugin with the lowest throughput has its batch size
doubled until a step fails, then the step is halved between the last good and the failed size,
until the step is small. A plugin whose search ends stops only its own search. A step fails
when it runs out of memory, goes over the memory bound, or makes the plugin slower than the
size before. The combination that maximises the slowest stage's throughput (faces/s of
non-detectors divided by the expected faces per frame) is set on the plugins, and the chain's
threads are started.

Memory is bounded per device: on CUDA by the peak reserved VRAM (a percentage of the card's
total), elsewhere by the process's resident memory (a percentage of what was available when
profiling began, the process's own included).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from faceinfer.errors import ConfigError, OutOfMemoryError, PipelineError
from faceinfer.plugins.base import ExtractPlugin
from faceinfer.threads import ErrorState, PipelineThread

if TYPE_CHECKING:
    from faceinfer.runner import ExtractRunner

logger = logging.getLogger(__name__)

_MB = 1024 * 1024


def is_out_of_memory(err: BaseException) -> bool:
    """True if ``err`` says a device (GPU or CPU) ran out of memory."""
    if isinstance(err, MemoryError | OutOfMemoryError):
        return True
    if type(err).__name__ == "OutOfMemoryError" and type(err).__module__.startswith("torch"):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


class MemoryProbe:
    """Measures one profiling step's memory: peak reserved VRAM on a CUDA device, else the
    process's resident memory (RSS), sampled.

    Parameters
    ----------
    device:
        The torch device string the profiled plugins use (any ``cuda`` one selects VRAM).
    percent:
        The bound, as a percentage of the card's total VRAM, or of the memory available to the
        process (its RSS plus the system's available memory) when the probe is made.
    """

    def __init__(self, device: str, percent: float) -> None:
        if not 0 < percent <= 100:
            raise ValueError(f"expected a memory bound of 0 to 100 percent, got {percent}")
        self.device = device
        self.is_cuda = device.startswith("cuda")
        self._lock = threading.Lock()
        self._peak = 0
        if self.is_cuda:
            import torch  # noqa: PLC0415

            total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        else:
            import psutil  # noqa: PLC0415

            total = self._rss() + psutil.virtual_memory().available
        self.limit = float(total) * percent / 100.0
        """The bound, in bytes."""

    @staticmethod
    def _rss() -> int:
        import psutil  # noqa: PLC0415

        return int(psutil.Process().memory_info().rss)

    @property
    def unit(self) -> str:
        """What is measured: "VRAM" or "RSS"."""
        return "VRAM" if self.is_cuda else "RSS"

    def empty_cache(self) -> None:
        """Give cached device memory back before a step (CUDA only)."""
        if self.is_cuda:
            import torch  # noqa: PLC0415

            torch.cuda.empty_cache()

    def reset(self) -> None:
        """Start measuring a step's peak."""
        if self.is_cuda:
            import torch  # noqa: PLC0415

            torch.cuda.reset_peak_memory_stats(torch.device(self.device))
            return
        with self._lock:
            self._peak = self._rss()

    def sample(self) -> None:
        """Note the current RSS in the peak (nothing to do on CUDA, which keeps its own)."""
        if not self.is_cuda:
            rss = self._rss()
            with self._lock:
                self._peak = max(self._peak, rss)

    def read(self) -> tuple[int, int]:
        """(in use, peak) bytes since :meth:`reset`: (max allocated, max reserved) VRAM on
        CUDA, (current, peak sampled) RSS elsewhere."""
        if self.is_cuda:
            import torch  # noqa: PLC0415

            device = torch.device(self.device)
            return (int(torch.cuda.max_memory_allocated(device)),
                    int(torch.cuda.max_memory_reserved(device)))
        rss = self._rss()
        with self._lock:
            self._peak = max(self._peak, rss)
            return rss, self._peak


@dataclass
class DataTracker:
    """The results of a pipeline's profiling steps and the state of its batch-size search.

    Row ``i`` of the tests is the ``i``-th combination tried; a combination "did not OOM" when
    no plugin ran out of memory and the peak stayed within the bound.

    Parameters
    ----------
    size:
        The number of plugins profiled.
    max_vram:
        The memory bound, as a percentage (see :class:`MemoryProbe`).
    face_scaling:
        The expected faces per frame: non-detector throughput is divided by it.
    has_detector:
        True if the first profiled plugin is a detector.
    probe:
        What measures memory. Default: the process's RSS.
    max_batch_size:
        The largest batch size tried for any plugin.
    min_step:
        A failed step of at most this many ends that plugin's search.
    """

    size: InitVar[int]
    max_vram: InitVar[float]
    face_scaling: int
    has_detector: bool
    probe: MemoryProbe | None = None
    max_batch_size: int = 256
    min_step: int = 4
    vram: list[tuple[int, int]] = field(init=False)
    """(in use, peak) memory in bytes of each test step (see :meth:`MemoryProbe.read`)."""
    vram_limit: float = field(init=False)
    """The bound, in bytes, that the peak must stay within."""
    combos_exhausted: bool = False
    """True once every plugin's search has ended."""

    def __post_init__(self, size: int, max_vram: float) -> None:
        if size < 1:
            raise ValueError(f"expected at least one plugin to track, got {size}")
        if self.face_scaling < 1:
            raise ValueError(f"expected face_scaling >= 1, got {self.face_scaling}")
        if self.max_batch_size < 1:
            raise ValueError(f"expected max_batch_size >= 1, got {self.max_batch_size}")
        if self.probe is None:
            self.probe = MemoryProbe("cpu", max_vram)
        self.vram = []
        self.vram_limit = self.probe.limit
        self._size = size
        self._lock = threading.Lock()
        self._tested: list[npt.NDArray[np.int64]] = []
        self._iterations: list[npt.NDArray[np.int64]] = []
        self._elapsed: list[npt.NDArray[np.float64]] = []
        self._next = np.ones(size, dtype=np.int64)
        self._base: int | None = None  # the test row the search builds on
        self._step = np.zeros(size, dtype=np.int64)  # 0: still doubling
        self._done = np.zeros(size, dtype=bool)

    # ------------------------------------------------------------------------------- results
    @property
    def next_batch_sizes(self) -> npt.NDArray[np.int64]:
        """The combination to test next."""
        return self._next.copy()

    @property
    def tested(self) -> npt.NDArray[np.int64]:
        """(tests, plugins) every combination tested, in order."""
        return np.array(self._tested, dtype=np.int64).reshape(-1, self._size)

    def _failed(self, row: int) -> bool:
        if (self._iterations[row] < 0).any():
            return True
        return row < len(self.vram) and self.vram[row][1] > self.vram_limit

    def _valid_rows(self) -> list[int]:
        return [row for row in range(len(self._tested)) if not self._failed(row)]

    @property
    def batch_sizes(self) -> npt.NDArray[np.int64]:
        """(tests, plugins) the combinations that did not OOM, in test order."""
        rows = self._valid_rows()
        return np.array([self._tested[row] for row in rows], dtype=np.int64).reshape(
            -1, self._size)

    @property
    def has_oom(self) -> bool:
        """True if the last test ran out of memory or went over the memory bound."""
        return bool(self._tested) and self._failed(len(self._tested) - 1)

    def _rates(self, row: int, adjusted: bool) -> npt.NDArray[np.float64]:
        sizes = self._tested[row].astype(np.float64)
        iterations = self._iterations[row].astype(np.float64)
        elapsed = self._elapsed[row]
        rates = np.where((iterations > 0) & (elapsed > 0),
                         iterations * sizes / np.maximum(elapsed, 1e-12), 0.0)
        if adjusted and self.has_detector:
            rates[1:] /= self.face_scaling
        return rates

    def get_samples(self, index: int | None = None, adjusted: bool = False
                    ) -> npt.NDArray[np.float64]:
        """Samples (frames for a detector, faces for the rest) each plugin processed per
        second, for the ``index``-th combination of :attr:`batch_sizes`, or (tests, plugins) for
        all of them when ``index`` is None. ``adjusted`` divides non-detector figures by the
        face scaling (frames per second for all)."""
        rows = self._valid_rows()
        if index is not None:
            return self._rates(rows[index], adjusted)
        return np.array([self._rates(row, adjusted) for row in rows],
                        dtype=np.float64).reshape(-1, self._size)

    def get_samples_stats(self, method: Literal["mean", "min"], index: int | None = None,
                          adjusted: bool = False) -> npt.NDArray[np.float64]:
        """The mean or minimum over plugins of :meth:`get_samples`: one value, or one per valid
        combination when ``index`` is None."""
        if method not in ("mean", "min"):
            raise ValueError(f"expected method 'mean' or 'min', got {method!r}")
        samples = np.atleast_2d(self.get_samples(index, adjusted))
        reduce = np.mean if method == "mean" else np.min
        out = np.asarray(reduce(samples, axis=1), dtype=np.float64)
        return out.reshape(()) if index is not None else out

    def best(self) -> npt.NDArray[np.int64] | None:
        """The valid combination with the highest minimum adjusted throughput (the smallest
        one on a tie), or None if every test failed."""
        sizes = self.batch_sizes
        if not len(sizes):
            return None
        scores = self.get_samples_stats("min", adjusted=True)
        return np.asarray(sizes[int(np.argmax(scores))], dtype=np.int64)

    # -------------------------------------------------------------------------- test rows
    def add_iterations_row(self) -> None:
        """Start a test of :attr:`next_batch_sizes`: a new row of results."""
        with self._lock:
            self._tested.append(self._next.copy())
            self._iterations.append(np.zeros(self._size, dtype=np.int64))
            self._elapsed.append(np.zeros(self._size, dtype=np.float64))

    def update_iterations(self, iterations: int, matrix_id: int, elapsed: float = 0.0) -> None:
        """Record, from a plugin's thread, the batches it ran in the current test (-1: out of
        memory) and the seconds they took."""
        with self._lock:
            self._iterations[-1][matrix_id] = iterations
            self._elapsed[-1][matrix_id] = elapsed

    def collect_vram(self) -> None:
        """Record the current test's memory (see :meth:`MemoryProbe.read`)."""
        assert self.probe is not None
        self.vram.append(self.probe.read())

    # ------------------------------------------------------------------------------- search
    def add_next_batch_sizes(self) -> None:
        """Update the search with the last test and choose the next combination: the plugin
        with the lowest adjusted throughput doubles its batch size until a step fails, then
        moves by half the failed step each time; a failed step of at most ``min_step``, or
        the maximum batch size, ends that plugin's search (only its own). Sets
        :attr:`combos_exhausted` when every search has ended."""
        last = len(self._tested) - 1
        if last < 0:
            return
        if self._base is None:
            if self._failed(last):
                self.combos_exhausted = True
                return
            self._base = last
        else:
            self._update_search(last)
        base = self._tested[self._base]
        self._done |= base >= self.max_batch_size
        rates = self._rates(self._base, adjusted=True)
        while not self._done.all():
            plugin = int(np.argmin(np.where(self._done, np.inf, rates)))
            step = self._step[plugin]
            size = min(int(base[plugin]) * 2 if step == 0 else int(base[plugin] + step),
                       self.max_batch_size)
            if size <= base[plugin]:
                self._done[plugin] = True
                continue
            self._next = base.copy()
            self._next[plugin] = size
            return
        self.combos_exhausted = True

    def _update_search(self, last: int) -> None:
        assert self._base is not None
        base, tried = self._tested[self._base], self._tested[last]
        changed = np.flatnonzero(tried != base)
        if len(changed) != 1:
            return
        plugin = int(changed[0])
        slower = (self._rates(last, adjusted=False)[plugin]
                  < self._rates(self._base, adjusted=False)[plugin])
        if self._failed(last) or slower:
            diff = int(tried[plugin] - base[plugin])
            if diff <= self.min_step:
                self._done[plugin] = True
            else:
                self._step[plugin] = diff // 2
            if not self._failed(last) and slower:
                logger.debug("Profiler: plugin %s slower at batch size %s than at %s", plugin,
                             tried[plugin], base[plugin])
            return
        self._base = last
        if self._step[plugin]:
            self._step[plugin] //= 2
            if self._step[plugin] == 0:
                self._done[plugin] = True


@dataclass
class Events:
    """Events between the profiling threads and the thread running the profile.

    Parameters
    ----------
    ready:
        One event per plugin, set when it has warmed up (or failed) for the current step.
    """

    ready: list[threading.Event]
    start: list[threading.Event] = field(default_factory=list)
    """One per plugin: the main thread says "run the next step"."""
    finished: list[threading.Event] = field(default_factory=list)
    """One per plugin: set when the plugin has reported the step."""
    go: threading.Event = field(default_factory=threading.Event)
    """Set when the measured run begins."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when the measured run ends (each plugin finishes its current batch)."""
    quit: threading.Event = field(default_factory=threading.Event)
    """Set when profiling is over."""

    def __post_init__(self) -> None:
        count = len(self.ready)
        self.start = self.start or [threading.Event() for _ in range(count)]
        self.finished = self.finished or [threading.Event() for _ in range(count)]

    def set_ready(self, index: int) -> None:
        """Say that plugin ``index`` is ready."""
        self.ready[index].set()

    def wait_ready(self) -> None:
        """Wait for every plugin to be ready, and clear the flags for the next step."""
        for event in self.ready:
            event.wait()
        for event in self.ready:
            event.clear()

    def wait_finished(self) -> None:
        """Wait for every plugin to report the step, and clear the flags."""
        for event in self.finished:
            event.wait()
        for event in self.finished:
            event.clear()


class Output:
    """Logs one table row per profiling step: batch sizes, samples/s per plugin, their mean and
    minimum (and the minimum scaled to frames when faces are scaled), and memory.

    Parameters
    ----------
    plugin_names:
        The plugins, in pipeline order.
    data:
        The tracker holding the results.
    run_time:
        The seconds each step was measured for.
    """

    def __init__(self, plugin_names: list[str], data: DataTracker, run_time: float) -> None:
        self._names = plugin_names
        self._data = data
        self._run_time = run_time
        self._rows = 0
        self._scaled = data.has_detector and len(plugin_names) > 1 and data.face_scaling > 1
        probe = data.probe
        unit = "MEM" if probe is None else probe.unit
        columns = [f"BS {name}" for name in plugin_names]
        columns += [f"S/s {name}" for name in plugin_names] + ["Mean S/s", "Min S/s"]
        if self._scaled:
            columns.append(f"Scaled min ({data.face_scaling}x)")
        columns.append(f"{unit} MB used/peak/limit")
        self._widths = [max(9, len(column)) for column in columns]
        self.header = " | ".join(c.rjust(w) for c, w in zip(columns, self._widths, strict=True))
        """The table's header line."""

    def __call__(self) -> str:
        """Log (at info level) and return the row of the latest test; the header first."""
        data = self._data
        if self._rows == 0:
            logger.info("[Profiler] %s", self.header)
        self._rows += 1
        row = len(data.tested) - 1
        sizes = data.tested[row]
        cells = [str(size) for size in sizes]
        if data.has_oom:
            cells += ["OOM"] * (len(self._names) + 2 + self._scaled)
        else:
            index = len(data.batch_sizes) - 1
            samples = data.get_samples(index)
            cells += [f"{value:.1f}" for value in samples]
            cells += [f"{samples.mean():.1f}", f"{samples.min():.1f}"]
            if self._scaled:
                cells.append(f"{data.get_samples_stats('min', index, adjusted=True):.1f}")
        used, peak = data.vram[row] if row < len(data.vram) else (0, 0)
        cells.append(f"{used / _MB:.0f}/{peak / _MB:.0f}/{data.vram_limit / _MB:.0f}")
        line = " | ".join(c.rjust(w) for c, w in zip(cells, self._widths, strict=True))
        logger.info("[Profiler] %s", line)
        return line


def _random_input(plugin: ExtractPlugin, batch_size: int, channels_last: bool) -> np.ndarray:
    from faceinfer.plugin_utils import random_input_from_plugin  # noqa: PLC0415 (torch)

    return random_input_from_plugin(plugin, batch_size, channels_last)


def _run_for(plugin: ExtractPlugin, feed: np.ndarray, seconds: float,
             probe: MemoryProbe | None = None) -> tuple[int, float]:
    """Run ``feed`` through the plugin for ``seconds`` (at least once); returns the batches
    run and the seconds they took. Samples ``probe`` after each batch."""
    count, start = 0, time.perf_counter()
    while True:
        plugin.process(feed)
        count += 1
        if probe is not None:
            probe.sample()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count, elapsed


class _Worker:
    """One plugin's profiling thread: for each step, warm up at the step's batch size, wait
    for the others, then run until told to stop."""

    def __init__(self, index: int, plugin: ExtractPlugin, channels_last: bool,
                 profile: PipelineProfile) -> None:
        self.index = index
        self.plugin = plugin
        self.channels_last = channels_last
        self._profile = profile
        self.batch_size = 1
        self.thread = PipelineThread(f"profile.{plugin.name}", self._run, profile.error_state)

    def _run(self) -> None:
        events = self._profile.events
        try:
            while True:
                events.start[self.index].wait()
                events.start[self.index].clear()
                if events.quit.is_set():
                    return
                self._step()
        except BaseException:  # noqa: BLE001 (recorded before the events below wake the main thread)
            self._profile.error_state.set()
        finally:  # never leave the main thread waiting, whatever happened
            events.set_ready(self.index)
            events.finished[self.index].set()

    def _step(self) -> None:
        profile, events, index = self._profile, self._profile.events, self.index
        feed = _random_input(self.plugin, self.batch_size, self.channels_last)
        iterations, elapsed = 0, 0.0
        try:
            _run_for(self.plugin, feed, profile.warmup_time, profile.probe)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            logger.debug("Profiler: '%s' out of memory at batch size %s in warm-up",
                         self.plugin.name, self.batch_size)
            iterations = -1
        events.set_ready(index)
        events.go.wait()
        if events.quit.is_set():  # profiling ended early (another plugin failed)
            return
        start = time.perf_counter()
        try:
            while iterations >= 0:
                self.plugin.process(feed)
                profile.probe.sample()
                iterations += 1
                elapsed = time.perf_counter() - start
                if events.stop.is_set():
                    break
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            logger.debug("Profiler: '%s' out of memory at batch size %s", self.plugin.name,
                         self.batch_size)
            iterations = -1
        del feed
        profile.data.update_iterations(iterations, index, elapsed)
        events.finished[index].set()


class PipelineProfile:
    """Profiles several torch plugins running at the same time, searching their batch sizes
    together (see :class:`DataTracker`). Each plugin's model must be loaded.

    Parameters
    ----------
    plugins:
        The plugins, in pipeline order.
    error_state:
        The pipeline's error state: an error other than running out of memory is recorded
        there and re-raised.
    channels_last:
        For each plugin, True if it takes (N, S, S, 3) input, False for (N, 3, S, S).
    warmup_time:
        Seconds each plugin runs at a step's batch sizes before measuring (at least one batch).
    run_time:
        Seconds each step is measured for (each plugin finishes its last batch).
    has_detector:
        True if the first plugin is a detector.
    face_scaling:
        Expected faces per frame: non-detector throughput is divided by it.
    max_vram:
        The memory bound in percent (see :class:`MemoryProbe`).
    max_batch_size:
        The largest batch size tried.
    min_step:
        A failed step of at most this many ends a plugin's search.
    max_steps:
        The most steps run, whatever the search says.
    """

    def __init__(self, plugins: list[ExtractPlugin], error_state: ErrorState,
                 channels_last: list[bool], warmup_time: float, run_time: float,
                 has_detector: bool, face_scaling: int = 2, max_vram: float = 90,
                 max_batch_size: int = 256, min_step: int = 4, max_steps: int = 40) -> None:
        if not plugins:
            raise ValueError("expected at least one plugin to profile, got none")
        if len(channels_last) != len(plugins):
            raise ValueError(f"expected one channels_last flag per plugin ({len(plugins)}), "
                             f"got {len(channels_last)}")
        if warmup_time < 0 or run_time <= 0:
            raise ValueError(f"expected warmup_time >= 0 and run_time > 0, got {warmup_time} "
                             f"and {run_time}")
        self.plugins = plugins
        self.error_state = error_state
        self.warmup_time = warmup_time
        self.run_time = run_time
        self.max_steps = max_steps
        device = next((p.device for p in plugins if p.device.startswith("cuda")), "cpu")
        self.probe = MemoryProbe(device, max_vram)
        """What measures memory, for the plugins' device."""
        self.data = DataTracker(len(plugins), max_vram, face_scaling, has_detector, self.probe,
                                max_batch_size, min_step)
        """The results and the search."""
        self.events = Events([threading.Event() for _ in plugins])
        self._workers = [_Worker(index, plugin, order, self)
                         for index, (plugin, order) in enumerate(zip(plugins, channels_last,
                                                                     strict=True))]
        self._output = Output([p.name for p in plugins], self.data, run_time)

    def __call__(self) -> None:
        """Run the search to its end (or ``max_steps``), logging a table row per step.

        Raises
        ------
        Exception
            Whatever a plugin raised other than running out of memory.
        """
        for worker in self._workers:
            worker.thread.start()
        try:
            steps = 0
            while not self.data.combos_exhausted and steps < self.max_steps:
                self._run_step()
                self._output()
                self.data.add_next_batch_sizes()
                steps += 1
        finally:  # wake every worker wherever it waits, and let it end
            self.events.quit.set()
            self.events.go.set()
            self.events.stop.set()
            for index, worker in enumerate(self._workers):
                self.events.start[index].set()
                worker.thread.join()
        self.error_state.re_raise()

    def _run_step(self) -> None:
        data, events = self.data, self.events
        data.add_iterations_row()
        sizes = data.next_batch_sizes
        self.probe.empty_cache()
        for worker, size in zip(self._workers, sizes, strict=True):
            worker.batch_size = int(size)
            events.start[worker.index].set()
        events.wait_ready()
        self._check()
        self.probe.reset()
        events.go.set()
        deadline = time.perf_counter() + self.run_time
        while (left := deadline - time.perf_counter()) > 0 and not self.error_state.has_error:
            events.stop.wait(min(left, 0.05))  # nobody sets it yet: a cancellable pause
            self.probe.sample()
        events.stop.set()
        events.wait_finished()
        events.go.clear()
        events.stop.clear()
        self._check()
        data.collect_vram()

    def _check(self) -> None:
        if self.error_state.has_error:
            self.error_state.re_raise()


class ModelProfile:
    """Profiles one torch plugin alone at batch sizes 1, 2, 4 ... up to a maximum, stopping at
    the first that runs out of memory or goes over the memory bound. The model must be loaded.

    Parameters
    ----------
    plugin:
        The plugin.
    max_batch_size:
        The largest batch size tried.
    channels_last:
        True if the plugin takes (N, S, S, 3) input.
    run_time:
        Seconds measured at each batch size.
    warmup_time:
        Seconds run before measuring at each batch size (at least one batch).
    max_vram:
        The memory bound in percent (see :class:`MemoryProbe`).
    """

    def __init__(self, plugin: ExtractPlugin, max_batch_size: int = 128,
                 channels_last: bool = False, run_time: float = 10,
                 warmup_time: float = 1.0, max_vram: float = 85) -> None:
        if max_batch_size < 1 or run_time <= 0:
            raise ValueError(f"expected max_batch_size >= 1 and run_time > 0, got "
                             f"{max_batch_size} and {run_time}")
        self.plugin = plugin
        self.max_batch_size = max_batch_size
        self.channels_last = channels_last
        """True if the plugin expects channels last input."""
        self._run_time = run_time
        self.warmup_time = warmup_time
        self.probe = MemoryProbe(plugin.device, max_vram)
        self.results: dict[int, float] = {}
        """Samples per second at each batch size that fitted."""
        self.memory: dict[int, tuple[int, int]] = {}
        """(in use, peak) bytes at each batch size tried (see :meth:`MemoryProbe.read`)."""

    @property
    def run_time(self) -> float:
        """The seconds measured at each batch size."""
        return self._run_time

    @property
    def best_batch_size(self) -> int | None:
        """The batch size with the highest throughput (None before :meth:`__call__`)."""
        if not self.results:
            return None
        return max(self.results, key=lambda size: self.results[size])

    def _sizes(self) -> Iterator[int]:
        size = 1
        while size <= self.max_batch_size:
            yield size
            size *= 2

    def __call__(self) -> None:
        """Run the plugin at each batch size, store and log samples/s and memory."""
        for size in self._sizes():
            feed = _random_input(self.plugin, size, self.channels_last)
            self.probe.empty_cache()
            try:
                _run_for(self.plugin, feed, self.warmup_time)
                self.probe.reset()
                count, elapsed = _run_for(self.plugin, feed, self._run_time, self.probe)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                logger.info("[ModelProfile] %s: out of memory at batch size %s",
                            self.plugin.name, size)
                break
            self.memory[size] = self.probe.read()
            if self.memory[size][1] > self.probe.limit:
                logger.info("[ModelProfile] %s: batch size %s goes over the %s bound",
                            self.plugin.name, size, self.probe.unit)
                break
            self.results[size] = count * size / elapsed
            logger.info("[ModelProfile] %s batch size %4d: %8.1f samples/s, %s peak %.0f MB",
                        self.plugin.name, size, self.results[size], self.probe.unit,
                        self.memory[size][1] / _MB)


def save_batch_sizes(path: str | Path, sizes: dict[tuple[str, str], int]) -> None:
    """Write ``batch_size`` into the ``[<type>.<name>]`` table of each plugin in a TOML config
    file, keeping the rest of the file as it was (comments included); missing tables are
    appended. Written atomically; the result is read back and checked.

    Parameters
    ----------
    path:
        The config file (created if missing).
    sizes:
        Batch size by (plugin type, plugin name).

    Raises
    ------
    ConfigError
        If the file is not valid TOML, or sets the plugin's table in a form this editor does
        not handle (dotted keys or inline tables): nothing is written then.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not a valid TOML config file: {err}") from err
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(#.*)?$")
    for (kind, name), size in sizes.items():
        wanted = f"{kind}.{name}"
        start = next((i for i, line in enumerate(lines)
                      if (m := header.match(line)) and m.group(1).replace('"', "") == wanted),
                     None)
        if start is None:
            lines += (["", f"[{wanted}]"] if lines else [f"[{wanted}]"]) + [
                f"batch_size = {size}"]
            continue
        end = next((i for i in range(start + 1, len(lines))
                    if lines[i].lstrip().startswith("[")), len(lines))
        key = re.compile(r"^\s*batch_size\s*=")
        found = next((i for i in range(start + 1, end) if key.match(lines[i])), None)
        if found is None:
            lines.insert(start + 1, f"batch_size = {size}")
        else:
            lines[found] = f"batch_size = {size}"
    out = "\n".join(lines) + "\n"
    try:
        parsed = tomllib.loads(out)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: cannot set batch sizes in this file: {err}") from err
    for (kind, name), size in sizes.items():
        if parsed.get(kind, {}).get(name, {}).get("batch_size") != size:
            raise ConfigError(f"{path}: cannot set batch_size of [{kind}.{name}] in this "
                              "file (dotted keys or inline tables?): set it by hand")
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(out)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class _Candidate:
    runner: ExtractRunner[Any]
    plugin: ExtractPlugin
    channels_last: bool


class Profiler:
    """Profiles the torch plugins of a chain built with ``profile=True``, sets the batch sizes
    that maximise the slowest stage's throughput, then starts the chain's threads.

    Plugins without torch modules (dlib, landmark masks) are not profiled, and neither is a
    plugin whose warm-up fails in both channel orders; with nothing to profile the threads are
    just started.

    Parameters
    ----------
    runner:
        Any runner of the chain (usually its last).
    warmup_time:
        Seconds of warm-up at each step. Default: 2.
    run_time:
        Seconds measured at each step. Default: 10.
    max_memory:
        The memory bound in percent: of total VRAM on CUDA, of the memory available to the
        process on the CPU. Default: 85.
    face_scaling:
        Expected faces per frame. Default: 2.
    save_config:
        A TOML config file to save the chosen batch sizes in, or None.
    max_batch_size:
        The largest batch size tried. Default: 256.
    min_step:
        A failed step of at most this many ends a plugin's search. Default: 4.
    max_steps:
        The most profiling steps. Default: 40.
    """

    def __init__(self, runner: ExtractRunner[Any], warmup_time: float = 2.0,
                 run_time: float = 10.0, max_memory: float = 85, face_scaling: int = 2,
                 save_config: str | Path | None = None, max_batch_size: int = 256,
                 min_step: int = 4, max_steps: int = 40) -> None:
        self.runner = runner
        self.warmup_time = warmup_time
        self.run_time = run_time
        self.max_memory = max_memory
        self.face_scaling = face_scaling
        self.save_config = save_config
        self.max_batch_size = max_batch_size
        self.min_step = min_step
        self.max_steps = max_steps
        self.chosen: dict[str, int] = {}
        """The batch size set on each profiled plugin, by ``<type>.<name>``."""

    def __call__(self) -> None:
        """Profile, set the batch sizes, save them if asked, and start every thread.

        Raises
        ------
        PipelineError
            If the chain's threads were already started.
        """
        from faceinfer.runner import get_pipeline  # noqa: PLC0415 (runner imports handlers)

        runners = get_pipeline(self.runner)
        started = [runner for runner in runners if runner.started]
        if started:
            raise PipelineError(f"{started[0]!r} was already started: build the chain with "
                                "profile=True to profile it")
        candidates = self._candidates(runners)
        if not candidates:
            logger.info("[Profiler] No torch plugin to profile; starting the pipeline")
        else:
            self._profile(candidates)
        for runner in runners:
            runner.start()

    @staticmethod
    def _candidates(runners: Sequence[ExtractRunner[Any]]) -> list[_Candidate]:
        from faceinfer.plugin_utils import get_torch_modules, warmup_plugin  # noqa: PLC0415

        found: list[_Candidate] = []
        for runner in runners:
            handler = runner.handler
            if handler.plugin_type == "file" or not handler.processors:
                continue
            handler.load_model()  # compiled, if asked, once its batch size is chosen
            plugin = handler.plugin
            if not get_torch_modules(plugin.model):
                logger.info("[Profiler] Not profiling %s plugin '%s': it has no torch modules",
                            handler.plugin_type, plugin.name)
                continue
            order = warmup_plugin(plugin, 1)
            if order is None:
                logger.warning("[Profiler] Not profiling %s plugin '%s': random input fails in "
                               "both channel orders", handler.plugin_type, plugin.name)
                continue
            found.append(_Candidate(runner, plugin, order))
        return found

    def _profile(self, candidates: list[_Candidate]) -> None:
        first = candidates[0].runner
        names = [f"{c.runner.handler.plugin_type}.{c.plugin.name}" for c in candidates]
        logger.info("[Profiler] Profiling %s: %.3g s warm-up and %.3g s measured per step",
                    ", ".join(names), self.warmup_time, self.run_time)
        profile = PipelineProfile(
            [c.plugin for c in candidates], first.threads.error_state,
            [c.channels_last for c in candidates], self.warmup_time, self.run_time,
            has_detector=first.handler.plugin_type == "detect",
            face_scaling=self.face_scaling, max_vram=self.max_memory,
            max_batch_size=self.max_batch_size, min_step=self.min_step,
            max_steps=self.max_steps)
        profile()
        best = profile.data.best()
        if best is None:
            logger.warning("[Profiler] Every batch size tried ran out of memory; keeping the "
                           "configured batch sizes")
            return
        for candidate, size in zip(candidates, best, strict=True):
            candidate.runner.set_batch_size(int(size))
        self.chosen = dict(zip(names, (int(size) for size in best), strict=True))
        logger.info("[Profiler] Setting optimal batch sizes: %s",
                    ", ".join(f"{name}: {size}" for name, size in self.chosen.items()))
        if self.save_config is not None:
            save_batch_sizes(self.save_config, {
                (c.runner.handler.plugin_type, c.plugin.name): int(size)
                for c, size in zip(candidates, best, strict=True)})
            logger.info("[Profiler] Saved the batch sizes to %s", self.save_config)


__all__ = ["DataTracker", "Events", "MemoryProbe", "ModelProfile", "Output", "PipelineProfile",
           "Profiler", "is_out_of_memory", "save_batch_sizes"]
