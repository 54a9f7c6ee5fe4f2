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
:func:`rodrigues` and :func:`euler_angles` come from :mod:`faceinfer.geometry.rotation`.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from faceinfer.geometry.constants import MEAN_FACE_3D_26, POSE_CORE_LANDMARKS_68, Centering
from faceinfer.geometry.rotation import (
    as_vectors,
    cayley_rotations,
    euler_angles,
    nearest_rotations,
    rodrigues,
    rotation_matrices,
    rotation_vectors,
)

__all__ = ["CAMERA_MATRIX", "CENTERING_POINTS_3D", "FOCAL", "PRINCIPAL_POINT",
           "centering_offsets", "euler_angles", "project_points", "rodrigues", "solve_pose"]

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

_MAX_ITERATIONS = 100  # Levenberg-Marquardt iterations; a real face takes 4
_STEP_TOLERANCE, _COST_TOLERANCE, _ACCEPT_TOLERANCE, _NEWTON_TOLERANCE = 1e-10, 1e-12, 1e-9, 1e-6
"""A face has converged when a step moves the rotation by less than the first (radians) and
the translation by less than it relative to its length; or when a step lowers (or promises to
lower) the squared error by less than the second fraction; or an accepted step promised less
than the third; or, after a Newton step that gave at least half what it promised, the next
promises less than the fourth: Newton's method converges quadratically, so that step is taken
unchecked (the one after would promise about 1e-12)."""
_NEWTON_SWITCH = 0.3
"""A face takes Newton's steps after an accepted step that promised less than this fraction of
its squared error: near its minimum, where the exact Hessian is positive definite."""
_DAMPING_START, _DAMPING_MIN, _DAMPING_MAX = 1e-3, 1e-15, 1e12
_CORE_COUNT = len(POSE_CORE_LANDMARKS_68)
_CHUNK = 1024
"""Faces solved together: enough to spread each call's cost, few enough to stay in cache."""
_BLAS_ONE_THREAD = 4 * 65536
"""OpenBLAS multiplies on several threads above this many multiply-adds (m n k): no gain on the
solver's small products, and up to 100 times slower when other threads keep the cores busy."""
_EIGEN_SQUARINGS, _EIGEN_SHIFT = 5, 1e-10
"""Inverse iteration for the linear estimate squares the iteration matrix 5 times (a power of
32): enough when the two smallest eigenvalues differ by a factor of 2 (for real faces: 40)."""

_MODEL = np.concatenate([MEAN_FACE_3D_26.T, np.ones((1, _CORE_COUNT))])
"""(4, 26) the mean head's points as homogeneous columns X = (x, y, z, 1)."""
_MODEL_OUTER = np.einsum("ip,jp->ijp", _MODEL, _MODEL).reshape(16, _CORE_COUNT)
"""(16, 26) per point X X^T: times weights w (26, N), each face's sum w X X^T at once."""
_GRAM_INVERSE = np.linalg.inv(_MODEL @ _MODEL.T)
_LINEAR_ESTIMATE = np.concatenate([
    np.einsum("ip,jp->ijp", left, _MODEL).reshape(16, _CORE_COUNT)
    for left in (_MODEL, _GRAM_INVERSE @ _MODEL, _GRAM_INVERSE @ _GRAM_INVERSE @ _MODEL)])
"""(48, 26) per point X X^T, (G^-1 X) X^T and (G^-2 X) X^T, with G = sum X X^T: weighted sums
give B = sum w X X^T, G^-1 B and G^-2 B."""


def _system_maps() -> tuple[npt.NDArray[Any], ...]:
    """Constant maps from weighted moments of the camera points to the Gauss-Newton matrix
    J^T J, the second-order term S of the Hessian J^T J + S and the gradient J^T r.

    The steps are a rotation ``o`` (R <- C(o) R, C the Cayley transform, equal to rodrigues(o)
    to second order), a relative change ``d`` of the inverse depth (w <- w (1 + d)) and changes
    of a and b, in the order (ox, oy, oz, d, a, b). With m~ = (w R p, 1), the scaled camera
    point q = w R p + (a, b, 1) moves by A_k m~ (constant (6, 4) matrices A_k) with second
    derivatives D_k m~. Per point, with r' = r / f (f^2 divides all), J^T J sums A_k M A_l^T
    over the moments M of 1 / qz^2 times 1, u, v and u^2 + v^2; S the same over those of
    1 / qz^2 times r'_x, r'_y and u r'_x + v r'_y, and D_k over the sums of e = r' / qz: e_x,
    e_y and -(u e_x + v e_y), which J^T r sums through A_k.

    Returns the maps to J^T J (21, 40) and S (21, 30) from the moments' upper triangles, to S
    and J^T r (27, 12) from the sums (matrices as upper triangles, row by row); the moments
    read among (weight, row, column); the (6, 7) system [H | g] as indices into H's upper
    triangle followed by g; and the places of H's diagonal in that triangle.
    """
    first = np.zeros((3, 6, 4))  # A_k
    first[0, 1, 2], first[0, 2, 1], first[0, 3, 0], first[0, 4, 3] = 1.0, -1.0, 1.0, 1.0
    first[1, 0, 2], first[1, 2, 0], first[1, 3, 1], first[1, 5, 3] = -1.0, 1.0, 1.0, 1.0
    first[2, 0, 1], first[2, 1, 0], first[2, 3, 2] = 1.0, -1.0, 1.0
    second = np.zeros((3, 6, 6, 4))  # D_k: (e_i m_j + e_j m_i) / 2 - [i = j] m; e_i x m
    for k in range(3):
        for i in range(3):
            second[k, i, k, i] += 0.5
            second[k, k, i, i] += 0.5
            second[k, i, i, k] -= 1.0
    for k, i, j in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):  # (e_i x m)_k = m_j, (e_j x m)_k = -m_i
        second[k, i, 3, j] = second[k, 3, i, j] = 1.0
        second[k, j, 3, i] = second[k, 3, j, i] = -1.0
    products = np.zeros((6, 6, 7, 4, 4))  # (row, column, weight, m~ row, m~ column)
    for sign, left, right, weight in ((1.0, 0, 0, 0), (1.0, 1, 1, 0), (1.0, 2, 2, 3),
                                      (-1.0, 0, 2, 1), (-1.0, 2, 0, 1), (-1.0, 1, 2, 2),
                                      (-1.0, 2, 1, 2), (-1.0, 0, 2, 4), (-1.0, 2, 0, 4),
                                      (-1.0, 1, 2, 5), (-1.0, 2, 1, 5), (2.0, 2, 2, 6)):
        products[:, :, weight] += sign * np.einsum("pi,qj->pqij", first[left], first[right])
    # A symmetric moment matrix's upper triangle stands for both its triangles.
    pairs, upper = np.triu_indices(4), np.triu_indices(6)
    folded = (products + np.triu(products.swapaxes(3, 4), 1))[..., pairs[0], pairs[1]][upper]
    signs = np.array([1.0, 1.0, -1.0])
    from_sums = np.concatenate([
        np.einsum("kpqi,k->pqki", second, signs)[upper].reshape(21, 12),
        np.einsum("kpi,k->pki", first, signs).reshape(6, 12)])
    system = np.empty((6, 7), dtype=np.intp)
    system[upper] = system[upper[1], upper[0]] = np.arange(21)
    system[:, 6] = 21 + np.arange(6)
    return (folded[:, :4].reshape(21, 40), folded[:, 4:].reshape(21, 30), from_sums,
            (np.arange(7)[:, None] * 16 + pairs[0] * 4 + pairs[1]).ravel(), system.ravel(),
            np.flatnonzero(upper[0] == upper[1]))


# The matrices only steer the steps: they are summed in float32, at half the memory traffic.
_HESSIAN_MAP, _CURVATURE_MAP, _SUMS_MAP, _MOMENTS_READ, _SYSTEM, _DIAGONAL = _system_maps()
_MODEL_OUTER_32, _HESSIAN_MAP_32, _CURVATURE_MAP_32 = (
    constant.astype(np.float32) for constant in (_MODEL_OUTER, _HESSIAN_MAP, _CURVATURE_MAP))


def _product(matrix: npt.NDArray[Any], columns: npt.NDArray[Any],
             out: npt.NDArray[Any] | None = None) -> npt.NDArray[Any]:
    """``matrix @ columns`` for a constant (M, K) matrix and (..., K, N) columns, one per face,
    in blocks of faces small enough for OpenBLAS to keep each on one thread
    (:data:`_BLAS_ONE_THREAD`)."""
    count = columns.shape[-1]
    step = max(1, _BLAS_ONE_THREAD // (matrix.shape[0] * matrix.shape[1]))
    if count <= step:
        return np.matmul(matrix, columns, out=out)
    if out is None:
        out = np.empty((*columns.shape[:-2], matrix.shape[0], count), dtype=columns.dtype)
    for start in range(0, count, step):
        np.matmul(matrix, columns[..., start:start + step], out=out[..., start:start + step])
    return out


def _columns(keep: npt.NDArray[np.bool_], *arrays: npt.NDArray[Any]) -> list[npt.NDArray[Any]]:
    """The faces ``keep`` (the last axis) of each array."""
    return [array[..., keep] for array in arrays]


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
    vectors = as_vectors(rotation, "rotation")
    shift = as_vectors(translation, "translation")
    if len(shift) != len(vectors):
        raise ValueError(f"expected as many translations as rotations ({len(vectors)}), "
                         f"got {len(shift)}")
    model = np.asarray(points, dtype=np.float64)
    if model.shape[-1] != 3 or model.ndim not in (2, 3):
        raise ValueError(f"expected points of shape (P, 3) or (N, P, 3), got {model.shape}")
    camera = np.matmul(model, rotation_matrices(vectors.T).transpose(2, 1, 0)) + shift[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        out: npt.NDArray[np.float64] = FOCAL * camera[..., :2] / camera[..., 2:3] + PRINCIPAL_POINT
    return out


# The solver: its arrays hold the faces on their last axis, so that every operation runs along
# contiguous rows of faces.


def _solve_positive_definite(system: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Solve symmetric positive definite systems given as (K, K + M, N) augmented matrices
    [A | B] in place, by Gaussian elimination without pivoting (stable for them; faster than
    ``np.linalg.solve``'s call per matrix): (K, M, N) solutions, a view into ``system``, whose
    diagonal is left holding the pivots, all positive if and only if A is positive definite.
    A singular system gives inf or NaN, never an exception."""
    size = len(system)
    for pivot in range(size - 1):
        factor = system[pivot + 1:, pivot] / system[pivot, pivot]
        system[pivot + 1:, pivot + 1:] -= factor[:, None] * system[pivot, pivot + 1:]
    out = system[:, size:]
    for row in range(size - 1, -1, -1):
        out[row] /= system[row, row]
        out[:row] -= system[:row, row, None] * out[row]
    return out


def _initial_pose(image: npt.NDArray[np.float64]
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """A linear (DLT) estimate of each face's pose from (2, 26, N) image points (x row, y row)
    in camera normalized coordinates ((x - c) / f): rotations (3, 3, N), translations (3, N).

    The projection matrix P (3 x 4) satisfies ``P1 . X = x P3 . X`` and ``P2 . X = y P3 . X``
    for every model point X. As in OpenCV's initialisation, P is the unit-norm total
    least-squares solution, in the model's own coordinates; here restricted to P1 = A_x P3 and
    P2 = A_y P3, the least-squares rows for a given P3 (exact for exact points), which leaves
    the smallest eigenvector of a 4 x 4 generalized eigenproblem per face, found by inverse
    iteration. The rotation is the nearest to P's rotation part, its sign making the
    determinant positive (for a real face, the head at negative depth). Which of two
    mirror-depth poses a noisy face starts from depends on these choices, so they follow
    OpenCV's. The translation then best places the rotated head, ``tx - x tz = x (R p)z -
    (R p)x`` and the same for y in least squares (P's own last column fits only as well as its
    3 x 3 part is a rotation).
    """
    count = image.shape[2]
    # Per coordinate c = x, y: B_c = sum c X X^T, A_c = G^-1 B_c (G = sum X X^T) and G^-2 B_c.
    moments = _product(_LINEAR_ESTIMATE, image).reshape(2, 3, 4, 4, count)
    block, rows = moments[:, 0], moments[:, 1]
    squares = _product(_MODEL_OUTER, np.einsum("kin,kin->in", image, image))
    # |L p|^2 = P3^T cost P3 and |p|^2 = P3^T norm P3 when P1 = A_x P3, P2 = A_y P3.
    cost = squares.reshape(4, 4, count) - np.einsum("cijn,cjkn->ikn", block, rows)
    norm = np.einsum("cijn,cjkn->ikn", block, moments[:, 2])
    norm.reshape(16, count)[::5] += 1.0
    # Inverse iteration: powers of (cost + shift norm)^-1 norm converge to the smallest
    # eigenvector; the shift keeps an exact (noise-free) fit's singular cost invertible.
    shift = _EIGEN_SHIFT * np.einsum("iin->n", cost) / np.einsum("iin->n", norm)
    power = _solve_positive_definite(np.concatenate([cost + shift * norm, norm], axis=1))
    for _ in range(_EIGEN_SQUARINGS):
        power /= np.einsum("iin->n", power)  # its eigenvalues are positive
        power = np.einsum("ijn,jkn->ikn", power, power)
    # Every column of the power is now along the eigenvector: take the longest.
    longest = np.argmax(np.einsum("ijn,ijn->jn", power, power), axis=0)
    third = power[:, longest, np.arange(count)]  # P3: (4, N)
    projection = np.concatenate([np.einsum("cjkn,kn->cjn", rows[:, :3], third), third[None, :3]])
    rotation = nearest_rotations(projection)  # of P's or -P's rotation part: det > 0
    rotated = _product(_MODEL[:3].T, rotation)  # R p: (3, 26, N)
    right = image * rotated[2] - rotated[:2]
    # The normal equations [[P, 0, -Sx], [0, P, -Sy], [-Sx, -Sy, Q]] t = (Rx, Ry, Rz), with P
    # points, solved for tz by eliminating tx and ty.
    sums, right_sums = image.sum(axis=1), right.sum(axis=1)  # (Sx, Sy), (Rx, Ry)
    depth = ((np.einsum("kn,kn->n", sums, right_sums) / _CORE_COUNT
              - np.einsum("kin,kin->n", image, right))
             / (np.einsum("kin,kin->n", image, image)
                - np.einsum("kn,kn->n", sums, sums) / _CORE_COUNT))
    return rotation, np.concatenate([(right_sums + sums * depth) / _CORE_COUNT, depth[None]])


def _normal_equations(rotation: npt.NDArray[np.float64], shift: npt.NDArray[np.float64],
                      image: npt.NDArray[np.float64]
                      ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """The squared reprojection error (N,) of each face and (48, N) the upper triangles of its
    J^T J (21) and S (21) and its J^T r (6) (:func:`_system_maps`), all divided by f^2, from
    rotations (3, 3, N), ``shift = (a, b, w) = (tx, ty, 1) / tz`` (3, N) and observed points
    in camera normalized coordinates (2, 26, N). The scaled camera points
    q = w R p + (a, b, 1) = (R p + t) / tz project as the camera points do, and their
    derivatives are linear in m~ = T X (T = diag(w R, 1)), so all three are constant maps of
    the camera moments T (sum c X X^T) T^T and T (sum c X): model-space sums, rotated.
    """
    count = shift.shape[1]
    lift = np.empty((3, 4, count))  # (w R | (a, b, 1))
    np.multiply(rotation, shift[2], out=lift[:, :3])
    lift[:2, 3] = shift[:2]
    lift[2, 3] = 1.0
    scaled = _product(_MODEL.T, lift)  # q: (3, 26, N)
    inverse_depth = 1.0 / scaled[2]
    ratios = scaled[:2] * inverse_depth  # (u, v)
    residual = ratios - image  # r' = r / f
    # Per point 1 / qz^2 times 1, u, v, u^2 + v^2, r'_x, r'_y and u r'_x + v r'_y ...
    weights = np.empty((7, _CORE_COUNT, count), dtype=np.float32)
    np.multiply(inverse_depth, inverse_depth, out=weights[0])
    np.multiply(ratios, weights[0], out=weights[1:3])
    np.einsum("kin,kin->in", weights[1:3], ratios, out=weights[3], casting="same_kind")
    # ... and, in float64 for the gradient, e = r' / qz: e_x, e_y and u e_x + v e_y.
    errors = np.empty((3, _CORE_COUNT, count))
    np.multiply(residual, inverse_depth, out=errors[:2])
    np.einsum("kin,kin->in", errors[:2], ratios, out=errors[2])
    np.multiply(errors, inverse_depth, out=weights[4:])
    model = _product(_MODEL_OUTER_32, weights).reshape(7, 4, 4, count)
    model_sums = _product(_MODEL, errors)  # (3, 4, N)
    # To camera space: T M T^T (upper triangles only) and T v.
    turn = lift[:, :3].astype(np.float32)
    camera = np.empty((7, 4, 4, count), dtype=np.float32)  # (weight, row, column)
    rotated = np.einsum("ijn,cjkn->cikn", turn, model[:, :3])
    camera[:, :3, :3] = np.einsum("cikn,lkn->ciln", rotated[:, :, :3], turn)
    camera[:, :3, 3] = rotated[:, :, 3]
    camera[:, 3, 3] = model[:, 3, 3]
    sums = np.concatenate([np.einsum("ikn,ekn->ein", lift[:, :3], model_sums[:, :3]),
                           model_sums[:, 3:]], axis=1)  # (weight, row)
    read = camera.reshape(112, count)[_MOMENTS_READ]
    out = np.empty((48, count))
    out[:21] = _product(_HESSIAN_MAP_32, read[:40])
    _product(_SUMS_MAP, sums.reshape(12, count), out[21:])
    out[21:42] += _product(_CURVATURE_MAP_32, read[40:])
    return np.einsum("kin,kin->n", residual, residual), out


def _step(state: npt.NDArray[np.float64], damping: npt.NDArray[np.float64],
          newton: npt.NDArray[np.bool_]
          ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """Levenberg-Marquardt steps d (6, N) from the (48, N) state of :func:`_normal_equations`:
    ``(H + D) d = -g``, H the Gauss-Newton matrix or, where ``newton``, the Hessian, and D the
    Gauss-Newton matrix's diagonal times ``damping``. Also the decrease of the squared error
    the quadratic model promises, -g.d - d.H.d / 2, and whether H + D is positive definite."""
    packed = np.empty((27, state.shape[1]))  # H's upper triangle, then g
    np.multiply(state[21:42], newton, out=packed[:21])
    packed[:21] += state[:21]
    packed[21:] = state[42:]
    diagonal = state[_DIAGONAL]
    added = damping * diagonal + 1e-12 * diagonal.max(axis=0)
    packed[_DIAGONAL] += added
    system = packed[_SYSTEM].reshape(6, 7, -1)
    step = -_solve_positive_definite(system)[:, 0]
    definite = system.reshape(42, -1)[::8].min(axis=0) > 0.0  # by the pivots
    return step, 0.5 * np.einsum("in,in->n", added * step - state[42:], step), definite


def _refine(rotation: npt.NDArray[np.float64], shift: npt.NDArray[np.float64],
            image: npt.NDArray[np.float64]) -> None:
    """Levenberg-Marquardt on the reprojection error of every face at once, in place, from
    rotations (3, 3, N), ``shift = (tx, ty, 1) / tz`` (3, N) and observed points in camera
    normalized coordinates (2, 26, N).

    A face starts with Gauss-Newton steps, as OpenCV's, which settle which minimum it goes to;
    near it, Newton's steps converge quadratically: 4 steps on real faces instead of up to 10,
    the last unchecked. A step whose damped matrix is not positive definite is refused. The
    translation enters as its inverse depth, in which the projection is nearly linear. A face
    that converges is written back and dropped from the working arrays.
    """
    index = np.arange(shift.shape[1])  # the face each working column holds
    rot, inverse, target = rotation, shift, image
    cost, state = _normal_equations(rot, inverse, target)
    damping = np.full(len(index), _DAMPING_START)
    newton = np.zeros(len(index), dtype=bool)  # takes Newton's steps
    trusted = np.zeros(len(index), dtype=bool)  # its last step gave what it promised
    for _ in range(_MAX_ITERATIONS):
        step, promised, definite = _step(state, damping, newton)
        new_rot = np.einsum("ijn,jkn->ikn", cayley_rotations(step[:3]), rot)
        moved = step[[4, 5, 3]]  # in (a, b, w)
        moved[2] *= inverse[2]
        new_inverse = inverse + moved
        last = trusted & definite & (promised <= _NEWTON_TOLERANCE * cost)
        if last.any():
            rotation[:, :, index[last]] = new_rot[..., last]
            shift[:, index[last]] = new_inverse[:, last]
            if last.all():
                return
            (index, rot, inverse, target, cost, state, damping, newton, step, promised, definite,
             new_rot, moved, new_inverse) = _columns(
                ~last, index, rot, inverse, target, cost, state, damping, newton, step, promised,
                definite, new_rot, moved, new_inverse)
        new_cost, new_state = _normal_equations(new_rot, new_inverse, target)
        better = (new_cost < cost) & definite
        decrease = cost - new_cost
        moves = np.stack([step[:3], moved, new_inverse])
        squares = np.einsum("kin,kin->kn", moves, moves)  # squared lengths
        small_step = ((squares[0] < _STEP_TOLERANCE ** 2)
                      & (squares[1] < _STEP_TOLERANCE ** 2 * squares[2]))
        flat = definite & ((promised <= _COST_TOLERANCE * cost)
                           | (better & ((decrease <= _COST_TOLERANCE * cost)
                                        | (promised <= _ACCEPT_TOLERANCE * cost))))
        trusted = newton & better & (decrease >= 0.5 * promised)
        newton |= better & (promised < _NEWTON_SWITCH * cost)
        if better.all():
            rot, inverse, cost, state = new_rot, new_inverse, new_cost, new_state
        else:
            rot, inverse, cost, state = (np.where(better, new, old) for new, old in (
                (new_rot, rot), (new_inverse, inverse), (new_cost, cost), (new_state, state)))
        damping *= np.where(better, 0.1, 10.0)
        np.maximum(damping, _DAMPING_MIN, out=damping)
        done = small_step | flat | (damping > _DAMPING_MAX)
        if done.any():
            rotation[:, :, index[done]], shift[:, index[done]] = rot[..., done], inverse[:, done]
            if done.all():
                return
            index, rot, inverse, target, cost, state, damping, newton, trusted = _columns(
                ~done, index, rot, inverse, target, cost, state, damping, newton, trusted)
    rotation[:, :, index], shift[:, index] = rot, inverse


def solve_pose(landmarks_normalized: npt.NDArray[np.floating]
               ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The camera pose of the 3D mean head for N faces at once: the same answer as
    ``cv2.solvePnP(MEAN_FACE_3D_26, points, CAMERA_MATRIX, None, flags=SOLVEPNP_ITERATIVE)`` per
    face, without a Python loop over faces.

    The 26 landmarks :data:`~faceinfer.geometry.constants.POSE_CORE_LANDMARKS_68` are matched to
    :data:`~faceinfer.geometry.constants.MEAN_FACE_3D_26`. A linear (DLT) estimate starts a
    Levenberg-Marquardt minimisation of the squared reprojection error, Gauss-Newton steps as
    OpenCV's and then Newton's, run on all faces together until each converges (4 steps for a
    real face). OpenCV stops earlier: where a face fits the mean head loosely (as real faces
    do) its answer can be about 2e-4 (rotation matrix entries) from the minimum, which this
    function reaches within about 1e-6, as solvePnP re-run from its own answer does.

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
        a model point ``p`` lies at ``rodrigues(rotation) @ p + translation`` (translation z
        about -58 for a real face). A face with a NaN or infinite core landmark (the others are
        not used), or whose core landmarks all coincide, gets NaN in both without affecting the
        others; other degenerate layouts get an arbitrary pose, as they do from OpenCV.

    Raises
    ------
    ValueError
        If the landmarks are not (N, 68, 2).
    """
    points = np.asarray(landmarks_normalized, dtype=np.float64)
    if points.ndim != 3 or points.shape[1:] != (68, 2):
        raise ValueError(f"expected landmarks of shape (N, 68, 2), got {points.shape}")
    rotation_out = np.full((len(points), 3, 1), np.nan, dtype=np.float32)
    translation_out = np.full((len(points), 3, 1), np.nan, dtype=np.float32)
    core = points[:, POSE_CORE_LANDMARKS_68]
    valid = np.flatnonzero(np.isfinite(core).all(axis=(1, 2)))
    for start in range(0, len(valid), _CHUNK):  # chunks, never faces
        chunk = valid[start:start + _CHUNK]
        image = (core[chunk].transpose(2, 1, 0) - PRINCIPAL_POINT) / FOCAL  # (2, 26, N)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rotation, translation = _initial_pose(image)
            shift = np.concatenate([translation[:2], np.ones((1, len(chunk)))]) / translation[2]
            # Faces whose linear estimate failed (coincident points) stay NaN.
            started = np.isfinite(rotation).all(axis=(0, 1)) & np.isfinite(shift).all(axis=0)
            rotation, shift, image = _columns(started, rotation, shift, image)
            _refine(rotation, shift, image)
            translation_out[chunk[started], :2, 0] = (shift[:2] / shift[2]).T
            translation_out[chunk[started], 2, 0] = 1.0 / shift[2]
        rotation_out[chunk[started], :, 0] = rotation_vectors(rotation.transpose(2, 0, 1))
    return rotation_out, translation_out


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
    count = len(as_vectors(rotation, "rotation"))
    if kind == Centering.LEGACY:
        if len(as_vectors(translation, "translation")) != count:
            raise ValueError(f"expected as many translations as rotations ({count}), got "
                             f"{len(np.asarray(translation))}")
        return np.zeros((count, 2), dtype=np.float32)
    point = CENTERING_POINTS_3D[kind][None]
    projected = project_points(point, rotation, translation)[:, 0]
    return (projected - PRINCIPAL_POINT).astype(np.float32)
