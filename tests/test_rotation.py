"""Batched rotations (faceinfer.geometry.rotation) against OpenCV's Rodrigues and an SVD per
matrix: rotation vectors and matrices both ways, the Cayley transform, the nearest rotation and
Euler angles.

Random cases are drawn afresh on every run. The ``rng`` fixture prints its seed, which pytest
shows with a failure: ``np.random.default_rng(seed)`` replays the case.
"""
from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from faceinfer.geometry import pose, rotation

Array = npt.NDArray[np.float64]


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator; the seed is printed, so a failing run can be replayed."""
    seed = int(np.random.SeedSequence().entropy)
    print(f"random seed: {seed}")  # pytest shows it with a failure
    return np.random.default_rng(seed)


def opencv_matrices(vectors: npt.NDArray[np.floating]) -> Array:
    """(N, 3, 3) cv2.Rodrigues of (N, 3) or (N, 3, 1) rotation vectors."""
    flat = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    return np.array([cv2.Rodrigues(vector)[0] for vector in flat]).reshape(-1, 3, 3)


def random_vectors(rng: np.random.Generator, count: int, largest: float) -> Array:
    """(N, 3) rotation vectors in random directions with angles up to ``largest``."""
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(0.0, largest, (count, 1))


def polar_rotations(matrices: Array) -> Array:
    """The nearest rotations to (N, 3, 3) matrices, or to their negatives where the determinant
    is negative, by an SVD per matrix."""
    signed = matrices * np.sign(np.linalg.det(matrices))[:, None, None]
    u, _, vt = np.linalg.svd(signed)
    return u @ vt


# ----------------------------------------------------------------------------------------------
# Rodrigues both ways


@pytest.mark.parametrize("vector", [
    (0.0, 0.0, 0.0),
    (1e-9, -2e-9, 5e-10),
    (1e-4, 0.0, 0.0),
    (np.pi / 2, 0.0, 0.0),
    (0.0, -np.pi / 2, 0.0),
    (0.3, -0.2, 0.1),
    (0.0, 0.0, np.pi - 1e-7),
    (np.pi / np.sqrt(3), np.pi / np.sqrt(3), -np.pi / np.sqrt(3)),
    (2.0, 2.0, 2.0),
    (-3.0, 1.0, 0.5),
], ids=str)
def test_rodrigues_matches_opencv(vector: tuple[float, float, float]) -> None:
    array = np.array(vector, dtype=np.float64).reshape(1, 3, 1)
    expected = opencv_matrices(array)
    np.testing.assert_allclose(rotation.rodrigues(array), expected, atol=1e-12)
    # ... and back: the rotation vector of the matrix (angle folded into [0, pi]).
    back = rotation.rotation_vectors(rotation.rodrigues(array))
    assert back.shape == (1, 3)
    np.testing.assert_allclose(rotation.rodrigues(back), expected, atol=1e-9)
    assert np.linalg.norm(back) <= np.pi + 1e-12
    if np.linalg.norm(vector) < np.pi - 1e-6:
        np.testing.assert_allclose(back[0], vector, atol=1e-9)


def test_rodrigues_batch_matches_opencv(rng: np.random.Generator) -> None:
    vectors = random_vectors(rng, 500, 4.0)
    matrices = rotation.rodrigues(vectors)
    assert matrices.shape == (500, 3, 3)
    assert matrices.dtype == np.float64
    np.testing.assert_allclose(matrices, opencv_matrices(vectors), atol=1e-12)
    np.testing.assert_allclose(matrices @ matrices.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), matrices.shape), atol=1e-12)
    np.testing.assert_allclose(rotation.rodrigues(rotation.rotation_vectors(matrices)), matrices,
                               atol=1e-9)


def test_rotation_vectors_match_opencv(rng: np.random.Generator) -> None:
    """Angles below pi come back as they went in, as cv2.Rodrigues returns them."""
    vectors = random_vectors(rng, 300, np.pi - 1e-3)
    matrices = opencv_matrices(vectors)
    expected = np.array([cv2.Rodrigues(matrix)[0][:, 0] for matrix in matrices])
    np.testing.assert_allclose(rotation.rotation_vectors(matrices), expected, atol=1e-9)
    np.testing.assert_allclose(expected, vectors, atol=1e-9)


def test_rotation_matrices_take_components_first(rng: np.random.Generator) -> None:
    """The solvers' layout, (3, ...) -> (3, 3, ...), agrees with rodrigues; a single vector
    works too."""
    vectors = random_vectors(rng, 60, 3.0)
    expected = rotation.rodrigues(vectors)
    by_components = rotation.rotation_matrices(np.ascontiguousarray(vectors.T))
    np.testing.assert_allclose(by_components.transpose(2, 0, 1), expected, atol=1e-15)
    grid = rotation.rotation_matrices(vectors.T.reshape(3, 6, 10))
    np.testing.assert_allclose(grid.reshape(3, 3, 60).transpose(2, 0, 1), expected, atol=1e-15)
    np.testing.assert_allclose(rotation.rotation_matrices(vectors[0]), expected[0], atol=1e-15)


@pytest.mark.parametrize(("function", "shape", "error"), [
    (rotation.rodrigues, (3,), "expected rotation of shape"),
    (rotation.rodrigues, (3, 1), "expected rotation of shape"),
    (rotation.rodrigues, (2, 3, 3), "expected rotation of shape"),
    (rotation.rodrigues, (2, 4, 1), "expected rotation of shape"),
    (rotation.rodrigues, (2, 1, 3), "expected rotation of shape"),
    (rotation.euler_angles, (2, 4), "expected rotation of shape"),
    (rotation.rotation_vectors, (3, 3), r"expected matrices of shape \(N, 3, 3\)"),
    (rotation.rotation_vectors, (2, 3, 4), r"expected matrices of shape \(N, 3, 3\)"),
], ids=str)
def test_bad_shapes_are_rejected(function: object, shape: tuple[int, ...], error: str) -> None:
    assert callable(function)
    with pytest.raises(ValueError, match=error):
        function(np.zeros(shape))


@pytest.mark.parametrize("count", [0, 1, 7])
def test_batch_sizes(rng: np.random.Generator, count: int) -> None:
    vectors = random_vectors(rng, count, 3.0)
    assert rotation.rodrigues(vectors).shape == (count, 3, 3)
    assert rotation.rotation_vectors(rotation.rodrigues(vectors)).shape == (count, 3)
    assert rotation.euler_angles(vectors).shape == (count, 3)
    assert rotation.cayley_rotations(vectors.T).shape == (3, 3, count)
    assert rotation.nearest_rotations(np.zeros((3, 3, count))).shape == (3, 3, count)


def test_nan_vectors_give_nan_without_harming_others(rng: np.random.Generator) -> None:
    vectors = random_vectors(rng, 5, 3.0)
    vectors[2, 1] = np.nan
    with np.errstate(all="raise"):  # no warnings either
        matrices = rotation.rodrigues(vectors)
        angles = rotation.euler_angles(vectors)
    assert np.isnan(matrices[2]).all()
    assert np.isnan(angles[2]).all()
    good = [0, 1, 3, 4]
    np.testing.assert_allclose(matrices[good], opencv_matrices(vectors[good]), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Cayley transform and nearest rotation


def test_cayley_rotations_are_rotations_close_to_rodrigues(rng: np.random.Generator) -> None:
    """A rotation about r by 2 atan(|r| / 2), so equal to rodrigues(r) to second order."""
    vectors = random_vectors(rng, 200, 2.0)
    matrices = rotation.cayley_rotations(np.ascontiguousarray(vectors.T)).transpose(2, 0, 1)
    np.testing.assert_allclose(matrices @ matrices.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), matrices.shape), atol=1e-14)
    np.testing.assert_allclose(np.linalg.det(matrices), 1.0, atol=1e-14)
    angle = np.linalg.norm(vectors, axis=1, keepdims=True)
    turned = vectors / angle * 2.0 * np.arctan(angle / 2.0)
    np.testing.assert_allclose(matrices, opencv_matrices(turned), atol=1e-12)
    small = vectors[:20] * 1e-3  # third order: |r|^3 / 12
    difference = (rotation.cayley_rotations(small.T).transpose(2, 0, 1)
                  - rotation.rodrigues(small))
    assert np.abs(difference).max() < 1e-9


@pytest.mark.parametrize(("name", "scale", "noise"), [
    ("rotations", 1.0, 0.0),
    ("scaled rotations", 3.5, 0.0),
    ("noisy scaled rotations", 0.02, 0.005),
    ("negated rotations", -2.0, 0.0),
    ("far from rotations", 1.0, 0.5),
])
def test_nearest_rotations_match_svd(rng: np.random.Generator, name: str, scale: float,
                                     noise: float) -> None:
    matrices = (rotation.rodrigues(random_vectors(rng, 100, 3.0)) * scale
                + rng.normal(size=(100, 3, 3)) * noise)
    nearest = rotation.nearest_rotations(matrices.transpose(1, 2, 0)).transpose(2, 0, 1)
    np.testing.assert_allclose(nearest, polar_rotations(matrices), atol=1e-9, err_msg=name)
    np.testing.assert_allclose(nearest @ nearest.transpose(0, 2, 1),
                               np.broadcast_to(np.eye(3), nearest.shape), atol=1e-12)


def test_nearest_rotations_isolate_bad_matrices(rng: np.random.Generator) -> None:
    matrices = rotation.rodrigues(random_vectors(rng, 6, 3.0)) * 2.0
    expected = polar_rotations(matrices)
    matrices[1] = np.nan
    matrices[4] = 0.0  # singular
    with np.errstate(all="raise"):  # no warnings either
        nearest = rotation.nearest_rotations(matrices.transpose(1, 2, 0)).transpose(2, 0, 1)
    assert np.isnan(nearest[1]).all()
    good = [0, 2, 3, 5]
    np.testing.assert_allclose(nearest[good], expected[good], atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Euler angles


def test_euler_angles_match_formula_on_opencv_matrices(rng: np.random.Generator) -> None:
    vectors = random_vectors(rng, 100, 3.0)[:, :, None]
    matrices = opencv_matrices(vectors)
    expected = np.degrees(np.stack([
        np.arctan2(matrices[:, 2, 1], matrices[:, 2, 2]),
        np.arctan2(-matrices[:, 2, 0], np.sqrt(matrices[:, 2, 1] ** 2 + matrices[:, 2, 2] ** 2)),
        np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0])], axis=1))
    angles = rotation.euler_angles(vectors)
    assert angles.dtype == np.float32
    np.testing.assert_allclose(angles, expected, atol=1e-4)
    np.testing.assert_allclose(rotation.euler_angles(vectors[:, :, 0]), expected, atol=1e-4)


@pytest.mark.parametrize(("vector", "angles"), [
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ((np.radians(30.0), 0.0, 0.0), (30.0, 0.0, 0.0)),
    ((0.0, np.radians(-45.0), 0.0), (0.0, -45.0, 0.0)),
    ((0.0, 0.0, np.radians(60.0)), (0.0, 0.0, 60.0)),
])
def test_euler_angles_of_single_axis_rotations(vector: tuple[float, float, float],
                                               angles: tuple[float, float, float]) -> None:
    np.testing.assert_allclose(rotation.euler_angles(np.array([vector]))[0], angles, atol=1e-4)


def test_pose_re_exports_rotations() -> None:
    """Code that imports them from faceinfer.geometry.pose keeps working."""
    assert pose.rodrigues is rotation.rodrigues
    assert pose.euler_angles is rotation.euler_angles
    assert {"rodrigues", "euler_angles"} <= set(pose.__all__)
