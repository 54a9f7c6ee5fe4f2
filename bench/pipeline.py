"""Speed of the default extraction chain through the threaded pipeline against a plain loop, per
stage, and against the 2-core compute bound.

Chains: mtcnn -> dlib-68 (re-align) -> components mask -> dlib-resnet identity, and the same
without identity. Inputs: the sample video (426x240, 91 frames) decoded once with PyAV and looped
to ``--frames`` frames, then the four sample photos repeated ``--photo-passes`` times (frames are
loaded with ``bench/detect_align.py``'s ``load_frames``).

For each chain and input, in one run:

* plain loop: each stage's pre_process, process and post_process on a batch of one frame, stage
  after stage, in the main thread (stages after detection skip frames without faces, as the
  pipeline does);
* pipeline: the same plugins chained as in the README ("The API in a few lines"), default batch
  sizes, fed from a thread.

Each run gets new handlers. Their ``pre_process``/``process``/``post_process`` are wrapped (on
the instance, which is what the runner's threads look up) with a timer that adds up, per call:
wall time (``time.perf_counter``), the calling thread's CPU time (``time.thread_time``) and the
process's CPU time (``time.process_time``). In the pipeline each processor is its own thread, so
its wall total is that thread's busy time; throughput of a stage = frames / its busiest
processor's busy time. Thread CPU leaves out the work that a library hands to its own thread pool
(torch's intra-op threads), so the compute cost of a stage is taken from the plain loop, where
nothing else runs: the process CPU time spent inside the stage's calls. The compute bound is
``cores / sum(stage CPU-seconds per frame)`` frames/s and ``bound_fraction = pipeline fps /
bound``. CPU utilisation is the process's ``psutil`` user+system CPU delta / wall / cores.

Targets (issue 7, not asserted): pipeline >= 1.8x the plain loop and >= 0.85 of the compute
bound. Prints the figures, then as the last line a JSON object for the chain without identity on
the video::

    {"pipeline_fps": ..., "loop_fps": ..., "ratio": ..., "bound_fraction": ...,
     "bound_fps": ..., "cpu_utilisation": ..., "identity_pipeline_fps": ...,
     "identity_loop_fps": ..., "identity_ratio": ..., "identity_bound_fraction": ...}

``--loop-threads N`` runs the plain loop on N torch intra-op threads (default: torch's own, one
per core) and the pipeline on torch's default, to compare the pipeline with a loop that keeps
one core busy; the JSON line then says ``"loop_threads": N``.

Usage: ``python bench/pipeline.py [--frames N] [--photo-passes N] [--no-identity]
[--loop-threads N]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import psutil
import torch
from detect_align import DATA, feed_and_count, load_frames

from faceinfer import Align, Detect, ExtractRunner, Identity, Mask
from faceinfer.handler import ExtractHandler
from faceinfer.objects import ExtractBatch

TARGET_RATIO = 1.8
TARGET_BOUND = 0.85
Frames = list[tuple[str, np.ndarray]]


@dataclass
class Timer:
    """Totals for one processor of one stage."""

    calls: int = 0
    wall: float = 0.0
    thread_cpu: float = 0.0
    process_cpu: float = 0.0


@dataclass
class Stage:
    """One handler and the timers wrapped round its processors."""

    name: str
    handler: ExtractHandler
    timers: dict[str, Timer] = field(default_factory=dict)

    @property
    def busy(self) -> float:
        """Wall seconds in the stage's calls, all processors."""
        return sum(timer.wall for timer in self.timers.values())

    @property
    def busiest(self) -> float:
        """Wall seconds of the busiest processor (its thread, in the pipeline)."""
        return max((timer.wall for timer in self.timers.values()), default=0.0)

    @property
    def thread_cpu(self) -> float:
        return sum(timer.thread_cpu for timer in self.timers.values())

    @property
    def process_cpu(self) -> float:
        return sum(timer.process_cpu for timer in self.timers.values())


def timed(method: Callable[[ExtractBatch], None], timer: Timer) -> Callable[[ExtractBatch], None]:
    def wrapper(batch: ExtractBatch) -> None:
        wall, thread, proc = time.perf_counter(), time.thread_time(), time.process_time()
        try:
            method(batch)
        finally:
            timer.calls += 1
            timer.wall += time.perf_counter() - wall
            timer.thread_cpu += time.thread_time() - thread
            timer.process_cpu += time.process_time() - proc
    return wrapper


def make_stages(identity: bool) -> list[Stage]:
    """New handlers of the chain, models loaded, processors wrapped with timers."""
    handlers: list[tuple[str, ExtractHandler]] = [
        ("detect mtcnn", Detect("mtcnn")),
        ("align dlib-68", Align("dlib-68", re_align=True)),
        ("mask components", Mask("components"))]
    if identity:
        handlers.append(("identity dlib-resnet", Identity("dlib-resnet")))
    stages = []
    for name, handler in handlers:
        handler.init_model()
        stage = Stage(name, handler)
        for processor in handler.processors:
            stage.timers[processor] = Timer()
            setattr(handler, processor, timed(getattr(handler, processor),
                                              stage.timers[processor]))
        stages.append(stage)
    return stages


def plain_loop(frames: Frames, stages: list[Stage]) -> int:
    """The frames one at a time, stage after stage, in this thread; returns the faces found."""
    faces = 0
    for name, image in frames:
        batch = ExtractBatch([name], [image])
        for index, stage in enumerate(stages):
            if index and batch.num_faces == 0:
                continue
            for processor in stage.handler.processors:
                getattr(stage.handler, processor)(batch)
            batch.clear_transient()
        faces += batch.num_faces
    return faces


def pipeline(frames: Frames, stages: list[Stage]) -> int:
    """The frames through the threaded pipeline; returns the faces found."""
    runner: ExtractRunner[Any] = stages[0].handler()
    for stage in stages[1:]:
        runner = stage.handler(runner)
    return feed_and_count(runner, frames)


@dataclass
class Run:
    """One timed run of a chain over some frames."""

    frames: int
    faces: int
    wall: float
    cpu: float
    stages: list[Stage]

    @property
    def fps(self) -> float:
        return self.frames / self.wall


def timed_run(kind: Callable[[Frames, list[Stage]], int], frames: Frames,
              identity: bool, threads: int | None = None) -> Run:
    """``kind`` on the frames with new stages, on ``threads`` torch intra-op threads (None:
    torch's default) in this thread and the threads started meanwhile."""
    stages = make_stages(identity)
    default = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    process = psutil.Process()
    before = process.cpu_times()
    start = time.perf_counter()
    try:
        faces = kind(frames, stages)
    finally:
        torch.set_num_threads(default)
    wall = time.perf_counter() - start
    after = process.cpu_times()
    cpu = after.user + after.system - before.user - before.system
    return Run(len(frames), faces, wall, cpu, stages)


def report(title: str, frames: Frames, identity: bool, cores: int,
           loop_threads: int | None) -> dict[str, float]:
    """Loop and pipeline on ``frames``; prints the figures and returns the headline ones."""
    loop = timed_run(plain_loop, frames, identity, loop_threads)
    pipe = timed_run(pipeline, frames, identity)
    stage_cpu = sum(stage.process_cpu for stage in loop.stages) / loop.frames
    bound_fps = cores / stage_cpu
    ratio = pipe.fps / loop.fps
    bound_fraction = pipe.fps / bound_fps
    print(f"{title}: {len(frames)} frames"
          + (f", plain loop on {loop_threads} torch threads" if loop_threads else ""))
    for label, run in (("plain loop", loop), ("pipeline", pipe)):
        print(f"  {label:10s} {run.fps:7.2f} frames/s  {run.faces:5d} faces  {run.wall:7.1f} s  "
              f"{run.cpu / run.frames * 1000:6.0f} CPU-ms a frame  CPU "
              f"{run.cpu / run.wall / cores:4.0%} of {cores} cores")
    print(f"  ratio {ratio:.2f} (target >= {TARGET_RATIO}); compute bound {bound_fps:.2f} frames/s "
          f"({stage_cpu * 1000:.0f} stage CPU-ms a frame / {cores} cores), pipeline at "
          f"{bound_fraction:.2f} of it (target >= {TARGET_BOUND})")
    print(f"  {'stage':22s} {'loop CPU-ms/frame':>17s} {'loop frames/s':>13s}   "
          f"{'pipe busy s':>11s} {'busiest % wall':>14s} {'thread CPU s':>12s} "
          f"{'stage frames/s':>14s}")
    for looped, piped in zip(loop.stages, pipe.stages, strict=True):
        busiest = piped.busiest
        print(f"  {looped.name:22s} {looped.process_cpu / loop.frames * 1000:17.1f} "
              f"{loop.frames / looped.busy:13.1f}   {piped.busy:11.1f} "
              f"{busiest / pipe.wall:14.0%} {piped.thread_cpu:12.1f} "
              f"{pipe.frames / busiest if busiest else 0.0:14.1f}")
    return {"pipeline_fps": round(pipe.fps, 2), "loop_fps": round(loop.fps, 2),
            "ratio": round(ratio, 3), "bound_fraction": round(bound_fraction, 3),
            "bound_fps": round(bound_fps, 2),
            "cpu_utilisation": round(pipe.cpu / pipe.wall / cores, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=500, help="video frames (looped)")
    parser.add_argument("--photo-passes", type=int, default=5,
                        help="times the four photos are put through (default: 5)")
    parser.add_argument("--no-identity", action="store_true",
                        help="only the chain without identity")
    parser.add_argument("--loop-threads", type=int, default=None,
                        help="torch intra-op threads of the plain loop (default: torch's)")
    args = parser.parse_args()
    if args.frames < 1 or args.photo_passes < 0:
        parser.error("--frames must be >= 1 and --photo-passes >= 0")
    if args.loop_threads is not None and args.loop_threads < 1:
        parser.error("--loop-threads must be >= 1")
    if not DATA.is_dir():
        print(f"needs the sample data in {DATA}", file=sys.stderr)
        return 2
    # The pipeline runs its stages in parallel; OpenCV's own thread pool splitting each small
    # resize or warp only adds hand-offs on 2 cores (as bench/engine.py does).
    cv2.setNumThreads(1)
    cores = psutil.cpu_count(logical=True) or 1
    loaded = load_frames(args.frames)
    video, photos = loaded[:args.frames], loaded[args.frames:] * args.photo_passes
    warm = video[:8]
    for identity in (False,) if args.no_identity else (False, True):  # warm-up: first calls
        plain_loop(warm, make_stages(identity))
        pipeline(warm, make_stages(identity))
    result: dict[str, float] = {}
    chains = [("mtcnn -> dlib-68 (re-align) -> components", False)]
    if not args.no_identity:
        chains.append(("mtcnn -> dlib-68 (re-align) -> components -> dlib-resnet", True))
    for chain, identity in chains:
        figures = report(f"{chain}, video ({args.frames} frames looped)", video, identity, cores,
                         args.loop_threads)
        if photos:
            report(f"{chain}, photos ({args.photo_passes} passes)", photos, identity, cores,
                   args.loop_threads)
        if identity:
            result.update({f"identity_{key}": value for key, value in figures.items()})
        else:
            result.update(figures)
    if args.loop_threads is not None:
        result["loop_threads"] = args.loop_threads
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
