"""The Mask stage and the landmark mask plugins "components" and "extended" on real faces: masks
drawn in the plugin's crop, zero outside the frame, saturated to uint8 whatever a plugin returns,
stored at the storage size and warped back to the frame; aligned face images re-cut exactly; a
real detect -> align -> mask -> mask chain.

The faces are the human-annotated ones in ``../shared/data`` (tests that need them skip when the
folder is absent). Crop pixel i lies at i / size in the normalized crop that the stored matrices
map frame pixels to.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from faceinfer import Align, Detect, Mask
from faceinfer._registry import register_plugin, unregister_plugin
from faceinfer.errors import ConfigError, PluginError
from faceinfer.geometry.aligned import aligned_matrices, warp_aligned
from faceinfer.geometry.constants import Centering
from faceinfer.geometry.crop import box_crop_matrices
from faceinfer.geometry.landmark_mask import MaskArea, landmark_masks
from faceinfer.objects import ExtractBatch, ExtractBatchAligned, ExtractBatchMask, FrameFaces
from faceinfer.plugins.base import MaskPlugin, PluginConfig
from tests.conftest import SHARED, Feeder, blob_boxes, make_frame, run_stage
from tests.faces import RealFace, needs_real_faces, real_faces

AREAS = {"components": MaskArea.FACE, "extended": MaskArea.FACE_EXTENDED}
SAMPLES = SHARED / "data" / "faceswap_samples"

Image = npt.NDArray[np.uint8]
Points = npt.NDArray[np.float32]


def face_batch(image: Image, landmarks: npt.ArrayLike, aligned: bool = False,
               **kwargs: Any) -> ExtractBatch:
    """A one-image batch holding faces with the given (F, P, 2) landmarks in frame pixels."""
    batch = ExtractBatch(["face.png"], [image], is_aligned=aligned, **kwargs)
    points = np.asarray(landmarks, dtype=np.float32)
    boxes = np.concatenate([points.min(axis=1), points.max(axis=1)], axis=1)
    batch.set_faces(np.rint(boxes).astype(np.int32), np.zeros(len(points), np.int32))
    batch.aligned = ExtractBatchAligned(points)
    return batch


def load(face: RealFace) -> tuple[Image, Points]:
    """The face's photo and its (1, 68, 2) landmarks."""
    image = cv2.imread(str(face.image))
    assert image is not None, face.image
    return image, face.landmarks.astype(np.float32)[None]


def at_frame_edge(face: RealFace) -> tuple[Image, Points]:
    """The face's photo cut so that its left edge runs through the face, a third of the way
    across, and the landmarks in the cut frame's pixels."""
    image, points = load(face)
    low, high = points[0].min(axis=0), points[0].max(axis=0)
    left = int(low[0] + (high[0] - low[0]) / 3)
    return np.ascontiguousarray(image[:, left:]), points - np.float32([left, 0])


def to_crop_pixels(matrices: npt.NDArray[np.floating], size: int) -> npt.NDArray[np.float64]:
    """(N, 3, 3) frame pixels -> crop pixels, from the stored frame -> normalized matrices."""
    return np.diag([float(size), float(size), 1.0]) @ np.asarray(matrices, np.float64)


def transform(matrices: npt.NDArray[np.float64], points: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Points (N, P, 2) moved through (N, 3, 3) matrices."""
    moved = np.asarray(points, np.float64) @ matrices[:, :2, :2].transpose(0, 2, 1)
    return np.asarray(moved + matrices[:, None, :2, 2], dtype=np.float64)


def outside_frame(matrices: npt.NDArray[np.floating], size: int,
                  height: int, width: int) -> npt.NDArray[np.bool_]:
    """(N, size, size) True where a crop pixel's centre maps outside the frame."""
    to_frame = np.linalg.inv(to_crop_pixels(matrices, size))
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).reshape(1, -1, 2)
    xy = transform(to_frame, np.repeat(grid, len(to_frame), axis=0))
    out = ((xy[..., 0] < -0.5) | (xy[..., 0] >= width - 0.5)
           | (xy[..., 1] < -0.5) | (xy[..., 1] >= height - 0.5))
    return out.reshape(-1, size, size)


def expected_masks(name: str, matrices: npt.NDArray[np.floating], landmarks: npt.ArrayLike,
                   size: int, frame_shape: tuple[int, ...]) -> npt.NDArray[np.uint8]:
    """The landmark masks drawn directly in the crops the matrices describe, zero outside the
    frame."""
    points = transform(to_crop_pixels(matrices, size), landmarks)
    masks = landmark_masks(points, size, AREAS[name])
    masks[outside_frame(matrices, size, frame_shape[0], frame_shape[1])] = 0
    return masks


def far_from_edge(mask: npt.NDArray[np.uint8], distance: float) -> npt.NDArray[np.bool_]:
    """Where a 0/255 mask's pixels lie more than ``distance`` pixels from its inside/outside
    boundary."""
    inside = (mask == 255).astype(np.uint8)
    into = cv2.distanceTransform(inside, cv2.DIST_L2, 5)
    out_of = cv2.distanceTransform(1 - inside, cv2.DIST_L2, 5)
    return np.asarray((into > distance) | (out_of > distance))


# ---------------------------------------------------------------------------------------------
# The landmark plugins


@needs_real_faces
@pytest.mark.parametrize("name", ["components", "extended"])
def test_landmark_plugin_draws_its_area_in_the_face_crop(name: str) -> None:
    """Each plugin stores exactly the landmark mask drawn in its crop, at its centering (face)
    and input size, on every real face."""
    handler = Mask(name)
    assert handler.plugin.centering == Centering.FACE
    assert handler.plugin.input_size == 256
    for face in real_faces():
        image, points = load(face)
        batch = run_stage(handler, face_batch(image, points))
        stored = batch.masks[name]
        assert stored.centering == "face"
        legacy = batch.aligned.matrices
        expected_matrices = aligned_matrices(legacy, 256, "face",
                                             batch.aligned.offsets("face")) / [[256], [256], [1]]
        np.testing.assert_allclose(stored.matrices, expected_matrices, rtol=1e-5, atol=1e-6)
        expected = expected_masks(name, stored.matrices, points, 256, image.shape)
        np.testing.assert_array_equal(stored.masks, expected)
        assert (stored.masks == 255).mean() > 0.2, f"{face.name}: the face fills the crop"


@needs_real_faces
def test_extended_reaches_above_components_and_stays_in_the_crop() -> None:
    face = real_faces()[0]
    image, points = load(face)
    masks = {name: run_stage(Mask(name), face_batch(image, points)).masks[name].masks[0]
             for name in AREAS}
    extended, components = masks["extended"] > 0, masks["components"] > 0
    assert np.all(extended >= components)
    top = {name: int(np.flatnonzero(mask.any(axis=1))[0])
           for name, mask in (("extended", extended), ("components", components))}
    assert top["extended"] < top["components"] - 5
    # The face centering holds the whole extended mask: none of it touches the crop's border.
    border = np.concatenate([extended[0], extended[-1], extended[:, 0], extended[:, -1]])
    assert not border.any()


@needs_real_faces
def test_input_size_is_configurable() -> None:
    image, points = load(real_faces()[0])
    handler = Mask("components", config={"input_size": 96})
    stored = run_stage(handler, face_batch(image, points)).masks["components"]
    assert stored.masks.shape == (1, 96, 96)
    np.testing.assert_array_equal(
        stored.masks, expected_masks("components", stored.matrices, points, 96, image.shape))
    with pytest.raises(ConfigError, match="input_size"):
        Mask("components", config={"input_size": 0})


@pytest.mark.parametrize("points", [51, 98, 4])
def test_landmark_plugin_takes_only_68_points(points: int) -> None:
    plugin = Mask("extended").plugin
    with pytest.raises(PluginError, match=rf"68-point landmarks.*got {points} points"):
        plugin.pre_process(np.zeros((2, points, 2), np.float32))
    with pytest.raises(PluginError, match="68-point"):
        plugin.pre_process(np.zeros((2, 68), np.float32))


def test_98_point_faces_get_a_clear_error_from_the_stage() -> None:
    """A 98-point aligner's faces reach the plugin as 98 points: it says it needs 68."""
    rng = np.random.default_rng(0)
    points = rng.uniform(40, 90, (1, 98, 2)).astype(np.float32)
    with pytest.raises(PluginError, match=r"'components'.*68-point.*98 points"):
        run_stage(Mask("components"), face_batch(make_frame(1), points))


def test_landmark_plugin_without_landmarks_errors_clearly() -> None:
    batch = ExtractBatch(["frame"], [make_frame(2)])
    batch.set_faces(blob_boxes(2), np.zeros(2, np.int32))
    with pytest.raises(PluginError, match=r"'extended' draws from landmarks.*aligner.*2 faces"):
        run_stage(Mask("extended"), batch)


def test_landmark_plugin_on_an_empty_batch() -> None:
    batch = run_stage(Mask("components"), ExtractBatch(["frame"], [make_frame(0)]))
    assert batch.masks["components"].masks.shape == (0, 256, 256)


# ---------------------------------------------------------------------------------------------
# Out of the frame, and value ranges


@needs_real_faces
@pytest.mark.parametrize("name", ["components", "extended"])
def test_a_face_at_the_frame_edge_gets_zeros_outside_the_frame(name: str) -> None:
    image, points = at_frame_edge(real_faces()[0])
    stored = run_stage(Mask(name), face_batch(image, points)).masks[name]
    size = stored.masks.shape[1]
    outside = outside_frame(stored.matrices, size, *image.shape[:2])
    drawn = landmark_masks(transform(to_crop_pixels(stored.matrices, size), points), size,
                           AREAS[name])
    assert (drawn[outside] == 255).sum() > 1000, "the face's mask reaches out of the frame"
    assert not stored.masks[outside].any()
    np.testing.assert_array_equal(stored.masks[~outside], drawn[~outside])
    assert (stored.masks[~outside] == 255).sum() > 5000


VALUES = np.array([-1e9, -0.5, 0.0, 0.25, 0.5, 1.0, 1.5, 255.0, 65535.0, np.nan, np.inf, -np.inf],
                  dtype=np.float32)
SATURATED = np.array([0, 0, 0, 64, 128, 255, 255, 255, 255, 0, 255, 0], dtype=np.uint8)


@dataclass(frozen=True)
class PassConfig(PluginConfig):
    """Settings of this module's test plugins."""

    batch_size: int = 4
    """Faces per batch."""


class PassMask(MaskPlugin):
    """Base of this module's test plugins: their model returns its input."""

    config_class = PassConfig

    def process(self, batch: np.ndarray) -> np.ndarray:
        """The input."""
        return batch


class RangeMask(PassMask):
    """A mask plugin on 0..255 input (as vgg-clear and custom are) that returns values far
    outside 0..1: VALUES repeated along each row of the crop."""

    description = "Test mask: values outside 0..1"

    def __init__(self, config: PassConfig) -> None:
        super().__init__(48, config.batch_size, scale=(0.0, 255.0), force_cpu=True,
                         config=config)

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """VALUES tiled over each (48, 48) crop."""
        row = np.resize(VALUES, 48)
        return np.broadcast_to(row, (len(batch), 48, 48)).astype(np.float32)


class OwnCropMask(PassMask):
    """A pixel mask plugin with its own crop convention: a square around the landmarks."""

    description = "Test mask: own crop"

    def __init__(self, config: PassConfig) -> None:
        super().__init__(96, config.batch_size, force_cpu=True, config=config)

    def crop_matrices(self, landmarks: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """A square around the landmarks' box, padded by 30%."""
        boxes = np.concatenate([landmarks.min(axis=1), landmarks.max(axis=1)], axis=1)
        return box_crop_matrices(boxes, 0.3).astype(np.float64)

    def post_process(self, batch: np.ndarray) -> npt.NDArray[np.float32]:
        """The crop's first channel."""
        return np.asarray(batch[..., 0], dtype=np.float32)


@pytest.fixture
def register() -> Iterator[Callable[[str, type[MaskPlugin]], str]]:
    """Register mask plugins for one test; they are unregistered afterwards."""
    names: list[str] = []

    def _register(name: str, cls: type[MaskPlugin]) -> str:
        register_plugin("mask", name)(cls)
        names.append(name)
        return name

    yield _register
    for name in names:
        unregister_plugin("mask", name)


@needs_real_faces
def test_values_outside_0_1_saturate_without_overflow(
        register: Callable[[str, type[MaskPlugin]], str]) -> None:
    """Whatever the plugin's input range and output values: above 1 saturates to 255, below 0
    and NaN to 0, and out of the frame stays 0 (the reference multiplied by a 0..255 ROI and
    overflowed uint8)."""
    range_plugin = register("test-range-mask", RangeMask)
    image, points = at_frame_edge(real_faces()[1])
    stored = run_stage(Mask(range_plugin), face_batch(image, points)).masks[range_plugin]
    outside = outside_frame(stored.matrices, 48, *image.shape[:2])[0]
    assert outside.any()
    assert not outside.all()
    expected = np.broadcast_to(np.resize(SATURATED, 48), (48, 48)).copy()
    expected[outside] = 0
    np.testing.assert_array_equal(stored.masks[0], expected)


# ---------------------------------------------------------------------------------------------
# Storage


@needs_real_faces
def test_storage_at_the_mask_size_round_trips_exactly() -> None:
    image, points = load(real_faces()[2])
    stored = run_stage(Mask("extended", storage_size=0), face_batch(image, points))
    mask = stored.masks["extended"]
    alignment = mask.to_alignment(0)
    assert alignment["stored_size"] == 256
    np.testing.assert_array_equal(ExtractBatchMask.decode(alignment), mask.masks[0])
    np.testing.assert_allclose(alignment["affine_matrix"], to_crop_pixels(mask.matrices, 256)[0],
                               rtol=1e-6)


@needs_real_faces
@pytest.mark.parametrize("storage", [128, 64])
def test_stored_mask_warps_back_onto_the_face(storage: int) -> None:
    """Compressed at the storage size, decompressed and warped back to the frame with the stored
    matrix, the mask is the one drawn from the landmarks in the stored mask's own pixels (within
    1 grey level beyond 2 of its pixels from the hull's edge) and in the frame's pixels (beyond
    3 stored pixels), so the size and matrix bookkeeping agree to well under a stored pixel."""
    for face in real_faces():
        image, points = load(face)
        height, width = image.shape[:2]
        batch = run_stage(Mask("components", storage_size=storage), face_batch(image, points))
        alignment = batch.masks["components"].to_alignment(0)
        assert alignment["stored_size"] == storage
        stored = ExtractBatchMask.decode(alignment)
        frame_to_stored = np.array(alignment["affine_matrix"])

        drawn = landmark_masks(transform(frame_to_stored[None], points), storage, "face")[0]
        far = far_from_edge(drawn, 2.0)
        assert (far & (drawn == 255)).sum() > 0.7 * (drawn == 255).sum()
        assert np.abs(stored.astype(int) - drawn)[far].max() <= 1, face.name

        in_frame = cv2.warpAffine(stored, frame_to_stored[:2], (width, height),
                                  flags=cv2.WARP_INVERSE_MAP | alignment["interpolator"])
        side = max(height, width)
        truth = landmark_masks(points, side, "face")[0][:height, :width]
        frame_pixels_per_stored = 1.0 / np.sqrt(np.linalg.det(frame_to_stored[:2, :2]))
        far = far_from_edge(truth, 3.0 * frame_pixels_per_stored)
        assert (far & (truth == 255)).sum() > 0.6 * (truth == 255).sum()
        assert np.abs(in_frame.astype(int) - truth)[far].max() <= 1, face.name


def test_decode_rejects_bad_mask_bytes() -> None:
    mask = ExtractBatchMask("face", np.eye(3)[None], 64, np.full((1, 32, 32), 9, np.uint8))
    alignment = mask.to_alignment(0)
    np.testing.assert_array_equal(ExtractBatchMask.decode(alignment), np.full((64, 64), 9))
    with pytest.raises(ValueError, match="65 x 65"):
        ExtractBatchMask.decode({**alignment, "stored_size": 65})
    with pytest.raises(ValueError, match="zlib"):
        ExtractBatchMask.decode({**alignment, "mask": b"not zlib"})


# ---------------------------------------------------------------------------------------------
# Aligned face images as input


def image_matrices(batch: ExtractBatch, size: int, centering: str) -> npt.NDArray[np.float64]:
    """(N, 3, 3) frame pixels -> pixels of the batch's faces' aligned images of side ``size``."""
    aligned = batch.aligned
    return aligned_matrices(aligned.matrices, size, centering, aligned.offsets(centering))


def cut_aligned(image: Image, batch: ExtractBatch, size: int, centering: str) -> Image:
    """The batch's face cut out of ``image`` as an aligned image of side ``size``."""
    frame_to_image = image_matrices(batch, size, centering)
    return warp_aligned([image], np.zeros(1, np.int64), frame_to_image, size)[0]


def crop_shift(first: Image, second: Image) -> float:
    """How far apart, in pixels, the content of two crops lies (phase correlation)."""
    window = cv2.createHanningWindow(first.shape[1::-1], cv2.CV_64F)
    grey = [cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float64) for crop in (first, second)]
    (shift_x, shift_y), _ = cv2.phaseCorrelate(grey[0], grey[1], window)
    return float(np.hypot(shift_x, shift_y))


@needs_real_faces
@pytest.mark.parametrize(("size", "centering"), [(512, "head"), (384, "face")])
def test_an_aligned_face_image_gives_the_crop_its_frame_gives(
        size: int, centering: str, register: Callable[[str, type[MaskPlugin]], str]) -> None:
    """A face cut out of its frame at head centering (faceswap's extracted faces), or at the
    centering its metadata names, and fed as aligned input, gives the plugin the same crop
    wherever the aligned image covers it (resampled twice, so within a few grey levels, and in
    place to a fifth of a pixel)."""
    own_crop_plugin = register("test-own-crop-mask", OwnCropMask)
    for plugin, config in (("test-mask", {"input_size": 128}), (own_crop_plugin, {})):
        handler = Mask(plugin, config=config)
        side = handler.plugin.input_size
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(1, -1, 2)
        for face in real_faces():
            image, points = load(face)
            from_frame = face_batch(image, points)
            matrices = handler.face_matrices(from_frame)
            expected = handler.face_images(from_frame, matrices)[0]
            metadata = None if centering == "head" else [{"centering": centering}]
            aligned = face_batch(cut_aligned(image, from_frame, size, centering), points,
                                 aligned=True, frame_sizes=[image.shape[:2]],
                                 frame_metadata=metadata)
            crop = handler.face_images(aligned, handler.face_matrices(aligned))[0]
            crop_to_image = (image_matrices(from_frame, size, centering)
                             @ np.linalg.inv(to_crop_pixels(matrices, side)))
            source = transform(crop_to_image, grid)[0]
            covered = np.all((source >= 1) & (source <= size - 2), axis=1).reshape(side, side)
            assert covered.mean() > 0.6
            difference = np.abs(crop.astype(int) - expected.astype(int))[covered]
            assert difference.mean() < 2.5, (plugin, face.name)
            assert crop_shift(crop, expected) < 0.2, (plugin, face.name)


@needs_real_faces
def test_aligned_input_is_masked_like_its_frame() -> None:
    """A landmark mask of an aligned face image equals the frame's, zeros out of the frame
    included, with the frame's size from frame_sizes or from the metadata's
    source_frame_dims."""
    image, points = at_frame_edge(real_faces()[0])
    from_frame = run_stage(Mask("components"), face_batch(image, points)).masks["components"]
    face = cut_aligned(image, face_batch(image, points), 256, "head")
    dims = {"source_frame_dims": image.shape[:2]}
    for kwargs in ({"frame_sizes": [image.shape[:2]]}, {"frame_metadata": [dims]}):
        batch = run_stage(Mask("components"), face_batch(face, points, aligned=True, **kwargs))
        np.testing.assert_array_equal(batch.masks["components"].masks, from_frame.masks)
        np.testing.assert_array_equal(batch.masks["components"].matrices, from_frame.matrices)


@needs_real_faces
def test_aligned_input_errors() -> None:
    image, points = load(real_faces()[0])
    face = cut_aligned(image, face_batch(image, points), 128, "head")
    handler = Mask("test-mask")
    cases: list[tuple[ExtractBatch, str]] = [
        (face_batch(face, points, aligned=True, frame_sizes=[image.shape[:2]],
                    frame_metadata=[{"centering": "middle"}]),
         r"face\.png: expected an aligned face centering.*'middle'"),
        (face_batch(face[:, :100], points, aligned=True, frame_sizes=[image.shape[:2]]),
         r"face\.png: expected a square aligned face image, got 100x128"),
    ]
    no_landmarks = ExtractBatch(["face.png"], [face], is_aligned=True,
                                frame_sizes=[image.shape[:2]])
    no_landmarks.set_faces(np.array([[0, 0, 128, 128]], np.int32), np.zeros(1, np.int32))
    cases.append((no_landmarks, r"face\.png: aligned face images .* expected landmarks"))
    for batch, message in cases:
        with pytest.raises(ValueError, match=message):
            handler.pre_process(batch)
    unsized = face_batch(face, points, aligned=True)
    with pytest.raises(ValueError, match=r"face\.png: aligned faces need the size of their frame"):
        run_stage(Mask("components"), unsized)


# ---------------------------------------------------------------------------------------------
# A real chain


def extract(path: str) -> list[FrameFaces]:
    """detect (mtcnn) -> align (dlib-68) -> mask components -> mask extended (stored at 64), on
    one photo."""
    runner = Mask("extended", storage_size=64)(Mask("components")(
        Align("dlib-68")(Detect("mtcnn")())))
    feeder = Feeder(runner, [("photo", cv2.imread(path))]).start()
    with runner:
        out = list(runner)
    feeder.join()
    assert feeder.error is None, feeder.error
    return out


@pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"no sample photos at {SAMPLES}")
def test_a_chain_stores_each_mask_under_its_own_name() -> None:
    path = SAMPLES / "test_img2.jpg"
    (media,) = extract(str(path))
    image = cv2.imread(str(path))
    assert media.landmarks is not None
    count = len(media.bboxes)
    assert count >= 3
    assert sorted(media.masks) == ["components", "extended"]
    for name, storage in (("components", 128), ("extended", 64)):
        stored = media.masks[name]
        assert stored.centering == "face"
        assert stored.storage_size == storage
        assert stored.masks.shape == (count, 256, 256)
        np.testing.assert_array_equal(
            stored.masks, expected_masks(name, stored.matrices, media.landmarks, 256,
                                         image.shape))
        assert stored.to_alignment(0)["stored_size"] == storage
    extended, components = (media.masks[name].masks == 255 for name in ("extended", "components"))
    assert np.all(extended[components])
    assert np.all(extended.sum(axis=(1, 2)) > components.sum(axis=(1, 2)))
