"""Face geometry: Umeyama alignment, centering, sub-crops and batched warps, on synthetic and
real faces."""
from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from faceinfer.aligned_batch import ExtractBatchAligned
from faceinfer.geometry.aligned import (
    aligned_matrices,
    coverage_padding,
    padding,
    sub_crop,
    sub_crop_origins,
    sub_crop_size,
    warp_aligned,
)
from faceinfer.geometry.constants import MAP_98_TO_68, MEAN_FACE_2D_4, MEAN_FACE_2D_51
from faceinfer.geometry.umeyama import legacy_matrices, umeyama
from tests.faces import needs_real_faces, real_faces


def similarity(angle: npt.NDArray[np.float64], scale: npt.NDArray[np.float64],
               shift: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 3, 3) similarity matrices."""
    cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
    out = np.zeros((len(angle), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = cos, -sin, sin, cos
    out[:, :2, 2] = shift
    out[:, 2, 2] = 1.0
    return out


def apply(matrices: npt.NDArray[np.float64], points: npt.NDArray[np.float64]
          ) -> npt.NDArray[np.float64]:
    """Apply (N, 3, 3) matrices to (N, P, 2) or (P, 2) points."""
    pattern = "nij,pj->npi" if points.ndim == 2 else "nij,npj->npi"
    return np.einsum(pattern, matrices[:, :2, :2], points) + matrices[:, None, :2, 2]




# --------------------------------------------------------------------------------- Umeyama
def test_umeyama_recovers_random_similarities() -> None:
    rng = np.random.default_rng()
    count = 500
    truth = similarity(rng.uniform(-np.pi, np.pi, count), rng.uniform(0.05, 800.0, count),
                       rng.uniform(-2000.0, 2000.0, (count, 2)))
    frame_points = apply(truth, MEAN_FACE_2D_51)
    estimate = umeyama(frame_points, MEAN_FACE_2D_51)  # frame -> mean face: truth's inverse
    np.testing.assert_allclose(estimate @ truth, np.broadcast_to(np.eye(3), truth.shape),
                               atol=1e-6)


@pytest.mark.parametrize(("name", "points", "valid"), [
    ("empty batch", np.zeros((0, 51, 2)), None),
    ("one face", MEAN_FACE_2D_51[None] * 100 + 7, True),
    ("all points equal", np.full((1, 51, 2), 3.0), False),
    ("collinear", np.stack([np.linspace(0, 1, 51), np.linspace(0, 2, 51)], axis=1)[None], True),
])
def test_umeyama_edge_cases(name: str, points: npt.NDArray[np.float64],
                            valid: bool | None) -> None:
    out = umeyama(points, MEAN_FACE_2D_51)
    assert out.shape == (len(points), 3, 3), name
    if valid is None:
        return
    assert np.isfinite(out).all() == valid, name
    if valid:
        assert np.linalg.det(out[:, :2, :2]).min() > 0, "a rotation, never a reflection"


def test_umeyama_never_reflects_mirrored_faces() -> None:
    mirrored = MEAN_FACE_2D_51.copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    mirrored = mirrored[None] * 50
    out = umeyama(mirrored, MEAN_FACE_2D_51)
    assert np.linalg.det(out[:, :2, :2])[0] > 0
    # The proper-rotation least-squares fit: its residual beats any other proper rotation's.
    best = np.abs(apply(out, mirrored) - MEAN_FACE_2D_51).sum()
    for angle in np.linspace(-np.pi, np.pi, 73):
        other = umeyama(mirrored, MEAN_FACE_2D_51)
        other[:, :2, :2] = out[:, :2, :2] @ similarity(np.array([angle]), np.ones(1),
                                                       np.zeros((1, 2)))[:, :2, :2]
        assert np.abs(apply(other, mirrored) - MEAN_FACE_2D_51).sum() >= best - 1e-9


def test_umeyama_many_faces_equal_one_at_a_time() -> None:
    rng = np.random.default_rng()
    points = MEAN_FACE_2D_51[None] * rng.uniform(10, 100, (20, 1, 1)) + rng.normal(
        0, 2, (20, 51, 2))
    batched = umeyama(points, MEAN_FACE_2D_51)
    single = np.concatenate([umeyama(p[None], MEAN_FACE_2D_51) for p in points])
    np.testing.assert_allclose(batched, single, atol=1e-12)


@pytest.mark.parametrize(("shape", "target"), [
    ((3, 4, 2), MEAN_FACE_2D_4), ((3, 51, 2), MEAN_FACE_2D_51), ((3, 68, 2), MEAN_FACE_2D_51),
])
def test_legacy_matrices_per_landmark_type(shape: tuple[int, int, int],
                                           target: npt.NDArray[np.float64]) -> None:
    rng = np.random.default_rng()
    truth = similarity(rng.uniform(-1, 1, 3), rng.uniform(50, 300, 3),
                       rng.uniform(0, 500, (3, 2)))
    inverse = np.linalg.inv(truth)
    points = np.zeros(shape)
    core = apply(truth, target)
    if shape[1] == 68:
        points[:, 17:] = core
        points[:, :17] = rng.uniform(0, 500, (3, 17, 2))  # the jaw plays no part
    else:
        points[:] = core
    np.testing.assert_allclose(legacy_matrices(points), inverse, atol=1e-8)


def test_legacy_matrices_of_98_points_use_the_68_point_map() -> None:
    points68 = np.concatenate([np.zeros((17, 2)), MEAN_FACE_2D_51 * 200 + 30])[None]
    points98 = np.zeros((1, 98, 2))
    points98[:, MAP_98_TO_68] = points68
    np.testing.assert_allclose(legacy_matrices(points98), legacy_matrices(points68), atol=1e-9)


def test_3d_landmarks_cannot_be_aligned() -> None:
    with pytest.raises(ValueError, match="3D"):
        legacy_matrices(np.zeros((2, 26, 3)))


# ------------------------------------------------------------------------------- centering
@pytest.mark.parametrize(("size", "centering", "expected"), [
    (512, "head", 160), (512, "face", 128), (512, "legacy", 96), (256, "head", 80), (1, "face", 0),
])
def test_padding(size: int, centering: str, expected: int) -> None:
    assert padding(size, centering) == expected


@pytest.mark.parametrize(("source", "target", "expected"), [
    ("head", "face", 384), ("head", "legacy", 308), ("head", "head", 512), ("face", "legacy", 410),
])
def test_sub_crop_size(source: str, target: str, expected: int) -> None:
    assert sub_crop_size(512, source, target) == expected


def test_coverage_padding() -> None:
    assert coverage_padding(256, "legacy", 1.0) == round(256 * 0.375 / 2)
    assert coverage_padding(256, "face", 0.75) == round(256 * (0.5 + 0.75 - 1) / 1.5)
    with pytest.raises(ValueError, match="coverage"):
        coverage_padding(256, "face", 0.0)


def test_aligned_matrices_put_the_mean_face_in_the_core_box() -> None:
    legacy = np.eye(3)[None]  # the frame already is normalized space
    for centering in ("legacy", "face", "head"):
        matrix = aligned_matrices(legacy, 512, centering)
        corners = apply(matrix, np.array([[0.0, 0.0], [1.0, 1.0]]))[0]
        pad = padding(512, centering)
        np.testing.assert_allclose(corners, [[pad, pad], [512 - pad, 512 - pad]])
    shifted = aligned_matrices(legacy, 512, "face", np.array([[0.1, -0.2]]))
    np.testing.assert_allclose(apply(shifted, np.array([[0.1, -0.2]]))[0, 0], [128, 128])


# ----------------------------------------------------------------------------------- warps
def _frame() -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    return cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)  # smooth detail


def test_warp_matches_opencv_when_enlarging() -> None:
    frame = _frame()
    matrix = similarity(np.array([0.3]), np.array([1.7]), np.array([[-150.0, -80.0]]))
    ours = warp_aligned([frame], np.zeros(1, np.int64), matrix, 96)[0]
    theirs = cv2.warpAffine(frame, matrix[0, :2], (96, 96), flags=cv2.INTER_LINEAR)
    assert np.abs(ours.astype(int) - theirs).max() <= 1


def test_warp_shrinks_without_aliasing_like_area_averaging() -> None:
    stripes = np.zeros((512, 512, 3), dtype=np.uint8)
    stripes[:, ::2] = 255  # worst case for aliasing: one-pixel stripes
    # Output pixel i samples frame column 8i: always a white stripe, so point sampling gives
    # white (aliasing); averaging the neighbourhood gives the true mid grey.
    matrix = similarity(np.zeros(1), np.array([0.125]), np.zeros((1, 2)))
    ours = warp_aligned([stripes], np.zeros(1, np.int64), matrix, 64)[0, 1:-1, 1:-1]
    plain = cv2.warpAffine(stripes, matrix[0, :2], (64, 64), flags=cv2.INTER_CUBIC)
    assert plain[1:-1, 1:-1].mean() > 250, "the test case aliases when point-sampled"
    assert abs(float(ours.mean()) - 127.5) < 3
    assert ours.std() < 4, "stripes averaged to grey, not aliased into bands"


def test_warp_many_faces_from_many_frames_equals_one_at_a_time() -> None:
    frames = [_frame(), _frame()[::-1].copy()]
    rng = np.random.default_rng()
    matrices = similarity(rng.uniform(-1, 1, 5), rng.uniform(0.2, 2.5, 5),
                          rng.uniform(-300, 0, (5, 2)))
    ids = np.array([0, 0, 0, 1, 1])
    batched = warp_aligned(frames, ids, matrices, 48)
    for index in range(5):
        single = warp_aligned([frames[ids[index]]], np.zeros(1, np.int64),
                              matrices[index:index + 1], 48)[0]
        np.testing.assert_array_equal(batched[index], single)
    assert warp_aligned(frames, np.zeros(0, np.int64), np.zeros((0, 3, 3)), 48).shape == (
        0, 48, 48, 3)


def test_warp_is_black_outside_the_frame() -> None:
    frame = np.full((100, 100, 3), 200, dtype=np.uint8)
    matrix = similarity(np.zeros(1), np.ones(1), np.array([[50.0, 0.0]]))  # frame moves right
    out = warp_aligned([frame], np.zeros(1, np.int64), matrix, 100)[0]
    assert (out[:, :49] == 0).all()
    assert (out[:, 51:] == 200).all()


# ------------------------------------------------------------------------- real faces, pose
@needs_real_faces
@pytest.mark.parametrize("index", range(3))
def test_head_crop_holds_the_whole_face_and_face_crop_is_its_centre(index: int) -> None:
    faces = real_faces()
    if index >= len(faces):
        pytest.skip("fewer real faces")
    face = faces[index]
    points = face.landmarks
    image = cv2.imread(str(face.image))
    assert image is not None, face.image
    aligned = ExtractBatchAligned(points[None].astype(np.float32))
    head = aligned_matrices(aligned.matrices, 512, "head", aligned.offsets_head)
    in_head = apply(head, points)[0]
    assert in_head.min() > 512 * 0.1, "the whole face, with a margin, is in the crop"
    assert in_head.max() < 512 * 0.9
    centre = (in_head.min(axis=0) + in_head.max(axis=0)) / 2
    # Centred across; down the crop the landmarks (brows to chin) sit below the middle, the
    # forehead and skull above them.
    assert abs(centre[0] - 256) < 512 * 0.1, centre
    assert 256 < centre[1] < 256 + 512 * 0.2, centre
    # The face crop is the middle of the head crop.
    head_crop = warp_aligned([image], np.zeros(1, np.int64), head, 512)
    size = sub_crop_size(512, "head", "face")
    origin = sub_crop_origins(512, "head", "face", aligned.offsets_head, aligned.offsets_face)
    cut = sub_crop(head_crop, origin, size)[0]
    # Geometry: a face-crop pixel is exactly the head-crop pixel minus the origin.
    face = aligned_matrices(aligned.matrices, size, "face", aligned.offsets_face)
    np.testing.assert_allclose(apply(face, points)[0], apply(head, points)[0] - origin,
                               atol=1e-3)
    # Pixels: the cut equals a direct warp of the same window (the origin on whole pixels).
    window = head.copy()
    window[:, :2, 2] -= np.rint(origin)
    direct = warp_aligned([image], np.zeros(1, np.int64), window, size)[0]
    assert np.abs(cut.astype(int) - direct).max() <= 1


def test_warp_more_faces_of_one_frame_than_one_opencv_call_takes() -> None:
    """OpenCV's remap takes images under 32767 pixels wide: 130 faces of 256 px are split."""
    frame = _frame()
    matrices = np.repeat(similarity(np.array([0.2]), np.array([1.5]), np.array([[-90.0, -40.0]])),
                         130, axis=0)
    out = warp_aligned([frame], np.zeros(130, np.int64), matrices, 256)
    assert out.shape == (130, 256, 256, 3)
    np.testing.assert_array_equal(out[0], out[-1])
    assert out[-1].any()


def _umeyama_svd_2d(source: npt.NDArray[np.float64], target: npt.NDArray[np.float64]
                    ) -> npt.NDArray[np.float64]:
    """Umeyama (1991) by SVD for one 2D point set: the independent reference for the tests."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s_c, t_c = source - mu_s, target - mu_t
    u, singular, vt = np.linalg.svd(t_c.T @ s_c / len(source))
    sign = np.array([1.0, 1.0 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1.0])
    rotation = u @ np.diag(sign) @ vt
    scale = (singular * sign).sum() / s_c.var(axis=0).sum()
    out = np.eye(3)
    out[:2, :2] = scale * rotation
    out[:2, 2] = mu_t - scale * rotation @ mu_s
    return out


def test_umeyama_closed_form_in_2d_equals_the_svd_solution() -> None:
    rng = np.random.default_rng()
    points = MEAN_FACE_2D_51[None] * rng.uniform(10, 100, (50, 1, 1)) + rng.normal(
        0, 5, (50, 51, 2))
    points[:5, :, 0] *= -1  # mirrored faces: the reflection case
    fast = umeyama(points, MEAN_FACE_2D_51)
    slow = np.stack([_umeyama_svd_2d(p, MEAN_FACE_2D_51) for p in points])
    np.testing.assert_allclose(fast, slow, atol=1e-9)


@needs_real_faces
def test_frame_faces_and_detected_faces_expose_the_same_alignment() -> None:
    from faceinfer.objects import DetectedFace, FrameFaces

    points = np.stack([face.landmarks for face in real_faces()]).astype(np.float32)
    boxes = np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)
    media = FrameFaces("frame", np.zeros((8, 8, 3), np.uint8), bboxes=boxes, landmarks=points)
    whole = media.aligned
    for index, face in enumerate(media.detected_faces):
        for name in ("matrices", "landmarks_normalized", "rotation", "translation",
                     "offsets_face", "offsets_head", "matrices_face", "matrices_head"):
            np.testing.assert_allclose(getattr(face.aligned, name)[0],
                                       getattr(whole, name)[index], atol=1e-5, err_msg=name)
    alone = DetectedFace(0, 0, 1, 1, landmarks_xy=points[1])
    np.testing.assert_allclose(alone.aligned.rotation[0], whole.rotation[1], atol=1e-5)
    with pytest.raises(ValueError, match="landmarks"):
        _ = DetectedFace(0, 0, 1, 1).aligned


def test_derived_values_follow_append_and_apply_mask() -> None:
    rng = np.random.default_rng()
    base = np.concatenate([np.zeros((17, 2)), MEAN_FACE_2D_51], axis=0)
    points = (base[None] * rng.uniform(50, 150, (6, 1, 1)) + rng.normal(0, 1, (6, 68, 2)))
    first = ExtractBatchAligned(points[:4].astype(np.float32))
    second = ExtractBatchAligned(points[4:].astype(np.float32))
    expected = ExtractBatchAligned(points.astype(np.float32))
    _ = first.offsets_head, second.offsets_head  # derive before joining
    first.append(second)
    np.testing.assert_allclose(first.offsets_head, expected.offsets_head, atol=1e-5)
    keep = np.array([True, False, True, False, True, True])
    first.apply_mask(keep)
    np.testing.assert_allclose(first.matrices, expected.matrices[keep], atol=1e-5)
    np.testing.assert_allclose(first.rotation, expected.rotation[keep], atol=1e-5)
    assert first.offsets_legacy.shape == (4, 2)
    assert not first.offsets_legacy.any()
