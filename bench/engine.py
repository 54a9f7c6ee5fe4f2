"""Benchmark of the pipeline engine with the no-op test plugins.

Runs ``Identity(Mask(Align(Detect())))`` with the ``test-noop`` plugins at their default batch
sizes over 640x360 uint8 BGR frames, fed from a thread and read back in the main thread. The
no-op detector gives every frame two boxes; the other no-op plugins return constant results
without computing anything. Everything else is the engine's real work: letterboxing every frame,
cropping and warping every face for three stages, re-batching, the threads and queues, and one
``FrameFaces`` per frame. So the wall time per frame is the engine's cost per frame. The
plugins' own time is measured separately, by calling them directly, and printed beside it.

Prints a summary with the issue's targets next to the figures (>= 3,000 frames/s on a 2-core
machine, RSS growth < 50 MB; they are not asserted), then, as the last line, a JSON object::

    {"frames_per_s": ..., "overhead_ms_per_frame": ..., "rss_growth_mb": ...}

Exits non-zero if any output frame lacks exactly two faces, comes out of order, or frames go
missing.

Usage: ``python bench/engine.py [--frames N] [--warmup N]``
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import psutil

from faceinfer import Align, Detect, ExtractRunner, Identity, Mask
from faceinfer.errors import PipelineClosedError, PipelineError
from faceinfer.handler import format_images
from faceinfer.plugins.base import ExtractPlugin

FRAME_HEIGHT = 360
FRAME_WIDTH = 640
FACE_SIDE = 80
FACES_PER_FRAME = 2
POOL_SIZE = 16
RSS_INTERVAL_S = 0.05
PLUGIN_REPEATS = 200
MB = 1024 * 1024

TARGET_FPS = 3000.0
TARGET_RSS_GROWTH_MB = 50.0


class BenchmarkError(RuntimeError):
    """The pipeline's output was wrong: missing frames, wrong face counts or wrong order."""


def make_frames(count: int = POOL_SIZE) -> list[np.ndarray]:
    """``count`` distinct frames, each with two white squares well apart (left and right
    halves), at positions that differ from frame to frame."""
    rng = np.random.default_rng(1234)
    frames: list[np.ndarray] = []
    half = FRAME_WIDTH // 2
    for _ in range(count):
        frame = rng.integers(0, 120, size=(FRAME_HEIGHT, FRAME_WIDTH, 3), dtype=np.uint8)
        for offset in (0, half):
            left = offset + int(rng.integers(10, half - FACE_SIDE - 10))
            top = int(rng.integers(10, FRAME_HEIGHT - FACE_SIDE - 10))
            frame[top:top + FACE_SIDE, left:left + FACE_SIDE] = 255
        frames.append(frame)
    return frames


PLUGIN = "test-noop"


def build_pipeline() -> ExtractRunner[Identity]:
    """The four no-op test stages at their default batch sizes."""
    pipeline: ExtractRunner[Identity] = Identity(PLUGIN)(Mask(PLUGIN)(Align(PLUGIN)(
        Detect(PLUGIN)())))
    return pipeline


@dataclass
class RunResult:
    """What one run through the pipeline measured."""

    frames: int
    wall_s: float
    cpu_s: float
    rss_start: int
    rss_peak: int
    rss_end: int


class RssSampler:
    """Samples the process's RSS every ``interval`` seconds on a thread and keeps the peak."""

    def __init__(self, process: psutil.Process, interval: float = RSS_INTERVAL_S) -> None:
        self._process = process
        self._interval = interval
        self._stop = threading.Event()
        self.peak = process.memory_info().rss
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def frame_name(index: int) -> str:
    """The file name of frame ``index``."""
    return f"frame_{index:08d}"


def run_pipeline(pool: list[np.ndarray], count: int, process: psutil.Process) -> RunResult:
    """Put ``count`` frames (cycling through ``pool``) through a new pipeline from a feeder
    thread, check every output, and measure wall time, CPU time and RSS.

    Raises
    ------
    BenchmarkError
        If an output frame has the wrong name (order) or face count, or frames are missing.
    """
    gc.collect()
    pipeline = build_pipeline()

    def feed() -> None:
        try:
            for index in range(count):
                pipeline.put(frame_name(index), pool[index % len(pool)])
        except PipelineClosedError:
            return  # the main thread closed the pipeline after a failed check
        except Exception:
            pipeline.close()  # the main thread's next() raises instead of waiting for frames
            raise
        pipeline.stop()

    rss_start = process.memory_info().rss
    cpu_start = process.cpu_times()
    received = 0
    with pipeline, RssSampler(process) as sampler:
        feeder = threading.Thread(target=feed, name="feeder", daemon=True)
        start = time.perf_counter()
        feeder.start()
        for media in pipeline:
            expected = frame_name(received)
            if media.filename != expected:
                raise BenchmarkError(f"frame {received}: expected '{expected}', got "
                                     f"'{media.filename}' (outputs out of order)")
            faces = len(media.bboxes)
            if faces != FACES_PER_FRAME:
                raise BenchmarkError(f"frame '{media.filename}': expected {FACES_PER_FRAME} "
                                     f"faces, got {faces}")
            received += 1
        wall = time.perf_counter() - start
        feeder.join()
    cpu_end = process.cpu_times()
    rss_end = process.memory_info().rss
    if received != count:
        raise BenchmarkError(f"expected {count} output frames, got {received}")
    cpu = (cpu_end.user - cpu_start.user) + (cpu_end.system - cpu_start.system)
    return RunResult(count, wall, cpu, rss_start, sampler.peak, rss_end)


def _time_calls(function: Callable[[np.ndarray], object], argument: np.ndarray, repeats: int
                ) -> tuple[float, object]:
    """Mean seconds per call of ``function(argument)`` over ``repeats`` calls, and a result."""
    result = function(argument)
    start = time.perf_counter()
    for _ in range(repeats):
        function(argument)
    return (time.perf_counter() - start) / repeats, result


def plugin_ms_per_frame(pool: list[np.ndarray], repeats: int = PLUGIN_REPEATS
                        ) -> tuple[float, dict[str, float]]:
    """The plugins' own compute time per frame: each plugin's ``pre_process``, ``process`` and
    ``post_process`` called directly on one batch shaped like the pipeline's (a full detector
    batch of letterboxed frames; a full batch of face crops for the other stages), divided by
    the frames that batch stands for.

    Returns
    -------
    The total in ms per frame, and the ms per frame of each plugin.
    """
    detect = Detect(PLUGIN)
    align = Align(PLUGIN)
    mask = Mask(PLUGIN)
    identity = Identity(PLUGIN)

    # Detector input: letterboxed frames, as Detect.pre_process builds them.
    size = detect.plugin.input_size
    frames = [pool[i % len(pool)] for i in range(detect.batch_size)]
    scale = size / max(FRAME_HEIGHT, FRAME_WIDTH)
    new_w, new_h = round(FRAME_WIDTH * scale), round(FRAME_HEIGHT * scale)
    pad_y = (size - new_h) // 2
    feed = np.zeros((len(frames), size, size, 3), dtype=np.uint8)
    for index, frame in enumerate(frames):
        feed[index, pad_y:pad_y + new_h, :new_w] = cv2.resize(
            frame, (new_w, new_h), interpolation=cv2.INTER_AREA)
    batches: list[tuple[str, ExtractPlugin, np.ndarray, float]] = [
        ("detect", detect.plugin, format_images(feed, detect.plugin), detect.batch_size)]

    # Face stages: a full batch of crops of a white square on a dark background (the square
    # filling the middle of the crop, as the stages cut it) at each plugin's input size.
    crop = np.full((FACE_SIDE + 40, FACE_SIDE + 40, 3), 60, dtype=np.uint8)
    crop[20:20 + FACE_SIDE, 20:20 + FACE_SIDE] = 255
    face_handlers: list[tuple[str, Align | Mask | Identity]] = [
        ("align", align), ("mask", mask), ("identity", identity)]
    for name, handler in face_handlers:
        side = handler.plugin.input_size
        face = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
        faces = np.zeros((handler.batch_size, side, side, 3), dtype=np.uint8)
        faces[:] = face
        batches.append((name, handler.plugin, format_images(faces, handler.plugin),
                        handler.batch_size / FACES_PER_FRAME))

    per_plugin: dict[str, float] = {}
    for name, plugin, data, frames_per_batch in batches:
        plugin.load_model()
        total = 0.0
        value: object = data
        for step in (plugin.pre_process, plugin.process, plugin.post_process):
            assert isinstance(value, np.ndarray)
            seconds, value = _time_calls(step, value, repeats)
            total += seconds
        per_plugin[name] = total * 1000.0 / frames_per_batch
    return sum(per_plugin.values()), per_plugin


def _target(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 if the pipeline failed or its output was wrong."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=20_000,
                        help="frames in the timed run (default: 20000)")
    parser.add_argument("--warmup", type=int, default=200,
                        help="frames through a separate first pipeline, not timed (default: 200)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="timed runs, each on a new pipeline; the median is reported, as "
                             "this machine's speed drifts from run to run (default: 3)")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.warmup < 0 or args.repeat < 1:
        parser.error("--frames and --repeat must be >= 1 and --warmup >= 0")
    # The pipeline runs its stages in parallel; OpenCV's own thread pool splitting each small
    # resize or warp only adds hand-offs on 2 cores. Applications should do the same.
    cv2.setNumThreads(1)

    process = psutil.Process()
    cores = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    pool = make_frames()
    load_before = os.getloadavg()[0]
    try:
        if args.warmup:
            run_pipeline(pool, args.warmup, process)
        runs = [run_pipeline(pool, args.frames, process) for _ in range(args.repeat)]
    except (BenchmarkError, PipelineError) as err:
        print(f"benchmark failed: {err}", file=sys.stderr)
        return 1
    plugin_ms, per_plugin = plugin_ms_per_frame(pool)

    all_fps = sorted(run.frames / run.wall_s for run in runs)
    result = sorted(runs, key=lambda run: run.frames / run.wall_s)[len(runs) // 2]
    fps = result.frames / result.wall_s
    overhead_ms = result.wall_s * 1000.0 / result.frames
    # Memory across every timed run: a leak shows as growth from the first run's start.
    start_mb = runs[0].rss_start / MB
    peak_mb = max(run.rss_peak for run in runs) / MB
    end_mb = runs[-1].rss_end / MB
    growth_mb = end_mb - start_mb
    cpu_util = result.cpu_s / result.wall_s / cores

    print(f"faceinfer engine benchmark: Identity(Mask(Align(Detect))) with the '{PLUGIN}' "
          "plugins, default batch sizes")
    print(f"  frames               : {len(runs)} timed runs of {result.frames} "
          f"({FRAME_WIDTH}x{FRAME_HEIGHT} BGR, {FACES_PER_FRAME} faces each, pool of "
          f"{len(pool)}), {args.warmup} warm-up")
    print(f"  output check         : {result.frames} frames, {FACES_PER_FRAME} faces each, "
          "in input order")
    print(f"  wall time            : {result.wall_s:.3f} s (median run)")
    print(f"  throughput           : {fps:,.0f} frames/s median   (target >= {TARGET_FPS:,.0f}: "
          f"{_target(fps >= TARGET_FPS)}); runs: "
          + ", ".join(f"{value:,.0f}" for value in all_fps))
    print(f"  overhead per frame   : {overhead_ms:.4f} ms   (wall time per frame, everything "
          "included)")
    print(f"  plugin compute/frame : {plugin_ms:.4f} ms   (the plugins alone, called directly, "
          "single-threaded: "
          + ", ".join(f"{name} {value:.4f}" for name, value in per_plugin.items()) + ")")
    print(f"  RSS start/peak/end   : {start_mb:.1f} / {peak_mb:.1f} / {end_mb:.1f} MB "
          f"(over all {len(runs) * result.frames} timed frames)")
    print(f"  RSS growth           : {growth_mb:+.1f} MB end - start (target < "
          f"{TARGET_RSS_GROWTH_MB:.0f}: {_target(growth_mb < TARGET_RSS_GROWTH_MB)}), "
          f"{peak_mb - start_mb:+.1f} MB peak - start")
    print(f"  CPU                  : {result.cpu_s:.2f} s process CPU, "
          f"{cpu_util * 100.0:.1f}% of {cores} cores")
    print(f"  load average (1 min) : {load_before:.2f} before the runs (other processes on the "
          "machine skew these figures)")
    print(json.dumps({"frames_per_s": round(fps, 1),
                      "overhead_ms_per_frame": round(overhead_ms, 4),
                      "rss_growth_mb": round(growth_mb, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
