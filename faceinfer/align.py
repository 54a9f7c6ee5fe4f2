"""The Align stage: cuts each face out of its frame for a landmark plugin and maps the landmarks
back to frame pixels, with the reference's options: re-feed, re-align, input normalization and
the aligner filters.

Every crop is described by a matrix taking normalized crop coordinates ((0, 0) the crop's
top-left pixel centre, 1 its side) to frame pixels. A first-pass crop comes from one of:

* the detector's five keypoints, when it found them: an upright crop from the similarity taking
  them onto :data:`~faceinfer.geometry.constants.KEYPOINTS_5_LEGACY` (a tilted or turned face
  arrives upright, which a box cannot give);
* the detector's box: converted to the box convention the aligner was trained on (when both
  declare one) and squared by the plugin's :meth:`~faceinfer.plugins.base.AlignPlugin.roi`.

Re-align crops again from the first pass's landmarks (their similarity to the mean face), cut
from the original frame. Re-feed jitters whichever crop is final and averages the results.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, overload

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.errors import ConfigError, PluginError
from faceinfer.geometry.aligned import warp_aligned
from faceinfer.geometry.constants import KEYPOINTS_5_LEGACY, MEAN_FACE_2D_51, FaceBox, LandmarkType
from faceinfer.geometry.crop import map_points
from faceinfer.geometry.landmarks import landmarks_68
from faceinfer.geometry.umeyama import legacy_matrices, umeyama
from faceinfer.handler import ExtractHandler, HandlerType, format_images, shrink_interpolation
from faceinfer.objects import ExtractBatch, ExtractBatchAligned
from faceinfer.plugins.base import AlignPlugin, ExtractPlugin

logger = logging.getLogger(__name__)

__all__ = ["Align", "AlignedFilter", "Normalize", "ReAlign", "ReFeed"]

NormalizationType = Literal["none", "clahe", "hist", "mean"]
_NORMALIZATIONS = ("none", "clahe", "hist", "mean")
_FILTER_TYPES = (LandmarkType.LM_2D_68, LandmarkType.LM_2D_98)


def roi_matrices(roi: npt.NDArray[np.integer[Any]]) -> npt.NDArray[np.float64]:
    """(N, 3, 3) normalized crop -> frame matrices for square regions (left, top, right,
    bottom)."""
    boxes = np.asarray(roi, dtype=np.float64).reshape(-1, 4)
    out = np.zeros((len(boxes), 3, 3), dtype=np.float64)
    out[:, 0, 0] = out[:, 1, 1] = boxes[:, 2] - boxes[:, 0]
    out[:, :2, 2] = boxes[:, :2]
    out[:, 2, 2] = 1.0
    return out


def _unit_square_roi(matrices: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    """The rounded frame box spanned by each crop's corners (0, 0) and (1, 1)."""
    corners = map_points(matrices, np.array([[[0.0, 0.0], [1.0, 1.0]]]).repeat(len(matrices), 0))
    return np.rint(corners.reshape(-1, 4)).astype(np.int32)


def convert_boxes(bboxes: npt.NDArray[np.integer[Any]],
                  source: FaceBox | None,
                  target: FaceBox | None) -> npt.NDArray[np.int32]:
    """Convert detector boxes from one box convention to another.

    Parameters
    ----------
    bboxes:
        (N, 4) boxes (left, top, right, bottom) in frame pixels, drawn by the ``source``
        convention.
    source, target:
        Where each convention puts its box on an upright face, as (left, top, right, bottom)
        in legacy-normalized face space. None for an unknown convention: boxes are returned
        unchanged.

    Returns
    -------
    (N, 4) int32 boxes: each face's box as the ``target`` convention would draw it.
    """
    boxes = np.asarray(bboxes, dtype=np.float64).reshape(-1, 4)
    if source is None or target is None or source == target:
        return np.rint(boxes).astype(np.int32)
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    scale = (boxes[:, 2:] - boxes[:, :2]) / (src[2:] - src[:2])  # frame px per legacy unit
    origin = boxes[:, :2] - src[:2] * scale  # legacy (0, 0) in the frame
    out = np.concatenate([origin + dst[:2] * scale, origin + dst[2:] * scale], axis=1)
    return np.asarray(np.rint(out), dtype=np.int32)


class Normalize:
    """Normalizes aligner input images, per image and per channel. Only the aligner's input is
    changed, never the frames.

    * ``clahe``: contrast-limited adaptive histogram equalization (clip 2.0, 4x4 tiles);
    * ``hist``: histogram equalization;
    * ``mean``: a min/max stretch of each channel to 0..255.

    Parameters
    ----------
    method:
        none, clahe, hist or mean.
    """

    def __init__(self, method: NormalizationType) -> None:
        self.method: NormalizationType = "none"
        """The normalization applied."""
        self.set_method(method)
        self._clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))

    def set_method(self, method: NormalizationType | None) -> None:
        """Change the normalization (None: none).

        Raises
        ------
        ConfigError
            For an unknown method.
        """
        method = method or "none"
        if method not in _NORMALIZATIONS:
            raise ConfigError(f"expected normalization one of {', '.join(_NORMALIZATIONS)}, "
                              f"got '{method}'")
        self.method = method

    def __call__(self, images: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """(N, H, W, C) uint8 images normalized by the chosen method (a new array), or the
        input itself when the method is none."""
        if self.method == "none" or not len(images):
            return images
        if self.method == "mean":
            low = images.min(axis=(1, 2), keepdims=True).astype(np.float32)
            high = images.max(axis=(1, 2), keepdims=True).astype(np.float32)
            out = (images - low) / np.maximum(high - low, 1e-6) * 255.0
            return np.asarray(np.rint(out), dtype=np.uint8)
        apply = self._clahe.apply if self.method == "clahe" else cv2.equalizeHist
        out = np.empty_like(images)
        for index, image in enumerate(images):
            for channel in range(image.shape[2]):
                out[index, :, :, channel] = apply(np.ascontiguousarray(image[:, :, channel]))
        return out


class ReFeed:
    """Jittered extra crops of each face, whose landmarks are averaged with the original's.

    Each extra feed scales the crop by a factor in [0.95, 1.05] and shifts it by up to 5% of
    its side on each axis (drawn independently per face and feed). Measured with dlib's 68-point
    predictor, averaging re-feeds changes the error by less than its noise: they cost a model
    pass each and are kept for the reference's API.

    Parameters
    ----------
    re_feeds:
        The number of extra feeds, 0 to 10.
    """

    def __init__(self, re_feeds: int) -> None:
        if not 0 <= re_feeds <= 10:
            raise ConfigError(f"expected re_feeds from 0 to 10, got {re_feeds}")
        self.total_feeds = re_feeds + 1
        """The feeds per face: the original plus the re-feeds."""
        self.beta = 0.05
        """How far a crop may move and scale, as a fraction of its side."""
        self._random = np.random.default_rng()

    @overload
    def __call__(self, matrices: npt.NDArray[np.float32], with_roi: Literal[False],
                 size: int = 0) -> npt.NDArray[np.float32]: ...

    @overload
    def __call__(self, matrices: npt.NDArray[np.float32], with_roi: Literal[True] = True,
                 size: int = 0) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]: ...

    def __call__(self, matrices: npt.NDArray[np.float32], with_roi: bool = True, size: int = 0
                 ) -> npt.NDArray[np.float32] | tuple[npt.NDArray[np.float32],
                                                      npt.NDArray[np.int32]]:
        """The crops of every feed.

        Parameters
        ----------
        matrices:
            (N, 3, 3) normalized crop -> frame matrices of the original crops.
        with_roi:
            True to also return the box each crop spans.
        size:
            The crop side in frame pixels the shift is relative to; 0 to take it from each
            matrix.

        Returns
        -------
        (N * total_feeds, 3, 3) matrices in feed order (all faces' feed 0, then all faces'
        feed 1, ...), and with ``with_roi`` the (N * total_feeds, 4) boxes they span.
        """
        base = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
        count = len(base)
        extra = (self.total_feeds - 1) * count
        feeds = [base]
        if extra:
            jittered = np.repeat(base[None], self.total_feeds - 1, axis=0).reshape(-1, 3, 3)
            scale = self._random.uniform(1.0 - self.beta, 1.0 + self.beta, size=extra)
            side = (np.full(extra, float(size)) if size
                    else np.hypot(jittered[:, 0, 0], jittered[:, 1, 0]))
            shift = self._random.uniform(-self.beta, self.beta, size=(extra, 2)) * side[:, None]
            jittered[:, :2, :2] *= scale[:, None, None]
            jittered[:, :2, 2] += shift
            feeds.append(jittered)
        out = np.concatenate(feeds).astype(np.float32)
        if not with_roi:
            return out
        return out, _unit_square_roi(out.astype(np.float64))

    def merge(self, landmarks: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(N, P, 2) the mean over the feeds of (N * total_feeds, P, 2) landmarks in feed
        order; the input itself without re-feeds."""
        if self.total_feeds == 1:
            return landmarks
        points = np.asarray(landmarks, dtype=np.float32)
        return np.asarray(points.reshape(self.total_feeds, -1, *points.shape[1:]).mean(axis=0),
                          dtype=np.float32)


class ReAlign:
    """Two-pass alignment: the landmarks of a first pass give each face's similarity to the
    mean face, and the face is cut again, upright and at the plugin's canonical framing, from
    the original frame for a second pass.

    The disagreement between the passes (mean point distance over the outer-eye-corner
    distance) is kept per face in ``batch.align_scores``: about 0.01 on well aligned faces, a
    few times more on badly aligned ones.

    Parameters
    ----------
    enabled:
        True to re-align.
    plugin:
        The aligner plugin.
    margin:
        How far re-feed jitter may move the second-pass crops (a fraction of their side).
        Crops are cut from the frame itself, so jittered crops never run out of image.
    """

    def __init__(self, enabled: bool, plugin: ExtractPlugin, margin: float) -> None:
        if not isinstance(plugin, AlignPlugin):
            raise PluginError(f"expected an aligner plugin, got {type(plugin).__name__}")
        self.enabled = enabled
        """True if re-aligns are performed."""
        self.iterations = 2 if enabled else 1
        """The passes through the model per face."""
        self.margin = margin
        """How far re-feed jitter may move the second-pass crops (fraction of their side)."""
        self._plugin = plugin

    @property
    def default_crop_matrices(self) -> npt.NDArray[np.float32]:
        """(1, 3, 3) the plugin's canonical crop: normalized crop -> legacy-normalized face
        space. Re-feeds jitter around it."""
        return self._plugin.crop_to_legacy()[None].astype(np.float32)

    def crop_matrices(self, landmarks: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        """(N, 3, 3) normalized crop -> frame matrices of the canonical crops for faces with
        the given (N, P, 2) frame landmarks. A face whose landmarks cannot be aligned (all
        points equal) keeps a NaN matrix."""
        frame_to_legacy = legacy_matrices(np.asarray(landmarks, dtype=np.float64))
        out = np.full_like(frame_to_legacy, np.nan)
        valid = ~np.isnan(frame_to_legacy).any(axis=(1, 2))
        out[valid] = np.linalg.inv(frame_to_legacy[valid]) @ self._plugin.crop_to_legacy()
        return out

    def __call__(self, batch: ExtractBatch, landmarks: npt.NDArray[np.float32],
                 iteration: int) -> None:
        """Handle the result of a pass.

        Parameters
        ----------
        batch:
            The batch being aligned.
        landmarks:
            (N, P, 2) the pass's landmarks in frame pixels.
        iteration:
            1: set ``batch.matrices`` to the canonical crops built from these landmarks (faces
            whose first pass failed keep their first crop) and keep the landmarks in
            ``batch.aligned``. 2: score each face by how far these landmarks moved from the
            first pass's, into ``batch.align_scores``.
        """
        if iteration == 1:
            matrices = self.crop_matrices(landmarks)
            failed = np.isnan(matrices).any(axis=(1, 2))
            matrices[failed] = batch.matrices[:len(matrices)][failed]
            batch.matrices = matrices.astype(np.float32)
            batch.aligned = ExtractBatchAligned(landmarks, self._plugin.landmark_type)
            return
        first = batch.aligned.landmarks
        if first is None or first.shape != landmarks.shape:
            raise PluginError("expected the first re-align pass's landmarks in the batch")
        batch.align_scores = _disagreement(first, landmarks)

    def get_images(self, matrices: npt.NDArray[np.float32], feeds: int,
                   batch: ExtractBatch | None = None) -> npt.NDArray[np.uint8]:
        """Cut the second-pass crops out of the batch's frames.

        Parameters
        ----------
        matrices:
            (N * feeds, 3, 3) normalized crop -> frame matrices, in feed order.
        feeds:
            The feeds per face.
        batch:
            The batch whose frames are cut.

        Returns
        -------
        (N * feeds, S, S, 3) uint8 BGR crops at the plugin's input size.
        """
        if batch is None:
            raise ValueError("expected the batch whose frames to crop")
        frame_ids = np.tile(batch.frame_ids, feeds)
        return crop_faces(batch.images, frame_ids, matrices, self._plugin)


def crop_faces(images: list[np.ndarray], frame_ids: npt.NDArray[np.integer[Any]],
               matrices: npt.NDArray[np.floating], plugin: ExtractPlugin
               ) -> npt.NDArray[np.uint8]:
    """(N, S, S, 3) uint8 crops at the plugin's input size for (N, 3, 3) normalized crop ->
    frame matrices; outside the frame is black. Faces with NaN matrices get black crops."""
    size = plugin.input_size
    mats = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    valid = ~np.isnan(mats).any(axis=(1, 2))
    out = np.zeros((len(mats), size, size, 3), dtype=np.uint8)
    if not valid.any():
        return out
    order = np.argsort(np.asarray(frame_ids)[valid], kind="stable")
    picked = np.flatnonzero(valid)[order]
    to_crop = np.diag([size, size, 1.0]) @ np.linalg.inv(mats[picked])
    out[picked] = warp_aligned(images, np.asarray(frame_ids)[picked], to_crop, size,
                               shrink_interpolation(plugin))
    return out


def _eye_distance(landmarks: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """(N,) the outer-eye-corner distance of each face, or the mean face's scale for layouts
    without eyes."""
    points = np.asarray(landmarks, dtype=np.float64)
    kind = LandmarkType.from_shape(points.shape)
    if kind in _FILTER_TYPES:
        lm68 = landmarks_68(points)
        return np.asarray(np.linalg.norm(lm68[:, 45] - lm68[:, 36], axis=1), np.float64)
    matrices = legacy_matrices(points)
    return np.asarray(1.0 / np.hypot(matrices[:, 0, 0], matrices[:, 1, 0]), np.float64)


def _disagreement(first: npt.NDArray[np.floating], second: npt.NDArray[np.floating]
                  ) -> npt.NDArray[np.float32]:
    """(N,) mean point distance between two passes over the eye distance."""
    distance = np.linalg.norm(np.asarray(first, np.float64) - second, axis=2).mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(distance / np.maximum(_eye_distance(second), 1e-6), np.float32)


def mean_face_distance(aligned: ExtractBatchAligned) -> npt.NDArray[np.float32]:
    """(N,) the mean absolute difference between each face's normalized landmarks 17..67 and
    the mean face (the reference's distance filter metric)."""
    if aligned.landmarks is None or not len(aligned):
        return np.zeros((0,), np.float32)
    points = aligned.landmarks_normalized
    if aligned.landmark_type in _FILTER_TYPES:
        points = landmarks_68(np.asarray(points))[:, 17:]
    elif aligned.landmark_type != LandmarkType.LM_2D_51:
        return np.full(len(aligned), np.nan, np.float32)
    return np.asarray(np.abs(points - MEAN_FACE_2D_51).mean(axis=(1, 2)), np.float32)


def frame_roll(aligned: ExtractBatchAligned) -> npt.NDArray[np.float64]:
    """(N,) each head's roll in the frame, in degrees (positive: turned clockwise on screen):
    the in-plane angle of its alignment plus the pose's remaining roll in the aligned face.

    The reference measures the pose's roll alone, in the aligned face, where alignment has
    already taken the tilt out: its roll filter hardly ever fires."""
    to_frame = np.linalg.inv(aligned.matrices.astype(np.float64))
    in_plane = np.arctan2(to_frame[:, 1, 0], to_frame[:, 0, 0])
    rotation = aligned.rotation.astype(np.float64)
    residual = np.arctan2(rotation[:, 1, 0], rotation[:, 0, 0])
    angle = np.degrees(in_plane + residual)
    return np.asarray((angle + 180.0) % 360.0 - 180.0, dtype=np.float64)


class AlignedFilter:
    """Drops faces whose landmarks look wrong, in this order (68- and 98-point landmarks only):

    1. ``features``: eyebrows and eyes must lie above the mouth in the aligned face;
    2. ``scale``: the face-centred crop's side must be within ``min_scale`` .. ``max_scale``
       times the frame's shorter side (``max_scale`` 0: no maximum);
    3. ``distance``: the mean distance of the aligned landmarks from the mean face, in percent
       of the aligned face, at most ``distance``;
    4. ``roll``: the head's roll in the frame at most ``roll`` degrees (0: off; see
       :func:`frame_roll`);
    5. ``max_score``: the aligner's error estimate (``batch.align_scores``) at most this (0:
       off; faces without a score pass).

    Parameters
    ----------
    enabled:
        True to filter.
    features, min_scale, max_scale, distance, roll, max_score:
        The settings above; defaults are the reference's (``max_score`` is faceinfer's).
    """

    def __init__(self, enabled: bool, features: bool = True, min_scale: float = 0.03,
                 max_scale: float = 4.0, distance: float = 40.0, roll: float = 0.0,
                 max_score: float = 0.0) -> None:
        limits = {"min_scale": (min_scale, 0.0, 1.0), "max_scale": (max_scale, 0.0, 10.0),
                  "distance": (distance, 0.0, 45.0), "roll": (roll, 0.0, 90.0),
                  "max_score": (max_score, 0.0, 10.0)}
        for name, (value, low, high) in limits.items():
            if not low <= value <= high:
                raise ConfigError(f"aligner filter {name}: expected {low} to {high}, "
                                  f"got {value}")
        self.enabled = enabled
        """True if filtering."""
        self.features = features
        self.min_scale = min_scale
        self.max_scale = max_scale
        self.distance = distance
        self.roll = roll
        self.max_score = max_score
        self.counts = {"features": 0, "scale": 0, "distance": 0, "roll": 0, "score": 0}
        """How many faces each filter dropped."""
        self._warned = False

    def __call__(self, batch: ExtractBatch) -> None:
        """Drop the faces of the batch that fail a filter, counting them."""
        if not self.enabled or not batch.num_faces:
            return
        if batch.landmark_type not in _FILTER_TYPES:
            if not self._warned:
                logger.warning("Aligner filters need 68- or 98-point landmarks, got %s: "
                               "not filtering", batch.landmark_type)
                self._warned = True
            return
        keep = np.ones(batch.num_faces, dtype=np.bool_)
        for name, passed in self._tests(batch):
            failed = keep & ~passed
            self.counts[name] += int(failed.sum())
            keep &= passed
        if not keep.all():
            batch.apply_mask(keep)

    def _tests(self, batch: ExtractBatch) -> list[tuple[str, npt.NDArray[np.bool_]]]:
        aligned = batch.aligned
        out: list[tuple[str, npt.NDArray[np.bool_]]] = []
        normalized = landmarks_68(np.asarray(aligned.landmarks_normalized, np.float64))
        if self.features:
            upper = np.concatenate([normalized[:, 17:27, 1], normalized[:, 36:48, 1]], axis=1)
            out.append(("features", normalized[:, 48:68, 1].min(axis=1) - upper.max(axis=1) > 0))
        if self.min_scale or self.max_scale:
            matrices = aligned.matrices.astype(np.float64)
            size = 1.0 / (0.5 * np.hypot(matrices[:, 0, 0], matrices[:, 1, 0]))
            shortest = np.array([min(image.shape[:2]) for image in batch.images],
                                np.float64)[batch.frame_ids]
            passed = size >= shortest * self.min_scale
            if self.max_scale:
                passed &= size <= shortest * self.max_scale
            out.append(("scale", passed))
        if self.distance:
            out.append(("distance", mean_face_distance(aligned) <= self.distance / 100.0))
        if self.roll:
            out.append(("roll", np.abs(frame_roll(aligned)) <= self.roll))
        if self.max_score:
            scores = batch.align_scores
            out.append(("score", np.isnan(scores) | (scores <= self.max_score)))
        return out

    def output_counts(self) -> None:
        """Log how many faces each filter dropped, when filtering."""
        if not self.enabled:
            return
        logger.info("[Align filter] Features: %d, Scale (min: %s, max: %s): %d, Distance (%s): "
                    "%d, Roll (%s): %d, Score (%s): %d", self.counts["features"],
                    self.min_scale, self.max_scale, self.counts["scale"], self.distance,
                    self.counts["distance"], self.roll, self.counts["roll"], self.max_score,
                    self.counts["score"])


class Align(ExtractHandler):
    """Runs a landmark plugin on batches of faces.

    Parameters
    ----------
    plugin:
        The registered name of the aligner.
    re_feeds:
        Extra passes with jittered crops, averaged (0 to 10). Default: 0.
    re_align:
        True to align a second time from an upright crop built from the first pass's landmarks.
    normalization:
        Aligner input normalization: none, clahe, hist or mean. Default: None (none).
    filters:
        True to drop faces whose landmarks fail the aligner filters.
    compile_model:
        True to compile the plugin's torch modules.
    config_file:
        A TOML config file with per-plugin settings, or None.
    config:
        Settings overriding the config file.
    device:
        Where torch plugins run: auto, cpu, cuda or cuda:N.
    use_keypoints:
        True (default) to build the first crop from the detector's keypoints where there are
        any; False to always start from the box.
    filter_settings:
        Settings of the aligner filters (see :class:`AlignedFilter`), e.g. ``{"distance":
        15.0}``.
    """

    plugin_type: HandlerType = "align"
    plugin: AlignPlugin

    def __init__(self, plugin: str, re_feeds: int = 0, re_align: bool = False,
                 normalization: NormalizationType | None = None, filters: bool = False,
                 compile_model: bool = False, config_file: str | None = None,
                 config: Mapping[str, Any] | None = None, device: str | None = None,
                 use_keypoints: bool = True,
                 filter_settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(plugin, compile_model, config_file, config, device)
        if not isinstance(self.plugin, AlignPlugin):
            raise PluginError(f"expected an aligner for '{plugin}', "
                              f"got {type(self.plugin).__name__}")
        self.re_feeds = re_feeds
        """Extra jittered passes per face."""
        self.re_align = re_align
        """True to align twice."""
        self.filters = filters
        """True to apply the aligner filters."""
        self.use_keypoints = use_keypoints
        """True to start from the detector's keypoints where there are any."""
        self._refeed = ReFeed(re_feeds)
        self._realign = ReAlign(re_align, self.plugin, self._refeed.beta)
        self._normalize = Normalize(normalization or "none")
        try:
            self._filter = AlignedFilter(filters, **dict(filter_settings or {}))
        except TypeError as err:
            raise ConfigError(f"unknown aligner filter setting: {err}") from err

    def set_normalize_method(self, method: NormalizationType | None) -> None:
        """Change the input normalization: none (or None), clahe, hist or mean."""
        self._normalize.set_method(method)

    def first_pass_matrices(self, batch: ExtractBatch) -> npt.NDArray[np.float64]:
        """(N, 3, 3) normalized crop -> frame matrices of each face's first crop: from its
        detector keypoints when it has five finite ones (and they are used), else from its box
        in the plugin's convention squared by the plugin."""
        boxes = convert_boxes(batch.bboxes, batch.face_box, self.plugin.face_box)
        roi = np.asarray(self.plugin.roi(boxes), dtype=np.int64).reshape(-1, 4)
        sides = roi[:, 2:] - roi[:, :2]
        if len(roi) != batch.num_faces or np.any(sides[:, 0] != sides[:, 1]) or np.any(
                sides <= 0):
            raise PluginError(f"aligner '{self.plugin_name}' must return one non-empty square "
                              f"region per face, got {roi.tolist()}")
        matrices = roi_matrices(roi)
        points = batch.keypoints
        if self.use_keypoints and points.shape[1] == 5:
            usable = np.isfinite(points).all(axis=(1, 2))
            if usable.any():
                to_legacy = umeyama(points[usable].astype(np.float64), KEYPOINTS_5_LEGACY)
                good = ~np.isnan(to_legacy).any(axis=(1, 2))
                crop = np.linalg.inv(to_legacy[good]) @ self.plugin.crop_to_legacy()
                matrices[np.flatnonzero(usable)[good]] = crop
        return matrices

    def _feed(self, crops: npt.NDArray[np.uint8]) -> np.ndarray:
        return self.plugin.pre_process(format_images(self._normalize(crops), self.plugin))

    def pre_process(self, batch: ExtractBatch) -> None:
        """Cut each face's first crop (with re-feed jitter unless re-aligning) into the plugin's
        input, normalize and format it. ``batch.matrices`` takes each feed's normalized crop
        coordinates to frame pixels."""
        matrices = self.first_pass_matrices(batch)
        if not self._realign.enabled:
            matrices = self._refeed(matrices.astype(np.float32), with_roi=False).astype(
                np.float64)
        feeds = len(matrices) // max(batch.num_faces, 1)
        crops = crop_faces(batch.images, np.tile(batch.frame_ids, feeds), matrices, self.plugin)
        batch.matrices = matrices.astype(np.float32)
        batch.data = self._feed(crops)

    def _predict_feeds(self, data: np.ndarray, faces: int) -> np.ndarray:
        """Predict each feed's chunk separately, so no model call exceeds the batch size."""
        if not faces or len(data) == faces:
            return self.predict(data)
        return np.concatenate([self.predict(data[start:start + faces])
                               for start in range(0, len(data), faces)])

    def _landmarks(self, output: np.ndarray, matrices: npt.NDArray[np.float32], faces: int
                   ) -> npt.NDArray[np.float32]:
        points = np.asarray(self.plugin.post_process(output), dtype=np.float64)
        if points.ndim != 3 or len(points) != len(matrices) or points.shape[2] != 2:
            raise PluginError(f"aligner '{self.plugin_name}' must return (N, P, 2) landmarks "
                              f"for {len(matrices)} crops of {faces} faces, got {points.shape}")
        return map_points(matrices, points).astype(np.float32)

    def process(self, batch: ExtractBatch) -> None:
        """Run the aligner. With re-align, the first pass's landmarks give each face an upright
        canonical crop, cut (with any re-feed jitter) from the frame and predicted again."""
        faces = batch.num_faces
        batch.data = self._predict_feeds(batch.data, faces)
        if not self._realign.enabled:
            return
        first = self._landmarks(batch.data, batch.matrices, faces)
        self._realign(batch, first, 1)
        matrices = self._refeed(batch.matrices, with_roi=False)
        crops = self._realign.get_images(matrices, self._refeed.total_feeds, batch)
        batch.matrices = matrices
        batch.data = self._predict_feeds(self._feed(crops), faces)

    def post_process(self, batch: ExtractBatch) -> None:
        """Map the plugin's normalized landmarks to frame pixels, average the re-feeds, score
        each face (re-align disagreement, else distance from the mean face), store the
        landmarks and apply the filters."""
        faces = batch.num_faces
        points = self._refeed.merge(self._landmarks(batch.data, batch.matrices, faces))
        if self._realign.enabled:
            self._realign(batch, points, 2)
        batch.aligned = ExtractBatchAligned(points, self.plugin.landmark_type)
        if not self._realign.enabled and faces:
            batch.align_scores = mean_face_distance(batch.aligned)
        self._filter(batch)

    def output_info(self) -> None:
        """Log how many faces the aligner filters dropped."""
        self._filter.output_counts()
