"""The engine demo: decode a video, run it through a chain of the built-in test plugins, and
write what came out. It shows the pipeline working end to end; it does not find real faces."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from faceinfer.align import Align
from faceinfer.detect import Detect
from faceinfer.errors import FaceInferError, PipelineClosedError
from faceinfer.identity import Identity
from faceinfer.mask import Mask
from faceinfer.objects import FrameFaces, frame_faces_to_alignment
from faceinfer.runner import ExtractRunner
from faceinfer.threads import ErrorState

logger = logging.getLogger(__name__)

_SAVED_FRAMES = 5


def read_video(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (frame key, BGR frame) for every frame of a video; keys are
    ``<stem>_<1-based number, 6 digits>``."""
    import av  # noqa: PLC0415 (PyAV is only needed to read video)

    try:
        container = av.open(str(path))
    except (OSError, av.error.FFmpegError) as err:
        raise FaceInferError(f"{path}: cannot open video: {err}") from err
    with container:
        for number, frame in enumerate(container.decode(video=0), start=1):
            yield f"{path.stem}_{number:06d}", frame.to_ndarray(format="bgr24")


def _feed(pipeline: ExtractRunner[Detect], path: Path, errors: ErrorState) -> None:
    try:
        for key, image in read_video(path):
            pipeline.put(key, image, source=str(path))
        pipeline.stop()
    except BaseException:  # noqa: BLE001 (re-raised in the main thread by the pipeline)
        errors.set()
        pipeline.close()


def _draw(media: FrameFaces) -> np.ndarray:
    assert media.image is not None
    image = media.image.copy()
    for box in media.bboxes.tolist():
        cv2.rectangle(image, (box[0], box[1]), (box[2] - 1, box[3] - 1), (0, 255, 0), 1)
    if media.landmarks is not None:
        for point in media.landmarks.reshape(-1, 2):
            cv2.circle(image, (round(float(point[0])), round(float(point[1]))), 1, (0, 0, 255),
                       -1)
    return image


def run_demo(video: str, output: str) -> int:
    """Run the demo over ``video`` and write its results under ``output``."""
    path, out_dir = Path(video), Path(output)
    if not path.is_file():
        raise FaceInferError(f"{path}: no such video file")
    out_dir.mkdir(parents=True, exist_ok=True)
    print("faceinfer engine demo: the pipeline runs the built-in TEST plugins "
          "(test-blobs -> test-landmarks -> test-mask -> test-identity).")
    print("They find bright blobs, not faces: real detectors and aligners come in a later "
          "release.")
    pipeline = Identity("test-identity")(Mask("test-mask")(Align("test-landmarks")(
        Detect("test-blobs")())))
    reader_errors = ErrorState()
    feeder = threading.Thread(target=_feed, args=(pipeline, path, reader_errors), daemon=True)
    start = time.perf_counter()
    frames = faces = 0
    records = out_dir / "frames.jsonl"
    with pipeline, records.open("w", encoding="utf-8") as handle:
        feeder.start()
        try:
            for media in pipeline:
                frames += 1
                faces += len(media.bboxes)
                entry = {"frame": media.filename, "faces": [
                    {k: v for k, v in face.items() if k in ("x", "y", "w", "h")}
                    for face in frame_faces_to_alignment(media)]}
                handle.write(json.dumps(entry) + "\n")
                if frames <= _SAVED_FRAMES:
                    cv2.imwrite(str(out_dir / f"{media.filename}.png"), _draw(media))
        except PipelineClosedError:
            reader_errors.re_raise()  # the reader closed the pipeline: its error says why
            raise
        finally:
            feeder.join()
    elapsed = time.perf_counter() - start
    print(f"Frames: {frames}, blobs found: {faces}, {frames / max(elapsed, 1e-9):.1f} frames/s")
    print(f"Results: {records} (one line per frame) and the first {_SAVED_FRAMES} frames drawn "
          f"as PNG in {out_dir}/")
    return 0 if frames else 1
