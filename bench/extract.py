"""End-to-end speed of ``faceinfer extract`` with its defaults (mtcnn -> dlib-68 re-aligned,
512 px head-centred face PNGs, the alignments file), as a user runs it, and the time to load a
100,000-frame alignments file.

* video: the sample video (91 frames, 426x240 H.264) looped into one Matroska file of at least
  ``--frames`` frames (default 1,000: 11 loops, 1,001 frames). The loop is a remux with PyAV,
  not a re-encode: the same compressed packets, their timestamps shifted, so every loop decodes
  to the same frames and starts on a keyframe.
* photos: the four sample photos (1 to 8 faces each) copied ``--photo-copies`` times (default
  10: 40 images) into one folder.
* Each extraction is a child process, ``python -m faceinfer extract -i INPUT -o FACES``, timed
  from its start to its exit: Python and torch imports, model loading and the final fsync are
  included. frames/s is the frames recorded in its alignments file over that time.
* load_100k_s: :func:`~faceinfer.formats.alignments.load_alignments` on a synthetic file of
  ``--load-frames`` frames (default 100,000: one face each with 68 landmarks, 5 keypoints, a
  128 px mask, a 128-d identity and a 3 kB thumbnail; written by
  :func:`~faceinfer.formats.alignments.synthetic_alignments`), then every record decoded: the
  whole cost of reading the file. The load alone (records decode on access) is printed too.
* peak_rss_mb: the largest peak resident memory of the extraction processes.

Prints the figures, then as the last line a JSON object::

    {"video_fps": ..., "photos_fps": ..., "load_100k_s": ..., "peak_rss_mb": ...}

Usage: ``python bench/extract.py [--frames N] [--photo-copies N] [--load-frames N]``
(``--frames 91 --photo-copies 1 --load-frames 1000`` for a quick check).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

from faceinfer.formats.alignments import load_alignments, synthetic_alignments

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"
VIDEO = SAMPLES / "test.mp4"
PHOTOS = tuple(f"test_img{n}.jpg" for n in range(1, 5))
REPO = Path(__file__).resolve().parents[1]


def loop_video(source: Path, target: Path, frames: int) -> int:
    """Remux ``source`` into ``target`` (Matroska) repeated until it holds at least ``frames``
    frames; returns how many it holds."""
    with av.open(str(source)) as reader:
        stream = reader.streams.video[0]
        packets = [packet for packet in reader.demux(stream) if packet.size]
        first, last = packets[0].pts or 0, packets[-1].pts or 0
        step = last - first + (packets[-1].duration or (packets[1].pts or 0) - first)
        loops = math.ceil(frames / len(packets))
        with av.open(str(target), "w", format="matroska") as writer:
            out = writer.add_stream_from_template(stream)
            for loop in range(loops):
                for packet in packets:
                    copy = av.Packet(bytes(packet))
                    copy.pts = None if packet.pts is None else packet.pts + loop * step
                    copy.dts = None if packet.dts is None else packet.dts + loop * step
                    copy.time_base = packet.time_base
                    copy.is_keyframe = packet.is_keyframe
                    copy.stream = out
                    writer.mux(copy)
    return loops * len(packets)


def run_extract(input_path: Path, faces: Path, alignments: Path) -> tuple[float, int]:
    """Run ``faceinfer extract`` in a child process; (wall seconds, frames recorded)."""
    command = [sys.executable, "-m", "faceinfer", "extract", "-i", str(input_path), "-o",
               str(faces), "-p", str(alignments), "-L", "WARNING"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n"
                           f"{done.stderr}")
    for line in done.stdout.splitlines():
        print(f"    {line}")
    return wall, len(load_alignments(alignments))


def load_figures(folder: Path, frames: int) -> float:
    """Seconds to load and decode every record of a synthetic ``frames``-frame file."""
    path = folder / "synthetic.fia"
    start = time.perf_counter()
    synthetic_alignments(path, frames)
    made = time.perf_counter() - start
    start = time.perf_counter()
    loaded = load_alignments(path)
    index = time.perf_counter() - start
    faces = sum(len(record) for record in loaded.values())
    total = time.perf_counter() - start
    size = path.stat().st_size / 2**20
    print(f"alignments file: {frames} frames, {faces} faces, {size:.0f} MB (written in "
          f"{made:.1f} s); load {index:.2f} s, load and decode every record {total:.2f} s")
    return total


def options() -> argparse.Namespace:
    """The command line's options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000,
                        help="video frames at least (the 91-frame sample looped)")
    parser.add_argument("--photo-copies", type=int, default=10,
                        help="copies of the 4 sample photos")
    parser.add_argument("--load-frames", type=int, default=100_000,
                        help="frames of the synthetic alignments file")
    return parser.parse_args()


def main() -> int:
    args = options()
    if not VIDEO.is_file():
        raise SystemExit(f"needs the samples in {SAMPLES}")
    with tempfile.TemporaryDirectory(prefix="faceinfer-bench-") as temp:
        folder = Path(temp)
        video = folder / "looped.mkv"
        count = loop_video(VIDEO, video, args.frames)
        print(f"video: the sample looped to {count} frames ({video.stat().st_size / 2**20:.1f} "
              "MB, remuxed)")
        wall, frames = run_extract(video, folder / "video_faces", folder / "video.fia")
        video_fps = frames / wall
        print(f"  {frames} frames in {wall:.1f} s: {video_fps:.2f} frames/s end to end")
        photos = folder / "photos"
        photos.mkdir()
        for copy in range(args.photo_copies):
            for name in PHOTOS:
                shutil.copy(SAMPLES / name, photos / f"{Path(name).stem}_{copy:03d}.jpg")
        print(f"photos: the 4 sample photos x {args.photo_copies}")
        wall, frames = run_extract(photos, folder / "photo_faces", folder / "photos.fia")
        photos_fps = frames / wall
        print(f"  {frames} images in {wall:.1f} s: {photos_fps:.2f} images/s end to end")
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of an extraction: {peak_mb:.0f} MB")
        load_s = load_figures(folder, args.load_frames)
    print(json.dumps({"video_fps": round(video_fps, 2), "photos_fps": round(photos_fps, 2),
                      "load_100k_s": round(load_s, 2), "peak_rss_mb": round(peak_mb)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
