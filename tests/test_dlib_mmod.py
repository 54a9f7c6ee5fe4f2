"""The PyTorch port of dlib's MMOD CNN face detector (:mod:`faceinfer.nets.dlib_mmod`).

* Tables: the tiled pyramid layout, dlib's NMS overlap test, the network's checks on the file.
* Parity with ``dlib.cnn_face_detection_model_v1(image, 0)`` on the faceswap sample photos and
  dlib's example faces in ``../shared/data`` (skipped when absent): the same rectangles (every
  one matched at IoU >= 0.99, the same count) and confidences within 1e-3. dlib takes 2.5 s or
  more per 640x480 image, so two photos and three example faces run by default and the other
  six under ``-m slow``; dlib's results are computed once per session.
* Upsampling (dlib's ``pyramid_up``, reproduced): parity at ``upsample`` 1 on two photos, and
  :func:`upsample_agreement`, which counts the boxes each side finds that the other matches,
  on the nine example faces (both under ``-m slow``; the second prints the counts).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch

from faceinfer.formats.dlib_dat import DatFormatError, DatNetwork, read_network
from faceinfer.nets.dlib_mmod import (
    MIN_LEVEL_ROWS,
    MMODDetector,
    MMODNet,
    overlapping,
    pyramid_layout,
    suppress,
)
from faceinfer.plugins._dlib import model_path
from tests.conftest import SHARED

dlib = pytest.importorskip("dlib")
cv2 = pytest.importorskip("cv2")

SAMPLES = SHARED / "data" / "faceswap_samples"
DLIB_FACES = SHARED / "data" / "dlib_faces"
DEFAULT_FACES = ("2008_001009.jpg", "2008_001322.jpg", "2009_004587.jpg")
"""dlib example faces checked by default (2, 3 and 2 faces); the other six are slow."""

Reference = Callable[[Path, int], npt.NDArray[np.float32]]


def read_rgb(path: Path) -> npt.NDArray[np.uint8]:
    """A photo as a C-contiguous uint8 RGB array."""
    image = cv2.imread(str(path))
    assert image is not None, f"cannot read {path}"
    return np.ascontiguousarray(image[..., ::-1], dtype=np.uint8)


def parity_cases() -> list[object]:
    """The photos of the parity check: faceswap's img1 and img2 and three example faces by
    default, the other example faces marked slow."""
    paths = [SAMPLES / "test_img1.jpg", SAMPLES / "test_img2.jpg"]
    faces = sorted(DLIB_FACES.glob("*.jpg")) if DLIB_FACES.is_dir() else [
        DLIB_FACES / name for name in DEFAULT_FACES]
    cases: list[object] = [pytest.param(path, id=path.stem) for path in paths]
    cases += [pytest.param(path, id=path.stem, marks=() if path.name in DEFAULT_FACES
                           else pytest.mark.slow) for path in faces]
    return cases


@pytest.fixture(scope="session")
def network() -> DatNetwork:
    """The installed detector file, read."""
    return read_network(model_path("cnn_face_detector_model_location"))


@pytest.fixture(scope="session")
def port(network: DatNetwork) -> MMODDetector:
    """The port on the CPU."""
    return MMODDetector(network, "cpu")


@pytest.fixture(scope="session")
def dlib_reference() -> Reference:
    """dlib's detections for a photo at an upsample count, each computed once per session:
    (M, 5) rows (left, top, right, bottom, confidence), exclusive right and bottom."""
    detector = dlib.cnn_face_detection_model_v1(
        str(model_path("cnn_face_detector_model_location")))
    cache: dict[tuple[Path, int], npt.NDArray[np.float32]] = {}

    def detect(path: Path, upsample: int) -> npt.NDArray[np.float32]:
        if (path, upsample) not in cache:
            found = detector(read_rgb(path), upsample)
            cache[path, upsample] = np.array(
                [(d.rect.left(), d.rect.top(), d.rect.right() + 1, d.rect.bottom() + 1,
                  d.confidence) for d in found], dtype=np.float32).reshape(-1, 5)
        return cache[path, upsample]

    return detect


def iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """(len(a), len(b)) intersection over union of boxes with exclusive edges."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:4], b[None, :, 2:4])
    inner = np.prod(np.clip(high - low, 0, None), axis=2).astype(np.float64)
    area_a = np.prod(a[:, 2:4] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:4] - b[:, :2], axis=1)
    return np.asarray(inner / (area_a[:, None] + area_b[None] - inner), dtype=np.float64)


def matched(boxes: npt.NDArray[np.float32], others: npt.NDArray[np.float32],
            least: float) -> int:
    """How many of ``boxes`` some box of ``others`` overlaps at IoU >= ``least``."""
    if not len(boxes) or not len(others):
        return 0
    return int((iou(boxes, others).max(axis=1) >= least).sum())


def upsample_agreement(paths: Sequence[Path], upsample: int = 1, least: float = 0.5,
                       port: MMODDetector | None = None) -> dict[str, int]:
    """The port's ``upsample`` against dlib's ``upsample_num_times`` on photos: how many of
    dlib's boxes one of the port's matches at IoU >= ``least`` and vice versa, and at
    IoU >= 0.99.

    Returns
    -------
    ``dlib`` and ``port``: boxes found by each; ``dlib_matched``: dlib's boxes the port also
    found; ``port_matched``: the port's boxes dlib also found; ``dlib_same``: dlib's boxes the
    port found at IoU >= 0.99.
    """
    path = model_path("cnn_face_detector_model_location")
    detector = dlib.cnn_face_detection_model_v1(str(path))
    port = MMODDetector(read_network(path)) if port is None else port
    counts = dict.fromkeys(("dlib", "port", "dlib_matched", "port_matched", "dlib_same"), 0)
    for image_path in paths:
        image = read_rgb(image_path)
        ours = port(image[None], upsample)[0][:, :4]
        theirs = np.array([(d.rect.left(), d.rect.top(), d.rect.right() + 1,
                            d.rect.bottom() + 1) for d in detector(image, upsample)],
                          dtype=np.float32).reshape(-1, 4)
        counts["dlib"] += len(theirs)
        counts["port"] += len(ours)
        counts["dlib_matched"] += matched(theirs, ours, least)
        counts["port_matched"] += matched(ours, theirs, least)
        counts["dlib_same"] += matched(theirs, ours, 0.99)
    return counts


def assert_same_detections(ours: npt.NDArray[np.float32], theirs: npt.NDArray[np.float32],
                           tolerance: float = 1e-3) -> None:
    """The same count, each of dlib's boxes matched by one of ours at IoU >= 0.99 with a
    confidence within ``tolerance``."""
    assert len(ours) == len(theirs), (ours.tolist(), theirs.tolist())
    if not len(theirs):
        return
    overlap = iou(theirs, ours)
    best = overlap.argmax(axis=1)
    assert sorted(best.tolist()) == list(range(len(ours))), (ours.tolist(), theirs.tolist())
    assert overlap.max(axis=1).min() >= 0.99, (ours.tolist(), theirs.tolist())
    np.testing.assert_allclose(ours[best, 4], theirs[:, 4], atol=tolerance, rtol=0)


# Layout


@pytest.mark.parametrize(("rows", "cols"), [(480, 640), (640, 640), (814, 1201), (500, 400),
                                            (5, 5), (4, 7), (1, 1), (30, 200), (200, 30)])
def test_pyramid_layout_tiles_the_levels(rows: int, cols: int) -> None:
    """The image at (11, 11); each level floor(5/6) of the one before, none under 5 rows
    (beyond the image itself); tiles inside the tensor's outer padding and apart (dlib keeps
    the padding between tiles of a column, not always between the columns)."""
    layout = pyramid_layout(rows, cols, 10, 11)
    tiles = np.array(layout.tiles)
    assert tuple(tiles[0]) == (11, 11, cols, rows)
    assert layout.shape[1] == cols + 22
    for previous, tile in itertools.pairwise(tiles):
        assert tuple(tile[2:]) == (int(previous[2] * 5 / 6), int(previous[3] * 5 / 6))
        assert tile[3] >= MIN_LEVEL_ROWS
    assert np.all(tiles[:, :2] >= 11)
    assert np.all(tiles[:, 0] + tiles[:, 2] <= layout.shape[1] - 11)
    assert np.all(tiles[:, 1] + tiles[:, 3] <= layout.shape[0] - 11)
    edges = np.concatenate([tiles[:, :2], tiles[:, :2] + tiles[:, 2:]], axis=1)
    for index, tile in enumerate(tiles):
        others = np.delete(edges, index, axis=0)
        apart = ((tile[0] >= others[:, 2]) | (tile[0] + tile[2] <= others[:, 0])
                 | (tile[1] >= others[:, 3]) | (tile[1] + tile[3] <= others[:, 1]))
        assert apart.all(), f"tile {index} {tile} overlaps another"


def test_pyramid_layout_of_640x480() -> None:
    """The first and the last tiles of a 640x480 image: two columns, the second right-aligned
    and going up (a 1782-row tensor, 3.7 times the image)."""
    layout = pyramid_layout(480, 640, 10, 11)
    assert layout.shape == (1782, 662)
    assert layout.tiles[:5] == ((11, 11, 640, 480), (11, 501, 533, 400), (11, 911, 444, 333),
                                (11, 1254, 370, 277), (11, 1541, 308, 230))
    assert layout.tiles[5] == (395, 1580, 256, 191)
    assert layout.tiles[-1] == (643, 512, 8, 5)


@pytest.mark.parametrize(("rows", "cols"), [(0, 10), (10, 0)])
def test_pyramid_layout_refuses_empty_images(rows: int, cols: int) -> None:
    with pytest.raises(ValueError, match="at least 1x1"):
        pyramid_layout(rows, cols, 10, 11)


# NMS


@pytest.mark.parametrize(("box", "kept", "threshold", "expected"), [
    ((0, 0, 9, 9), [(0, 0, 9, 9)], 0.3383, [True]),             # the same box
    ((0, 0, 9, 9), [(10, 0, 19, 9)], 0.3383, [False]),          # touching, no shared pixel
    ((0, 0, 9, 9), [(4, 0, 13, 9)], 0.3383, [True]),            # 60 / 140 = 0.43
    ((0, 0, 9, 9), [(5, 0, 14, 9)], 0.3383, [False]),           # 50 / 150 = 0.333
    # IoU 36 / 164 = 0.22 but over the bounding box of both 36 / 196 = 0.18: dlib keeps it
    ((0, 0, 9, 9), [(4, 4, 13, 13)], 0.2, [False]),
    ((0, 0, 99, 99), [(10, 10, 19, 19)], 0.3383, [False]),      # covered wholly, not above 1
    ((0, 0, 9, 9), [(0, 0, 9, 9), (30, 0, 39, 9)], 0.3383, [True, False]),
    ((0, 0, 9, 9), [], 0.3383, []),                             # nothing kept yet
], ids=["same", "touching", "over", "under", "bbox-not-union", "inside", "two", "empty"])
def test_overlapping_is_dlibs_test(box: tuple[int, ...], kept: list[tuple[int, ...]],
                                   threshold: float, expected: list[bool]) -> None:
    found = overlapping(np.array(box), np.array(kept, dtype=np.int64).reshape(-1, 4),
                        threshold, 1.0)
    assert found.tolist() == expected


def test_overlapping_covered_share() -> None:
    """A box inside another is dropped once the covered share is under 1."""
    inner = np.array([[10, 10, 19, 19]])
    assert overlapping(np.array([0, 0, 99, 99]), inner, 0.3383, 0.9).tolist() == [True]


def test_suppress_keeps_the_best_of_each_cluster() -> None:
    rects = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [50, 50, 59, 59], [51, 51, 60, 60],
                      [100, 0, 109, 9]])
    scores = np.array([0.5, 0.9, 0.8, 0.3, 0.1], dtype=np.float32)
    assert suppress(rects, scores, 0.3383, 1.0).tolist() == [1, 2, 4]
    assert suppress(rects[:0], scores[:0], 0.3383, 1.0).tolist() == []


# The network


def _swap(network: DatNetwork, index: int, changes: dict[str, Any]) -> DatNetwork:
    """The network with layer ``index`` changed."""
    layers = list(network.layers)
    layers[index] = dataclasses.replace(layers[index], **changes)
    return dataclasses.replace(network, layers=tuple(layers))


def test_net_geometry_and_folding(network: DatNetwork) -> None:
    """Score cell (c, r) is tensor point (8c + 14, 8r + 14); batch norm folded (7 convs, 6
    ReLUs, nothing else)."""
    net = MMODNet(network)
    assert net.cell_to_input == ((8, 8), (14, 14))
    kinds = [type(module).__name__ for module in net.body]
    assert kinds.count("Conv2d") == 7
    assert kinds.count("ReLU") == 6
    assert len(kinds) == 13


@pytest.mark.parametrize(("index", "changes", "match"), [
    (0, {"kind": "relu"}, "expected one of"),
    (2, {"kind": "max_pool"}, "got max_pool"),
    (1, {"kind": "bn_con", "fields": {"gamma": np.ones(3), "beta": np.ones(3),
                                      "running_mean": np.zeros(3), "running_var": np.ones(3),
                                      "eps": 1e-4}}, "expected 16 channels, got 3"),
    (3, {"fields": {"weight": np.zeros((32, 8, 5, 5), np.float32), "bias": None,
                    "stride": (2, 2), "padding": (0, 0)}}, r"expected filters \(out, 16"),
    (-1, {"fields": {"weight": np.zeros((2, 45, 9, 9), np.float32), "bias": None,
                     "stride": (1, 1), "padding": (4, 4)}}, "ending in 1 score channels"),
], ids=["relu-first", "pool", "norm-width", "conv-input", "score-channels"])
def test_net_refuses_other_networks(network: DatNetwork, index: int,
                                    changes: dict[str, Any], match: str) -> None:
    with pytest.raises(DatFormatError, match=match):
        MMODNet(_swap(network, index, changes))


# Parity with dlib


@pytest.mark.timeout(600)  # dlib: 8 s on test_img1, a minute on a busy machine
@pytest.mark.parametrize("path", parity_cases())
def test_parity_with_dlib(port: MMODDetector, dlib_reference: Reference, path: Path) -> None:
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert_same_detections(port(read_rgb(path)[None])[0], dlib_reference(path, 0))


def test_batch_matches_single_images(port: MMODDetector) -> None:
    """Three same-sized frames in one batch (a photo, a black frame, the photo mirrored) give
    each frame's own detections."""
    path = DLIB_FACES / DEFAULT_FACES[1]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    image = read_rgb(path)
    batch = np.stack([image, np.zeros_like(image), image[:, ::-1]])
    found = port(batch)
    for frame, rows in zip(batch, found, strict=True):
        np.testing.assert_allclose(rows, port(frame[None])[0], atol=1e-4)
    assert [len(rows) > 0 for rows in found] == [True, False, True]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", [pytest.param(path, id=path.stem) for path in (
    SAMPLES / "test_img2.jpg", DLIB_FACES / "2008_004176.jpg")])
def test_upsample_parity_with_dlib(port: MMODDetector, dlib_reference: Reference,
                                   path: Path) -> None:
    """At upsample 1 too (dlib's pyramid_up reproduced): dlib's boxes; scores within 2e-3
    (a pixel of the enlarged image may truncate the other way)."""
    if not path.is_file():
        pytest.skip(f"{path} not found")
    assert_same_detections(port(read_rgb(path)[None], 1)[0], dlib_reference(path, 1),
                           tolerance=2e-3)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # dlib: about 6 s a photo at upsample 1, minutes on a busy machine
def test_upsample_agrees_with_dlib() -> None:
    """On the nine example faces at upsample 1, every box of either matches one of the other's
    (measured: 41 of 41 both ways, all at IoU 1.0)."""
    if not DLIB_FACES.is_dir():
        pytest.skip(f"{DLIB_FACES} not found")
    counts = upsample_agreement(sorted(DLIB_FACES.glob("*.jpg")))
    print(f"upsample 1 agreement: {counts}")
    assert counts["dlib_matched"] == counts["dlib"] == counts["port"] == counts["port_matched"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(network: DatNetwork, port: MMODDetector) -> None:
    path = DLIB_FACES / DEFAULT_FACES[1]
    if not path.is_file():
        pytest.skip(f"{path} not found")
    image = read_rgb(path)[None]
    assert_same_detections(MMODDetector(network, "cuda")(image)[0], port(image)[0])
