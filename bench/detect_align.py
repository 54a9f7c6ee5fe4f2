"""Speed of Detect + Align (mtcnn -> dlib-68) through the threaded pipeline against the same
plugins called one frame at a time in a plain loop, in one run.

Input: the sample video's frames (426x240) looped to ``--frames`` frames, then the four sample
photos. The plain loop runs each stage's pre_process, process and post_process on a batch of one
frame, stage after stage, in the main thread: what a simple script would do. The pipeline runs
the same handlers on their own threads with the plugins' default batch sizes (mtcnn batches
frames, dlib-68 faces), fed from a thread.

Prints both rates and their ratio (target: pipeline >= 1.5x the plain loop on a 2-core
machine; not asserted), then as the last line a JSON object::

    {"pipeline_fps": ..., "loop_fps": ..., "ratio": ...}

Usage: ``python bench/detect_align.py [--frames N] [--no-re-align]``
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import psutil

from faceinfer import Align, Detect, ExtractRunner
from faceinfer.objects import ExtractBatch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"
TARGET_RATIO = 1.5


def load_frames(count: int) -> list[tuple[str, np.ndarray]]:
    """The video's frames looped to ``count``, then the photos."""
    with av.open(str(DATA / "test.mp4")) as container:
        video = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    frames = [(f"test_{index + 1:06d}", video[index % len(video)]) for index in range(count)]
    for photo in sorted(DATA.glob("test_img*.jpg")):
        image = cv2.imread(str(photo))
        if image is not None:
            frames.append((photo.stem, image))
    return frames


def handlers(re_align: bool) -> tuple[Detect, Align]:
    detect = Detect("mtcnn")
    align = Align("dlib-68", re_align=re_align)
    detect.init_model()
    align.init_model()
    return detect, align


def plain_loop(frames: list[tuple[str, np.ndarray]], re_align: bool) -> tuple[float, int]:
    """Seconds and faces for the frames one at a time, stage after stage."""
    detect, align = handlers(re_align)
    faces = 0
    start = time.perf_counter()
    for name, image in frames:
        batch = ExtractBatch([name], [image])
        for stage in (detect, align):
            stage.pre_process(batch)
            stage.process(batch)
            stage.post_process(batch)
            batch.clear_transient()
        faces += batch.num_faces
    return time.perf_counter() - start, faces


def feed_and_count(runner: ExtractRunner[Any], frames: list[tuple[str, np.ndarray]]) -> int:
    """Put the frames into a started chain from a feeder thread, iterate it to the end, and
    return the faces found (a feeder error is re-raised here)."""
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for name, image in frames:
                runner.put(name, image)
            runner.stop()
        except BaseException as err:  # noqa: BLE001 (re-raised below)
            errors.append(err)
            runner.close()

    faces = 0
    feeder = threading.Thread(target=feed, daemon=True)
    with runner:
        feeder.start()
        for media in runner:
            faces += len(media.bboxes)
    feeder.join()
    if errors:
        raise errors[0]
    return faces


def pipeline(frames: list[tuple[str, np.ndarray]], re_align: bool) -> tuple[float, int]:
    """Seconds and faces for the frames through the threaded pipeline."""
    detect, align = handlers(re_align)
    runner: ExtractRunner[Align] = align(detect())
    start = time.perf_counter()
    faces = feed_and_count(runner, frames)
    return time.perf_counter() - start, faces


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="video frames (looped)")
    parser.add_argument("--no-re-align", action="store_true", help="align in one pass")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs the sample data in {DATA}", file=sys.stderr)
        return 2
    re_align = not args.no_re_align
    frames = load_frames(args.frames)
    warm = frames[:16]
    plain_loop(warm, re_align)  # warm-up: model loading, first torch calls
    pipeline(warm, re_align)
    process = psutil.Process()
    cpu = process.cpu_times()
    loop_s, loop_faces = plain_loop(frames, re_align)
    middle = process.cpu_times()
    pipe_s, pipe_faces = pipeline(frames, re_align)
    end = process.cpu_times()
    loop_cpu = (middle.user + middle.system - cpu.user - cpu.system) / len(frames)
    pipe_cpu = (end.user + end.system - middle.user - middle.system) / len(frames)
    cores = psutil.cpu_count() or 1
    loop_fps = len(frames) / loop_s
    pipe_fps = len(frames) / pipe_s
    ratio = pipe_fps / loop_fps
    print(f"Detect (mtcnn) + Align (dlib-68{', re-align' if re_align else ''}) on "
          f"{len(frames)} frames ({args.frames} video frames looped + photos)")
    print(f"  plain loop, one frame at a time: {loop_fps:7.1f} frames/s  ({loop_faces} faces), "
          f"{loop_cpu * 1000:.0f} CPU-ms a frame, {loop_cpu * loop_fps / cores:.0%} of "
          f"{cores} cores")
    print(f"  pipeline:                        {pipe_fps:7.1f} frames/s  ({pipe_faces} faces), "
          f"{pipe_cpu * 1000:.0f} CPU-ms a frame, {pipe_cpu * pipe_fps / cores:.0%} of "
          f"{cores} cores")
    print(f"  ratio {ratio:.2f} (target >= {TARGET_RATIO})")
    print(json.dumps({"pipeline_fps": round(pipe_fps, 2), "loop_fps": round(loop_fps, 2),
                      "ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
