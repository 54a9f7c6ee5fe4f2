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
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceinfer._batch_search import _MB, DataTracker, MemoryProbe, is_out_of_memory
from faceinfer.config import save_batch_sizes
from faceinfer.errors import PipelineError
from faceinfer.plugins.base import ExtractPlugin
from faceinfer.threads import ErrorState, PipelineThread

if TYPE_CHECKING:
    from faceinfer.runner import ExtractRunner

logger = logging.getLogger(__name__)

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
