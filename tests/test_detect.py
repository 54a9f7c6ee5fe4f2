"""The Detect stage's options: rotation (the Rotator and the retry loop), keypoints mapped back
to the frame, and detection on rotated real photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from faceinfer import Detect
from faceinfer.detect import Rotator, _parse_rotation
from faceinfer.errors import ConfigError
from faceinfer.objects import ExtractBatch
from tests.conftest import SHARED, blob_boxes, make_frame, run_stage

SAMPLES = SHARED / "data" / "faceswap_samples"
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no sample photos at {SAMPLES}")


def iou(first: np.ndarray, second: np.ndarray) -> float:
    left, top = np.maximum(first[:2], second[:2])
    right, bottom = np.minimum(first[2:], second[2:])
    inter = max(right - left, 0) * max(bottom - top, 0)
    area = np.prod(first[2:] - first[:2]) + np.prod(second[2:] - second[:2])
    return float(inter / (area - inter))


@pytest.mark.parametrize(("argument", "angles"), [
    (None, [0]), ("", [0]), ("0", [0]), ("90", [0, 90, 180, 270]), ("120", [0, 120, 240]),
    ("90,180", [0, 90, 180]), ("0,45,270", [0, 45, 270]), ("-90", [0, 270, 180, 90]),
    ("450", [0, 90, 180, 270])])
def test_rotation_syntax(argument: str | None, angles: list[int]) -> None:
    """One value is a step, several are explicit angles after 0, zeros are ignored."""
    assert _parse_rotation(argument) == angles
    assert Rotator(argument, 64).enabled == (len(angles) > 1)


def test_rotation_rejects_non_numbers() -> None:
    with pytest.raises(ConfigError, match="rotation"):
        Rotator("ninety", 64)


@pytest.mark.parametrize("channels_first", [False, True])
def test_rotator_rotates_and_maps_boxes_and_keypoints_back(channels_first: bool) -> None:
    size = 100
    image = np.zeros((1, size, size, 3), dtype=np.uint8)
    image[0, 10:30, 60:90] = 255  # a 30 x 20 patch, top right
    rotator = Rotator("90", size)
    for index, angle in enumerate(rotator.angles):
        batch = image.transpose(0, 3, 1, 2) if channels_first else image
        out = rotator.rotate(index, batch)
        assert out is not None
        turned = out.transpose(0, 2, 3, 1) if channels_first else out
        ys, xs = np.nonzero(turned[0, :, :, 0] > 127)
        found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1,
                           xs.min(), ys.min()]], dtype=np.float64)
        rotator.un_rotate(np.array([index], np.int32), [found])
        np.testing.assert_allclose(found[0, :4], [60, 10, 90, 30], atol=1.01, err_msg=str(angle))
        # The top-left pixel of the rotated patch is one of the patch's corners.
        corner = found[0, 4:]
        assert min(np.hypot(*(corner - c)) for c in ([60, 10], [89, 10], [89, 29], [60, 29])
                   ) < 1.5, (angle, corner)
    assert rotator.rotate(4, image) is None


def test_rotation_retries_only_frames_without_faces() -> None:
    """Frames with faces at 0 degrees are finished; only the empty one is tried at 90, 180 and
    270 degrees, and the summary counts frames by angle."""
    handler = Detect("test-blobs", rotation="90")
    sizes: list[int] = []
    predict = handler.plugin.process

    def counting(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return predict(batch)

    handler.plugin.process = counting  # type: ignore[method-assign]
    frames = [make_frame(2), np.zeros_like(make_frame(0)), make_frame(3)]
    batch = run_stage(handler, ExtractBatch(["a", "b", "c"], frames))
    assert sizes == [3, 1, 1, 1]
    assert batch.lengths.tolist() == [2, 0, 3]
    np.testing.assert_array_equal(batch.bboxes, np.concatenate([blob_boxes(2), blob_boxes(3)]))


def test_rotation_finds_a_face_only_visible_at_another_angle() -> None:
    """A blob the detector only accepts at a rotated angle (it ignores the frame's left half)
    is found at 180 degrees and mapped back onto the left half."""
    handler = Detect("test-blobs", rotation="180")
    predict = handler.plugin.process

    def right_half_only(batch: np.ndarray) -> np.ndarray:
        out = predict(batch)
        out[:, :, :out.shape[2] // 2] = 0
        return out

    handler.plugin.process = right_half_only  # type: ignore[method-assign]
    frame = np.zeros((128, 128, 3), np.uint8)
    frame[20:40, 10:30] = 255
    batch = run_stage(handler, ExtractBatch(["left"], [frame]))
    np.testing.assert_allclose(batch.bboxes, [[10, 20, 30, 40]], atol=1)


# Real photos --------------------------------------------------------------------------------


def photo(name: str) -> np.ndarray:
    image = cv2.imread(str(SAMPLES / name))
    assert image is not None, f"cannot read {SAMPLES / name}"
    return image


@needs_samples
def test_keypoints_are_mapped_to_frame_pixels() -> None:
    """MTCNN's keypoints come back in frame pixels, inside their boxes, eyes above the mouth."""
    batch = run_stage(Detect("mtcnn"), ExtractBatch(["img1"], [photo("test_img1.jpg")]))
    assert batch.num_faces >= 3
    assert batch.keypoints.shape == (batch.num_faces, 5, 2)
    for box, points in zip(batch.bboxes, batch.keypoints, strict=True):
        side = box[2] - box[0]
        assert np.all(points >= box[:2] - 0.1 * side)
        assert np.all(points <= box[2:] + 0.1 * side)
        assert points[:2, 1].max() < points[3:, 1].min()
    faces = batch.to_frame_faces()[0]
    assert faces.keypoints.shape == (batch.num_faces, 5, 2)
    detected = faces.detected_faces[0]
    assert detected.keypoints is not None
    np.testing.assert_array_equal(detected.keypoints, batch.keypoints[0])


@needs_samples
@pytest.mark.parametrize("turns", [1, 2, 3])
def test_rotated_photo_is_found_with_rotation(turns: int) -> None:
    """test_img1 turned by 90/180/270 degrees: with rotation="90" every face of the upright
    photo is found again, its box mapped back onto the same face (IoU >= 0.5)."""
    upright = photo("test_img1.jpg")
    expected = run_stage(Detect("mtcnn"), ExtractBatch(["up"], [upright]))
    assert expected.num_faces >= 3
    codes = {1: cv2.ROTATE_90_COUNTERCLOCKWISE, 2: cv2.ROTATE_180,
             3: cv2.ROTATE_90_CLOCKWISE}
    turned = cv2.rotate(upright, codes[turns])
    plain = run_stage(Detect("mtcnn"), ExtractBatch(["turned"], [turned]))
    assert plain.num_faces == 0, "the detector must miss the turned faces without rotation"
    found = run_stage(Detect("mtcnn", rotation="90"), ExtractBatch(["turned"], [turned]))
    assert found.num_faces == expected.num_faces
    height, width = turned.shape[:2]

    def back(points: np.ndarray) -> np.ndarray:
        """(P, 2) points of the turned photo in the upright one."""
        x, y = points[:, 0], points[:, 1]
        if turns == 1:  # turned counter-clockwise: turn back clockwise
            return np.stack([height - y, x], axis=1)
        if turns == 2:
            return np.stack([width - x, height - y], axis=1)
        return np.stack([y, width - x], axis=1)

    for box, points in zip(found.bboxes, found.keypoints, strict=True):
        corners = back(np.array([[box[0], box[1]], [box[2], box[3]]], np.float64))
        upright_box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
        assert max(iou(upright_box, other) for other in expected.bboxes) >= 0.5
        # The keypoints turn with the face: upright, the eyes are above the mouth.
        upright_points = back(points.astype(np.float64))
        assert upright_points[:2, 1].max() < upright_points[3:, 1].min()
