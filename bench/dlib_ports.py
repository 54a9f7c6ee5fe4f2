"""Speed of the PyTorch ports of dlib's two CNNs against dlib itself, in one run.

* Descriptor: ``dlib-resnet``'s network (:class:`faceinfer.nets.dlib_resnet.DlibResnet`,
  through the plugin's ``process``) on dlib's 150 px "johns" chips cycled to ``--faces`` faces,
  at batch sizes 1, 8 and 32; dlib's own ``compute_face_descriptor`` on ``--dlib-faces`` of the
  same chips at batch 32.
* Detector: :class:`faceinfer.nets.dlib_mmod.MMODDetector` (pyramid, network, decoding) on a
  640x480 frame (the sample photo ``test_img1.jpg`` fitted into it, black borders), at upsample
  0, ``--frames`` calls; dlib's ``cnn_face_detection_model_v1`` on the same frame
  ``--dlib-frames`` times. Both find the same faces (printed).

dlib runs on the CPU (dlib-bin has no CUDA); the ports run on ``--device`` (default: the CPU,
with torch's default thread count). Prints the figures, then as the last line a JSON object::

    {"descriptor_faces_per_s_b32": ..., "descriptor_speedup": ...,
     "mmod_s_per_640x480": ..., "mmod_speedup": ..., ...}

Targets (issue 8, not asserted; 2-core CPU): descriptor >= 200 faces/s at batch 32, MMOD
<= 0.15 s per 640x480 frame.

Usage: ``python bench/dlib_ports.py [--device cpu|cuda] [--faces N] [--frames N]
[--dlib-faces N] [--dlib-frames N]``
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import dlib
import numpy as np
import numpy.typing as npt
import torch

from faceinfer.formats.dlib_dat import read_network
from faceinfer.nets.dlib_mmod import MMODDetector
from faceinfer.plugins._dlib import model_path
from faceinfer.plugins.identity.dlib_resnet import DlibResnetConfig, DlibResnetIdentity

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BATCH_SIZES = (1, 8, 32)
FRAME = (480, 640)
"""(rows, cols) of the detector's test frame."""

Image = npt.NDArray[np.uint8]


def johns_chips(count: int) -> Image:
    """(count, 150, 150, 3) uint8 RGB: dlib's johns chips, cycled."""
    paths = sorted((DATA / "dlib_johns").rglob("*.jpg"))
    chips = []
    for path in paths:
        image = cv2.imread(str(path))
        if image is not None and image.shape[:2] == (150, 150):
            chips.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if not chips:
        raise SystemExit(f"no 150 px chips under {DATA / 'dlib_johns'}")
    return np.stack([chips[k % len(chips)] for k in range(count)])


def test_frame() -> Image:
    """A 640x480 uint8 RGB frame: ``test_img1.jpg`` fitted into it, black borders."""
    image = cv2.imread(str(DATA / "faceswap_samples" / "test_img1.jpg"))
    if image is None:
        raise SystemExit("cannot read faceswap_samples/test_img1.jpg")
    rows, cols = FRAME
    scale = min(rows / image.shape[0], cols / image.shape[1])
    fitted = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                        interpolation=cv2.INTER_AREA)
    frame = np.zeros((rows, cols, 3), dtype=np.uint8)
    top, left = (rows - fitted.shape[0]) // 2, (cols - fitted.shape[1]) // 2
    frame[top:top + fitted.shape[0], left:left + fitted.shape[1]] = fitted
    return np.ascontiguousarray(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))


def seconds_per_call(call: Callable[[], object], calls: int, device: str) -> float:
    """Mean wall seconds of ``call`` over ``calls`` calls after one warm-up call."""
    call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls


def descriptor(device: str, faces: int, dlib_faces: int) -> dict[str, float]:
    """Faces/s of the port at each batch size and of dlib at batch 32."""
    plugin = DlibResnetIdentity(DlibResnetConfig())
    plugin.device = device
    plugin.load_model()
    chips = johns_chips(max(faces, dlib_faces))
    result: dict[str, float] = {}
    for size in BATCH_SIZES:
        batches = [chips[start:start + size] for start in range(0, faces, size)]
        wall = seconds_per_call(lambda batches=batches: [plugin.process(b) for b in batches],
                                1, device)
        rate = faces / wall
        result[f"descriptor_faces_per_s_b{size}"] = round(rate, 1)
        print(f"  port on {device}, batch {size:2d}: {rate:8.1f} faces/s "
              f"({1000 / rate:6.2f} ms a face)")
    model = dlib.face_recognition_model_v1(str(model_path("face_recognition_model_location")))
    listed = [np.ascontiguousarray(chip) for chip in chips[:dlib_faces]]
    groups = [listed[start:start + 32] for start in range(0, dlib_faces, 32)]
    wall = seconds_per_call(lambda: [model.compute_face_descriptor(g) for g in groups], 1, "cpu")
    dlib_rate = dlib_faces / wall
    port = plugin.process(chips[:dlib_faces])
    reference = np.asarray(model.compute_face_descriptor(listed), dtype=np.float32)
    print(f"  dlib (CPU), batch 32:   {dlib_rate:8.1f} faces/s ({1000 / dlib_rate:6.2f} ms a "
          f"face); max |port - dlib| {np.abs(port - reference).max():.2e}")
    result["descriptor_dlib_faces_per_s_b32"] = round(dlib_rate, 2)
    result["descriptor_speedup"] = round(result["descriptor_faces_per_s_b32"] / dlib_rate, 1)
    return result


def detector(device: str, frames: int, dlib_frames: int) -> dict[str, float]:
    """Seconds per 640x480 frame of the port and of dlib, at upsample 0."""
    path = model_path("cnn_face_detector_model_location")
    port = MMODDetector(read_network(path), device)
    frame = test_frame()
    port_s = seconds_per_call(lambda: port(frame[None]), frames, device)
    model = dlib.cnn_face_detection_model_v1(str(path))
    dlib_s = seconds_per_call(lambda: model(frame, 0), dlib_frames, "cpu")
    found = port(frame[None])[0]
    reference = model(frame, 0)
    print(f"  port on {device}: {port_s:7.3f} s a 640x480 frame, {len(found)} faces "
          f"(scores {[round(float(score), 4) for score in found[:, 4]]})")
    print(f"  dlib (CPU):  {dlib_s:7.3f} s a 640x480 frame, {len(reference)} faces "
          f"(scores {[round(d.confidence, 4) for d in reference]})")
    return {"mmod_s_per_640x480": round(port_s, 4), "mmod_dlib_s_per_640x480": round(dlib_s, 3),
            "mmod_speedup": round(dlib_s / port_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="where the ports run (default cpu)")
    parser.add_argument("--faces", type=int, default=128, help="faces per port batch size")
    parser.add_argument("--dlib-faces", type=int, default=32, help="faces through dlib")
    parser.add_argument("--frames", type=int, default=10, help="frames through the port")
    parser.add_argument("--dlib-frames", type=int, default=2, help="frames through dlib")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"needs the shared data in {DATA}", file=sys.stderr)
        return 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, ports on "
          f"{args.device}")
    print("descriptor (dlib_face_recognition_resnet_model_v1):")
    result = descriptor(args.device, args.faces, args.dlib_faces)
    print("detector (mmod_human_face_detector), upsample 0:")
    result |= detector(args.device, args.frames, args.dlib_frames)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
