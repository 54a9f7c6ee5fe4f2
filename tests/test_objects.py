"""The data containers: ExtractBatch (validation, splitting, joining, filtering, conversions),
FrameFaces, ExtractBatchAligned, ExtractBatchMask and the alignments dictionaries."""
from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import pytest

from faceinfer.geometry.constants import LandmarkType
from faceinfer.objects import (
    DetectedFace,
    ExtractBatch,
    ExtractBatchAligned,
    ExtractBatchMask,
    FrameFaces,
    frame_faces_to_alignment,
)
from tests.conftest import SHARED

MASK_SIDE = 4
IDENTITY_DIMS = 4


# ----------------------------------------------------------------------------------------------
# Builders


def face_data(total: int, offset: int = 0) -> dict[str, Any]:
    """Distinct per-face data for ``total`` faces: every value tells which face it belongs to."""
    index = np.arange(offset, offset + total)
    boxes = np.stack([index * 10, index * 10 + 1, index * 10 + 5, index * 10 + 7], axis=1)
    landmarks = (index[:, None, None] * 1000.0
                 + np.arange(68 * 2, dtype=np.float32).reshape(1, 68, 2)).astype(np.float32)
    identities = (index[:, None] * 10.0 + np.arange(IDENTITY_DIMS)).astype(np.float32)
    matrices = (index[:, None, None] + np.eye(3)[None]).astype(np.float32)
    masks = ((index[:, None, None] * 7 + np.arange(MASK_SIDE * MASK_SIDE).reshape(
        1, MASK_SIDE, MASK_SIDE)) % 256).astype(np.uint8)
    return {"bboxes": boxes.astype(np.int32), "landmarks": landmarks, "identities": identities,
            "matrices": matrices, "masks": masks}


def make_batch(counts: Sequence[int], first_number: int = 0, landmarks: bool = True,
               prefix: str = "frame") -> ExtractBatch:
    """A batch of ``len(counts)`` frames with ``counts[i]`` faces in frame i and face data on
    every face (landmarks, one identity, one mask)."""
    frames = len(counts)
    batch = ExtractBatch([f"{prefix}_{i:03d}.png" for i in range(frames)],
                         [np.full((6, 8, 3), i, dtype=np.uint8) for i in range(frames)],
                         [f"source_{i}" for i in range(frames)])
    batch.frame_numbers = np.arange(first_number, first_number + frames, dtype=np.int64)
    total = int(sum(counts))
    data = face_data(total)
    batch.set_faces(data["bboxes"], np.repeat(np.arange(frames), counts))
    if landmarks:
        batch.aligned = ExtractBatchAligned(data["landmarks"])
    batch.identities = {"ident": data["identities"]}
    batch.masks = {"msk": ExtractBatchMask("face", data["matrices"], 0, data["masks"])}
    return batch


def make_frame_faces(count: int, name: str = "frame.png", offset: int = 0, **kwargs: Any
                     ) -> FrameFaces:
    """A frame with ``count`` faces and their landmarks, one identity and one mask."""
    data = face_data(count, offset)
    return FrameFaces(name, np.zeros((20, 30, 3), np.uint8), bboxes=data["bboxes"],
                      landmarks=data["landmarks"], identities={"ident": data["identities"]},
                      masks={"msk": ExtractBatchMask("face", data["matrices"], 0, data["masks"])},
                      **kwargs)


def assert_faces_equal(batch: ExtractBatch, bboxes: np.ndarray, landmarks: np.ndarray | None,
                       identities: np.ndarray, matrices: np.ndarray, masks: np.ndarray) -> None:
    np.testing.assert_array_equal(batch.bboxes, bboxes)
    if landmarks is None:
        assert batch.landmarks is None
    else:
        assert batch.landmarks is not None
        np.testing.assert_array_equal(batch.landmarks, landmarks)
    np.testing.assert_array_equal(batch.identities["ident"], identities)
    np.testing.assert_array_equal(batch.masks["msk"].matrices, matrices)
    np.testing.assert_array_equal(batch.masks["msk"].masks, masks)


# ----------------------------------------------------------------------------------------------
# ExtractBatch construction and faces


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"filenames": ["a", "b"], "images": [np.zeros((2, 2, 3), np.uint8)]}, "2 images"),
    ({"filenames": ["a"], "images": [np.zeros((2, 2, 3), np.uint8)] * 2}, "1 images"),
    ({"filenames": ["a", "b"], "images": [np.zeros((2, 2, 3), np.uint8)] * 2,
      "sources": ["s"]}, "2 sources"),
    ({"filenames": ["a"], "images": [np.zeros((2, 2, 3), np.uint8)],
      "frame_sizes": [(2, 2), (3, 3)]}, "1 frame_sizes"),
    ({"filenames": ["a", "b"], "images": [np.zeros((2, 2, 3), np.uint8)] * 2,
      "frame_metadata": []}, "2 frame_metadata"),
])
def test_batch_rejects_mismatched_lists(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExtractBatch(**kwargs)


@pytest.mark.parametrize("count", [0, 1, 3])
def test_batch_fills_sources_and_frame_state(count: int) -> None:
    batch = ExtractBatch([f"f{i}" for i in range(count)],
                         [np.zeros((2, 2, 3), np.uint8)] * count)
    assert batch.sources == [None] * count
    assert batch.num_frames == count
    assert batch.num_faces == 0
    np.testing.assert_array_equal(batch.frame_numbers, np.arange(count))
    assert batch.frame_complete.dtype == np.bool_
    assert batch.frame_complete.tolist() == [True] * count
    assert batch.lengths.tolist() == [0] * count
    assert batch.landmarks is None
    assert batch.landmark_type is None


def test_batch_keeps_given_sources() -> None:
    batch = ExtractBatch(["a", "b"], [np.zeros((2, 2, 3), np.uint8)] * 2, ["x", None])
    assert batch.sources == ["x", None]


@pytest.mark.parametrize(("bboxes", "frame_ids"), [
    ([[0, 0, 1, 1], [0, 0, 2, 2]], [0]),  # fewer ids than boxes
    ([[0, 0, 1, 1]], [0, 1]),  # more ids than boxes
    ([[0, 0, 1, 1]], [-1]),  # negative frame id
    ([[0, 0, 1, 1]], [3]),  # frame id past the last frame
    ([[0, 0, 1, 1], [0, 0, 2, 2]], [2, 1]),  # decreasing frame ids
])
def test_set_faces_rejects_bad_input(bboxes: list[list[int]], frame_ids: list[int]) -> None:
    batch = ExtractBatch(["a", "b", "c"], [np.zeros((2, 2, 3), np.uint8)] * 3)
    with pytest.raises(ValueError, match="expected"):
        batch.set_faces(np.array(bboxes), np.array(frame_ids))


def test_set_faces_replaces_faces_and_drops_face_data() -> None:
    batch = make_batch([1, 2])
    assert batch.landmarks is not None
    batch.set_faces(np.array([[1.7, 2, 3, 4]]), np.array([1]))
    assert batch.bboxes.dtype == np.int32
    assert batch.bboxes.tolist() == [[1, 2, 3, 4]]
    assert batch.frame_ids.dtype == np.int32
    assert batch.frame_ids.tolist() == [1]
    assert batch.landmarks is None
    assert batch.masks == {}
    assert batch.identities == {}


def test_set_faces_accepts_no_faces() -> None:
    batch = make_batch([2])
    batch.set_faces(np.zeros((0, 4)), np.zeros((0,)))
    assert batch.num_faces == 0
    assert batch.bboxes.shape == (0, 4)
    assert batch.lengths.tolist() == [0]


@pytest.mark.parametrize("counts", [[], [0], [3], [0, 2, 0, 3], [1, 1, 1, 0]])
def test_lengths_counts_faces_per_frame(counts: list[int]) -> None:
    batch = make_batch(counts)
    assert batch.lengths.dtype == np.int32
    assert batch.lengths.tolist() == counts
    assert batch.num_faces == sum(counts)


# ----------------------------------------------------------------------------------------------
# split, split_frames and append

# (counts per frame, first_capacity, capacity,
#  expected parts as (frame indices, first face, face stop, frame_complete))
SPLIT_CASES = [
    pytest.param([2, 3, 1], 3, 2,
                 [([0, 1], 0, 3, [True, False]), ([1], 3, 5, [True]), ([2], 5, 6, [True])],
                 id="frame-spans-first-cut"),
    pytest.param([5], 2, 2,
                 [([0], 0, 2, [False]), ([0], 2, 4, [False]), ([0], 4, 5, [True])],
                 id="one-frame-over-three-parts"),
    pytest.param([0, 2, 0, 0, 2, 0], 2, 2,
                 [([0, 1, 2, 3], 0, 2, [True] * 4), ([4, 5], 2, 4, [True, True])],
                 id="faceless-frames-follow-face-before"),
    pytest.param([1, 0, 1, 0], 1, 1,
                 [([0, 1], 0, 1, [True, True]), ([2, 3], 1, 2, [True, True])],
                 id="faceless-after-each-face"),
    pytest.param([3, 0], 2, 2,
                 [([0], 0, 2, [False]), ([0, 1], 2, 3, [True, True])],
                 id="faceless-after-split-frame"),
    pytest.param([2, 0, 1], 2, 1,
                 [([0, 1], 0, 2, [True, True]), ([2], 2, 3, [True])],
                 id="faceless-at-cut-goes-early"),
    pytest.param([1, 4, 2], 1, 3,
                 [([0], 0, 1, [True]), ([1], 1, 4, [False]), ([1, 2], 4, 7, [True, True])],
                 id="small-first-capacity"),
    pytest.param([3, 0, 1], 3, 5,
                 [([0, 1], 0, 3, [True, True]), ([2], 3, 4, [True])],
                 id="exact-first-fill"),
]


@pytest.mark.parametrize(("counts", "first", "capacity", "expected"), SPLIT_CASES)
def test_split_parts(counts: list[int], first: int, capacity: int,
                     expected: list[tuple[list[int], int, int, list[bool]]]) -> None:
    batch = make_batch(counts, first_number=100)
    data = face_data(sum(counts))
    frame_of_face = np.repeat(np.arange(len(counts)), counts)
    parts = batch.split(first, capacity)
    assert len(parts) == len(expected)
    for part, (frames, start, stop, complete) in zip(parts, expected, strict=True):
        assert part.filenames == [batch.filenames[i] for i in frames]
        assert part.sources == [batch.sources[i] for i in frames]
        assert [int(image[0, 0, 0]) for image in part.images] == frames
        assert part.frame_numbers.tolist() == [100 + i for i in frames]
        assert part.frame_complete.tolist() == complete
        assert part.num_faces == stop - start
        faces = slice(start, stop)
        assert_faces_equal(part, data["bboxes"][faces], data["landmarks"][faces],
                           data["identities"][faces], data["matrices"][faces],
                           data["masks"][faces])
        # Each face still points at the frame it was found in.
        assert ([part.filenames[i] for i in part.frame_ids.tolist()]
                == [batch.filenames[i] for i in frame_of_face[faces]])
        assert part.landmark_type == LandmarkType.LM_2D_68


def test_split_does_not_change_the_original() -> None:
    batch = make_batch([2, 3, 1])
    batch.split(3, 2)
    reference = make_batch([2, 3, 1])
    assert batch.frame_complete.tolist() == [True, True, True]
    np.testing.assert_array_equal(batch.frame_ids, reference.frame_ids)
    np.testing.assert_array_equal(batch.bboxes, reference.bboxes)


@pytest.mark.parametrize(("counts", "first"), [([2, 1], 3), ([0, 0], 1), ([], 2), ([4], 4)])
def test_split_within_first_capacity_returns_batch(counts: list[int], first: int) -> None:
    batch = make_batch(counts)
    parts = batch.split(first, 1)
    assert len(parts) == 1
    assert parts[0] is batch


@pytest.mark.parametrize(("first", "capacity"), [(0, 1), (1, 0), (-1, 2)])
def test_split_rejects_capacity_below_one(first: int, capacity: int) -> None:
    with pytest.raises(ValueError, match="capacities"):
        make_batch([2, 2]).split(first, capacity)


def test_split_keeps_incomplete_frame_incomplete() -> None:
    batch = make_batch([1, 3])
    batch.frame_complete[-1] = False  # the batch itself holds only a part of its last frame
    parts = batch.split(2, 2)
    assert [p.frame_complete.tolist() for p in parts] == [[True, False], [False]]


def join_all(parts: list[ExtractBatch]) -> ExtractBatch:
    joined = parts[0]
    for part in parts[1:]:
        joined.append(part)
    return joined


ROUND_TRIP_CASES = [
    pytest.param(case.values[0], case.values[1], case.values[2], id=case.id)
    for case in SPLIT_CASES] + [
    pytest.param([7, 0, 0, 1, 9, 0, 2], 3, 4, id="long-mixed"),
    pytest.param([1] * 10, 1, 1, id="one-face-per-part"),
]


@pytest.mark.parametrize(("counts", "first", "capacity"), ROUND_TRIP_CASES)
@pytest.mark.parametrize("landmarks", [True, False])
def test_split_then_append_reproduces_batch(counts: list[int], first: int, capacity: int,
                                            landmarks: bool) -> None:
    batch = make_batch(counts, first_number=40, landmarks=landmarks)
    original = make_batch(counts, first_number=40, landmarks=landmarks)
    parts = batch.split(first, capacity)
    assert len(parts) > 1
    joined = join_all(parts)
    assert joined.filenames == original.filenames
    assert joined.sources == original.sources
    assert [int(image[0, 0, 0]) for image in joined.images] == list(range(len(counts)))
    assert joined.frame_numbers.tolist() == original.frame_numbers.tolist()
    assert joined.frame_complete.tolist() == [True] * len(counts)
    assert joined.frame_ids.tolist() == original.frame_ids.tolist()
    assert joined.lengths.tolist() == counts
    assert_faces_equal(joined, original.bboxes, original.landmarks,
                       original.identities["ident"], original.masks["msk"].matrices,
                       original.masks["msk"].masks)
    assert joined.landmark_type == original.landmark_type
    assert joined.masks["msk"].centering == "face"


@pytest.mark.parametrize(("counts", "size", "groups"), [
    ([1, 2, 0, 3, 0], 2, [[0, 1], [2, 3], [4]]),
    ([0, 0, 2, 1, 0], 2, [[0, 1], [2, 3], [4]]),
    ([2, 2, 2], 1, [[0], [1], [2]]),
    ([1, 0, 4], 5, [[0, 1, 2]]),
    ([1, 0, 4], 3, [[0, 1, 2]]),
])
def test_split_frames(counts: list[int], size: int, groups: list[list[int]]) -> None:
    batch = make_batch(counts, first_number=7)
    data = face_data(sum(counts))
    ends = np.cumsum([0, *counts])
    parts = batch.split_frames(size)
    assert len(parts) == len(groups)
    if len(groups) == 1:
        assert parts[0] is batch
    for part, frames in zip(parts, groups, strict=True):
        assert part.filenames == [batch.filenames[i] for i in frames]
        assert part.frame_numbers.tolist() == [7 + i for i in frames]
        assert part.frame_complete.all()
        assert part.lengths.tolist() == [counts[i] for i in frames]
        faces = slice(int(ends[frames[0]]), int(ends[frames[-1] + 1]))
        assert_faces_equal(part, data["bboxes"][faces], data["landmarks"][faces],
                           data["identities"][faces], data["matrices"][faces],
                           data["masks"][faces])
    joined = join_all(parts)
    assert joined.filenames == batch.filenames
    assert joined.frame_ids.tolist() == batch.frame_ids.tolist()
    np.testing.assert_array_equal(joined.bboxes, data["bboxes"])


def test_append_joins_a_split_frame() -> None:
    first = make_batch([1, 2], first_number=5, prefix="a")
    first.frame_complete[-1] = False
    second = make_batch([1, 1], first_number=6, prefix="b")
    second.bboxes += 1000
    first.append(second)
    # Frame number 6 is one frame: its name, image and source come from the first part.
    assert first.filenames == ["a_000.png", "a_001.png", "b_001.png"]
    assert first.sources == ["source_0", "source_1", "source_1"]
    assert len(first.images) == 3
    assert first.frame_numbers.tolist() == [5, 6, 7]
    assert first.frame_complete.tolist() == [True, True, True]
    assert first.frame_ids.tolist() == [0, 1, 1, 1, 2]
    assert first.lengths.tolist() == [1, 3, 1]
    assert first.bboxes[3:, 0].tolist() == [1000, 1010]
    assert first.landmarks is not None
    assert first.landmarks.shape == (5, 68, 2)
    assert first.identities["ident"].shape == (5, IDENTITY_DIMS)
    assert len(first.masks["msk"]) == 5
    assert first.masks["msk"].masks.shape == (5, MASK_SIDE, MASK_SIDE)


def test_append_keeps_distinct_frames_apart() -> None:
    first = make_batch([1, 2], first_number=5, prefix="a")
    second = make_batch([1, 1], first_number=7, prefix="b")
    first.append(second)
    assert first.filenames == ["a_000.png", "a_001.png", "b_000.png", "b_001.png"]
    assert first.frame_numbers.tolist() == [5, 6, 7, 8]
    assert first.frame_ids.tolist() == [0, 1, 1, 2, 3]
    assert first.lengths.tolist() == [1, 2, 1, 1]
    assert first.frame_complete.tolist() == [True] * 4


def test_append_join_takes_completion_of_later_part() -> None:
    first = make_batch([1, 2], first_number=5)
    first.frame_complete[-1] = False
    second = make_batch([1], first_number=6)
    second.frame_complete[0] = False
    first.append(second)
    assert first.frame_complete.tolist() == [True, False]
    assert first.lengths.tolist() == [1, 3]


def test_append_to_empty_batch_takes_everything() -> None:
    empty = ExtractBatch()
    other = make_batch([0, 2])
    other.is_aligned = True
    empty.append(other)
    assert empty.filenames == other.filenames
    assert empty.is_aligned
    assert empty.frame_ids.tolist() == [1, 1]
    assert empty.landmark_type == LandmarkType.LM_2D_68
    assert empty.identities["ident"].shape == (2, IDENTITY_DIMS)


def test_append_faceless_batch_keeps_face_data() -> None:
    first = make_batch([2])
    second = make_batch([0, 0], first_number=1)
    first.append(second)
    assert first.num_frames == 3
    assert first.lengths.tolist() == [2, 0, 0]
    assert first.landmarks is not None
    assert len(first.landmarks) == 2
    assert len(first.masks["msk"]) == 2


def test_append_rejects_aligned_with_frames() -> None:
    first = make_batch([1])
    second = make_batch([1], first_number=1)
    second.is_aligned = True
    with pytest.raises(ValueError, match="aligned"):
        first.append(second)


def test_append_rejects_different_identity_keys() -> None:
    first = make_batch([1])
    second = make_batch([1], first_number=1)
    second.identities = {"other": second.identities["ident"]}
    with pytest.raises(ValueError, match="identities"):
        first.append(second)


# ----------------------------------------------------------------------------------------------
# apply_mask


def test_batch_apply_mask_filters_every_face_array() -> None:
    batch = make_batch([2, 1, 2])
    data = face_data(5)
    keep = np.array([True, False, False, True, True])
    batch.apply_mask(keep)
    assert batch.num_frames == 3
    assert batch.filenames == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert batch.frame_ids.tolist() == [0, 2, 2]
    assert batch.lengths.tolist() == [1, 0, 2]
    assert_faces_equal(batch, data["bboxes"][keep], data["landmarks"][keep],
                       data["identities"][keep], data["matrices"][keep], data["masks"][keep])


def _batch_target() -> ExtractBatch:
    return make_batch([2, 1])


def _aligned_target() -> ExtractBatchAligned:
    return ExtractBatchAligned(face_data(3)["landmarks"])


def _mask_target() -> ExtractBatchMask:
    data = face_data(3)
    return ExtractBatchMask("face", data["matrices"], 0, data["masks"])


@pytest.mark.parametrize("make", [_batch_target, _aligned_target, _mask_target])
@pytest.mark.parametrize("mask", [
    pytest.param(np.array([1, 0, 1]), id="int-dtype"),
    pytest.param(np.array([1.0, 0.0, 1.0]), id="float-dtype"),
    pytest.param(np.array([True, False]), id="too-short"),
    pytest.param(np.array([True, False, True, True]), id="too-long"),
    pytest.param(np.array([[True, False, True]]), id="2d"),
])
def test_apply_mask_rejects_bad_mask(make: Any, mask: np.ndarray) -> None:
    with pytest.raises(ValueError, match="boolean mask"):
        make().apply_mask(mask)


def test_aligned_apply_mask() -> None:
    aligned = _aligned_target()
    aligned.apply_mask(np.array([False, True, False]))
    assert aligned.landmarks is not None
    np.testing.assert_array_equal(aligned.landmarks, face_data(3)["landmarks"][1:2])
    assert aligned.landmark_type == LandmarkType.LM_2D_68


def test_aligned_apply_mask_without_landmarks_is_a_no_op() -> None:
    aligned = ExtractBatchAligned()
    aligned.apply_mask(np.array([True, False]))
    assert aligned.landmarks is None


def test_mask_apply_mask() -> None:
    mask = _mask_target()
    mask.apply_mask(np.array([True, False, True]))
    data = face_data(3)
    assert len(mask) == 2
    np.testing.assert_array_equal(mask.matrices, data["matrices"][[0, 2]])
    np.testing.assert_array_equal(mask.masks, data["masks"][[0, 2]])


def test_mask_apply_mask_without_mask_images() -> None:
    mask = ExtractBatchMask("head", face_data(3)["matrices"])
    mask.apply_mask(np.array([False, True, True]))
    assert len(mask) == 2
    assert mask.masks.size == 0


# ----------------------------------------------------------------------------------------------
# Conversions between ExtractBatch, DetectedFace and FrameFaces


def test_from_detected_faces_rejects_batch_of_two_frames() -> None:
    batch = make_batch([0, 0])
    with pytest.raises(ValueError, match="exactly one frame"):
        batch.from_detected_faces([DetectedFace(0, 0, 2, 2)])


def test_from_detected_faces_rejects_batch_with_faces() -> None:
    batch = make_batch([1])
    with pytest.raises(ValueError, match="no faces yet"):
        batch.from_detected_faces([DetectedFace(0, 0, 2, 2)])


def test_from_detected_faces_rejects_some_landmarks() -> None:
    batch = make_batch([0])
    faces = [DetectedFace(0, 0, 2, 2, landmarks_xy=np.zeros((68, 2), np.float32)),
             DetectedFace(1, 1, 2, 2)]
    with pytest.raises(ValueError, match="landmarks for every"):
        batch.from_detected_faces(faces)


def test_from_detected_faces_without_faces() -> None:
    batch = ExtractBatch(["a"], [np.zeros((4, 4, 3), np.uint8)])
    batch.from_detected_faces([])
    assert batch.num_faces == 0
    assert batch.lengths.tolist() == [0]


def test_from_detected_faces_boxes_only() -> None:
    batch = ExtractBatch(["a"], [np.zeros((4, 4, 3), np.uint8)])
    batch.from_detected_faces([DetectedFace(1, 2, 3, 4), DetectedFace(5, 6, 7, 8)])
    assert batch.bboxes.tolist() == [[1, 2, 4, 6], [5, 6, 12, 14]]
    assert batch.frame_ids.tolist() == [0, 0]
    assert batch.landmarks is None


@pytest.mark.parametrize(("points", "landmark_type"), [
    (68, LandmarkType.LM_2D_68), (98, LandmarkType.LM_2D_98), (4, LandmarkType.LM_2D_4)])
def test_from_detected_faces_with_data(points: int, landmark_type: LandmarkType) -> None:
    data = face_data(2)
    faces = [DetectedFace(1, 2, 3, 4, landmarks_xy=np.full((points, 2), 1.5 + i),
                          identity={"ident": data["identities"][i].astype(np.float64)},
                          mask={"msk": ExtractBatchMask("face", data["matrices"][i:i + 1], 0,
                                                        data["masks"][i:i + 1])})
             for i in range(2)]
    batch = ExtractBatch(["a"], [np.zeros((4, 4, 3), np.uint8)])
    batch.from_detected_faces(faces)
    assert batch.landmark_type == landmark_type
    assert batch.landmarks is not None
    assert batch.landmarks.dtype == np.float32
    assert batch.landmarks[:, 0, 0].tolist() == [1.5, 2.5]
    assert batch.identities["ident"].dtype == np.float32
    np.testing.assert_array_equal(batch.identities["ident"], data["identities"])
    np.testing.assert_array_equal(batch.masks["msk"].matrices, data["matrices"])
    np.testing.assert_array_equal(batch.masks["msk"].masks, data["masks"])


def test_from_frame_faces() -> None:
    media = make_frame_faces(2, "x.png", source="video.mp4", is_aligned=True,
                             frame_size=(720, 1280), passthrough=True)
    batch = ExtractBatch.from_frame_faces(media)
    assert batch.filenames == ["x.png"]
    assert batch.images[0] is media.image
    assert batch.sources == ["video.mp4"]
    assert batch.is_aligned
    assert batch.passthrough
    assert batch.frame_sizes == [(720, 1280)]
    assert batch.frame_metadata is None
    assert batch.frame_ids.tolist() == [0, 0]
    data = face_data(2)
    assert_faces_equal(batch, data["bboxes"], data["landmarks"], data["identities"],
                       data["matrices"], data["masks"])


def test_from_frame_faces_without_faces() -> None:
    media = FrameFaces("x.png", np.zeros((3, 3, 3), np.uint8))
    batch = ExtractBatch.from_frame_faces(media)
    assert batch.num_frames == 1
    assert batch.num_faces == 0
    assert batch.sources == [None]
    assert batch.frame_sizes is None


def test_from_frame_faces_does_not_alias_the_frame() -> None:
    media = make_frame_faces(2)
    batch = ExtractBatch.from_frame_faces(media)
    batch.apply_mask(np.array([True, False]))
    assert batch.num_faces == 1
    assert media.landmarks is not None
    assert len(media.bboxes) == 2
    assert len(media.landmarks) == 2
    assert len(media.masks["msk"]) == 2


def test_from_frames() -> None:
    frames = [make_frame_faces(1, "a.png", offset=0), FrameFaces("b.png", np.zeros((2, 2, 3),
                                                                                  np.uint8)),
              make_frame_faces(2, "c.png", offset=1)]
    batch = ExtractBatch.from_frames(frames, np.array([10, 11, 12]))
    assert batch.filenames == ["a.png", "b.png", "c.png"]
    assert batch.frame_numbers.tolist() == [10, 11, 12]
    assert batch.frame_numbers.dtype == np.int64
    assert batch.frame_complete.tolist() == [True] * 3
    assert batch.frame_ids.tolist() == [0, 2, 2]
    assert batch.lengths.tolist() == [1, 0, 2]
    assert not batch.is_aligned
    assert batch.frame_sizes is None
    data = face_data(3)
    assert_faces_equal(batch, data["bboxes"], data["landmarks"], data["identities"],
                       data["matrices"], data["masks"])


def test_from_frames_default_numbers_and_no_faces() -> None:
    frames = [FrameFaces(f"{i}.png", np.zeros((2, 2, 3), np.uint8)) for i in range(3)]
    batch = ExtractBatch.from_frames(frames)
    assert batch.frame_numbers.tolist() == [0, 1, 2]
    assert batch.num_faces == 0
    assert batch.masks == {}
    assert batch.identities == {}


def test_from_frames_frame_sizes_only_when_all_have_them() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    some = [FrameFaces("a", image, is_aligned=True, frame_size=(5, 6)),
            FrameFaces("b", image, is_aligned=True)]
    assert ExtractBatch.from_frames(some).frame_sizes is None
    every = [FrameFaces("a", image, is_aligned=True, frame_size=(5, 6)),
             FrameFaces("b", image, is_aligned=True, frame_size=(7, 8))]
    batch = ExtractBatch.from_frames(every)
    assert batch.is_aligned
    assert batch.frame_sizes == [(5, 6), (7, 8)]


def test_from_frames_rejects_mixed_aligned() -> None:
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="aligned"):
        ExtractBatch.from_frames([FrameFaces("a", image), FrameFaces("b", image,
                                                                     is_aligned=True)])


def test_to_frame_faces() -> None:
    batch = make_batch([1, 0, 2])
    batch.passthrough = True
    data = face_data(3)
    out = batch.to_frame_faces()
    assert [m.filename for m in out] == batch.filenames
    assert [m.source for m in out] == batch.sources
    assert [len(m.bboxes) for m in out] == [1, 0, 2]
    assert all(m.passthrough for m in out)
    assert all(m.image is batch.images[i] for i, m in enumerate(out))
    for media, faces in zip(out, [slice(0, 1), slice(1, 1), slice(1, 3)], strict=True):
        np.testing.assert_array_equal(media.bboxes, data["bboxes"][faces])
        assert media.landmarks is not None
        np.testing.assert_array_equal(media.landmarks, data["landmarks"][faces])
        assert media.aligned.landmark_type == LandmarkType.LM_2D_68
        np.testing.assert_array_equal(media.identities["ident"], data["identities"][faces])
        np.testing.assert_array_equal(media.masks["msk"].matrices, data["matrices"][faces])


def test_to_frame_faces_then_from_frames_round_trip() -> None:
    batch = make_batch([2, 0, 1, 3])
    rebuilt = ExtractBatch.from_frames(batch.to_frame_faces(), batch.frame_numbers)
    assert rebuilt.filenames == batch.filenames
    assert rebuilt.frame_ids.tolist() == batch.frame_ids.tolist()
    assert_faces_equal(rebuilt, batch.bboxes, batch.landmarks, batch.identities["ident"],
                       batch.masks["msk"].matrices, batch.masks["msk"].masks)


def test_to_frame_faces_keeps_aligned_frame_data() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    metadata: Any = {"source_filename": "f.png"}
    batch = ExtractBatch(["a"], [image], is_aligned=True, frame_sizes=[(30, 40)],
                         frame_metadata=[metadata])
    (media,) = batch.to_frame_faces()
    assert media.is_aligned
    assert media.frame_size == (30, 40)
    assert media.frame_metadata is metadata
    assert media.landmarks is None


# ----------------------------------------------------------------------------------------------
# FrameFaces


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"landmarks": np.zeros((3, 68, 2))}, "landmarks for 2 faces"),
    ({"landmarks": np.zeros((1, 68, 2))}, "landmarks for 2 faces"),
    ({"identities": {"ident": np.zeros((3, 4))}}, "2 'ident' identities"),
    ({"masks": {"msk": ExtractBatchMask("face", np.zeros((1, 3, 3)))}}, "2 'msk' masks"),
])
def test_frame_faces_rejects_per_face_lengths(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FrameFaces("a", np.zeros((4, 4, 3), np.uint8), bboxes=np.zeros((2, 4)), **kwargs)


def test_frame_faces_rejects_empty_landmarks_for_faces() -> None:
    with pytest.raises(ValueError, match="landmarks"):
        FrameFaces("a", np.zeros((4, 4, 3), np.uint8), bboxes=np.zeros((2, 4)),
                   landmarks=np.zeros((0, 68, 2)))


def test_frame_faces_defaults() -> None:
    media = FrameFaces("a", np.zeros((4, 5, 3), np.uint8), bboxes=[1, 2, 3, 4])
    assert media.bboxes.dtype == np.int32
    assert media.bboxes.shape == (1, 4)
    assert media.landmarks is None
    assert media.identities == {}
    assert media.masks == {}
    assert media.detected_faces[0].landmarks_xy is None


def test_detected_faces() -> None:
    media = make_frame_faces(2)
    data = face_data(2)
    faces = media.detected_faces
    assert len(faces) == 2
    for index, face in enumerate(faces):
        left, top, right, bottom = data["bboxes"][index].tolist()
        assert (face.left, face.top, face.right, face.bottom) == (left, top, right, bottom)
        assert (face.width, face.height) == (right - left, bottom - top)
        assert face.landmarks_xy is not None
        np.testing.assert_array_equal(face.landmarks_xy, data["landmarks"][index])
        np.testing.assert_array_equal(face.identity["ident"], data["identities"][index])
        assert len(face.mask["msk"]) == 1
        np.testing.assert_array_equal(face.mask["msk"].masks[0], data["masks"][index])


def test_detected_faces_round_trip_through_batch() -> None:
    media = make_frame_faces(3)
    batch = ExtractBatch(["a"], [np.zeros((4, 4, 3), np.uint8)])
    batch.from_detected_faces(media.detected_faces)
    data = face_data(3)
    assert_faces_equal(batch, data["bboxes"], data["landmarks"], data["identities"],
                       data["matrices"], data["masks"])


def test_frame_faces_append() -> None:
    first = make_frame_faces(1, offset=0)
    first.append(make_frame_faces(2, offset=1))
    data = face_data(3)
    np.testing.assert_array_equal(first.bboxes, data["bboxes"])
    assert first.landmarks is not None
    np.testing.assert_array_equal(first.landmarks, data["landmarks"])
    np.testing.assert_array_equal(first.identities["ident"], data["identities"])
    np.testing.assert_array_equal(first.masks["msk"].masks, data["masks"])


def test_frame_faces_append_to_faceless_part() -> None:
    first = FrameFaces("frame.png", np.zeros((20, 30, 3), np.uint8))
    first.append(make_frame_faces(2))
    assert len(first.bboxes) == 2
    assert first.aligned.landmark_type == LandmarkType.LM_2D_68
    assert first.identities["ident"].shape == (2, IDENTITY_DIMS)
    assert len(first.masks["msk"]) == 2


def test_frame_faces_append_rejects_other_frame() -> None:
    with pytest.raises(ValueError, match=r"a part of frame 'a\.png'"):
        make_frame_faces(1, "a.png").append(make_frame_faces(1, "b.png"))


def test_remove_image_keeps_shape() -> None:
    media = FrameFaces("a", np.zeros((7, 9, 3), np.uint8))
    assert media.image_size == (7, 9)
    media.remove_image()
    assert media.image is None
    assert media.image_shape == (7, 9, 3)
    assert media.image_size == (7, 9)


def test_image_size_of_grey_image() -> None:
    assert FrameFaces("a", np.zeros((11, 4), np.uint8)).image_size == (11, 4)


# ----------------------------------------------------------------------------------------------
# ExtractBatchAligned


@pytest.mark.parametrize(("shape", "expected"), [
    ((2, 4, 2), LandmarkType.LM_2D_4),
    ((2, 51, 2), LandmarkType.LM_2D_51),
    ((1, 68, 2), LandmarkType.LM_2D_68),
    ((3, 98, 2), LandmarkType.LM_2D_98),
    ((2, 26, 3), LandmarkType.LM_3D_26),
    ((0, 68, 2), LandmarkType.LM_2D_68),
])
def test_landmark_type_from_shape(shape: tuple[int, ...], expected: LandmarkType) -> None:
    aligned = ExtractBatchAligned(np.zeros(shape, np.float64))
    assert aligned.landmark_type == expected
    assert aligned.landmarks is not None
    assert aligned.landmarks.dtype == np.float32
    assert len(aligned) == shape[0]


@pytest.mark.parametrize("shape", [(2, 5, 2), (2, 68, 3), (2, 26, 2), (1, 98, 1)])
def test_landmark_type_unknown_shape(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected landmarks of shape"):
        ExtractBatchAligned(np.zeros(shape))


@pytest.mark.parametrize("shape", [(68, 2), (2, 68, 2, 1)])
def test_landmarks_must_be_three_dimensional(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(N, points, dims\)"):
        ExtractBatchAligned(np.zeros(shape))


def test_given_landmark_type_is_kept() -> None:
    aligned = ExtractBatchAligned(np.zeros((1, 68, 2)), LandmarkType.LM_2D_68)
    assert aligned.landmark_type == LandmarkType.LM_2D_68


def _reference_map_98_to_68() -> list[int]:
    path = SHARED / "reference" / "faceswap_constants.json"
    if not path.exists():
        pytest.skip(f"reference constants not found at {path}")
    return list(json.loads(path.read_text())["map_98_to_68"])


def test_landmarks_68_maps_wflw_points() -> None:
    reference = _reference_map_98_to_68()
    points = np.arange(2 * 98 * 2, dtype=np.float32).reshape(2, 98, 2)
    out = ExtractBatchAligned(points).landmarks_68
    assert out.shape == (2, 68, 2)
    # Spot checks: jaw, brows, eye corners, nose tip, mouth corners, last inner-lip point.
    for index in (0, 1, 16, 17, 22, 33, 36, 39, 42, 45, 48, 54, 67):
        np.testing.assert_array_equal(out[:, index], points[:, reference[index]])
    np.testing.assert_array_equal(out, points[:, reference])


@pytest.mark.parametrize("points", [68, 4])
def test_landmarks_68_keeps_68_and_4_points(points: int) -> None:
    landmarks = np.random.default_rng(1).random((3, points, 2)).astype(np.float32)
    np.testing.assert_array_equal(ExtractBatchAligned(landmarks).landmarks_68, landmarks)


@pytest.mark.parametrize("landmarks", [None, np.zeros((1, 51, 2)), np.zeros((1, 26, 3))])
def test_landmarks_68_rejects_other_layouts(landmarks: np.ndarray | None) -> None:
    with pytest.raises(ValueError, match="expected"):
        _ = ExtractBatchAligned(landmarks).landmarks_68


@pytest.mark.parametrize(("landmarks", "count"), [
    (None, 0), (np.zeros((0, 68, 2)), 0), (np.ones((3, 68, 2)), 3), (np.ones((2, 98, 2)), 2)])
def test_offsets_legacy_are_zero(landmarks: np.ndarray | None, count: int) -> None:
    offsets = ExtractBatchAligned(landmarks).offsets_legacy
    assert offsets.shape == (count, 2)
    assert offsets.dtype == np.float32
    assert not offsets.any()


def test_aligned_append_rejects_mixed() -> None:
    with pytest.raises(ValueError, match="neither"):
        ExtractBatchAligned(np.zeros((1, 68, 2))).append(ExtractBatchAligned())
    with pytest.raises(ValueError, match="type"):
        ExtractBatchAligned(np.zeros((1, 68, 2))).append(ExtractBatchAligned(np.zeros((1, 98, 2))))


# ----------------------------------------------------------------------------------------------
# ExtractBatchMask


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"matrices": np.zeros((2, 2, 3))}, r"\(N, 3, 3\)"),
    ({"matrices": np.zeros((3, 3))}, r"\(N, 3, 3\)"),
    ({"matrices": np.zeros((2, 3, 3)), "masks": np.zeros((3, 4, 4), np.uint8)}, r"\(2, S, S\)"),
    ({"matrices": np.zeros((2, 3, 3)), "masks": np.zeros((2, 16), np.uint8)}, r"\(2, S, S\)"),
    ({"matrices": np.zeros((2, 3, 3)), "storage_size": -1}, "storage size"),
])
def test_mask_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ExtractBatchMask("face", **kwargs)


def test_mask_append() -> None:
    data = face_data(3)
    mask = ExtractBatchMask("head", data["matrices"][:1], 0, data["masks"][:1])
    mask.append(ExtractBatchMask("head", data["matrices"][1:], 0, data["masks"][1:]))
    np.testing.assert_array_equal(mask.matrices, data["matrices"])
    np.testing.assert_array_equal(mask.masks, data["masks"])


def test_mask_append_rejects_other_centering() -> None:
    mask = ExtractBatchMask("face", np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="centering 'face'"):
        mask.append(ExtractBatchMask("head", np.zeros((1, 3, 3))))


@pytest.mark.parametrize(("side", "storage_size", "stored"), [
    (96, 0, 96),  # 0: keep the mask's own size
    (40, 0, 40),  # ... even below the minimum
    (96, 32, 64),  # a storage size is raised to at least 64
    (96, 64, 64),
    (96, 128, 128),
    (64, 200, 200),
])
def test_mask_to_alignment(side: int, storage_size: int, stored: int) -> None:
    rng = np.random.default_rng(side + storage_size)
    masks = rng.integers(0, 256, size=(2, side, side), dtype=np.uint8)
    matrices = rng.random((2, 3, 3)).astype(np.float32)
    kwargs = {} if storage_size == 0 else {"storage_size": storage_size}
    batch_mask = ExtractBatchMask("head", matrices, masks=masks, **kwargs)
    out = batch_mask.to_alignment(1)
    assert set(out) == {"mask", "affine_matrix", "interpolator", "stored_size",
                        "stored_centering"}
    assert out["stored_size"] == stored
    assert out["stored_centering"] == "head"
    assert out["interpolator"] == cv2.INTER_LINEAR
    mask = np.frombuffer(zlib.decompress(out["mask"]), dtype=np.uint8)
    assert mask.size == stored * stored
    mask = mask.reshape(stored, stored)
    if stored == side:
        np.testing.assert_array_equal(mask, masks[1])
    else:
        interp = cv2.INTER_AREA if stored < side else cv2.INTER_LINEAR
        np.testing.assert_array_equal(mask, cv2.resize(masks[1], (stored, stored),
                                                       interpolation=interp))
    expected = np.diag([stored, stored, 1.0]) @ matrices[1].astype(np.float64)
    np.testing.assert_allclose(np.array(out["affine_matrix"]), expected, rtol=1e-12)


def test_mask_to_alignment_constant_mask_survives_resize() -> None:
    masks = np.full((1, 32, 32), 255, np.uint8)
    out = ExtractBatchMask("face", np.eye(3)[None], 100, masks).to_alignment(0)
    mask = np.frombuffer(zlib.decompress(out["mask"]), np.uint8).reshape(100, 100)
    assert (mask == 255).all()
    np.testing.assert_allclose(out["affine_matrix"], np.diag([100.0, 100.0, 1.0]))


# ----------------------------------------------------------------------------------------------
# frame_faces_to_alignment


def test_frame_faces_to_alignment() -> None:
    media = make_frame_faces(2)
    # A second mask plugin whose matrices were made but not its masks is left out.
    media.masks["pending"] = ExtractBatchMask("face", np.zeros((2, 3, 3)))
    data = face_data(2)
    out = frame_faces_to_alignment(media)
    assert len(out) == 2
    for index, face in enumerate(out):
        left, top, right, bottom = data["bboxes"][index].tolist()
        assert set(face) == {"x", "y", "w", "h", "landmarks_xy", "mask", "identity"}
        assert (face["x"], face["y"], face["w"], face["h"]) == (left, top, right - left,
                                                                bottom - top)
        assert all(type(face[k]) is int for k in ("x", "y", "w", "h"))
        assert face["landmarks_xy"] == data["landmarks"][index].tolist()
        assert face["identity"] == {"ident": data["identities"][index].tolist()}
        assert list(face["mask"]) == ["msk"]
        assert face["mask"]["msk"] == media.masks["msk"].to_alignment(index)
    json.dumps([{**face, "mask": {}} for face in out])  # plain Python types throughout


def test_frame_faces_to_alignment_without_data() -> None:
    media = FrameFaces("a", np.zeros((4, 4, 3), np.uint8), bboxes=[[1, 2, 4, 8]])
    assert frame_faces_to_alignment(media) == [
        {"x": 1, "y": 2, "w": 3, "h": 6, "landmarks_xy": [], "mask": {}, "identity": {}}]
    assert frame_faces_to_alignment(FrameFaces("b", np.zeros((4, 4, 3), np.uint8))) == []


# ----------------------------------------------------------------------------------------------
# Detector keypoints, align scores and the box convention


def with_keypoints(batch: ExtractBatch) -> ExtractBatch:
    """Give every face of the batch distinct keypoints and align scores, and a box convention."""
    count = batch.num_faces
    batch.keypoints = (np.arange(count)[:, None, None] * 100.0
                       + np.arange(10).reshape(1, 5, 2)).astype(np.float32)
    batch.align_scores = (np.arange(count) / 100.0).astype(np.float32)
    batch.face_box = (-0.1, -0.2, 1.1, 1.2)
    return batch


def test_keypoints_and_scores_follow_their_faces_through_split_and_append() -> None:
    original = with_keypoints(make_batch([2, 0, 3, 1]))
    parts = with_keypoints(make_batch([2, 0, 3, 1])).split(3, 2)
    assert len(parts) == 3
    start = 0
    for part in parts:
        stop = start + part.num_faces
        np.testing.assert_array_equal(part.keypoints, original.keypoints[start:stop])
        np.testing.assert_array_equal(part.align_scores, original.align_scores[start:stop])
        assert part.face_box == original.face_box
        start = stop
    joined = join_all(parts)
    np.testing.assert_array_equal(joined.keypoints, original.keypoints)
    np.testing.assert_array_equal(joined.align_scores, original.align_scores)
    assert joined.face_box == original.face_box


def test_keypoints_and_scores_follow_apply_mask_and_frames() -> None:
    batch = with_keypoints(make_batch([2, 3]))
    keep = np.array([True, False, True, False, True])
    expected_points, expected_scores = batch.keypoints[keep], batch.align_scores[keep]
    batch.apply_mask(keep)
    np.testing.assert_array_equal(batch.keypoints, expected_points)
    np.testing.assert_array_equal(batch.align_scores, expected_scores)
    frames = batch.to_frame_faces()
    np.testing.assert_array_equal(frames[0].keypoints, expected_points[:1])
    np.testing.assert_array_equal(frames[1].align_scores, expected_scores[1:])
    face = frames[1].detected_faces[1]
    assert face.keypoints is not None
    np.testing.assert_array_equal(face.keypoints, expected_points[2])
    assert face.align_score == pytest.approx(float(expected_scores[2]))
    again = ExtractBatch.from_frames(frames)
    np.testing.assert_array_equal(again.keypoints, expected_points)
    np.testing.assert_array_equal(again.align_scores, expected_scores)
    single = ExtractBatch(["one"], [np.zeros((6, 8, 3), np.uint8)])
    single.from_detected_faces(frames[1].detected_faces)
    np.testing.assert_array_equal(single.keypoints, expected_points[1:])
    np.testing.assert_array_equal(single.align_scores, expected_scores[1:])


def test_set_faces_resets_scores_and_checks_keypoints() -> None:
    batch = with_keypoints(make_batch([2]))
    batch.set_faces(np.array([[0, 0, 4, 4]]), np.array([0]))
    assert batch.keypoints.shape == (1, 0, 2)
    assert np.isnan(batch.align_scores).all()
    with pytest.raises(ValueError, match="keypoints"):
        batch.set_faces(np.array([[0, 0, 4, 4]]), np.array([0]), np.zeros((2, 5, 2)))


def test_faces_with_and_without_keypoints_join_with_nan_keypoints() -> None:
    first = with_keypoints(make_batch([2], prefix="a"))
    second = make_batch([1], first_number=5, prefix="b")
    second.face_box = None
    first.append(second)
    assert first.keypoints.shape == (3, 5, 2)
    assert np.isnan(first.keypoints[2]).all()
    assert np.isfinite(first.keypoints[:2]).all()
    assert first.face_box is None, "faces of different detectors have no common convention"
    frame = make_frame_faces(1, keypoints=np.ones((1, 5, 2)))
    frame.append(make_frame_faces(2, offset=1))
    assert frame.keypoints.shape == (3, 5, 2)
    assert np.isnan(frame.keypoints[1:]).all()
    assert frame.detected_faces[0].keypoints is not None
    assert frame.detected_faces[0].align_score is None
