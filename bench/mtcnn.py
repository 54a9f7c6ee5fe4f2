"""CPU cost of the mtcnn detector alone, with P-Net skipping the letterbox borders and without.

Input: the sample video's frames (426x240, so about 44% of each 640 x 640 detector input is
black border) looped to ``--frames`` frames, letterboxed by the Detect stage's pre_process once,
up front. The plugin's ``process`` then runs on them a batch at a time, in ``--rounds`` rounds
alternating its two settings (``skip_black`` on and off), so that other load on the machine
weighs on both alike; each setting's best round gives its frames/s and the process CPU time of
that round its CPU-ms per frame (all threads: mtcnn's workers and torch's). The outputs of the
two settings are compared (largest difference of score, box or keypoint).

Prints both, then as the last line a JSON object::

    {"skip_fps": ..., "full_fps": ..., "skip_cpu_ms": ..., "full_cpu_ms": ..., "max_diff": ...}

Usage: ``python bench/mtcnn.py [--frames N] [--rounds N] [--workers N]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import av
import numpy as np

from faceinfer import Detect
from faceinfer.objects import ExtractBatch
from faceinfer.plugins.detect._mtcnn_pyramid import content_box
from faceinfer.plugins.detect.mtcnn import MTCNNDetector

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"


def letterboxed(detect: Detect, count: int) -> list[np.ndarray]:
    """The video's frames looped to ``count``, as the plugin's input batches."""
    with av.open(str(DATA / "test.mp4")) as container:
        video = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    frames = [video[index % len(video)] for index in range(count)]
    feeds = []
    for first in range(0, count, detect.batch_size):
        part = frames[first:first + detect.batch_size]
        batch = ExtractBatch([str(index) for index in range(len(part))], part)
        detect.pre_process(batch)
        feeds.append(np.asarray(batch.data))
    return feeds


def run(plugin: MTCNNDetector, feeds: list[np.ndarray]) -> tuple[float, float, np.ndarray]:
    """Wall seconds, CPU seconds and the concatenated raw output for the batches."""
    start, cpu = time.perf_counter(), time.process_time()
    outputs = [plugin.process(feed) for feed in feeds]
    took, cpu = time.perf_counter() - start, time.process_time() - cpu
    width = max(output.shape[1] for output in outputs)
    return took, cpu, np.concatenate([np.pad(output, ((0, 0), (0, width - output.shape[1]),
                                                      (0, 0)), constant_values=np.nan)
                                      for output in outputs])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=96, help="video frames (looped)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each setting")
    parser.add_argument("--workers", type=int, default=2, help="mtcnn's cpu_workers")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs the sample data in {DATA}", file=sys.stderr)
        return 2
    detect = Detect("mtcnn", device="cpu", config={"cpu_workers": args.workers})
    detect.init_model()
    plugin = detect.plugin
    assert isinstance(plugin, MTCNNDetector)
    feeds = letterboxed(detect, args.frames)
    best = {True: (float("inf"), 0.0), False: (float("inf"), 0.0)}
    outputs: dict[bool, np.ndarray] = {}
    for round_index in range(args.rounds + 1):  # the first round warms up
        for skip in (True, False):
            plugin.skip_black = skip
            took, cpu, outputs[skip] = run(plugin, feeds)
            if round_index and took < best[skip][0]:
                best[skip] = (took, cpu)
    diff = float("inf")
    if outputs[True].shape == outputs[False].shape:
        diff = float(np.nanmax(np.abs(outputs[True] - outputs[False]), initial=0.0))
    shapes = {}
    for skip in (False, True):
        plugin.skip_black = skip
        shapes[skip] = plugin.layout(content_box(feeds[0])).shape
    figures = {}
    print(f"mtcnn alone on {args.frames} letterboxed video frames, CPU, {args.workers} "
          f"workers, best of {args.rounds} rounds alternating the settings")
    for skip, name in ((True, "skip"), (False, "full")):
        took, cpu = best[skip]
        figures[f"{name}_fps"] = round(args.frames / took, 2)
        figures[f"{name}_cpu_ms"] = round(1000 * cpu / args.frames, 1)
        print(f"  {'skipping borders' if skip else 'whole pyramid   '}: "
              f"{figures[f'{name}_fps']:6.2f} frames/s, {figures[f'{name}_cpu_ms']:6.1f} "
              f"CPU-ms a frame")
    print(f"  mosaic {shapes[True]} against {shapes[False]}; largest output difference "
          f"{diff:.2e}")
    figures["max_diff"] = diff
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
