"""Speed of the Identity stage with "dlib-resnet" at batch sizes 1, 8 and 32, and of the Mask
stage with the landmark masks "components" and "extended".

Input: the faces that mtcnn -> dlib-68 find in the four sample photos (found once, untimed),
cycled to ``--faces`` faces. Each stage runs its pre_process (warping each face out of its frame
at the plugin's crop), process and post_process in the main thread on batches of the given size,
each face in its own frame, as the pipeline would hand them over. The share of the time spent in
the plugin's batched forward pass (its ``process``: the PyTorch port of dlib's network, on the
CPU) is printed beside the stage's rate.

Prints the figures, then as the last line a JSON object::

    {"identity_faces_per_s_b1": ..., "identity_faces_per_s_b8": ...,
     "identity_faces_per_s_b32": ..., "identity_process_share": ...,
     "mask_faces_per_s": ..., "mask_extended_faces_per_s": ...}

``mask_faces_per_s`` is the "components" mask; ``identity_process_share`` is the part of the b32
stage time spent in the plugin's ``process``.

dlib's own descriptor call against the port: ``bench/dlib_ports.py``.

Usage: ``python bench/identity.py [--faces N] [--mask-faces N]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import psutil

from faceinfer import Align, Detect, Identity, Mask
from faceinfer.handler import ExtractHandlerFace
from faceinfer.objects import ExtractBatch, ExtractBatchAligned

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"
BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class Face:
    """One found face: its frame, box and 68 landmarks (frame pixels)."""

    frame: npt.NDArray[np.uint8]
    box: npt.NDArray[np.int32]
    landmarks: npt.NDArray[np.float32]


def find_faces() -> list[Face]:
    """The faces of the sample photos, through mtcnn -> dlib-68."""
    detect, align = Detect("mtcnn"), Align("dlib-68")
    detect.init_model()
    align.init_model()
    faces: list[Face] = []
    for path in sorted(DATA.glob("test_img*.jpg")):
        image = cv2.imread(str(path))
        if image is None:
            continue
        batch = ExtractBatch([path.name], [np.asarray(image, dtype=np.uint8)])
        for stage in (detect, align):
            stage.pre_process(batch)
            stage.process(batch)
            stage.post_process(batch)
            batch.clear_transient()
        assert batch.landmarks is not None
        faces += [Face(batch.images[0], batch.bboxes[k], batch.landmarks[k])
                   for k in range(batch.num_faces)]
    return faces


def face_batches(faces: list[Face], total: int, size: int) -> list[ExtractBatch]:
    """``total`` faces cycled from ``faces``, in batches of ``size`` faces, one frame each."""
    picked = [faces[k % len(faces)] for k in range(total)]
    out = []
    for start in range(0, total, size):
        group = picked[start:start + size]
        batch = ExtractBatch([f"face{start + k}" for k in range(len(group))],
                             [face.frame for face in group])
        batch.set_faces(np.stack([face.box for face in group]).astype(np.int32),
                        np.arange(len(group), dtype=np.int32))
        batch.aligned = ExtractBatchAligned(np.stack([face.landmarks for face in group]))
        out.append(batch)
    return out


def run(handler: ExtractHandlerFace, batches: list[ExtractBatch]) -> tuple[float, float, float]:
    """Wall seconds for the stage on the batches, the part of it in the plugin's process call,
    and the process's CPU seconds."""
    process = psutil.Process()
    cpu = process.cpu_times()
    inside = 0.0
    start = time.perf_counter()
    for batch in batches:
        handler.pre_process(batch)
        began = time.perf_counter()
        handler.process(batch)
        inside += time.perf_counter() - began
        handler.post_process(batch)
    wall = time.perf_counter() - start
    end = process.cpu_times()
    return wall, inside, end.user + end.system - cpu.user - cpu.system


def identity_rates(faces: list[Face], total: int) -> dict[str, float]:
    """The Identity stage's faces/s at each batch size, on the CPU, and the share of the
    largest batch size's time spent in the plugin's process."""
    result: dict[str, float] = {}
    share = 0.0
    for size in BATCH_SIZES:
        identity = Identity("dlib-resnet", config={"batch_size": size}, device="cpu")
        identity.init_model()
        run(identity, face_batches(faces, size, size))  # warm-up
        wall, inside, cpu = run(identity, face_batches(faces, total, size))
        rate = total / wall
        share = inside / wall
        result[f"identity_faces_per_s_b{size}"] = round(rate, 2)
        print(f"  identity dlib-resnet, batch {size:2d}: {rate:6.2f} faces/s "
              f"({1000 / rate:5.1f} ms a face, {share:.0%} in process, "
              f"{cpu / total * 1000:.0f} CPU-ms a face)")
    result["identity_process_share"] = round(share, 3)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=64,
                        help="faces per identity batch size (default 64)")
    parser.add_argument("--mask-faces", type=int, default=512,
                        help="faces per mask plugin (default 512)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs the sample photos in {DATA}", file=sys.stderr)
        return 2
    faces = find_faces()
    print(f"{len(faces)} faces found in the sample photos, cycled to {args.faces} faces "
          f"per identity batch size and {args.mask_faces} per mask")
    result = identity_rates(faces, args.faces)
    for name, key in (("components", "mask_faces_per_s"),
                      ("extended", "mask_extended_faces_per_s")):
        mask = Mask(name)
        mask.init_model()
        size = mask.batch_size
        run(mask, face_batches(faces, size, size))  # warm-up
        wall, _, cpu = run(mask, face_batches(faces, args.mask_faces, size))
        rate = args.mask_faces / wall
        result[key] = round(rate, 1)
        print(f"  mask {name}, batch {size}: {rate:8.1f} faces/s "
              f"({cpu / args.mask_faces * 1000:.2f} CPU-ms a face)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
