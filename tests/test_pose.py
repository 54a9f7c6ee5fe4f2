"""Batched head pose (faceinfer.geometry.pose) against OpenCV run per face: solvePnP
(SOLVEPNP_ITERATIVE) and projectPoints, on real annotated faces, jittered copies of them and
synthetic heads at known rotations. Rotations themselves are tested in test_rotation.py.

Random cases are drawn afresh on every run. The ``rng`` fixture prints its seed, which pytest
shows with a failure: ``np.random.default_rng(seed)`` replays the case. Tests that need the real
faces in ../shared/data skip when it is absent.
"""
from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from faceinfer.geometry import pose
from faceinfer.geometry.constants import (
    MEAN_FACE_2D_51,
    MEAN_FACE_3D_26,
    POSE_CORE_LANDMARKS_68,
    Centering,
)
from faceinfer.geometry.umeyama import legacy_matrices, umeyama
from tests.faces import needs_real_faces, real_landmarks

ROTATION_TOLERANCE = 1e-4
"""Largest difference allowed between rotation matrix entries, ours and OpenCV's minimum."""
PROJECTION_TOLERANCE = 1e-4
"""Largest difference allowed between the mean head's projections (normalized legacy units:
1e-4 of the face's width)."""
TRANSLATION_TOLERANCE = 1e-5
"""Largest translation difference allowed, relative to the translation's length (about 58)."""
EARLY_STOP_FACTOR = 10.0
"""One cv2.solvePnP call stops its Levenberg-Marquardt iterations before the minimum when the
minimum is shallow (real faces fit the mean head loosely): up to about 2e-4 away in rotation
on jittered real faces. Against a single call the tolerances above are multiplied by this;
against OpenCV's own minimum (solvePnP re-run from its answer until that stops moving) they
hold as they are."""
COST_SLACK = 1e-9
"""Our squared reprojection error may exceed OpenCV's by this fraction (the solver's stopping
tolerance), plus 1e-12 for the rounding of its float32 output. Against a single solvePnP call
it is usually lower, as OpenCV stops early."""
REFINE_CALLS = 30
"""At most this many extra solvePnP calls to reach OpenCV's minimum (it takes up to about 15)."""

Array = npt.NDArray[np.float64]


# ----------------------------------------------------------------------------------------------
# Data


REAL_FACES = real_landmarks()
"""(F, 68, 2) the real faces' ground-truth landmarks in frame pixels; (0, 68, 2) without the
data."""


def normalize(landmarks: Array) -> Array:
    """Frame landmarks (N, 68, 2) -> normalized legacy space through ``legacy_matrices``."""
    matrices = legacy_matrices(landmarks)
    return np.einsum("nij,npj->npi", matrices[:, :2, :2], landmarks) + matrices[:, None, :2, 2]


def euler_matrix(pitch: Array, yaw: Array, roll: Array) -> Array:
    """(N, 3, 3) ``Rz(roll) @ Ry(yaw) @ Rx(pitch)`` from angles in degrees."""
    a, b, c = (np.radians(np.asarray(v, dtype=np.float64)) for v in (pitch, yaw, roll))
    one, zero = np.ones_like(a), np.zeros_like(a)
    rx = np.stack([np.stack([one, zero, zero], -1),
                   np.stack([zero, np.cos(a), -np.sin(a)], -1),
                   np.stack([zero, np.sin(a), np.cos(a)], -1)], axis=1)
    ry = np.stack([np.stack([np.cos(b), zero, np.sin(b)], -1),
                   np.stack([zero, one, zero], -1),
                   np.stack([-np.sin(b), zero, np.cos(b)], -1)], axis=1)
    rz = np.stack([np.stack([np.cos(c), -np.sin(c), zero], -1),
                   np.stack([np.sin(c), np.cos(c), zero], -1),
                   np.stack([zero, zero, one], -1)], axis=1)
    result: Array = rz @ ry @ rx
    return result


def project(rotation: Array, translation: Array) -> Array:
    """(N, 26, 2) the mean head through (N, 3, 3) rotations and (N, 3) translations and the pose
    camera, computed here independently of the module."""
    camera = np.einsum("nij,pj->npi", rotation, MEAN_FACE_3D_26) + translation[:, None]
    return 4.0 * camera[..., :2] / camera[..., 2:] + 0.5


def mean_face_pose() -> tuple[Array, Array]:
    """OpenCV's pose (rvec, tvec) of the legacy mean face's 21 core points that have a mean
    face position (the jaw points 6..10 have none)."""
    keep = POSE_CORE_LANDMARKS_68 >= 17
    _, rvec, tvec = cv2.solvePnP(MEAN_FACE_3D_26[keep],
                                 MEAN_FACE_2D_51[POSE_CORE_LANDMARKS_68[keep] - 17],
                                 pose.CAMERA_MATRIX, None, flags=cv2.SOLVEPNP_ITERATIVE)
    return rvec[:, 0], tvec[:, 0]


FRONTAL_TRANSLATION = mean_face_pose()[1]
"""A translation at which the mean head, unrotated, projects like the legacy mean face (about
(0, 3.6, -58))."""


def head_landmarks(rotation: Array, translation: Array, base: Array | None = None) -> Array:
    """(N, 68, 2) normalized landmarks whose core points are the mean head's projection; the
    other points come from ``base`` faces (N, 68, 2) moved by the similarity that best maps
    their core points onto the projection, or are the legacy mean face when ``base`` is None."""
    core = project(rotation, translation)
    if base is None:
        base = np.broadcast_to(np.concatenate([np.zeros((17, 2)), MEAN_FACE_2D_51]),
                               (len(core), 68, 2))
    inner = POSE_CORE_LANDMARKS_68 >= 17  # the mean face has no jaw
    similarity = umeyama(base[:, POSE_CORE_LANDMARKS_68[inner]], core[:, inner])
    out = np.einsum("nij,npj->npi", similarity[:, :2, :2], base) + similarity[:, None, :2, 2]
    out[:, POSE_CORE_LANDMARKS_68] = core
    return out


def random_similarities(rng: np.random.Generator, count: int) -> Array:
    """(N, 3, 3) similarities: scale 0.2..5, any rotation up to 40 degrees, shift up to 2000."""
    angle = np.radians(rng.uniform(-40.0, 40.0, count))
    scale = np.exp(rng.uniform(np.log(0.2), np.log(5.0), count))
    out = np.zeros((count, 3, 3))
    out[:, 0, 0] = out[:, 1, 1] = scale * np.cos(angle)
    out[:, 1, 0] = scale * np.sin(angle)
    out[:, 0, 1] = -out[:, 1, 0]
    out[:, :2, 2] = rng.uniform(-2000.0, 2000.0, (count, 2))
    out[:, 2, 2] = 1.0
    return out


def as_frame_and_back(rng: np.random.Generator, normalized: Array, noise: Array) -> Array:
    """Place normalized faces in a 'frame' by random similarities, add Gaussian noise of
    ``noise`` (N,) face widths per point, and normalize again with ``legacy_matrices``."""
    moves = random_similarities(rng, len(normalized))
    frame = np.einsum("nij,npj->npi", moves[:, :2, :2], normalized) + moves[:, None, :2, 2]
    width = np.ptp(frame[:, :, 0], axis=1)
    frame += rng.normal(size=frame.shape) * (noise * width)[:, None, None]
    return normalize(frame)


def jittered_real_faces(rng: np.random.Generator, count: int) -> Array:
    """Real faces under random similarities with up to 1 % point noise, normalized."""
    base = normalize(REAL_FACES)[rng.integers(0, len(REAL_FACES), count)]
    return as_frame_and_back(rng, base, rng.uniform(0.0, 0.01, count))


def posed_faces(rng: np.random.Generator, count: int, through_frame: bool = True,
                max_noise: float = 0.01) -> tuple[Array, Array]:
    """Faces whose core points are the mean head at random rotations (pitch and roll up to 30
    degrees, yaw up to 60) and positions, with the other points from real faces (or the mean
    face) and point noise up to ``max_noise`` face widths.

    Returns the (N, 68, 2) normalized landmarks and the (N, 3) true (pitch, yaw, roll). With
    ``through_frame`` the faces go through a random frame and are normalized again, as real
    faces are; that normalization takes out most of the roll, so the true angles no longer
    hold."""
    angles = np.stack([rng.uniform(-30.0, 30.0, count), rng.uniform(-60.0, 60.0, count),
                       rng.uniform(-30.0, 30.0, count)], axis=1)
    translation = FRONTAL_TRANSLATION + rng.normal(size=(count, 3)) * [0.5, 0.5, 5.0]
    base = (normalize(REAL_FACES)[rng.integers(0, len(REAL_FACES), count)]
            if len(REAL_FACES) else None)
    faces = head_landmarks(euler_matrix(*angles.T), translation, base)
    noise = rng.uniform(0.0, max_noise, count)
    if through_frame:
        return as_frame_and_back(rng, faces, noise), angles
    return faces + rng.normal(size=faces.shape) * noise[:, None, None], angles


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator; the seed is printed, so a failing run can be replayed."""
    seed = int(np.random.SeedSequence().entropy)
    print(f"random seed: {seed}")  # pytest shows it with a failure
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------
# OpenCV reference, one face at a time


def opencv_poses(landmarks: Array, converge: bool = False) -> tuple[Array, Array]:
    """(N, 3) rotation vectors and (N, 3) translations from cv2.solvePnP per face; with
    ``converge``, solvePnP is re-run from its own answer until the answer stops moving."""
    rotations, translations = [], []
    for face in landmarks:
        points = face[POSE_CORE_LANDMARKS_68]
        _, rvec, tvec = cv2.solvePnP(MEAN_FACE_3D_26, points, pose.CAMERA_MATRIX, None,
                                     flags=cv2.SOLVEPNP_ITERATIVE)
        for _ in range(REFINE_CALLS if converge else 0):
            _, new_rvec, new_tvec = cv2.solvePnP(MEAN_FACE_3D_26, points, pose.CAMERA_MATRIX,
                                                 None, rvec.copy(), tvec.copy(),
                                                 useExtrinsicGuess=True,
                                                 flags=cv2.SOLVEPNP_ITERATIVE)
            moved = max(np.abs(new_rvec - rvec).max(), np.abs(new_tvec - tvec).max())
            rvec, tvec = new_rvec, new_tvec
            if moved < 1e-10:
                break
        rotations.append(rvec[:, 0])
        translations.append(tvec[:, 0])
    return np.array(rotations).reshape(-1, 3), np.array(translations).reshape(-1, 3)


def opencv_matrices(rotations: npt.NDArray[np.floating]) -> Array:
    """(N, 3, 3) cv2.Rodrigues of (N, 3) or (N, 3, 1) rotation vectors."""
    vectors = np.asarray(rotations, dtype=np.float64).reshape(-1, 3)
    return np.array([cv2.Rodrigues(vector)[0] for vector in vectors]).reshape(-1, 3, 3)


def opencv_projections(points: Array, rotations: npt.NDArray[np.floating],
                       translations: npt.NDArray[np.floating]) -> Array:
    """(N, P, 2) cv2.projectPoints of (P, 3) points through each pose."""
    vectors = np.asarray(rotations, dtype=np.float64).reshape(-1, 3)
    shifts = np.asarray(translations, dtype=np.float64).reshape(-1, 3)
    return np.array([cv2.projectPoints(points, vector, shift, pose.CAMERA_MATRIX, None)[0][:, 0]
                     for vector, shift in zip(vectors, shifts, strict=True)]
                    ).reshape(len(vectors), len(points), 2)


def assert_matches_opencv(landmarks: Array, context: str) -> None:
    """solve_pose on all faces at once agrees with cv2.solvePnP per face: closely with the
    minimum OpenCV converges to, within OpenCV's early stop of a single call, and never with a
    larger reprojection error than that call's."""
    rotation, translation = pose.solve_pose(landmarks)
    assert rotation.shape == translation.shape == (len(landmarks), 3, 1)
    assert rotation.dtype == translation.dtype == np.float32
    ours = opencv_projections(MEAN_FACE_3D_26, rotation, translation)
    target = landmarks[:, POSE_CORE_LANDMARKS_68]
    for converge, factor in ((True, 1.0), (False, EARLY_STOP_FACTOR)):
        reference_rotation, reference_translation = opencv_poses(landmarks, converge)
        rotation_error = np.abs(opencv_matrices(rotation)
                                - opencv_matrices(reference_rotation)).max(axis=(1, 2))
        theirs = opencv_projections(MEAN_FACE_3D_26, reference_rotation, reference_translation)
        projection_error = np.abs(ours - theirs).max(axis=(1, 2))
        translation_error = (np.linalg.norm(translation[:, :, 0] - reference_translation, axis=1)
                             / np.linalg.norm(reference_translation, axis=1))
        their_cost = np.sum((theirs - target) ** 2, axis=(1, 2))
        cost_excess = np.sum((ours - target) ** 2, axis=(1, 2)) - their_cost
        worst = int(np.argmax(rotation_error))
        message = (f"{context}, against OpenCV's {'minimum' if converge else 'single call'}: "
                   f"face {worst} of {len(landmarks)}: ours {rotation[worst, :, 0]} "
                   f"{translation[worst, :, 0]}, OpenCV {reference_rotation[worst]} "
                   f"{reference_translation[worst]}")
        assert rotation_error.max() <= ROTATION_TOLERANCE * factor, (
            f"rotation {rotation_error.max()} {message}")
        assert projection_error.max() <= PROJECTION_TOLERANCE * factor, (
            f"projection {projection_error.max()} {message}")
        assert translation_error.max() <= TRANSLATION_TOLERANCE * factor, (
            f"translation {translation_error.max()} {message}")
        assert np.all(cost_excess <= COST_SLACK * their_cost + 1e-12), (
            f"cost excess {cost_excess.max()} {message}")


# ----------------------------------------------------------------------------------------------
# solve_pose against OpenCV


@needs_real_faces
def test_real_faces_match_opencv() -> None:
    assert_matches_opencv(normalize(REAL_FACES), "real faces")


@needs_real_faces
def test_jittered_real_faces_match_opencv(rng: np.random.Generator) -> None:
    assert_matches_opencv(jittered_real_faces(rng, 400), "jittered real faces")


@pytest.mark.parametrize("through_frame", [True, False], ids=["renormalized", "raw"])
def test_posed_heads_match_opencv(rng: np.random.Generator, through_frame: bool) -> None:
    landmarks, _ = posed_faces(rng, 500, through_frame)
    assert_matches_opencv(landmarks, "posed heads")


def test_noisy_heads_land_in_opencvs_minimum(rng: np.random.Generator) -> None:
    """With up to 4 % point noise the depth of a face can be ambiguous: two mirror-depth minima
    compete, and the linear initial estimate picks one. Ours must pick OpenCV's."""
    landmarks, _ = posed_faces(rng, 800, through_frame=False, max_noise=0.04)
    assert_matches_opencv(landmarks, "noisy heads")


@needs_real_faces
def test_solve_pose_reaches_opencvs_minimum_closely(rng: np.random.Generator) -> None:
    """Newton's steps end about 1e-6 from the minimum OpenCV converges to (rotation matrix
    entries; the float32 answer rounds at about 1e-7), where a single solvePnP call can stop
    2e-4 short of it."""
    landmarks = np.concatenate([jittered_real_faces(rng, 300),
                                posed_faces(rng, 300, through_frame=False, max_noise=0.04)[0]])
    rotation, translation = pose.solve_pose(landmarks)
    reference_rotation, reference_translation = opencv_poses(landmarks, converge=True)
    rotation_error = np.abs(opencv_matrices(rotation) - opencv_matrices(reference_rotation))
    assert rotation_error.max() <= 1e-5
    translation_error = (np.linalg.norm(translation[:, :, 0] - reference_translation, axis=1)
                         / np.linalg.norm(reference_translation, axis=1))
    assert translation_error.max() <= 1e-6


def test_exact_projections_match_opencv_and_truth(rng: np.random.Generator) -> None:
    """Noise-free projections: both solvers recover the true pose."""
    count = 200
    angles = np.stack([rng.uniform(-30.0, 30.0, count), rng.uniform(-60.0, 60.0, count),
                       rng.uniform(-30.0, 30.0, count)], axis=1)
    truth = euler_matrix(*angles.T)
    shift = FRONTAL_TRANSLATION + rng.normal(size=(count, 3)) * [0.5, 0.5, 5.0]
    landmarks = head_landmarks(truth, shift)
    assert_matches_opencv(landmarks, "exact projections")
    rotation, translation = pose.solve_pose(landmarks)
    np.testing.assert_allclose(pose.rodrigues(rotation), truth, atol=1e-6)
    np.testing.assert_allclose(translation[:, :, 0], shift, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Euler angles


def test_frontal_mean_head_has_zero_angles() -> None:
    landmarks = head_landmarks(np.eye(3)[None], FRONTAL_TRANSLATION[None])
    rotation, _ = pose.solve_pose(landmarks)
    angles = pose.euler_angles(rotation)
    assert angles.shape == (1, 3)
    assert angles.dtype == np.float32
    np.testing.assert_allclose(angles, 0.0, atol=1.0)
    np.testing.assert_allclose(angles, 0.0, atol=1e-3)  # the projection is exact


def test_legacy_mean_face_is_nearly_frontal() -> None:
    """The legacy mean face (its jaw points from the frontal head) is symmetric: no yaw or
    roll, and only a slight pitch."""
    frontal = head_landmarks(np.eye(3)[None], FRONTAL_TRANSLATION[None])
    frontal[0, 17:] = MEAN_FACE_2D_51
    pitch, yaw, roll = pose.euler_angles(pose.solve_pose(frontal)[0])[0]
    assert abs(yaw) < 1e-2
    assert abs(roll) < 1e-2
    assert abs(pitch) < 3.0


@pytest.mark.parametrize(("pitch", "yaw", "roll"), [
    (0.0, 0.0, 0.0),
    (0.0, 30.0, 0.0),
    (0.0, -30.0, 0.0),
    (0.0, 60.0, 0.0),
    (20.0, 0.0, 0.0),
    (-25.0, 0.0, 0.0),
    (0.0, 0.0, 30.0),
    (0.0, 0.0, -15.0),
    (10.0, -45.0, 5.0),
    (-25.0, 55.0, -30.0),
    (30.0, -60.0, 30.0),
])
def test_known_rotations_are_recovered(pitch: float, yaw: float, roll: float) -> None:
    truth = np.array([[pitch, yaw, roll]])
    landmarks = head_landmarks(euler_matrix(*truth.T), FRONTAL_TRANSLATION[None])
    rotation, _ = pose.solve_pose(landmarks)
    np.testing.assert_allclose(pose.euler_angles(rotation), truth, atol=1e-3)


def test_euler_angles_of_noisy_heads_are_close_to_truth(rng: np.random.Generator) -> None:
    landmarks, truth = posed_faces(rng, 300, through_frame=False)
    angles = pose.euler_angles(pose.solve_pose(landmarks)[0])
    # Up to 1 % point noise moves the angles by a few degrees at most.
    assert np.abs(angles - truth).max() < 15.0
    assert np.median(np.abs(angles - truth)) < 2.0


# ----------------------------------------------------------------------------------------------
# Centering offsets


@pytest.mark.parametrize("centering", ["face", "head", Centering.FACE, Centering.HEAD])
def test_centering_offsets_match_opencv_projection(rng: np.random.Generator,
                                                   centering: str) -> None:
    landmarks, _ = posed_faces(rng, 200)
    rotation, translation = pose.solve_pose(landmarks)
    offsets = pose.centering_offsets(rotation, translation, centering)
    point = {"face": np.array([[0.0, -1.5, 4.2]]), "head": np.array([[0.0, 0.0, -2.3]])}
    expected = opencv_projections(point[str(centering)], rotation, translation)[:, 0] - 0.5
    assert offsets.shape == (200, 2)
    assert offsets.dtype == np.float32
    np.testing.assert_allclose(offsets, expected, atol=1e-6)


def test_centering_offsets_of_frontal_head() -> None:
    """The face point lies below the legacy centre (the nose) and the head point above it."""
    rotation, translation = pose.solve_pose(
        head_landmarks(np.eye(3)[None], FRONTAL_TRANSLATION[None]))
    face = pose.centering_offsets(rotation, translation, "face")[0]
    head = pose.centering_offsets(rotation, translation, "head")[0]
    assert abs(face[0]) < 1e-6
    assert abs(head[0]) < 1e-6
    assert head[1] < face[1]


@pytest.mark.parametrize("count", [0, 1, 5])
def test_legacy_centering_is_zero(count: int) -> None:
    rotation = np.full((count, 3, 1), np.nan, dtype=np.float32)
    for centering in ("legacy", Centering.LEGACY):
        offsets = pose.centering_offsets(rotation, rotation, centering)
        assert offsets.shape == (count, 2)
        assert offsets.dtype == np.float32
        assert not offsets.any()


@pytest.mark.parametrize(("rotation", "translation", "centering", "error"), [
    ((2, 3, 1), (2, 3, 1), "middle", "expected centering in"),
    ((2, 3, 1), (2, 3, 1), "", "expected centering in"),
    ((2, 3, 1), (3, 3, 1), "face", "as many translations"),
    ((2, 3, 1), (3, 3, 1), "legacy", "as many translations"),
    ((2, 3), (2, 2), "head", "expected translation of shape"),
    ((2, 4), (2, 3), "face", "expected rotation of shape"),
])
def test_centering_offsets_errors(rotation: tuple[int, ...], translation: tuple[int, ...],
                                  centering: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        pose.centering_offsets(np.zeros(rotation), np.zeros(translation), centering)


# ----------------------------------------------------------------------------------------------
# Batches: sizes, bad values, errors


@pytest.mark.parametrize("count", [0, 1, 2, 7, 2500])
def test_batch_sizes(rng: np.random.Generator, count: int) -> None:
    """Any batch size, including several solver chunks, gives each face its own answer."""
    landmarks, _ = posed_faces(rng, count)
    rotation, translation = pose.solve_pose(landmarks)
    assert rotation.shape == translation.shape == (count, 3, 1)
    assert rotation.dtype == translation.dtype == np.float32
    assert pose.euler_angles(rotation).shape == (count, 3)
    assert pose.centering_offsets(rotation, translation, "head").shape == (count, 2)
    if count:
        assert np.isfinite(rotation).all()
        assert np.isfinite(translation).all()
        picked = rng.integers(0, count, min(count, 5))
        alone_rotation, alone_translation = pose.solve_pose(landmarks[picked])
        np.testing.assert_allclose(pose.rodrigues(alone_rotation),
                                   pose.rodrigues(rotation[picked]), atol=1e-6)
        np.testing.assert_allclose(alone_translation, translation[picked], rtol=1e-6)


def test_solve_pose_is_deterministic(rng: np.random.Generator) -> None:
    landmarks, _ = posed_faces(rng, 50)
    first, second = pose.solve_pose(landmarks), pose.solve_pose(landmarks)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@pytest.mark.parametrize(("name", "points", "value"), [
    ("nan core point", [33], np.nan),
    ("nan in x only", (slice(None), 0), np.nan),
    ("all nan", slice(None), np.nan),
    ("inf core point", [48], np.inf),
    ("-inf core point", [8], -np.inf),
    ("all at one point", slice(None), 0.5),
])
def test_bad_faces_give_nan_without_harming_others(rng: np.random.Generator, name: str,
                                                   points: object, value: float) -> None:
    landmarks, _ = posed_faces(rng, 9)
    good_rotation, good_translation = pose.solve_pose(landmarks)
    spoilt = landmarks.copy()
    for bad in (0, 4, 8):
        spoilt[bad][points] = value
    with np.errstate(all="raise"):  # no warnings either
        rotation, translation = pose.solve_pose(spoilt)
    bad_rows = [0, 4, 8]
    good_rows = [1, 2, 3, 5, 6, 7]
    assert np.isnan(rotation[bad_rows]).all(), name
    assert np.isnan(translation[bad_rows]).all(), name
    np.testing.assert_allclose(pose.rodrigues(rotation[good_rows]),
                               pose.rodrigues(good_rotation[good_rows]), atol=1e-6)
    np.testing.assert_allclose(translation[good_rows], good_translation[good_rows], rtol=1e-6)
    assert np.isnan(pose.euler_angles(rotation)[bad_rows]).all()
    assert np.isnan(pose.centering_offsets(rotation, translation, "face")[bad_rows]).all()
    assert np.isfinite(pose.centering_offsets(rotation, translation, "face")[good_rows]).all()


def test_nan_outside_the_core_points_is_ignored(rng: np.random.Generator) -> None:
    """Only the 26 core landmarks enter the pose (as in the reference)."""
    landmarks, _ = posed_faces(rng, 3)
    spoilt = landmarks.copy()
    outside = np.setdiff1d(np.arange(68), POSE_CORE_LANDMARKS_68)
    spoilt[:, outside] = np.nan
    np.testing.assert_array_equal(pose.solve_pose(spoilt)[0], pose.solve_pose(landmarks)[0])


@pytest.mark.parametrize("shape", [(68, 2), (1, 51, 2), (1, 98, 2), (1, 68, 3), (2, 26, 2)],
                         ids=str)
def test_solve_pose_rejects_bad_shapes(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"expected landmarks of shape \(N, 68, 2\)"):
        pose.solve_pose(np.zeros(shape))


def test_project_points_matches_opencv(rng: np.random.Generator) -> None:
    rotation = rng.normal(size=(20, 3, 1))
    translation = rng.normal(size=(20, 3, 1))
    translation[:, 2] -= 40.0
    np.testing.assert_allclose(pose.project_points(MEAN_FACE_3D_26, rotation, translation),
                               opencv_projections(MEAN_FACE_3D_26, rotation, translation),
                               atol=1e-12)
