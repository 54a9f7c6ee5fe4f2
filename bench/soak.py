"""Memory soak: frames through the default chain without identity (mtcnn -> dlib-68, re-aligned
-> components mask), watching the process's resident memory.

Input: the sample video (426x240, 91 frames) decoded again with PyAV each time it runs out, up
to ``--frames`` frames, so decoding is part of the soak as in an extraction. The chain is built
with the handlers, as in the README's "The API in a few lines", and fed from a thread; every
``FrameFaces`` coming out is counted and dropped.

RSS is sampled every ``--every`` frames out. Growth is the last sample less the first (taken
after ``--every`` frames: models loaded, buffers and caches at their working size). Target:
under 50 MB over 20,000 frames (not asserted). Prints the samples, then as the last line a JSON
object::

    {"frames": ..., "rss_growth_mb": ...}

Usage: ``python bench/soak.py [--frames N] [--every N]`` (20,000 frames take about 40 minutes
on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import psutil

from faceinfer import Align, Detect, ExtractRunner, Mask

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"
TARGET_MB = 50.0


def looped_video(count: int) -> Iterator[tuple[str, np.ndarray]]:
    """``count`` frames of the sample video, decoded again from the start when it ends."""
    index = 0
    while index < count:
        with av.open(str(DATA / "test.mp4")) as container:
            for frame in container.decode(video=0):
                if index >= count:
                    return
                index += 1
                yield f"frame_{index:06d}", frame.to_ndarray(format="bgr24")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000, help="frames through the chain")
    parser.add_argument("--every", type=int, default=1_000, help="frames between RSS samples")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs the sample data in {DATA}", file=sys.stderr)
        return 2
    if args.frames < 2 * args.every:
        print("--frames must be at least twice --every (two samples)", file=sys.stderr)
        return 2
    runner: ExtractRunner[Mask] = Mask("components")(
        Align("dlib-68", re_align=True)(Detect("mtcnn")()))
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for name, image in looped_video(args.frames):
                runner.put(name, image)
            runner.stop()
        except BaseException as err:  # noqa: BLE001 (re-raised below)
            errors.append(err)
            runner.close()

    process = psutil.Process()
    samples: list[tuple[int, float]] = []
    frames = faces = 0
    start = time.perf_counter()
    feeder = threading.Thread(target=feed, daemon=True)
    with runner:
        feeder.start()
        for media in runner:
            frames += 1
            faces += len(media.bboxes)
            if frames % args.every == 0:
                rss = process.memory_info().rss / 2**20
                samples.append((frames, rss))
                print(f"  {frames:6d} frames  {faces:6d} faces  RSS {rss:7.1f} MB  "
                      f"{frames / (time.perf_counter() - start):5.2f} frames/s", flush=True)
    feeder.join()
    if errors:
        raise errors[0]
    growth = samples[-1][1] - samples[0][1]
    peak = max(rss for _, rss in samples) - samples[0][1]
    print(f"{frames} frames through mtcnn -> dlib-68 (re-align) -> components: RSS grew "
          f"{growth:.1f} MB from frame {samples[0][0]} to {samples[-1][0]} (peak +{peak:.1f} "
          f"MB; target < {TARGET_MB:.0f} MB over 20,000 frames)")
    print(json.dumps({"frames": frames, "rss_growth_mb": round(growth, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
