"""Cluster: linkage of identity predictions, dendrogram order, bins and the memory fallback."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import fastcluster
import numpy as np
import pytest

from faceinfer import cluster
from faceinfer.cluster import METHODS, Cluster, ClusterMethod, seriate
from faceinfer.errors import ConfigError, FaceInferError

GROUP_SIZES = (3, 5, 7, 9)
GROUP_DIMS = 4


def make_groups(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled rows of four tight groups around the corners of a simplex (side ~14, spread 0.1),
    and each row's group label."""
    rng = np.random.default_rng(seed)
    centres = np.eye(GROUP_DIMS) * 10.0
    points = np.concatenate([centre + rng.normal(0.0, 0.1, (size, GROUP_DIMS))
                             for centre, size in zip(centres, GROUP_SIZES, strict=True)])
    labels = np.repeat(np.arange(len(GROUP_SIZES)), GROUP_SIZES)
    order = rng.permutation(len(points))
    return points[order], labels[order]


def runs(values: list[int]) -> list[int]:
    """The values of each run of equal neighbours: [1, 1, 0, 0, 1] -> [1, 0, 1]."""
    return [value for i, value in enumerate(values) if i == 0 or values[i - 1] != value]


def force_path(monkeypatch: pytest.MonkeyPatch, path: str, num: int, dims: int) -> None:
    """Make the available RAM fit exactly the linkage ``path`` (full or vector) needs."""
    need = (cluster.full_linkage_bytes(num) if path == "full"
            else cluster.vector_linkage_bytes(num, dims))
    if path == "vector":
        assert need < cluster.full_linkage_bytes(num), "test data too small to fall back"
    monkeypatch.setattr(cluster, "_available_memory", lambda: int(need))


def spy(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Count the calls of ``fastcluster.<name>`` (still running the real function)."""
    calls: list[int] = []
    real: Callable[..., Any] = getattr(fastcluster, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fastcluster, name, counted)
    return calls


# ---------------------------------------------------------------- a reference for the rules


def reference_seriation(linkage: np.ndarray, threshold: float | None) -> list[tuple[int, int]]:
    """The documented rules, recursively: leaves left (column 0) first; bins are the largest
    subtrees whose root does not split (merge distance below threshold x max, or zero)."""
    num = len(linkage) + 1
    limit = None if threshold is None else threshold * linkage[:, 2].max(initial=0.0)

    def children(node: int) -> tuple[int, int]:
        return int(linkage[node - num, 0]), int(linkage[node - num, 1])

    def leaves(node: int) -> list[int]:
        if node < num:
            return [node]
        left, right = children(node)
        return leaves(left) + leaves(right)

    def splits(node: int) -> bool:
        distance = linkage[node - num, 2] if node >= num else 0.0
        return node >= num and limit is not None and distance >= limit and distance > 0

    def bins(node: int) -> list[list[int]]:
        if not splits(node):
            return [leaves(node)]
        left, right = children(node)
        return bins(left) + bins(right)

    return [(leaf, index) for index, group in enumerate(bins(2 * num - 2)) for leaf in group]


def random_linkage(rng: np.random.Generator, num: int) -> np.ndarray:
    """A random valid tree of ``num`` leaves: random pairs, either column order, and merge
    distances from a small set (ties, zeros and inversions included)."""
    active = list(range(num))
    sizes = dict.fromkeys(active, 1)
    rows = []
    for step in range(num - 1):
        first, second = (active.pop(int(rng.integers(len(active)))) for _ in range(2))
        distance = float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]))
        sizes[num + step] = sizes[first] + sizes[second]
        rows.append([first, second, distance, sizes[num + step]])
        active.append(num + step)
    return np.array(rows, dtype=np.float64).reshape(num - 1, 4)


@pytest.fixture(params=[(method, path) for path in ("full", "vector") for method in METHODS],
                ids="-".join)
def grouped(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
            ) -> tuple[np.ndarray, np.ndarray, ClusterMethod]:
    """The groups of :func:`make_groups` and a method, with the RAM to take each linkage path."""
    method, path = request.param
    points, labels = make_groups()
    force_path(monkeypatch, path, *points.shape)
    return points, labels, method


# ---------------------------------------------------------------- order and bins


def test_well_separated_groups_get_a_bin_each(
        grouped: tuple[np.ndarray, np.ndarray, ClusterMethod]) -> None:
    points, labels, method = grouped
    result = Cluster(points, method, threshold=0.3)()
    indices = [index for index, _ in result]
    bins = [bin_id for _, bin_id in result]
    assert sorted(indices) == list(range(len(points)))
    assert runs(bins) == [0, 1, 2, 3]  # one contiguous run per bin, numbered along the order
    group_bins = {(int(labels[index]), bin_id) for index, bin_id in result}
    assert len(group_bins) == 4  # each group in one bin, each bin one group


@pytest.mark.parametrize("method", METHODS)
def test_sorted_order_keeps_groups_contiguous_and_without_threshold_all_bin_zero(
        method: str) -> None:
    points, labels = make_groups(seed=1)
    result = Cluster(points, method)()  # type: ignore[arg-type]
    assert sorted(index for index, _ in result) == list(range(len(points)))
    assert {bin_id for _, bin_id in result} == {0}
    group_runs = runs([int(labels[index]) for index, _ in result])
    assert sorted(group_runs) == [0, 1, 2, 3]
    assert all(type(index) is int and type(bin_id) is int for index, bin_id in result)


def test_seriation_matches_recursive_reference_on_random_trees() -> None:
    rng = np.random.default_rng(7)
    for _ in range(60):
        linkage = random_linkage(rng, int(rng.integers(1, 30)))
        for threshold in (None, 0.0, 0.25, 0.5, 0.7, 1.0, 1.5):
            assert seriate(linkage, threshold) == reference_seriation(linkage, threshold)


@pytest.mark.parametrize("method", METHODS)
def test_cluster_matches_recursive_reference_on_random_data(method: str) -> None:
    rng = np.random.default_rng(3)
    for num in (2, 3, 17, 40):
        points = rng.normal(size=(num, 5))
        model = Cluster(points, method, threshold=0.4)  # type: ignore[arg-type]
        assert model() == reference_seriation(np.asarray(model.linkage), 0.4)
        expected = fastcluster.linkage_vector(points, method=method)
        np.testing.assert_allclose(model.linkage, expected, rtol=1e-12, atol=1e-12)


# Leaves 0..4; node 5 = (0, 3), 6 = (1, 4), 7 = (2, 5), root 8 = (6, 7). Order: 1 4 2 0 3.
HAND_BUILT = np.array([[0, 3, 0.1, 2], [1, 4, 0.2, 2], [2, 5, 0.5, 3], [6, 7, 1.0, 5]])
# Node 5 = (0, 1) at 0.9 sits under node 6 = (5, 2) at 0.3: an inversion. 7 = (3, 4), root 8.
INVERTED = np.array([[0, 1, 0.9, 2], [5, 2, 0.3, 3], [3, 4, 0.2, 2], [6, 7, 1.0, 5]])


@pytest.mark.parametrize(("linkage", "threshold", "expected"), [
    (HAND_BUILT, None, [(1, 0), (4, 0), (2, 0), (0, 0), (3, 0)]),
    (HAND_BUILT, 0.5, [(1, 0), (4, 0), (2, 1), (0, 2), (3, 2)]),   # 0.5 >= 0.5: node 7 splits
    (HAND_BUILT, 0.6, [(1, 0), (4, 0), (2, 1), (0, 1), (3, 1)]),
    (HAND_BUILT, 1.0, [(1, 0), (4, 0), (2, 1), (0, 1), (3, 1)]),   # the root always splits at 1
    (HAND_BUILT, 1.01, [(1, 0), (4, 0), (2, 0), (0, 0), (3, 0)]),  # above 1: one bin
    (HAND_BUILT, 0.0, [(1, 0), (4, 1), (2, 2), (0, 3), (3, 4)]),   # 0: a bin per leaf
    (HAND_BUILT * [1, 1, 2, 1], 0.5, [(1, 0), (4, 0), (2, 1), (0, 2), (3, 2)]),  # relative
    # The inverted node 5 is inside node 6's bin, which merges below the threshold.
    (INVERTED, 0.5, [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1)]),
    (INVERTED, 0.25, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 3)]),
    # Zero merge distances (identical rows) never split, even at threshold 0.
    (np.array([[0, 1, 0.0, 2], [2, 3, 1.0, 3]]), 0.0, [(2, 0), (0, 1), (1, 1)]),
    (np.array([[0, 1, 0.0, 2], [2, 3, 0.0, 3]]), 0.5, [(2, 0), (0, 0), (1, 0)]),
    (np.array([[1, 0, 0.5, 2]]), 0.5, [(1, 0), (0, 1)]),  # column 0 is visited first
    (np.zeros((0, 4)), 0.5, [(0, 0)]),
])
def test_seriation_of_hand_built_linkages(linkage: np.ndarray, threshold: float | None,
                                          expected: list[tuple[int, int]]) -> None:
    assert seriate(linkage, threshold) == expected
    assert reference_seriation(linkage, threshold) == expected


@pytest.mark.parametrize(("num", "threshold", "expected"), [
    (0, None, []),
    (0, 0.5, []),
    (1, None, [(0, 0)]),
    (1, 0.5, [(0, 0)]),
    (2, None, [(0, 0), (1, 0)]),
    (2, 0.5, [(0, 0), (1, 1)]),
])
@pytest.mark.parametrize("method", METHODS)
def test_tiny_inputs(method: str, num: int, threshold: float | None,
                     expected: list[tuple[int, int]]) -> None:
    points = np.arange(num * 3, dtype=np.float64).reshape(num, 3)
    model = Cluster(points, method, threshold)  # type: ignore[arg-type]
    assert model() == expected
    assert model.linkage.shape == (max(num - 1, 0), 4)


@pytest.mark.parametrize("method", METHODS)
def test_identical_predictions_share_one_bin(method: str) -> None:
    points = np.concatenate([np.ones((4, 3)), np.zeros((3, 3))])
    for threshold in (0.0, 0.5):
        result = Cluster(points, method, threshold)()  # type: ignore[arg-type]
        assert sorted(index for index, _ in result) == list(range(7))
        assert {(index < 4, bin_id) for index, bin_id in result} in ({(True, 0), (False, 1)},
                                                                      {(True, 1), (False, 0)})


# ---------------------------------------------------------------- memory


def test_full_linkage_runs_when_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    points, _ = make_groups()
    force_path(monkeypatch, "full", *points.shape)
    vector_calls = spy(monkeypatch, "linkage_vector")
    full_calls = spy(monkeypatch, "linkage")
    Cluster(points, "ward")
    assert (len(full_calls), len(vector_calls)) == (1, 0)


@pytest.mark.parametrize("method", METHODS)
def test_falls_back_to_vector_linkage_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture,
                                                     method: str) -> None:
    points, _ = make_groups(seed=2)
    full_result = Cluster(points, method, threshold=0.3)()  # type: ignore[arg-type]
    force_path(monkeypatch, "vector", *points.shape)
    vector_calls = spy(monkeypatch, "linkage_vector")
    full_calls = spy(monkeypatch, "linkage")
    with caplog.at_level(logging.WARNING, logger="faceinfer.cluster"):
        result = Cluster(points, method, threshold=0.3)()  # type: ignore[arg-type]
    assert (len(full_calls), len(vector_calls)) == (0, 1)
    assert "falling back to vector clustering" in caplog.text
    assert result == full_result


def test_clear_error_when_no_linkage_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    points, _ = make_groups()
    need = cluster.vector_linkage_bytes(*points.shape)
    monkeypatch.setattr(cluster, "_available_memory", lambda: int(need) - 1)
    calls = spy(monkeypatch, "linkage_vector") + spy(monkeypatch, "linkage")
    with pytest.raises(FaceInferError, match=r"expected enough free RAM to cluster 24 faces"):
        Cluster(points, "ward")
    assert calls == []


def test_memory_estimates_follow_the_reference() -> None:
    assert cluster.full_linkage_bytes(1000) == pytest.approx(1000 ** 2 * 24 / 1.8)
    assert cluster.vector_linkage_bytes(1000, 512) == 1000 * 512 * 24


def test_condensed_distances_match_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    # Far from the origin, with exact and near duplicates: the cases the Gram form gets wrong.
    base = rng.random((30, 16)) * 1e4 + 1e6
    points = np.repeat(base, 3, axis=0)
    points[::3] += 1e-6 * rng.random((30, 16))
    rows, cols = np.triu_indices(len(points), 1)
    expected = np.sqrt(((points[rows] - points[cols]) ** 2).sum(axis=1))
    # Several row blocks, and refinement in several chunks.
    monkeypatch.setattr(cluster, "_CHUNK_BYTES", 8 * len(points) * 7)
    monkeypatch.setattr(cluster, "_REFINE_PAIRS", 5)
    result = cluster._condensed_distances(points)
    np.testing.assert_allclose(result, expected, rtol=1e-12)
    assert (result[expected == 0] == 0).all()
    small = rng.normal(size=(50, 7)).astype(np.float32)
    rows, cols = np.triu_indices(50, 1)
    diff = small[rows].astype(np.float64) - small[cols]
    np.testing.assert_allclose(cluster._condensed_distances(small),
                               np.sqrt((diff ** 2).sum(axis=1)), rtol=1e-12)


# ---------------------------------------------------------------- large N


def caterpillar_linkage(num: int) -> np.ndarray:
    """Row 0 merges leaves 0 and 1, row k merges leaf k + 1 into node num + k - 1: depth num - 1."""
    linkage = np.zeros((num - 1, 4))
    linkage[:, 0] = np.arange(num - 1) + 1
    linkage[1:, 1] = num + np.arange(num - 2)
    linkage[0, :2] = (0, 1)
    linkage[:, 2] = np.arange(num - 1) + 1.0
    linkage[:, 3] = np.arange(num - 1) + 2
    return linkage


def test_seriation_of_a_deep_tree_is_iterative() -> None:
    num = 100_000
    result = seriate(caterpillar_linkage(num), threshold=0.5)
    assert [index for index, _ in result] == [*range(num - 1, 1, -1), 0, 1]
    bins = [bin_id for _, bin_id in result]
    split_leaves = num // 2  # leaves hung from merges at >= half the largest distance
    assert bins[:split_leaves] == list(range(split_leaves))
    assert set(bins[split_leaves:]) == {split_leaves}


@pytest.mark.parametrize("path", ["full", "vector"])
def test_cluster_of_a_deep_chain(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    num = 3000  # single linkage of points with growing gaps: a tree deeper than the recursion limit
    points = np.zeros((num, 8))
    points[:, 0] = np.arange(num) * (np.arange(num) + 1) / 2
    force_path(monkeypatch, path, num, 8)
    model = Cluster(points, "single", threshold=0.9)
    np.testing.assert_allclose(model.linkage, caterpillar_linkage(num), rtol=1e-12)
    assert [index for index, _ in model()] == [*range(num - 1, 1, -1), 0, 1]


# ---------------------------------------------------------------- the input contract


def test_predictions_are_only_read(grouped: tuple[np.ndarray, np.ndarray, ClusterMethod]) -> None:
    points, labels, method = grouped
    original = points.copy()
    points.flags.writeable = False  # a read-only (for example memory-mapped) input is accepted
    model = Cluster(points, method, threshold=0.3)
    np.testing.assert_array_equal(points, original)
    assert not model.linkage.flags.writeable
    expected = model()
    # The linkage is taken on construction: the caller may reuse the buffer afterwards.
    points.flags.writeable = True
    points[:] = 0.0
    assert model() == expected
    assert len(runs([int(labels[index]) for index, _ in expected])) == 4


def test_float32_and_integer_predictions() -> None:
    points, _ = make_groups()
    expected = Cluster(points, "ward", 0.3)()
    assert Cluster(points.astype(np.float32), "ward", 0.3)() == expected
    grid = np.array([[0, 0], [0, 1], [10, 10], [10, 11]], dtype=np.int32)
    assert Cluster(grid, "single", 0.5)() == [(0, 0), (1, 0), (2, 1), (3, 1)]


# ---------------------------------------------------------------- errors


def _nan_row() -> np.ndarray:
    points = np.ones((4, 3))
    points[2, 1] = np.nan
    return points


def _inf_row() -> np.ndarray:
    points = np.ones((4, 3))
    points[3, 0] = -np.inf
    return points


@pytest.mark.parametrize(("predictions", "method", "threshold", "error", "match"), [
    (_nan_row(), "ward", None, ValueError, r"finite predictions.*1 row\(s\), the first at row 2"),
    (_inf_row(), "single", None, ValueError, r"finite predictions.*first at row 3"),
    (np.ones(5), "ward", None, ValueError, r"shape \(N, D\), got \(5,\)"),
    (np.ones((2, 3, 4)), "ward", None, ValueError, r"shape \(N, D\), got \(2, 3, 4\)"),
    (np.ones((3, 0)), "ward", None, ValueError, r"at least one dimension"),
    ([[1.0, 2.0], [3.0]], "ward", None, ValueError, r"same D in every row"),
    (np.array([[1 + 1j, 2]]), "ward", None, ValueError, r"real-valued"),
    (np.ones((3, 2)), "average", None, ConfigError, r"single, centroid, median, ward.*'average'"),
    (np.ones((3, 2)), "ward", -0.1, ConfigError, r"threshold >= 0"),
    (np.ones((3, 2)), "ward", float("nan"), ConfigError, r"finite binning threshold"),
    (np.ones((3, 2)), "ward", float("inf"), ConfigError, r"finite binning threshold"),
    (np.ones((3, 2)), "ward", "0.5", ConfigError, r"as a number or None"),
])
def test_invalid_input(predictions: Any, method: Any, threshold: Any, error: type[Exception],
                       match: str) -> None:
    with pytest.raises(error, match=match):
        Cluster(predictions, method, threshold)


@pytest.mark.parametrize(("linkage", "match"), [
    (np.zeros((3, 3)), r"shape \(N - 1, 4\)"),
    (np.array([[0, 1.5, 1, 2]]), r"integer node ids"),
    (np.array([[0, 1, np.nan, 2]]), r"finite merge distances"),
    (np.array([[0, 2, 1, 2]]), r"invalid tree of 2 leaves"),     # node 2 does not exist yet
    (np.array([[0, 1, 1, 2], [0, 2, 1, 3]]), r"invalid tree"),   # leaf 0 merged twice
    (np.array([[-1, 1, 1, 2]]), r"invalid tree"),
])
def test_seriate_rejects_invalid_linkages(linkage: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        seriate(linkage)
