"""Does the profiler's batch size beat the default? mtcnn, the default chain's torch plugin.

1. ``ModelProfile``: mtcnn alone at batch sizes 1, 2, 4 ... ``--max-batch`` on random input.
2. ``Profiler`` on the default chain built with ``profile=True`` (mtcnn -> dlib-68; dlib-68 has
   no torch modules and is not profiled): the batch size it sets on mtcnn.
3. On real frames (the sample video, letterboxed by the Detect stage): frames/s of
   ``plugin.process`` at the default batch size and at the profiled one, in alternating rounds
   (best round of each reported, so that a busy moment on a shared machine hurts both alike).

Prints the figures, then as the last line a JSON object::

    {"default_batch": ..., "profiled_batch": ..., "default_fps": ..., "profiled_fps": ...}

Usage: ``python bench/profiler.py [--warmup S] [--time S] [--max-batch N] [--rounds N]
[--device cpu|cuda]``
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import av
import numpy as np

from faceinfer import Align, Detect
from faceinfer.objects import ExtractBatch
from faceinfer.profile import ModelProfile, Profiler

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"


def real_feed(detect: Detect, count: int) -> np.ndarray:
    """(count, S, S, 3) mtcnn input: the video's frames (looped), letterboxed and formatted by
    the Detect stage's own pre-processing."""
    with av.open(str(DATA / "test.mp4")) as container:
        video = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    images = [video[index % len(video)] for index in range(count)]
    batch = ExtractBatch([f"f{i}" for i in range(count)], images)
    detect.pre_process(batch)
    return np.ascontiguousarray(batch.data)


def frames_per_second(detect: Detect, feed: np.ndarray, batch_size: int) -> float:
    """Frames/s of mtcnn's process over every frame of ``feed`` in batches of ``batch_size``."""
    plugin = detect.plugin
    plugin.batch_size = batch_size
    plugin.process(feed[:batch_size])  # buffers for this size
    start = time.perf_counter()
    for first in range(0, len(feed) - len(feed) % batch_size, batch_size):
        plugin.process(feed[first:first + batch_size])
    done = len(feed) - len(feed) % batch_size
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warmup", type=float, default=2.0, help="profiler warm-up per step")
    parser.add_argument("--time", type=float, default=10.0, help="profiler time per step")
    parser.add_argument("--max-batch", type=int, default=64, help="largest batch profiled")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds per batch size")
    parser.add_argument("--frames", type=int, default=128, help="real frames per round")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    alone = Detect("mtcnn", device=args.device)
    alone.init_model()
    default_batch = alone.batch_size
    device = alone.plugin.device
    print(f"mtcnn on {device}, default batch size {default_batch}, input "
          f"{alone.plugin.input_size} px")

    print("\n1. ModelProfile (mtcnn alone, random input)")
    model = ModelProfile(alone.plugin, max_batch_size=args.max_batch, channels_last=True,
                         run_time=args.time, warmup_time=args.warmup)
    model()
    for size, rate in model.results.items():
        print(f"   batch {size:4d}: {rate:7.2f} frames/s")
    alone.plugin.batch_size = default_batch

    print("\n2. Profiler (default chain mtcnn -> dlib-68, threads started after)")
    detect = Detect("mtcnn", device=args.device)
    runner = Align("dlib-68")(detect(profile=True), profile=True)
    with runner:
        profiler = Profiler(runner, warmup_time=args.warmup, run_time=args.time,
                            max_batch_size=args.max_batch)
        start = time.perf_counter()
        profiler()
        took = time.perf_counter() - start
        profiled_batch = detect.batch_size
        runner.stop()
        list(runner)
    print(f"   profiled batch size {profiled_batch} (profiling took {took:.0f} s)")

    print(f"\n3. mtcnn process on {args.frames} real letterboxed frames, best of "
          f"{args.rounds} alternating rounds")
    feed = real_feed(alone, args.frames)
    rates: dict[int, list[float]] = {default_batch: [], profiled_batch: []}
    for _ in range(args.rounds):
        for size, values in rates.items():
            values.append(frames_per_second(alone, feed, size))
    for size, values in rates.items():
        print(f"   batch {size:4d}: best {max(values):6.2f} frames/s, rounds "
              + ", ".join(f"{value:.2f}" for value in values))
    default_fps, profiled_fps = max(rates[default_batch]), max(rates[profiled_batch])
    print(f"   profiled / default: {profiled_fps / default_fps:.3f}")
    print(json.dumps({"default_batch": default_batch, "profiled_batch": profiled_batch,
                      "default_fps": round(default_fps, 2),
                      "profiled_fps": round(profiled_fps, 2)}))


if __name__ == "__main__":
    main()
