"""Batched 3D rotations: rotation vectors and matrices (Rodrigues' formula and its inverse),
the Cayley transform, the nearest rotation to a matrix, and Euler angles.

Conventions
-----------
* A rotation vector's direction is the rotation axis and its length the angle in radians,
  right-handed, as in OpenCV (``cv2.Rodrigues``).
* A rotation matrix ``R`` acts on column vectors: ``R @ p`` is ``p`` rotated. For a head pose
  from :func:`faceinfer.geometry.pose.solve_pose`, ``R`` maps model-space directions to camera
  space (OpenCV's pinhole frame: x right, y down, z forward).
* :func:`rodrigues`, :func:`rotation_vectors` and :func:`euler_angles` take and return the
  rotation index first, as OpenCV's per-pose results stack: (N, 3) or (N, 3, 1) vectors, (N, 3,
  3) matrices. :func:`rotation_matrices`, :func:`cayley_rotations` and
  :func:`nearest_rotations`, the batch tools of solvers, take components first and rotations
  last, (3, ...) vectors and (3, 3, ...) matrices, which keeps each component a contiguous row.

Everything here works on N rotations at once with array operations; no Python loop runs per
rotation.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

_NEAREST_ITERATIONS = 20
_NEAREST_TOLERANCE = 1e-8
"""Newton steps for :func:`nearest_rotations` stop after a step that moved no entry more than
this: the iteration converges quadratically (the error after a step is about half the square
of the error before it), so the result is a rotation to about 1e-16."""
_SKEW_PLUS = np.array([7, 2, 3])
_SKEW_MINUS = np.array([5, 6, 1])
"""Flat indices in a 3 x 3 matrix of the cross-product matrix ``[v]x`` of v = (x, y, z): +x, +y,
+z at (2, 1), (0, 2), (1, 0) and -x, -y, -z at (1, 2), (2, 0), (0, 1)."""
_SKEW_BASIS = np.zeros((9, 3))
_SKEW_BASIS[_SKEW_PLUS, [0, 1, 2]] = 1.0
_SKEW_BASIS[_SKEW_MINUS, [0, 1, 2]] = -1.0
"""(9, 3) the flattened cross-product matrix ``[v]x`` as a linear map of v."""


def as_vectors(array: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """N 3-vectors given as (N, 3, 1) (as OpenCV returns them) or (N, 3), as (N, 3) float64.

    Raises
    ------
    ValueError
        For any other shape, naming the argument ``name``.
    """
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 3 and values.shape[1:] == (3, 1):
        return values[:, :, 0]
    if values.ndim == 2 and values.shape[1] == 3:
        return values
    raise ValueError(f"expected {name} of shape (N, 3, 1) or (N, 3), got {values.shape}")


def rotation_matrices(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Rotation matrices of rotation vectors given component first, (3, ...) -> (3, 3, ...),
    without checks (see :func:`rodrigues`): the layout that keeps a solver's arrays contiguous
    along the faces.

    ``R = cos(a) I + sin(a) / a [r]x + (1 - cos(a)) / a^2 r r^T`` with ``a = |r|``. The
    coefficients come from ``sin(a / 2) / (a / 2)``, accurate down to a = 0, where R is the
    identity exactly."""
    half = 0.5 * np.sqrt(np.einsum("i...,i...->...", vectors, vectors))
    sin_half = np.sin(half)
    half_sinc = np.divide(sin_half, half, out=np.ones_like(half), where=half > 0.0)
    versine = 0.5 * half_sinc * half_sinc  # (1 - cos(a)) / a^2
    out: npt.NDArray[np.float64] = (versine * vectors)[:, None] * vectors[None]
    flat = out.reshape(9, -1)
    flat[::4] += (1.0 - 2.0 * sin_half * sin_half).reshape(-1)  # cos(a)
    flat += _SKEW_BASIS @ (half_sinc * np.cos(half) * vectors).reshape(3, -1)  # sin(a) / a
    return out


def cayley_rotations(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Rotation matrices of the Cayley transform of vectors given component first,
    (3, ...) -> (3, 3, ...): ``(I - [r / 2]x)^-1 (I + [r / 2]x)``, the rotation about r by
    ``2 atan(|r| / 2)``.

    It agrees with ``rodrigues(r)`` to second order in r (both are ``I + [r]x + [r]x^2 / 2 +
    O(|r|^3)``), so a solver may step with it as with the exponential map, and it is
    cheaper: ``R = (1 - k |r|^2 / 2) I + k [r]x + k / 2 r r^T`` with ``k = 1 / (1 + |r|^2 / 4)``,
    without trigonometry."""
    squared = np.einsum("i...,i...->...", vectors, vectors)
    factor = 1.0 / (1.0 + 0.25 * squared)
    scaled = factor * vectors
    out: npt.NDArray[np.float64] = (0.5 * scaled)[:, None] * vectors[None]
    flat = out.reshape(9, -1)
    flat[::4] += (1.0 - 0.5 * factor * squared).reshape(-1)
    flat += _SKEW_BASIS @ scaled.reshape(3, -1)
    return out


def rodrigues(rotation: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Rotation matrices from rotation vectors, for N vectors at once (as ``cv2.Rodrigues`` does
    for one).

    ``R = cos(a) I + sin(a) [k]x + (1 - cos(a)) k k^T`` with ``a = |r|`` and ``k = r / a``; the
    zero vector gives the identity exactly.

    Parameters
    ----------
    rotation:
        (N, 3, 1) rotation vectors as returned by
        :func:`~faceinfer.geometry.pose.solve_pose` or ``cv2.solvePnP``, or (N, 3).

    Returns
    -------
    (N, 3, 3) float64 rotation matrices ``R``. For a pose, ``R`` maps model-space directions to
    camera space (``camera = R @ model + t``). A vector with NaN gives a NaN matrix.

    Raises
    ------
    ValueError
        For any other shape.
    """
    matrices = rotation_matrices(as_vectors(rotation, "rotation").T)
    return np.ascontiguousarray(matrices.transpose(2, 0, 1))


def rotation_vectors(matrices: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Rotation vectors of N rotation matrices (the inverse of :func:`rodrigues`, as
    ``cv2.Rodrigues`` converts a matrix).

    Parameters
    ----------
    matrices:
        (N, 3, 3) rotation matrices.

    Returns
    -------
    (N, 3) float64 rotation vectors, angle in [0, pi]. At pi, where ``r`` and ``-r`` are the
    same rotation, the sign is the one that the matrix's rounding favours.

    Raises
    ------
    ValueError
        If the matrices are not (N, 3, 3).
    """
    rotation = np.asarray(matrices, dtype=np.float64)
    if rotation.ndim != 3 or rotation.shape[1:] != (3, 3):
        raise ValueError(f"expected matrices of shape (N, 3, 3), got {rotation.shape}")
    if len(rotation) == 0:
        return np.zeros((0, 3))
    # Skew part: 2 sin(a) k. Symmetric part minus cos(a) I: (1 - cos(a)) k k^T.
    flat = rotation.reshape(-1, 9)
    twice_sin_axis = flat[:, _SKEW_PLUS] - flat[:, _SKEW_MINUS]
    cos = np.clip((flat[:, 0] + flat[:, 4] + flat[:, 8] - 1.0) / 2.0, -1.0, 1.0)
    sin = np.linalg.norm(twice_sin_axis, axis=1) / 2.0
    angle = np.arctan2(sin, cos)
    # Angles up to pi/2: r = a / (2 sin a) * (skew part); a / sin a from its series when small.
    small = sin < 1e-6
    ratio = np.where(small, 1.0 + angle * angle / 6.0, angle / np.where(small, 1.0, sin))
    out: npt.NDArray[np.float64] = 0.5 * ratio[:, None] * twice_sin_axis
    # Angles past pi/2: the axis from the symmetric part (sin a is inaccurate near pi).
    wide = cos < 0.0
    if np.any(wide):
        sub = rotation[wide]
        symmetric = (sub + sub.transpose(0, 2, 1)) / 2.0
        symmetric[:, [0, 1, 2], [0, 1, 2]] -= cos[wide][:, None]
        column = np.argmax(np.diagonal(symmetric, axis1=1, axis2=2), axis=1)
        axis = symmetric[np.arange(len(sub)), :, column]
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        flip = np.sum(axis * twice_sin_axis[wide], axis=1) < 0.0
        axis[flip] *= -1.0
        out[wide] = angle[wide][:, None] * axis
    return out


def nearest_rotations(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The rotation nearest (in the Frobenius norm) to each of N 3 x 3 matrices given component
    first, (3, 3, ...) -> (3, 3, ...), or to its negative where its determinant is negative:
    the orthogonal factor of the polar decomposition of the one of the two with positive
    determinant.

    Newton's iteration ``X <- (X + X^-T) / 2``, from the matrix divided by the cube root of its
    determinant (which makes that 1), converges quadratically; it runs until every matrix has
    converged. A matrix with NaN, or a singular one, gives NaN or an arbitrary matrix without
    affecting the others.
    """
    out = np.array(matrices, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cofactor, det = _cofactors(out)
        scale = np.cbrt(det)
        out /= scale
        cofactor /= scale * scale
        det /= scale * scale * scale
        for _ in range(_NEAREST_ITERATIONS):
            # X^-T = cofactor / det, the cofactor matrix's rows being cross products of X's.
            previous, out = out, 0.5 * (out + cofactor / det)
            change = np.abs(out - previous).reshape(-1)
            if not np.fmax.reduce(change, initial=0.0) > _NEAREST_TOLERANCE:
                break  # fmax passes over NaN: rows of NaN do not hold the others back
            cofactor, det = _cofactors(out)
    return out


_NEXT, _AFTER = np.array([[1], [2], [0]]), np.array([[2], [0], [1]])


def _cofactors(matrices: npt.NDArray[np.float64]
               ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The cofactor matrices (3, 3, ...) and determinants (...) of (3, 3, ...) matrices."""
    rows, columns = (_NEXT, _AFTER), (_NEXT.T, _AFTER.T)
    cofactor = (matrices[rows[0], columns[0]] * matrices[rows[1], columns[1]]
                - matrices[rows[0], columns[1]] * matrices[rows[1], columns[0]])
    return cofactor, np.einsum("j...,j...->...", matrices[0], cofactor[0])


def euler_angles(rotation: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Pitch, yaw and roll in degrees of N poses.

    From ``R = rodrigues(rotation)`` (model -> camera): pitch = atan2(R21, R22), yaw =
    atan2(-R20, sqrt(R21^2 + R22^2)), roll = atan2(R10, R00), i.e. ``R = Rz(roll) Ry(yaw)
    Rx(pitch)`` about the camera's x (right), y (down) and z (forward) axes. A frontal face gives
    about (0, 0, 0).

    Parameters
    ----------
    rotation:
        (N, 3, 1) rotation vectors from :func:`~faceinfer.geometry.pose.solve_pose` (or (N, 3)).

    Returns
    -------
    (N, 3) float32 (pitch, yaw, roll) in degrees; NaN rows for NaN rotations.

    Raises
    ------
    ValueError
        For a shape other than (N, 3, 1) or (N, 3).
    """
    matrices = rodrigues(rotation)
    pitch = np.arctan2(matrices[:, 2, 1], matrices[:, 2, 2])
    yaw = np.arctan2(-matrices[:, 2, 0], np.hypot(matrices[:, 2, 1], matrices[:, 2, 2]))
    roll = np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0])
    angles: npt.NDArray[np.float64] = np.degrees(np.stack([pitch, yaw, roll], axis=1))
    return angles.astype(np.float32)
