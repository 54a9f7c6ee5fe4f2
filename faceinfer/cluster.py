"""Hierarchical clustering of identity embeddings into a sorted order with optional bins.

:class:`Cluster` follows the reference's ``lib.infer.identity.Cluster``: it links the (N, D)
predictions with fastcluster, then reads the leaves of the dendrogram in traversal order
(:func:`seriate`), so that similar faces end up next to each other.

Conventions
-----------
* Distances are Euclidean between rows of the predictions, in float64 (the full path's are
  within ~1e-10 relative of the direct sum of squared differences; see
  :func:`_condensed_distances`).
* A linkage is fastcluster's (and scipy's) (N - 1, 4) array: row ``i`` merges the nodes in
  columns 0 and 1 into node ``N + i`` at the merge distance in column 2; column 3 counts its
  leaves. Leaves are the nodes ``0 .. N - 1`` and the root is node ``2N - 2``.
* The sorted order lists the leaves depth first from the root, left child (column 0) before right
  child (column 1).
* Bins (with a threshold): ``threshold_abs = threshold x`` the largest merge distance. A node
  *splits* when its merge distance is ``>= threshold_abs`` and above zero (rows at distance zero
  are identical and always share a bin). From the root down, every child of a splitting node
  that does not split itself, and every leaf reached only through splitting nodes, starts a new
  bin that its whole subtree inherits. The bins are therefore the largest subtrees that merge
  below ``threshold_abs``: each is one contiguous run of the sorted order, and bin ids count up
  from 0 along it. For trees whose merge distances grow towards the root (single and ward
  linkage always; centroid and median unless they have inversions) this is the usual cut of the
  dendrogram at ``threshold_abs``. Where an inversion puts a splitting node under a node that does
  not split, the node does not split (the reference would split it, which can break a bin into
  non-contiguous runs). A threshold above 1 gives a single bin, 0 a bin per distinct row.
* Without a threshold every face is in bin 0.

Memory
------
Full linkage is estimated (as in the reference) at ``N^2 x 24 / 1.8`` bytes and vector linkage at
``N x D x 24`` bytes. Full linkage runs when its estimate fits in the available RAM, else
fastcluster's memory-saving ``linkage_vector`` runs with a warning, else
:class:`~faceinfer.errors.FaceInferError` is raised before any large allocation. The full path
computes the condensed distance matrix itself, a bounded chunk at a time, so it needs no scipy.
"""
from __future__ import annotations

import logging
import math
from typing import Literal, get_args

import fastcluster
import numpy as np
import numpy.typing as npt
import psutil

from faceinfer.errors import ConfigError, FaceInferError

__all__ = ["METHODS", "Cluster", "ClusterMethod", "full_linkage_bytes", "seriate",
           "vector_linkage_bytes"]

logger = logging.getLogger(__name__)

ClusterMethod = Literal["single", "centroid", "median", "ward"]
"""The linkage methods that fastcluster can run on vectors in both full and memory-saving form."""

METHODS: tuple[ClusterMethod, ...] = get_args(ClusterMethod)
"""Every accepted linkage method, in the reference's order."""

_CHUNK_BYTES = 32 * 1024 ** 2
"""Size of one block of squared distances computed at once (float64)."""

_REFINE = 1e-3
"""Pairs whose squared distance is below this fraction of the sum of their squared (centred) norms
are recomputed from differences: the Gram form's error there could reach ~1e-10 relative."""

_REFINE_PAIRS = 4096
"""Pairs recomputed from differences at once."""


def full_linkage_bytes(num: int) -> float:
    """The reference's estimate of the memory that full linkage of ``num`` observations needs."""
    return num * num * 24 / 1.8


def vector_linkage_bytes(num: int, dims: int) -> float:
    """The reference's estimate of the memory that vector linkage of ``num`` observations of
    ``dims`` dimensions needs."""
    return num * dims * 24


def _available_memory() -> int:
    """Bytes of RAM that can be allocated without swapping."""
    return int(psutil.virtual_memory().available)


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 1024 ** 3:.2f} GiB"


def _check_method(method: str) -> ClusterMethod:
    for known in METHODS:
        if method == known:
            return known
    raise ConfigError(f"expected a clustering method in {', '.join(METHODS)}, got {method!r}")


def _check_threshold(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | np.floating):
        raise ConfigError(f"expected a binning threshold as a number or None, got {threshold!r}")
    value = float(threshold)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"expected a finite binning threshold >= 0 (a fraction of the largest "
                          f"merge distance), got {threshold!r}")
    return value


def _check_predictions(predictions: npt.ArrayLike) -> npt.NDArray[np.floating]:
    """The predictions as a 2-D real array, or ValueError naming what is wrong."""
    try:
        array = np.asarray(predictions)
    except ValueError as err:  # ragged rows: numpy refuses an inhomogeneous shape
        raise ValueError(f"expected predictions of shape (N, D) with the same D in every row, "
                         f"got rows of different lengths ({err})") from err
    if array.dtype.kind not in "biuf":
        raise ValueError(f"expected real-valued predictions of shape (N, D), got dtype "
                         f"{array.dtype} (rows of different lengths make an object array)")
    if array.ndim != 2:
        raise ValueError(f"expected predictions of shape (N, D), got {array.shape}")
    if array.shape[0] > 0 and array.shape[1] == 0:
        raise ValueError(f"expected predictions with at least one dimension, got {array.shape}")
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"expected finite predictions, got NaN or infinite values in "
                         f"{bad.size} row(s), the first at row {int(bad[0])}")
    return array


def _condensed_distances(points: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """The condensed Euclidean distance matrix of the rows of ``points``: ``d(0,1), d(0,2), ...,
    d(0,N-1), d(1,2), ..., d(N-2,N-1)`` as N(N-1)/2 float64 values.

    Blocks of rows are compared through the Gram matrix of the centred points
    (``|a|^2 + |b|^2 - 2ab``, one matrix product per block, with scratch memory bounded by
    ``_CHUNK_BYTES``). That form loses relative precision for near-duplicate rows, so every pair
    closer than ``_REFINE`` of its squared norms is recomputed from the differences of the
    original rows.
    """
    num = points.shape[0]
    exact = np.asarray(points, dtype=np.float64)
    centred = exact - exact.mean(axis=0)
    norms = np.einsum("ij,ij->i", centred, centred)
    out = np.empty(num * (num - 1) // 2, dtype=np.float64)
    block = max(1, _CHUNK_BYTES // (8 * num))
    start = 0
    for first in range(0, num - 1, block):
        last = min(first + block, num - 1)
        sq_dist = centred[first:last] @ centred[first:].T
        sq_dist *= -2.0
        sq_dist += norms[first:last, None]
        sq_dist += norms[None, first:]
        # Entry (r, c) compares rows first + r and first + c; only c > r is kept.
        upper = np.arange(sq_dist.shape[1])[None, :] > np.arange(last - first)[:, None]
        rows, cols = np.nonzero(upper & (sq_dist < _REFINE * (norms[first:last, None]
                                                               + norms[None, first:])))
        for lo in range(0, rows.size, _REFINE_PAIRS):
            pick_r, pick_c = rows[lo:lo + _REFINE_PAIRS], cols[lo:lo + _REFINE_PAIRS]
            diff = exact[first + pick_r] - exact[first + pick_c]
            sq_dist[pick_r, pick_c] = np.einsum("ij,ij->i", diff, diff)
        for offset in range(last - first):
            count = num - first - offset - 1
            out[start:start + count] = sq_dist[offset, offset + 1:]
            start += count
    np.maximum(out, 0.0, out=out)
    np.sqrt(out, out=out)
    return out


def _use_vector_linkage(num: int, dims: int) -> bool:
    """False when full linkage fits in the available RAM, True when only vector linkage does
    (with a warning). Raise FaceInferError when neither does."""
    available = _available_memory()
    full = full_linkage_bytes(num)
    if full <= available:
        logger.debug("Full linkage of %s predictions: needs about %s, %s available",
                     num, _gib(full), _gib(available))
        return False
    vector = vector_linkage_bytes(num, dims)
    if vector <= available:
        logger.warning("Not enough RAM for full hierarchical clustering of %s faces (needs about "
                       "%s, %s available): falling back to vector clustering, which needs "
                       "about %s but may take much longer", num, _gib(full), _gib(available),
                       _gib(vector))
        return True
    raise FaceInferError(
        f"expected enough free RAM to cluster {num} faces of {dims} dimensions (about "
        f"{_gib(vector)} for memory-saving vector linkage, {_gib(full)} for full linkage), got "
        f"{_gib(available)} available. Close other programs or sort fewer faces.")


def _check_linkage(linkage: npt.ArrayLike) -> tuple[list[int], list[int], npt.NDArray[np.float64]]:
    """The left children, right children and merge distances of a valid linkage array."""
    tree = np.asarray(linkage, dtype=np.float64)
    if tree.ndim != 2 or tree.shape[1] != 4:
        raise ValueError(f"expected a linkage of shape (N - 1, 4), got {tree.shape}")
    merges = tree.shape[0]
    num = merges + 1
    children = tree[:, :2]
    if not np.isfinite(tree[:, :3]).all() or not np.array_equal(children, np.round(children)):
        raise ValueError("expected a linkage with integer node ids and finite merge distances")
    nodes = children.astype(np.intp)
    limit = num + np.arange(merges)[:, None]  # row i may only merge nodes created before it
    if (nodes < 0).any() or (nodes >= limit).any() or np.unique(nodes).size != 2 * merges:
        raise ValueError(f"expected a linkage in which row i merges two distinct nodes below "
                         f"{num} + i, each node merged once, got an invalid tree of {num} leaves")
    return nodes[:, 0].tolist(), nodes[:, 1].tolist(), tree[:, 2]


def seriate(linkage: npt.ArrayLike, threshold: float | None = None) -> list[tuple[int, int]]:
    """The leaves of a linkage in dendrogram order, each with its bin.

    Iterative, so trees of any depth are fine. See the module docstring for the exact order and
    binning rules.

    Parameters
    ----------
    linkage:
        An (N - 1, 4) linkage of N >= 1 leaves, as fastcluster returns it.
    threshold:
        Bins split at merge distances ``>= threshold x`` the largest one; None puts every leaf
        in bin 0.

    Returns
    -------
    list[tuple[int, int]]
        ``(leaf index, bin)`` for all N leaves in sorted order. Bins count up from 0 along it.
    """
    threshold = _check_threshold(threshold)
    left, right, distances = _check_linkage(linkage)
    num = len(left) + 1
    if threshold is None or num == 1:
        splits = [False] * (num - 1)
    else:
        limit = threshold * float(distances.max())
        splits = ((distances >= limit) & (distances > 0)).tolist()
    result: list[tuple[int, int]] = []
    next_bin = 0
    stack = [(2 * num - 2, -1)]  # (node, bin), bin -1 while above every bin
    while stack:
        node, bin_id = stack.pop()
        if bin_id < 0 and (node < num or not splits[node - num]):
            bin_id = next_bin
            next_bin += 1
        if node < num:
            result.append((node, bin_id))
        else:
            stack.append((right[node - num], bin_id))
            stack.append((left[node - num], bin_id))
    return result


class Cluster:
    """Cluster identity predictions (for example VGG-Face 2 embeddings) into a sorted order.

    The linkage is computed on construction; calling the object reads it out.

    Parameters
    ----------
    predictions:
        The (N, D) stacked identity predictions of N faces in D dimensions. The reference says
        these are overwritten to save memory; faceinfer only reads them (neither linkage path can
        reuse their memory), so they are left as given, and read-only arrays are accepted.
    method:
        The linkage method: single, centroid, median or ward (the sort tool uses ward).
    threshold:
        The fraction of the largest merge distance at which bins split, or None to disable
        binning (every face in bin 0). See the module docstring for the exact rule.

    Raises
    ------
    ConfigError
        For an unknown method or a negative or non-finite threshold.
    ValueError
        For predictions that are not a finite (N, D) real array.
    FaceInferError
        When not even vector linkage fits in the available RAM.
    """

    def __init__(self, predictions: npt.ArrayLike, method: ClusterMethod,
                 threshold: float | None = None) -> None:
        self._method = _check_method(method)
        self._threshold = _check_threshold(threshold)
        points = _check_predictions(predictions)
        self._num_predictions = int(points.shape[0])
        self._linkage = self._do_linkage(points)
        self._linkage.flags.writeable = False

    @property
    def linkage(self) -> npt.NDArray[np.float64]:
        """The (N - 1, 4) read-only linkage of the predictions ((0, 4) for N <= 1)."""
        return self._linkage

    def _do_linkage(self, points: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        num, dims = points.shape
        if num < 2:
            return np.zeros((0, 4), dtype=np.float64)
        if _use_vector_linkage(num, dims):
            retval = fastcluster.linkage_vector(points, method=self._method)
        else:
            retval = fastcluster.linkage(_condensed_distances(points), method=self._method,
                                         preserve_input=False)
        return np.asarray(retval, dtype=np.float64)

    def __call__(self) -> list[tuple[int, int]]:
        """The faces in the order implied by the dendrogram, as ``(index, bin)`` pairs.

        Returns
        -------
        list[tuple[int, int]]
            One ``(index into predictions, bin)`` per face, in sorted order; the bin is 0 for
            every face when no threshold was given. Empty for no predictions.
        """
        if self._num_predictions == 0:
            return []
        logger.debug("Sorting %s face distances by %s linkage", self._num_predictions,
                     self._method)
        return seriate(self._linkage, self._threshold)
