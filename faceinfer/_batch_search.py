"""The profiler's batch-size search and its memory bound (see :mod:`faceinfer.profile`, which
re-exports :class:`DataTracker`, :class:`MemoryProbe` and :func:`is_out_of_memory`).

:class:`DataTracker` keeps every profiling step's throughput and memory and decides the next
batch sizes: the slowest plugin's size doubles until a step fails, then the step halves between
the last good and the failed size. :class:`MemoryProbe` measures a step's memory: peak reserved
VRAM on CUDA, sampled RSS elsewhere.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import InitVar, dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

from faceinfer.errors import OutOfMemoryError

logger = logging.getLogger("faceinfer.profile")

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
