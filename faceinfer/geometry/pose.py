"""Head pose from landmarks: batched perspective-n-point, Euler angles and centering offsets.

Conventions
-----------
* Image points are (x, y) in the normalized legacy space of
  :func:`faceinfer.geometry.umeyama.legacy_matrices`: the mean face lies in [0, 1] x [0, 1], x to
  the right, y down.
* Model points are the 3D mean head :data:`~faceinfer.geometry.constants.MEAN_FACE_3D_26`, in its
  own frame: x towards the subject's right (image left on a frontal face), y up, z out of the
  face, towards the viewer of a frontal face.
* Camera space is OpenCV's pinhole frame: x right, y down, z along the optical axis. The camera
  is :data:`CAMERA_MATRIX`: fx = fy = 4, cx = cy = 0.5, no distortion, so that a camera point
  (X, Y, Z) projects to (4 X / Z + 0.5, 4 Y / Z + 0.5).
* A pose is a rotation vector ``r`` and a translation ``t``, each (N, 3, 1) as OpenCV returns
  them; together they map a model point ``p`` to the camera point ``rodrigues(r) @ p + t``.
  This matches ``cv2.solvePnP(..., flags=cv2.SOLVEPNP_ITERATIVE)``, whose solution for a real
  face puts the head *behind* the camera (Z about -58): the projection through negative depth
  turns the y-up, subject's-right-x head the right way round in the image. A frontal face
  therefore has a rotation close to the identity, and pitch, yaw and roll close to 0.

Everything here works on N faces at once with array operations; no Python loop runs per face.
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import MEAN_FACE_3D_26, POSE_CORE_LANDMARKS_68, Centering

FOCAL = 4.0
"""Focal length of the pose camera, in normalized legacy units (both axes)."""
PRINCIPAL_POINT = 0.5
"""Principal point of the pose camera, (0.5, 0.5) in normalized legacy units."""
CAMERA_MATRIX: npt.NDArray[np.float64] = np.array([[FOCAL, 0.0, PRINCIPAL_POINT],
                                                   [0.0, FOCAL, PRINCIPAL_POINT],
                                                   [0.0, 0.0, 1.0]])
"""(3, 3) the pose camera's intrinsic matrix: camera space -> homogeneous normalized legacy
space."""
CENTERING_POINTS_3D: dict[str, npt.NDArray[np.float64]] = {
    Centering.FACE: np.array([0.0, -1.5, 4.2]),
    Centering.HEAD: np.array([0.0, 0.0, -2.3]),
}
"""The model-space point (x, y, z) that each pose-derived centering puts at the crop's centre."""

_MAX_ITERATIONS = 100
"""Upper bound on Levenberg-Marquardt iterations. A face normally converges in 4 to 8: real
faces fit the mean head loosely, and with large residuals Gauss-Newton converges linearly."""
_STEP_TOLERANCE = 1e-10
"""A face has converged when a step moves the rotation by less than this (radians) and the
translation by less than this relative to its length ..."""
_COST_TOLERANCE = 1e-12
"""... or when a step lowers (or its quadratic model promises to lower) the squared error by
less than this fraction."""
_ACCEPT_TOLERANCE = 1e-9
"""... or when an accepted step's model promised less than this fraction: what remains would
move the rotation by about 1e-5 at most and the translation by about 1e-6 of its length."""
_DAMPING_START = 1e-3
_DAMPING_MIN = 1e-15
_DAMPING_MAX = 1e12
_SMALL_ANGLE_SQ = 1e-8
"""Below this squared angle the Rodrigues coefficients come from their Taylor series."""
_CORE_COUNT = len(POSE_CORE_LANDMARKS_68)
_CHUNK = 1024
"""Faces solved together: small enough for the working arrays to stay in the CPU cache."""
_POLAR_ITERATIONS = 20
_POLAR_TOLERANCE = 1e-14
"""Newton steps for the rotation of the linear estimate stop when no entry moves more than
this (typically after 4 to 6 steps)."""
_EIGEN_SQUARINGS = 5
"""Inverse iteration for the linear estimate squares the iteration matrix this often (a power
of 32): enough when the two smallest eigenvalues differ by a factor of 2 or more (for real
faces they differ by 40 or more)."""
_EIGEN_SHIFT = 1e-10


def _dlt_constants() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64],
                              npt.NDArray[np.float64]]:
    """Constants of the mean head for the linear estimate, computed once, each (26, 16): per
    model point X = (x, y, z, 1), the outer products X X^T, (G^-1 X) X^T and (G^-2 X) X^T, with
    G = sum X X^T. A weighted sum over the points (one matrix product for a whole batch) gives
    sum w X X^T and G^-1 or G^-2 times it."""
    homogeneous = np.concatenate([MEAN_FACE_3D_26, np.ones((_CORE_COUNT, 1))], axis=1)
    gram_inverse = np.linalg.inv(homogeneous.T @ homogeneous)
    solved = homogeneous @ gram_inverse  # rows G^-1 X (G is symmetric)
    twice = solved @ gram_inverse
    return tuple(
        (left[:, :, None] * homogeneous[:, None, :]).reshape(_CORE_COUNT, 16)
        for left in (homogeneous, solved, twice))


_MODEL_OUTER, _MODEL_SOLVED_OUTER, _MODEL_TWICE_SOLVED_OUTER = _dlt_constants()
_MODEL_COLUMNS = np.ascontiguousarray(MEAN_FACE_3D_26.T)  # (3, 26)


# ----------------------------------------------------------------------------------------------
# Rotations


def _as_vectors(rotation: npt.NDArray[np.floating], name: str) -> npt.NDArray[np.float64]:
    """(N, 3, 1) or (N, 3) as (N, 3) float64, or a ValueError naming the argument."""
    array = np.asarray(rotation, dtype=np.float64)
    if array.ndim == 3 and array.shape[1:] == (3, 1):
        return array[:, :, 0]
    if array.ndim == 2 and array.shape[1] == 3:
        return array
    raise ValueError(f"expected {name} of shape (N, 3, 1) or (N, 3), got {array.shape}")


def _skew(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 3, 3) cross-product matrices: ``_skew(v) @ w == cross(v, w)``."""
    x, y, z = vectors[:, 0], vectors[:, 1], vectors[:, 2]
    zero = np.zeros_like(x)
    return np.stack([np.stack([zero, -z, y], axis=-1),
                     np.stack([z, zero, -x], axis=-1),
                     np.stack([-y, x, zero], axis=-1)], axis=1)


def _rodrigues(vectors: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 3) rotation vectors -> (N, 3, 3) float64 rotation matrices."""
    angle_sq = np.sum(vectors * vectors, axis=1)
    small = angle_sq < _SMALL_ANGLE_SQ
    angle = np.sqrt(angle_sq)
    safe = np.where(small, 1.0, angle)
    with np.errstate(invalid="ignore"):
        sin_term = np.where(small, 1.0 - angle_sq / 6.0, np.sin(angle) / safe)
        cos_term = np.where(small, 0.5 - angle_sq / 24.0, (1.0 - np.cos(angle)) / (safe * safe))
    cos = np.where(small, 1.0 - angle_sq / 2.0, np.cos(angle))
    out: npt.NDArray[np.float64] = (
        cos_term[:, None, None] * vectors[:, :, None] * vectors[:, None, :]
        + sin_term[:, None, None] * _skew(vectors))
    out[:, [0, 1, 2], [0, 1, 2]] += cos[:, None]
    return out


def rodrigues(rotation: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Rotation matrices from rotation vectors, for N vectors at once (as ``cv2.Rodrigues`` does
    for one).

    A rotation vector's direction is the rotation axis and its length the angle in radians,
    right-handed: ``R = cos(a) I + sin(a) [k]x + (1 - cos(a)) k k^T`` with ``a = |r|`` and
    ``k = r / a``. Short vectors use the Taylor series of the coefficients, so the zero vector
    gives the identity exactly.

    Parameters
    ----------
    rotation:
        (N, 3, 1) rotation vectors as returned by :func:`solve_pose` or ``cv2.solvePnP``, or
        (N, 3).

    Returns
    -------
    (N, 3, 3) float64 rotation matrices ``R``. For a pose, ``R`` maps model-space directions to
    camera space (``camera = R @ model + t``). A vector with NaN gives a NaN matrix.

    Raises
    ------
    ValueError
        For any other shape.
    """
    return _rodrigues(_as_vectors(rotation, "rotation"))


def _rotation_vectors(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 3, 3) rotation matrices -> (N, 3) rotation vectors of angle in [0, pi] (the inverse
    of :func:`_rodrigues`, as ``cv2.Rodrigues`` converts a matrix)."""
    if len(matrices) == 0:
        return np.zeros((0, 3))
    # Skew part: 2 sin(a) k. Symmetric part minus cos(a) I: (1 - cos(a)) k k^T.
    twice_sin_axis = np.stack([matrices[:, 2, 1] - matrices[:, 1, 2],
                               matrices[:, 0, 2] - matrices[:, 2, 0],
                               matrices[:, 1, 0] - matrices[:, 0, 1]], axis=1)
    cos = np.clip((np.trace(matrices, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    sin = np.linalg.norm(twice_sin_axis, axis=1) / 2.0
    angle = np.arctan2(sin, cos)
    # Angles up to pi/2: r = a / (2 sin a) * (skew part); a / sin a from its series when small.
    small = sin < 1e-6
    ratio = np.where(small, 1.0 + angle * angle / 6.0, angle / np.where(small, 1.0, sin))
    out: npt.NDArray[np.float64] = 0.5 * ratio[:, None] * twice_sin_axis
    # Angles past pi/2: the axis from the symmetric part (sin a is inaccurate near pi).
    wide = cos < 0.0
    if np.any(wide):
        sub = matrices[wide]
        symmetric = (sub + sub.transpose(0, 2, 1)) / 2.0
        symmetric[:, [0, 1, 2], [0, 1, 2]] -= cos[wide][:, None]
        column = np.argmax(np.diagonal(symmetric, axis1=1, axis2=2), axis=1)
        axis = symmetric[np.arange(len(sub)), :, column]
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        flip = np.sum(axis * twice_sin_axis[wide], axis=1) < 0.0
        axis[flip] *= -1.0
        out[wide] = angle[wide][:, None] * axis
    return out


# ----------------------------------------------------------------------------------------------
# Projection


def _camera_to_image(camera: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(..., 3) camera-space points -> (..., 2) normalized legacy (x, y) through the pose
    camera."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return FOCAL * camera[..., :2] / camera[..., 2:3] + PRINCIPAL_POINT


def project_points(points: npt.NDArray[np.floating], rotation: npt.NDArray[np.floating],
                   translation: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Project model-space 3D points through N poses and the pose camera (as
    ``cv2.projectPoints`` with :data:`CAMERA_MATRIX` does for one pose).

    Parameters
    ----------
    points:
        (P, 3) model-space points (x, y, z) shared by every face (e.g.
        :data:`~faceinfer.geometry.constants.MEAN_FACE_3D_26`), or (N, P, 3).
    rotation, translation:
        (N, 3, 1) each (or (N, 3)): the poses from :func:`solve_pose`; a model point ``p`` goes
        to the camera point ``rodrigues(rotation) @ p + translation``.

    Returns
    -------
    (N, P, 2) float64 (x, y) in the normalized legacy space (the landmarks' space).

    Raises
    ------
    ValueError
        For mismatched shapes.
    """
    rotation_vectors = _as_vectors(rotation, "rotation")
    shift = _as_vectors(translation, "translation")
    if len(shift) != len(rotation_vectors):
        raise ValueError(f"expected as many translations as rotations ({len(rotation_vectors)}), "
                         f"got {len(shift)}")
    model = np.asarray(points, dtype=np.float64)
    if model.shape[-1] != 3 or model.ndim not in (2, 3):
        raise ValueError(f"expected points of shape (P, 3) or (N, P, 3), got {model.shape}")
    camera = np.matmul(model, _rodrigues(rotation_vectors).transpose(0, 2, 1)) + shift[:, None]
    return _camera_to_image(camera)


# ----------------------------------------------------------------------------------------------
# Pose


def _solve_positive_definite(matrices: npt.NDArray[np.float64], rhs: npt.NDArray[np.float64]
                             ) -> npt.NDArray[np.float64]:
    """Solve (N, K, K) symmetric positive definite systems for (N, K) or (N, K, M) right-hand
    sides by Gaussian elimination without pivoting (stable for such matrices), vectorized over
    N: faster than ``np.linalg.solve``'s call per matrix for the small systems here. A singular
    system gives inf or NaN, never an exception."""
    size = matrices.shape[-1]
    columns = rhs[:, :, None] if rhs.ndim == 2 else rhs
    width = columns.shape[2]
    augmented = np.concatenate([matrices, columns], axis=2).transpose(1, 2, 0).copy()
    for pivot in range(size - 1):
        factor = augmented[pivot + 1:, pivot] / augmented[pivot, pivot]
        augmented[pivot + 1:, pivot:] -= factor[:, None] * augmented[pivot, pivot:][None]
    out = np.empty((size, width, len(matrices)))
    for row in range(size - 1, -1, -1):
        known = np.sum(augmented[row, row + 1:size, None] * out[row + 1:], axis=0)
        out[row] = (augmented[row, size:] - known) / augmented[row, row]
    solved = out.transpose(2, 0, 1)
    return solved[:, :, 0] if rhs.ndim == 2 else solved


def _polar_rotation(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The rotation nearest to each (N, 3, 3) matrix of positive determinant (the orthogonal
    factor of its polar decomposition), by Newton's iteration X <- (X + X^-T) / 2, which
    converges quadratically. It runs until every matrix has converged."""
    out: npt.NDArray[np.float64] = matrices / np.cbrt(np.linalg.det(matrices))[:, None, None]
    for _ in range(_POLAR_ITERATIONS):
        (a, b, c), (d, e, f), (g, h, i) = out.transpose(1, 2, 0)
        # Rows of the cofactor matrix (X^-T times det X): cross products of X's rows.
        cofactor = np.stack([np.stack([e * i - f * h, f * g - d * i, d * h - e * g], axis=-1),
                             np.stack([h * c - i * b, i * a - g * c, g * b - h * a], axis=-1),
                             np.stack([b * f - c * e, c * d - a * f, a * e - b * d], axis=-1)],
                            axis=1)
        det = a * cofactor[:, 0, 0] + b * cofactor[:, 0, 1] + c * cofactor[:, 0, 2]
        previous, out = out, 0.5 * (out + cofactor / det[:, None, None])
        with np.errstate(invalid="ignore"):
            if not np.any(np.abs(out - previous) > _POLAR_TOLERANCE):  # NaN rows stop too
                break
    return out


def _initial_pose(image: npt.NDArray[np.float64]
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A linear (DLT) estimate of each face's pose from (N, 26, 2) image points in camera
    normalized coordinates ((x - c) / f): rotation matrices (N, 3, 3) and translations (N, 3).

    The projection matrix P (3 x 4) satisfies ``P1 . X - x P3 . X = 0`` and
    ``P2 . X - y P3 . X = 0`` for every homogeneous model point X. As in OpenCV's
    initialisation, P is the unit-norm total least-squares solution of these equations, in the
    model's own coordinates; here it is restricted to P1 = A_x P3 and P2 = A_y P3, the
    least-squares rows for a given P3 (exact when the points fit exactly), which leaves the
    smallest eigenvector of a 4 x 4 generalized eigenproblem per face, found by inverse
    iteration. The scale's sign makes P's rotation part's determinant positive (for a real face
    this puts the head at negative depth), and the rotation is the nearest one to that part.
    Which of two mirror-depth poses a noisy face starts from depends on these choices, so they
    follow OpenCV's to land in the same minimum. The translation is then fitted to the rotation
    (:func:`_translation_for`).
    """
    count = len(image)
    x, y = image[:, :, 0], image[:, :, 1]
    # B = sum x X X^T, A = G^-1 B (G = sum X X^T), A^T A = B G^-2 B, E = sum (x^2 + y^2) X X^T.
    block_x = (x @ _MODEL_OUTER).reshape(count, 4, 4)
    block_y = (y @ _MODEL_OUTER).reshape(count, 4, 4)
    rows_x = (x @ _MODEL_SOLVED_OUTER).reshape(count, 4, 4)
    rows_y = (y @ _MODEL_SOLVED_OUTER).reshape(count, 4, 4)
    twice_x = (x @ _MODEL_TWICE_SOLVED_OUTER).reshape(count, 4, 4)
    twice_y = (y @ _MODEL_TWICE_SOLVED_OUTER).reshape(count, 4, 4)
    squares = ((x * x + y * y) @ _MODEL_OUTER).reshape(count, 4, 4)
    # |L p|^2 = P3^T cost P3 and |p|^2 = P3^T norm P3 when P1 = A_x P3, P2 = A_y P3.
    cost = squares - np.matmul(block_x, rows_x) - np.matmul(block_y, rows_y)
    norm = np.eye(4) + np.matmul(block_x, twice_x) + np.matmul(block_y, twice_y)
    # Inverse iteration: powers of (cost + shift norm)^-1 norm converge to the smallest
    # eigenvector; the shift keeps an exact (noise-free) fit's singular cost invertible.
    shift = _EIGEN_SHIFT * (np.trace(cost, axis1=1, axis2=2)
                            / np.trace(norm, axis1=1, axis2=2))[:, None, None]
    power = np.matmul(_solve_positive_definite(cost + shift * norm, np.eye(4)[None]
                                               .repeat(count, axis=0)), norm)
    for _ in range(_EIGEN_SQUARINGS):
        power /= np.max(np.abs(power), axis=(1, 2), keepdims=True)
        power = np.matmul(power, power)
    # Every column of the power is now along the eigenvector: take the longest.
    longest = np.argmax(np.sum(power * power, axis=1), axis=1)
    third = power[np.arange(count), :, longest][:, :, None]  # (N, 4, 1)
    projection = np.concatenate([np.matmul(rows_x, third), np.matmul(rows_y, third), third],
                                axis=2).transpose(0, 2, 1)  # (N, 3, 4)
    sign = np.sign(np.linalg.det(projection[:, :, :3]))
    rotation = _polar_rotation(projection[:, :, :3] * sign[:, None, None])
    return rotation, _translation_for(rotation, x, y)


def _translation_for(rotation: npt.NDArray[np.float64], x: npt.NDArray[np.float64],
                     y: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(N, 3) translations that best place the mean head, rotated by (N, 3, 3) ``rotation``,
    on (N, 26) image points (x, y) in camera normalized coordinates, in the linear sense:
    ``tx - x tz = x (R p)z - (R p)x`` and ``ty - y tz = y (R p)z - (R p)y`` in least squares.

    The projection matrix's own last column fits a face only as well as its 3 x 3 part is a
    rotation; for real faces, which fit the mean head loosely, this translation starts the
    refinement at about a hundredth of the reprojection error.
    """
    count = len(rotation)
    rotated = (rotation.reshape(-1, 3) @ _MODEL_COLUMNS).reshape(count, 3, _CORE_COUNT)
    right_x = x * rotated[:, 2] - rotated[:, 0]
    right_y = y * rotated[:, 2] - rotated[:, 1]
    normal = np.zeros((count, 3, 3))
    normal[:, 0, 0] = normal[:, 1, 1] = _CORE_COUNT
    normal[:, 0, 2] = normal[:, 2, 0] = -np.sum(x, axis=1)
    normal[:, 1, 2] = normal[:, 2, 1] = -np.sum(y, axis=1)
    normal[:, 2, 2] = np.sum(x * x + y * y, axis=1)
    rhs = np.stack([np.sum(right_x, axis=1), np.sum(right_y, axis=1),
                    -np.sum(x * right_x + y * right_y, axis=1)], axis=1)
    return _solve_positive_definite(normal, rhs)


def _camera_points(rotation: npt.NDArray[np.float64], shift: npt.NDArray[np.float64]
                   ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The mean head's points (N, 3, 26) rotated, ``R p``, and in camera space divided by the
    translation's depth, ``(R p + t) / tz = w R p + (a, b, 1)`` for ``shift = (a, b, w) =
    (tx, ty, 1) / tz``. Both are coordinate-major (x row, y row, z row), so that the whole batch
    rotates in one matrix product; the second projects exactly as the camera points do."""
    rotated = (rotation.reshape(-1, 3) @ _MODEL_COLUMNS).reshape(len(rotation), 3, _CORE_COUNT)
    scaled = shift[:, 2, None, None] * rotated
    scaled[:, 0] += shift[:, 0, None]
    scaled[:, 1] += shift[:, 1, None]
    scaled[:, 2] += 1.0
    return rotated, scaled


def _residuals(camera: npt.NDArray[np.float64], target: npt.NDArray[np.float64]
               ) -> npt.NDArray[np.float64]:
    """(N, 2, 26) reprojection residuals, projected minus observed (x row, y row), in
    normalized legacy units, of (N, 3, 26) camera points (at any scale) and (N, 2, 26) observed
    points."""
    return FOCAL * camera[:, :2] / camera[:, 2:3] + (PRINCIPAL_POINT - target)


def _normal_equations(rotated: npt.NDArray[np.float64], scaled: npt.NDArray[np.float64],
                      shift: npt.NDArray[np.float64], residual: npt.NDArray[np.float64]
                      ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Gauss-Newton matrices J^T J (N, 6, 6) and gradients J^T r (N, 6) of the (N, 2, 26)
    residuals with respect to a rotation step ``o`` applied on the left (R <- rodrigues(o) R)
    and steps of ``shift = (a, b, w)``, taken at o = 0. Parameters are ordered
    (ox, oy, oz, w, a, b).

    With the scaled camera points q = w R p + (a, b, 1) (see :func:`_camera_points`),
    (u, v) = (qx / qz, qy / qz) and s = f / qz, an image point moves by
    s [[1, 0, -u], [0, 1, -v]] per unit of q; q moves by -[w R p]x o, by R p per unit of w and
    along x and y per unit of a and b. The a and b columns of J are (s, 0) and (0, s), so their
    blocks of J^T J are sums of s rather than part of the dense product.

    J is built in float32, which shifts the point where the gradient vanishes by about 1e-5 of
    a radian at most: well inside the agreement with OpenCV, and twice as fast.
    """
    count = len(scaled)
    # In float32: the Jacobian only steers the steps, and float32 halves the memory traffic.
    # Residuals and costs, which decide the steps and the minimum, stay in float64.
    scaled = scaled.astype(np.float32)
    rotated = rotated.astype(np.float32)
    residual = residual.astype(np.float32)
    inverse_depth = np.float32(1.0) / scaled[:, 2]
    scale = np.float32(FOCAL) * inverse_depth
    scale_u = scale * scaled[:, 0] * inverse_depth
    scale_v = scale * scaled[:, 1] * inverse_depth
    # w R p, the part of q that the rotation step turns.
    depth = shift[:, 2, None].astype(np.float32)
    rx, ry, rz = depth * rotated[:, 0], depth * rotated[:, 1], depth * rotated[:, 2]
    dense_t = np.empty((count, 4, 2, _CORE_COUNT), dtype=np.float32)
    x_row, y_row = dense_t[:, :, 0], dense_t[:, :, 1]
    np.multiply(scale_u, ry, out=x_row[:, 0])
    np.negative(x_row[:, 0], out=x_row[:, 0])
    np.multiply(scale, rz, out=x_row[:, 1])
    x_row[:, 1] += scale_u * rx
    np.multiply(scale, ry, out=x_row[:, 2])
    np.negative(x_row[:, 2], out=x_row[:, 2])
    np.multiply(scale, rotated[:, 0], out=x_row[:, 3])
    x_row[:, 3] -= scale_u * rotated[:, 2]
    np.multiply(scale_v, ry, out=y_row[:, 0])
    y_row[:, 0] += scale * rz
    np.negative(y_row[:, 0], out=y_row[:, 0])
    np.multiply(scale_v, rx, out=y_row[:, 1])
    np.multiply(scale, rx, out=y_row[:, 2])
    np.multiply(scale, rotated[:, 1], out=y_row[:, 3])
    y_row[:, 3] -= scale_v * rotated[:, 2]
    dense = dense_t.reshape(count, 4, 2 * _CORE_COUNT)
    # Right-hand columns: the a column, the b column and the residuals.
    columns = np.zeros((count, 2, _CORE_COUNT, 3), dtype=np.float32)
    columns[:, 0, :, 0] = scale
    columns[:, 1, :, 1] = scale
    columns[:, :, :, 2] = residual
    products = np.matmul(dense, columns.reshape(count, 2 * _CORE_COUNT, 3))  # (N, 4, 3)
    hessian = np.empty((count, 6, 6))
    hessian[:, :4, :4] = np.matmul(dense, dense.transpose(0, 2, 1))
    hessian[:, :4, 4:] = products[:, :, :2]
    hessian[:, 4:, :4] = products[:, :, :2].transpose(0, 2, 1)
    hessian[:, 4, 4] = hessian[:, 5, 5] = np.sum(scale * scale, axis=1)
    hessian[:, 4, 5] = hessian[:, 5, 4] = 0.0
    gradient = np.empty((count, 6))
    gradient[:, :4] = products[:, :, 2]
    gradient[:, 4:] = np.sum(scale[:, None] * residual, axis=2)
    return hessian, gradient


def _refine(rotation: npt.NDArray[np.float64], shift: npt.NDArray[np.float64],
            target: npt.NDArray[np.float64]) -> None:
    """Levenberg-Marquardt on the reprojection error of every face at once, in place, from
    (N, 2, 26) observed points.

    The translation enters as ``shift = (tx, ty, 1) / tz`` (inverse depth): the projection is
    nearly linear in it, as the head's depth varies little against its distance, which saves a
    few percent of the iterations on real faces; the minimum is the same. The working arrays
    hold the faces still running: a face that converges is written back and dropped, so the
    work shrinks with the iterations.
    """
    if len(target) == 0:
        return
    index = np.arange(len(target))  # the face each working row holds
    rot, inverse, observed = rotation, shift, target
    rotated, camera = _camera_points(rot, inverse)
    residual = _residuals(camera, observed)
    cost = np.sum(residual * residual, axis=(1, 2))
    damping = np.full(len(index), _DAMPING_START)
    for _ in range(_MAX_ITERATIONS):
        hessian, gradient = _normal_equations(rotated, camera, inverse, residual)
        diagonal = hessian.reshape(-1, 36)[:, ::7]  # a view: adding to it damps the hessian
        added = damping[:, None] * diagonal + 1e-12 * np.max(diagonal, axis=1, keepdims=True)
        diagonal += added
        step = -_solve_positive_definite(hessian, gradient)
        # The decrease the quadratic model promises: -g.d - d.H.d / 2, with (H + added) d = -g.
        promised = 0.5 * (np.sum(added * step * step, axis=1) - np.sum(gradient * step, axis=1))
        new_rot = np.matmul(_rodrigues(step[:, :3]), rot)
        new_inverse = inverse + step[:, [4, 5, 3]]
        new_rotated, new_camera = _camera_points(new_rot, new_inverse)
        new_residual = _residuals(new_camera, observed)
        new_cost = np.sum(new_residual * new_residual, axis=(1, 2))
        better = new_cost < cost
        old_cost = cost
        if np.all(better):
            rot, inverse, rotated, camera = new_rot, new_inverse, new_rotated, new_camera
            residual, cost = new_residual, new_cost
        else:
            rot[better], inverse[better] = new_rot[better], new_inverse[better]
            rotated[better], camera[better] = new_rotated[better], new_camera[better]
            residual[better] = new_residual[better]
            cost = np.where(better, new_cost, cost)
        damping = np.where(better, np.maximum(damping / 10.0, _DAMPING_MIN), damping * 10.0)
        squares = step * step
        small_step = ((squares[:, 0] + squares[:, 1] + squares[:, 2] < _STEP_TOLERANCE ** 2)
                      & (squares[:, 3] + squares[:, 4] + squares[:, 5]
                         < _STEP_TOLERANCE ** 2 * np.sum(new_inverse * new_inverse, axis=1)))
        flat = ((promised <= _COST_TOLERANCE * old_cost)
                | (better & (old_cost - new_cost <= _COST_TOLERANCE * old_cost))
                | (better & (promised <= _ACCEPT_TOLERANCE * old_cost)))
        done = small_step | flat | (damping > _DAMPING_MAX)
        if np.any(done):
            rotation[index[done]], shift[index[done]] = rot[done], inverse[done]
            keep = ~done
            index, rot, inverse, observed = index[keep], rot[keep], inverse[keep], observed[keep]
            rotated, camera, residual = rotated[keep], camera[keep], residual[keep]
            cost, damping = cost[keep], damping[keep]
            if len(index) == 0:
                return
    rotation[index], shift[index] = rot, inverse


def _solve_chunk(target: npt.NDArray[np.float64]
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Rotation vectors (N, 3) and translations (N, 3) for (N, 26, 2) finite image points in
    normalized legacy units; NaN for faces whose linear estimate fails (degenerate points)."""
    rotation_out = np.full((len(target), 3), np.nan)
    translation_out = np.full((len(target), 3), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        rotation, translation = _initial_pose((target - PRINCIPAL_POINT) / FOCAL)
        shift = np.concatenate([translation[:, :2], np.ones((len(target), 1))], axis=1)
        shift /= translation[:, 2:]
    started = np.flatnonzero(np.all(np.isfinite(rotation), axis=(1, 2))
                             & np.all(np.isfinite(shift), axis=1))
    if len(started) < len(target):
        rotation, shift, target = rotation[started], shift[started], target[started]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        _refine(rotation, shift, np.ascontiguousarray(target.transpose(0, 2, 1)))
        translation_out[started] = np.concatenate([shift[:, :2], np.ones((len(shift), 1))],
                                                  axis=1) / shift[:, 2:]
    rotation_out[started] = _rotation_vectors(rotation)
    return rotation_out, translation_out


def solve_pose(landmarks_normalized: npt.NDArray[np.floating]
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The camera pose of the 3D mean head for N faces at once: the same answer as
    ``cv2.solvePnP(MEAN_FACE_3D_26, points, CAMERA_MATRIX, None, flags=SOLVEPNP_ITERATIVE)`` per
    face, without a Python loop over faces.

    The 26 landmarks :data:`~faceinfer.geometry.constants.POSE_CORE_LANDMARKS_68` are matched to
    :data:`~faceinfer.geometry.constants.MEAN_FACE_3D_26`. A linear (DLT) estimate starts a
    Levenberg-Marquardt minimisation of the squared reprojection error, run on all faces
    together until each converges (after 4 to 8 iterations). Faces are solved in chunks of
    about a thousand, which keeps the working arrays in the CPU cache.

    OpenCV stops its iterations a little earlier: where a face fits the mean head loosely (as
    real faces do) its answer can be about 2e-4 (rotation matrix entries) from the minimum that
    this function reaches within about 1e-5; re-running solvePnP from its own answer converges
    to the same minimum.

    Parameters
    ----------
    landmarks_normalized:
        (N, 68, 2) landmarks (x, y) in the normalized legacy space (frame points through the
        ``frame_to_legacy`` matrices of :func:`~faceinfer.geometry.umeyama.legacy_matrices`).
        98-point landmarks go through :func:`~faceinfer.geometry.landmarks.landmarks_68` first.

    Returns
    -------
    rotation, translation:
        (N, 3, 1) float32 each: rotation vectors (angle in [0, pi]) and translations such that
        a model point ``p`` lies at the camera point ``rodrigues(rotation) @ p + translation``
        (see the module's conventions; a real face has translation z about -58). A face with a
        NaN or infinite core landmark, or whose core landmarks all coincide, gets NaN in both
        without affecting the others (other landmarks are not used). Other degenerate layouts,
        such as points on a line, get an arbitrary pose, as they do from OpenCV.

    Raises
    ------
    ValueError
        If the landmarks are not (N, 68, 2).
    """
    points = np.asarray(landmarks_normalized, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"expected landmarks of shape (N, 68, 2), got {points.shape}")
    count = len(points)
    rotation_out = np.full((count, 3, 1), np.nan, dtype=np.float32)
    translation_out = np.full((count, 3, 1), np.nan, dtype=np.float32)
    target_all = points[:, POSE_CORE_LANDMARKS_68]
    valid = np.flatnonzero(np.all(np.isfinite(target_all), axis=(1, 2)))
    # Chunks keep the solver's arrays in the CPU cache: about twice as fast as one pass over a
    # large batch. The loop runs over chunks, never over faces.
    for start in range(0, len(valid), _CHUNK):
        index = valid[start:start + _CHUNK]
        rotation, translation = _solve_chunk(target_all[index])
        rotation_out[index, :, 0] = rotation
        translation_out[index, :, 0] = translation
    return rotation_out, translation_out


def euler_angles(rotation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
    """Pitch, yaw and roll in degrees of N poses.

    From ``R = rodrigues(rotation)`` (model -> camera): pitch = atan2(R21, R22), yaw =
    atan2(-R20, sqrt(R21^2 + R22^2)), roll = atan2(R10, R00), i.e. ``R = Rz(roll) Ry(yaw)
    Rx(pitch)`` about the camera's x (right), y (down) and z (forward) axes. A frontal face gives
    about (0, 0, 0).

    Parameters
    ----------
    rotation:
        (N, 3, 1) rotation vectors from :func:`solve_pose` (or (N, 3)).

    Returns
    -------
    (N, 3) float32 (pitch, yaw, roll) in degrees; NaN rows for NaN rotations.
    """
    matrices = rodrigues(rotation)
    pitch = np.arctan2(matrices[:, 2, 1], matrices[:, 2, 2])
    yaw = np.arctan2(-matrices[:, 2, 0], np.hypot(matrices[:, 2, 1], matrices[:, 2, 2]))
    roll = np.arctan2(matrices[:, 1, 0], matrices[:, 0, 0])
    angles: npt.NDArray[np.float64] = np.degrees(np.stack([pitch, yaw, roll], axis=1))
    return angles.astype(np.float32)


def centering_offsets(rotation: npt.NDArray[np.floating], translation: npt.NDArray[np.floating],
                      centering: Centering | str) -> npt.NDArray[np.float32]:
    """How far each face's pose-derived centre lies from the legacy centre, for N faces.

    The centering's model point (:data:`CENTERING_POINTS_3D`: face (0, -1.5, 4.2), head
    (0, 0, -2.3)) is projected with each pose and the pose camera; the offset is that point
    minus (0.5, 0.5). The ``face`` and ``head`` alignment matrices are the legacy
    ``frame_to_legacy`` matrices with this offset subtracted from their translation.

    Parameters
    ----------
    rotation, translation:
        (N, 3, 1) each (or (N, 3)): poses from :func:`solve_pose`.
    centering:
        A :class:`~faceinfer.geometry.constants.Centering` or its value: "legacy", "face" or
        "head".

    Returns
    -------
    (N, 2) float32 (x, y) offsets in normalized legacy units; zeros for legacy centering (even
    for NaN poses), NaN rows for NaN poses otherwise.

    Raises
    ------
    ValueError
        For an unknown centering or mismatched shapes.
    """
    try:
        kind = Centering(centering)
    except ValueError:
        known = ", ".join(repr(member.value) for member in Centering)
        raise ValueError(f"expected centering in {known}, got {centering!r}") from None
    count = len(_as_vectors(rotation, "rotation"))
    if kind == Centering.LEGACY:
        if len(_as_vectors(translation, "translation")) != count:
            raise ValueError(f"expected as many translations as rotations ({count}), got "
                             f"{len(np.asarray(translation))}")
        return np.zeros((count, 2), dtype=np.float32)
    point = CENTERING_POINTS_3D[kind][None]
    projected = project_points(point, rotation, translation)[:, 0]
    return (projected - PRINCIPAL_POINT).astype(np.float32)
