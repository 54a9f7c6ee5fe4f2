"""The demo: decode a video, find the faces of every frame with MTCNN and their 68 landmarks with
dlib-68 (re-aligned), and write what came out: one JSON line per frame and the first frames drawn
as PNG. Masks, identity and the aligned face images come with ``faceinfer extract``."""
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
    """The frame with each face's box (green), detector keypoints (blue) and landmarks (red)."""
    assert media.image is not None
    image = media.image.copy()
    for box in media.bboxes.tolist():
        cv2.rectangle(image, (box[0], box[1]), (box[2] - 1, box[3] - 1), (0, 255, 0), 1)
    for points, colour in ((media.keypoints, (255, 0, 0)), (media.landmarks, (0, 0, 255))):
        if points is None:
            continue
        for point in np.asarray(points).reshape(-1, 2):
            if np.isfinite(point).all():
                cv2.circle(image, (round(float(point[0])), round(float(point[1]))), 1, colour,
                           -1)
    return image


def run_demo(video: str, output: str) -> int:
    """Run the demo over ``video`` and write its results under ``output``."""
    path, out_dir = Path(video), Path(output)
    if not path.is_file():
        raise FaceInferError(f"{path}: no such video file")
    out_dir.mkdir(parents=True, exist_ok=True)
    print("faceinfer demo: mtcnn finds the faces, dlib-68 their 68 landmarks (re-aligned).")
    pipeline = Align("dlib-68", re_align=True)(Detect("mtcnn")())
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
                faces_out = []
                for index, face in enumerate(frame_faces_to_alignment(media)):
                    score = float(media.align_scores[index])
                    faces_out.append({
                        **{k: v for k, v in face.items() if k in ("x", "y", "w", "h")},
                        "landmarks_xy": np.round(face["landmarks_xy"], 2).tolist(),
                        "align_score": round(score, 4) if np.isfinite(score) else None})
                entry = {"frame": media.filename, "faces": faces_out}
                handle.write(json.dumps(entry) + "\n")
                if frames <= _SAVED_FRAMES:
                    cv2.imwrite(str(out_dir / f"{media.filename}.png"), _draw(media))
        except PipelineClosedError:
            reader_errors.re_raise()  # the reader closed the pipeline: its error says why
            raise
        finally:
            feeder.join()
    elapsed = time.perf_counter() - start
    print(f"Frames: {frames}, faces found: {faces}, {frames / max(elapsed, 1e-9):.1f} frames/s")
    print(f"Results: {records} (one line per frame) and the first {_SAVED_FRAMES} frames drawn "
          f"as PNG in {out_dir}/")
    return 0 if frames else 1
