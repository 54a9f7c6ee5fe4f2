"""The mtcnn detector: its vendored weights, its building blocks (NMS, the pyramid mosaic), its
config, and its detections on the faceswap sample photos and video through the Detect stage."""
from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from faceinfer import Detect
from faceinfer.errors import ConfigError, PluginError
from faceinfer.objects import ExtractBatch
from faceinfer.plugins._checksum import file_sha256
from faceinfer.plugins.detect import mtcnn
from faceinfer.plugins.detect._mtcnn_boxes import nms
from faceinfer.plugins.detect._mtcnn_nets import build_nets
from faceinfer.plugins.detect._mtcnn_pyramid import (
    content_box,
    fill_mosaic_cpu,
    fill_mosaic_torch,
    level_parts,
    plan_pyramid,
    pyramid_sizes,
)
from faceinfer.plugins.detect.mtcnn import MTCNNConfig, MTCNNDetector
from tests.conftest import SHARED

SAMPLES = SHARED / "data" / "faceswap_samples"
PHOTOS = {"test_img1": (3, None), "test_img2": (3, 3), "test_img3": (1, None),
          "test_img4": (8, 8)}
"""Faces expected per photo: (at least, exactly or None). The NOTICE counts 3 whole faces + 1
cut off at the left edge (img1), 3 small faces (img2), 1 face + 1 partial (img3), 8 (img4)."""

SHAPES = {
    "pnet": {"conv1.weight": (10, 3, 3, 3), "conv1.bias": (10,), "prelu1.weight": (10,),
             "conv2.weight": (16, 10, 3, 3), "conv2.bias": (16,), "prelu2.weight": (16,),
             "conv3.weight": (32, 16, 3, 3), "conv3.bias": (32,), "prelu3.weight": (32,),
             "conv4_1.weight": (2, 32, 1, 1), "conv4_1.bias": (2,),
             "conv4_2.weight": (4, 32, 1, 1), "conv4_2.bias": (4,)},
    "rnet": {"conv1.weight": (28, 3, 3, 3), "conv1.bias": (28,), "prelu1.weight": (28,),
             "conv2.weight": (48, 28, 3, 3), "conv2.bias": (48,), "prelu2.weight": (48,),
             "conv3.weight": (64, 48, 2, 2), "conv3.bias": (64,), "prelu3.weight": (64,),
             "dense4.weight": (128, 576), "dense4.bias": (128,), "prelu4.weight": (128,),
             "dense5_1.weight": (2, 128), "dense5_1.bias": (2,),
             "dense5_2.weight": (4, 128), "dense5_2.bias": (4,)},
    "onet": {"conv1.weight": (32, 3, 3, 3), "conv1.bias": (32,), "prelu1.weight": (32,),
             "conv2.weight": (64, 32, 3, 3), "conv2.bias": (64,), "prelu2.weight": (64,),
             "conv3.weight": (64, 64, 3, 3), "conv3.bias": (64,), "prelu3.weight": (64,),
             "conv4.weight": (128, 64, 2, 2), "conv4.bias": (128,), "prelu4.weight": (128,),
             "dense5.weight": (256, 1152), "dense5.bias": (256,), "prelu5.weight": (256,),
             "dense6_1.weight": (2, 256), "dense6_1.bias": (2,),
             "dense6_2.weight": (4, 256), "dense6_2.bias": (4,),
             "dense6_3.weight": (10, 256), "dense6_3.bias": (10,)},
}
"""The documented layout of the weights file (facenet-pytorch's state dicts)."""


def samples() -> Path:
    """The sample folder, or skip the test when the shared data is not there."""
    if not SAMPLES.is_dir():
        pytest.skip(f"the faceswap samples are not at {SAMPLES} (shared data missing)")
    return SAMPLES


def photo(name: str) -> npt.NDArray[np.uint8]:
    image = cv2.imread(str(samples() / f"{name}.jpg"))
    assert image is not None, f"cannot read {name}.jpg"
    return np.asarray(image, dtype=np.uint8)


def run(handler: Detect, names: list[str], images: list[npt.NDArray[np.uint8]]
        ) -> tuple[ExtractBatch, npt.NDArray[np.float32], list[npt.NDArray[np.float32]]]:
    """Run the Detect stage on the frames. Returns the batch, the plugin's raw output (scores
    included) and its decoded output (boxes and keypoints in model input pixels)."""
    batch = ExtractBatch(names, images)
    handler.pre_process(batch)
    handler.process(batch)
    raw = np.array(batch.data, copy=True)
    found = handler.plugin.post_process(raw)
    handler.post_process(batch)
    return batch, raw, found


def scores_of(raw: npt.NDArray[np.float32], threshold: float) -> list[npt.NDArray[np.float32]]:
    """Per frame, the scores of the raw detections that pass ``threshold``."""
    return [frame[frame[:, 0] >= threshold, 0] for frame in raw]


@pytest.fixture(scope="module")
def detect() -> Detect:
    handler = Detect("mtcnn")
    handler.init_model()
    return handler


# --- weights ---------------------------------------------------------------------------------

def test_vendored_weights_match_the_recorded_sha256() -> None:
    assert file_sha256(mtcnn.WEIGHTS_FILE) == mtcnn.WEIGHTS_SHA256
    assert MTCNNDetector.weights_sha256 == mtcnn.WEIGHTS_SHA256
    readme = (mtcnn.WEIGHTS_FILE.parent / "README.md").read_text(encoding="utf-8")
    assert mtcnn.WEIGHTS_SHA256 in readme
    license_text = (mtcnn.WEIGHTS_FILE.parent / "MTCNN_LICENSE.txt").read_text(encoding="utf-8")
    assert "MIT License" in license_text
    assert "Timothy Esler" in license_text


def test_vendored_weights_have_the_documented_keys_and_shapes() -> None:
    expected = {f"{net}.{key}": shape for net, layers in SHAPES.items()
                for key, shape in layers.items()}
    with np.load(mtcnn.WEIGHTS_FILE, allow_pickle=False) as data:
        found = {key: (data[key].shape, data[key].dtype) for key in data.files}
    assert {key: shape for key, (shape, _) in found.items()} == expected
    assert {dtype for _, dtype in found.values()} == {np.dtype(np.float32)}


def test_nets_load_the_weights_and_give_the_documented_outputs() -> None:
    with np.load(mtcnn.WEIGHTS_FILE, allow_pickle=False) as data:
        nets = build_nets({key: data[key] for key in data.files})
    with torch.inference_mode():
        prob, reg = nets["pnet"](torch.zeros(2, 3, 30, 40))
        assert prob.shape == (2, 10, 15)
        assert reg.shape == (2, 4, 10, 15)
        prob, reg = nets["rnet"](torch.zeros(5, 3, 24, 24))
        assert (prob.shape, reg.shape) == ((5,), (5, 4))
        prob, reg, points = nets["onet"](torch.zeros(5, 3, 48, 48))
        assert (prob.shape, reg.shape, points.shape) == ((5,), (5, 4), (5, 10))
        assert bool(((prob >= 0) & (prob <= 1)).all())


def test_load_refuses_weights_with_another_sha256(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    changed = tmp_path / "mtcnn.npz"
    changed.write_bytes(mtcnn.WEIGHTS_FILE.read_bytes() + b"\0")
    monkeypatch.setattr(mtcnn, "WEIGHTS_FILE", changed)
    plugin = MTCNNDetector(MTCNNConfig())
    with pytest.raises(PluginError, match=re.escape(str(changed))):
        plugin.load_model()
    monkeypatch.setattr(mtcnn, "WEIGHTS_FILE", tmp_path / "missing.npz")
    with pytest.raises(PluginError, match=re.escape("missing.npz")):
        plugin.load_model()


# --- building blocks -------------------------------------------------------------------------

def greedy_nms(boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64],
               groups: npt.NDArray[np.int64], threshold: float, use_min: bool) -> list[int]:
    """The textbook loop, for reference."""
    kept: list[int] = []
    for group in sorted(set(groups.tolist())):
        index = [i for i in np.lexsort((np.arange(len(scores)), -scores)).tolist()
                 if groups[i] == group]
        alive: list[int] = []
        for i in index:
            ok = True
            for j in alive:
                width = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
                height = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
                inter = max(width, 0.0) * max(height, 0.0)
                area_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
                area_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
                union = min(area_i, area_j) if use_min else area_i + area_j - inter
                if inter > 0 and inter > threshold * union:
                    ok = False
                    break
            if ok:
                alive.append(i)
        kept.extend(alive)
    return kept


@pytest.mark.parametrize("use_min", [False, True])
@pytest.mark.parametrize("seed", range(5))
def test_nms_gives_the_greedy_result(seed: int, use_min: bool) -> None:
    rng = np.random.default_rng(seed)
    count = 300
    corner = rng.uniform(0, 200, size=(count, 2))
    side = rng.uniform(5, 60, size=(count, 2))
    boxes = np.concatenate([corner, corner + side], axis=1)
    scores = rng.choice(np.linspace(0.5, 1.0, 40), size=count)  # with ties
    groups = rng.integers(0, 3, size=count)
    for threshold in (0.3, 0.5, 0.7):
        kept = nms(boxes, scores, groups, threshold, use_min)
        assert kept.tolist() == greedy_nms(boxes, scores, groups, threshold, use_min)
    assert nms(boxes[:0], scores[:0], groups[:0], 0.5).shape == (0,)


def test_pyramid_levels_are_even_and_apart_in_the_mosaic() -> None:
    levels, height, width = plan_pyramid(640, 20, 0.709)
    sizes = [level.size for level in levels]
    assert sizes[0] == 384  # 640 * 12 / 20
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[-1] >= 12
    assert len(sizes) == 11
    occupied = np.zeros((height + 2, width + 2), dtype=np.int64)
    for level in levels:
        assert level.size % 2 == level.top % 2 == level.left % 2 == 0
        assert level.top + level.size <= height
        assert level.left + level.size <= width
        # The level grown by the gap never meets another level.
        occupied[max(level.top - 2, 0):level.top + level.size + 2,
                 max(level.left - 2, 0):level.left + level.size + 2] += 1
        assert occupied[level.top:level.top + level.size,
                        level.left:level.left + level.size].max() == 1
    assert plan_pyramid(640, 20, 0.709)[1:] == (height, width)


def test_pnet_on_the_mosaic_equals_pnet_on_each_level_alone() -> None:
    plugin = MTCNNDetector(MTCNNConfig(input_size=160, min_size=24))
    plugin.load_model()
    rng = np.random.default_rng(1)
    height, width = plugin.mosaic_shape
    mosaic = torch.zeros(1, 3, height, width)
    images = []
    for level in plugin.levels:
        image = torch.from_numpy(rng.uniform(0, 2, (1, 3, level.size, level.size))
                                 .astype(np.float32))
        mosaic[:, :, level.top:level.top + level.size,
               level.left:level.left + level.size] = image
        images.append(image)
    level_of = plugin.layout(None).level_of
    pnet = plugin.model["pnet"]
    with torch.inference_mode():
        whole = pnet(mosaic)[0][0].numpy()
        for index, (level, image) in enumerate(zip(plugin.levels, images, strict=True)):
            alone = pnet(image)[0][0].numpy()
            cells = level.size // 2 - 5
            assert alone.shape == (cells, cells)
            rows, cols = np.nonzero(level_of == index)
            got = whole[rows, cols].reshape(cells, cells)
            np.testing.assert_allclose(got, alone, atol=1e-5)


@pytest.mark.parametrize("box", [None, (40, 150, 0, 200), (0, 200, 64, 120)])
def test_torch_pyramid_equals_opencv_pyramid(box: tuple[int, int, int, int] | None) -> None:
    """The GPU path builds the pyramid with torch ops, the CPU path with OpenCV: both are exact
    area averages, of the whole levels or of their parts for a content box."""
    plugin = MTCNNDetector(MTCNNConfig(input_size=200, min_size=20))
    plugin.load_model()
    frames = np.random.default_rng(2).uniform(-1, 1, (2, 200, 200, 3)).astype(np.float32)
    layout = plugin.layout(box)
    height, width = layout.shape
    by_opencv = torch.zeros(2, height, width, 3)
    by_torch = torch.zeros(2, height, width, 3)
    with torch.inference_mode():
        fill_mosaic_cpu(frames, by_opencv, layout, plugin.input_size)
        fill_mosaic_torch(torch.from_numpy(frames), by_torch, layout, plugin._tables,
                          plugin._buffer)
    np.testing.assert_allclose(by_torch.numpy(), by_opencv.numpy(), atol=1e-4)
    level = layout.levels[0]
    area = cv2.resize(frames[0], (level.size, level.size), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(by_torch[0][level.in_mosaic].numpy(), area[level.in_level] + 1,
                               atol=1e-4)


# --- config and spec -------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    {"min_size": 19}, {"min_size": 1001}, {"min_size": 700}, {"input_size": 32},
    {"scale_factor": 0.3}, {"scale_factor": 0.99}, {"threshold_1": -0.1},
    {"threshold_3": 1.5}, {"score_threshold": 2.0}, {"batch_size": 0}, {"min_size": 20.5},
])
def test_config_rejects_values_out_of_range(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        MTCNNConfig(**overrides)  # type: ignore[arg-type]


def test_config_defaults_and_help() -> None:
    config = MTCNNConfig()
    assert (config.batch_size, config.input_size, config.min_size) == (8, 640, 20)
    assert (config.scale_factor, config.threshold_1, config.threshold_2,
            config.threshold_3, config.score_threshold) == (0.709, 0.6, 0.7, 0.7, 0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.min_size = 40  # type: ignore[misc]
    source = Path(mtcnn.__file__).read_text(encoding="utf-8")
    for item in dataclasses.fields(MTCNNConfig):
        assert f'    {item.name}: ' in source
        after = source.split(f"    {item.name}: ", 1)[1].split("\n", 2)[1]
        assert after.strip().startswith('"""'), f"{item.name} has no docstring"


def test_spec(detect: Detect) -> None:
    spec = detect.plugin.spec
    assert spec.is_rgb
    assert spec.dtype == "float32"
    assert spec.scale == (-1.0, 1.0)
    assert not spec.force_cpu
    assert spec.keypoints == 5
    assert spec.input_size == 640
    assert spec.batch_size == 8
    assert spec.weights_sha256 == mtcnn.WEIGHTS_SHA256
    assert detect.plugin.speed == "medium"


def test_no_face_gives_an_empty_array(detect: Detect) -> None:
    frames = [np.zeros((120, 200, 3), np.uint8), np.full((90, 90, 3), 128, np.uint8)]
    _, _, found = run(detect, ["black", "grey"], frames)
    assert [f.shape for f in found] == [(0, 14), (0, 14)]
    assert all(f.dtype == np.float32 for f in found)


def test_small_config_runs_and_rejects_channels_first_input() -> None:
    plugin = MTCNNDetector(MTCNNConfig(input_size=64, min_size=20, batch_size=2))
    plugin.load_model()
    frames = np.random.default_rng(3).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    found = plugin.post_process(plugin.process(frames))
    assert len(found) == 2
    assert all(f.shape[1] == 14 and f.dtype == np.float32 for f in found)
    with pytest.raises(ValueError, match="expected"):
        plugin.process(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))
    assert plugin.post_process(plugin.process(frames[:0])) == []


# --- detections ------------------------------------------------------------------------------

def check_faces(found: npt.NDArray[np.float32], size: int) -> None:
    """Boxes inside the input; on faces not cut by its edge, keypoints inside their box, the
    eyes above the nose above the mouth, left before right."""
    assert found.dtype == np.float32
    assert found.shape[1] == 14
    boxes, points = found[:, :4], found[:, 4:].reshape(-1, 5, 2)
    assert np.all(boxes[:, :2] >= 0)
    assert np.all(boxes[:, 2:] <= size)
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    whole = np.all(boxes[:, :2] > 1, axis=1) & np.all(boxes[:, 2:] < size - 1, axis=1)
    for box, point in zip(boxes[whole], points[whole], strict=True):
        assert np.all((point > box[:2]) & (point < box[2:]))
        left_eye, right_eye, nose, mouth_left, mouth_right = point
        assert left_eye[0] < right_eye[0]
        assert mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_faces_in_the_sample_photos(detect: Detect, name: str) -> None:
    image = photo(name)
    batch, raw, found = run(detect, [name], [image])
    at_least, exactly = PHOTOS[name]
    assert isinstance(detect.plugin, MTCNNDetector)
    scores = scores_of(raw, detect.plugin.settings.score_threshold)[0]
    print(f"{name}: {len(found[0])} faces, scores {[f'{s:.4f}' for s in scores]}")
    assert len(found[0]) >= at_least
    if exactly is not None:
        assert len(found[0]) == exactly
    assert len(scores) == len(found[0])
    check_faces(found[0], detect.plugin.input_size)
    # The stage maps the same boxes back into the frame (a face cut by the frame's edge may
    # reach into the letterbox border, so past the frame).
    assert batch.num_faces == len(found[0])
    height, width = image.shape[:2]
    assert np.all(batch.bboxes[:, :2] < (width, height))
    assert np.all(batch.bboxes[:, 2:] > 0)


def test_one_face_in_every_frame_of_the_sample_video(detect: Detect) -> None:
    av = pytest.importorskip("av")
    with av.open(str(samples() / "test.mp4")) as container:
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    assert len(frames) == 91
    counts: list[int] = []
    scores: list[float] = []
    for first in range(0, len(frames), detect.batch_size):
        part = frames[first:first + detect.batch_size]
        batch, raw, found = run(detect, [str(first + i) for i in range(len(part))], part)
        counts.extend(len(f) for f in found)
        scores.extend(np.concatenate(scores_of(raw, 0.0)).tolist())
        for frame_faces in found:
            check_faces(frame_faces, detect.plugin.input_size)
        assert batch.num_faces == sum(len(f) for f in found)
    print(f"video: faces per frame {np.bincount(counts).tolist()}, scores from "
          f"{min(scores):.3f} to {max(scores):.3f}")
    assert counts == [1] * len(frames)


def test_batching_does_not_change_the_results(detect: Detect) -> None:
    names = sorted(PHOTOS)
    images = [photo(name) for name in names]
    _, together, _ = run(detect, names, images)
    for index, (name, image) in enumerate(zip(names, images, strict=True)):
        _, alone, _ = run(detect, [name], [image])
        mine = together[index][~np.isnan(together[index][:, 0])]
        assert mine.shape == alone[0].shape
        np.testing.assert_allclose(mine, alone[0], rtol=1e-3, atol=1e-3)


def test_score_threshold_is_honoured() -> None:
    image = photo("test_img4")
    default, strict = Detect("mtcnn"), Detect("mtcnn", config={"score_threshold": 0.999999})
    default.init_model()
    strict.init_model()
    _, raw, found = run(default, ["img4"], [image])
    _, strict_raw, strict_found = run(strict, ["img4"], [image])
    np.testing.assert_array_equal(raw, strict_raw)
    assert len(strict_found[0]) == len(scores_of(raw, 0.999999)[0])
    assert len(strict_found[0]) < len(found[0])
    low = Detect("mtcnn", config={"score_threshold": 0.0})
    low.init_model()
    assert len(run(low, ["img4"], [image])[2][0]) >= len(found[0])


# --- skipping black borders ------------------------------------------------------------------

@pytest.fixture(scope="module")
def plugin() -> MTCNNDetector:
    handler = Detect("mtcnn", device="cpu")
    handler.init_model()
    assert isinstance(handler.plugin, MTCNNDetector)
    return handler.plugin


def video_frames(count: int) -> list[npt.NDArray[np.uint8]]:
    av = pytest.importorskip("av")
    with av.open(str(samples() / "test.mp4")) as container:
        return [frame.to_ndarray(format="bgr24")
                for _, frame in zip(range(count), container.decode(video=0), strict=False)]


def letterbox(images: list[npt.NDArray[np.uint8]]) -> npt.NDArray[np.float32]:
    """The plugin input the Detect stage makes of the frames (letterboxed, -1..1)."""
    handler = Detect("mtcnn", device="cpu")  # pre_process needs no model
    batch = ExtractBatch([str(index) for index in range(len(images))], images)
    handler.pre_process(batch)
    return np.asarray(batch.data, dtype=np.float32)


def skipped_and_full(plugin: MTCNNDetector, feed: npt.NDArray[np.float32],
                     monkeypatch: pytest.MonkeyPatch
                     ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32],
                                list[tuple[int, int]], list[tuple[int, int]]]:
    """The plugin's raw output with black windows skipped and with the whole pyramid, and the
    (height, width) of every mosaic P-Net ran on in each."""
    calls = plugin._call_pnet
    outputs, shapes = [], []
    for skip in (True, False):
        seen: list[tuple[int, int]] = []

        def record(mosaic: torch.Tensor, seen: list[tuple[int, int]] = seen
                   ) -> tuple[torch.Tensor, torch.Tensor]:
            seen.append((mosaic.shape[1], mosaic.shape[2]))
            return calls(mosaic)

        monkeypatch.setattr(plugin, "_call_pnet", record)
        monkeypatch.setattr(plugin, "skip_black", skip)
        outputs.append(plugin.process(feed))
        shapes.append(seen)
    monkeypatch.undo()
    return outputs[0], outputs[1], shapes[0], shapes[1]


def assert_same_detections(found: npt.NDArray[np.float32],
                           expected: npt.NDArray[np.float32]) -> None:
    """Same faces, with scores, boxes and keypoints equal to 1e-4 (relative, for pixels: the
    crops' float32 sample positions differ by about 1e-4 pixel between mosaics)."""
    assert found.shape == expected.shape
    np.testing.assert_array_equal(np.isnan(found), np.isnan(expected))
    np.testing.assert_allclose(found[..., 0], expected[..., 0], atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(found[..., 1:], expected[..., 1:], rtol=1e-4, atol=1e-3,
                               equal_nan=True)


def cells(shape: tuple[int, int]) -> int:
    """P-Net's output cells on a mosaic of that shape."""
    return (shape[0] // 2 - 5) * (shape[1] // 2 - 5)


def test_black_is_no_face_to_pnet(plugin: MTCNNDetector) -> None:
    assert plugin.black_score < 0.01 < plugin.settings.threshold_1


@pytest.mark.parametrize("case", ["video", "portrait", "landscape"])
def test_skipping_the_letterbox_keeps_the_detections(plugin: MTCNNDetector, case: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """16:9 video frames, a portrait photo and a 3:2 photo: P-Net scans a smaller mosaic, and
    the faces are those of the whole pyramid."""
    images = {"video": lambda: video_frames(4), "portrait": lambda: [photo("test_img3")],
              "landscape": lambda: [photo("test_img1")]}[case]()
    feed = letterbox(images)
    skipped, full, skipped_shapes, full_shapes = skipped_and_full(plugin, feed, monkeypatch)
    assert set(full_shapes) == {plugin.mosaic_shape}
    box = content_box(feed)
    assert box is not None
    assert set(skipped_shapes) == {plugin.layout(box).shape}
    content = (box[1] - box[0]) * (box[3] - box[2]) / plugin.input_size ** 2
    assert cells(skipped_shapes[0]) < (content + 0.2) * cells(plugin.mosaic_shape)
    assert_same_detections(skipped, full)
    assert (~np.isnan(skipped[:, :, 0])).sum() >= len(images)


def test_a_square_frame_scans_the_whole_pyramid(plugin: MTCNNDetector,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    image = photo("test_img4")
    side = min(image.shape[:2])
    feed = letterbox([image[:side, :side]])
    assert content_box(feed) == (0, plugin.input_size, 0, plugin.input_size)
    skipped, full, skipped_shapes, _ = skipped_and_full(plugin, feed, monkeypatch)
    assert set(skipped_shapes) == {plugin.mosaic_shape}
    np.testing.assert_array_equal(skipped, full)
    assert (skipped[0, :, 0] >= plugin.settings.score_threshold).sum() == PHOTOS["test_img4"][0]


def test_a_face_touching_the_letterbox_edge(plugin: MTCNNDetector,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """img1 cut just below the top of its right face's box: that face touches the black
    border above the frame."""
    image = photo("test_img1")[160:700]
    feed = letterbox([image])
    box = content_box(feed)
    assert box is not None
    skipped, full, skipped_shapes, _ = skipped_and_full(plugin, feed, monkeypatch)
    assert cells(skipped_shapes[0]) < cells(plugin.mosaic_shape)
    assert_same_detections(skipped, full)
    found = plugin.post_process(skipped)[0]
    top = (plugin.input_size - round(image.shape[0] * plugin.input_size / image.shape[1])) // 2
    assert np.any(np.abs(found[:, 1] - top) < 4), (found[:, 1], top)


def test_a_batch_scans_the_union_of_its_frames(plugin: MTCNNDetector,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A 16:9 frame and a portrait photo: the mosaic covers both, and each frame's faces are
    those it has alone."""
    images = [*video_frames(1), photo("test_img3")]
    feed = letterbox(images)
    wide, tall = content_box(feed[:1]), content_box(feed[1:])
    assert wide is not None
    assert tall is not None
    union = content_box(feed)
    assert union == (min(wide[0], tall[0]), max(wide[1], tall[1]),
                     min(wide[2], tall[2]), max(wide[3], tall[3]))
    monkeypatch.setattr(plugin, "_workers", lambda count: 1)  # one mosaic for both
    skipped, full, skipped_shapes, _ = skipped_and_full(plugin, feed, monkeypatch)
    assert set(skipped_shapes) == {plugin.layout(union).shape}
    assert_same_detections(skipped, full)
    for index in range(len(images)):
        alone = plugin.process(feed[index:index + 1])[0]
        mine = skipped[index][~np.isnan(skipped[index][:, 0])]
        assert_same_detections(mine, alone[~np.isnan(alone[:, 0])])


@pytest.mark.parametrize(("lit", "expected"), [
    (None, None),
    ((slice(139, 500), slice(None)), (128, 512, 0, 640)),
    ((slice(None), slice(100, 540)), (0, 640, 96, 544)),
    ((slice(0, 1), slice(639, 640)), (0, 16, 624, 640)),
    ((slice(None), slice(None)), (0, 640, 0, 640)),
])
def test_content_box(lit: tuple[slice, slice] | None,
                     expected: tuple[int, int, int, int] | None) -> None:
    frames = np.full((2, 640, 640, 3), -1.0, dtype=np.float32)
    if lit is not None:
        frames[1][lit] = -0.99  # any channel value above black counts
    assert content_box(frames) == expected


def test_level_parts_cover_every_window_that_sees_content() -> None:
    """Every P-Net window of a level that overlaps the level pixels averaging content lies in
    the part; the parts of the whole input are the whole levels."""
    sizes = pyramid_sizes(640, 20, 0.709)
    whole = level_parts(sizes, 640, (0, 640, 0, 640))
    assert [part.shape for part in whole] == [(size, size) for size in sizes]
    for box in [(128, 512, 0, 640), (0, 640, 96, 544), (304, 336, 304, 336)]:
        for part in level_parts(sizes, 640, box):
            ratio = 640 / part.size
            for start, stop, first, span in ((box[0], box[1], part.row, part.shape[0]),
                                             (box[2], box[3], part.col, part.shape[1])):
                assert first % 2 == span % 2 == 0
                assert span >= 12
                lit = np.flatnonzero((np.arange(part.size) + 1) * ratio > start)
                lit = lit[lit * ratio < stop]
                windows = np.arange(part.size // 2 - 5) * 2
                seeing = windows[(windows + 12 > lit[0]) & (windows <= lit[-1])]
                assert first <= seeing[0]
                assert seeing[-1] + 12 <= first + span


def test_a_low_threshold_1_scans_the_whole_pyramid() -> None:
    plugin = MTCNNDetector(MTCNNConfig(input_size=160, threshold_1=0.001))
    plugin.load_model()
    assert plugin.black_score >= plugin.settings.threshold_1
    assert plugin.layout((40, 120, 0, 160)).shape == plugin.mosaic_shape


def test_work_buffers_of_ended_threads_are_dropped() -> None:
    plugin = MTCNNDetector(MTCNNConfig(input_size=64, min_size=20, batch_size=2,
                                       cpu_workers=1))
    plugin.load_model()
    frames = np.random.default_rng(4).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    for _ in range(3):
        worker = threading.Thread(target=plugin.process, args=(frames,))
        worker.start()
        worker.join()
    assert len(plugin._buffers) == 1  # the last thread's: the others were dropped
    plugin.process(frames)
    assert list(plugin._buffers) == [threading.get_ident()]


@pytest.mark.parametrize(("input_size", "box"), [
    (640, (128, 512, 0, 640)), (640, (0, 640, 96, 544)), (640, (304, 336, 0, 640)),
    (200, (40, 150, 0, 200)),
])
def test_level_parts_hold_the_pixels_of_the_whole_levels(input_size: int,
                                                         box: tuple[int, int, int, int]) -> None:
    """Parts resized from the input under them (see resized_span) are the whole levels' pixels,
    exactly."""
    plugin = MTCNNDetector(MTCNNConfig(input_size=input_size, min_size=20))
    plugin.load_model()
    frames = np.random.default_rng(5).uniform(-1, 1, (2, input_size, input_size, 3))
    frames = frames.astype(np.float32)
    whole, parts = plugin.layout(None), plugin.layout(box)
    assert parts.shape != whole.shape
    filled = {}
    for layout in (whole, parts):
        filled[layout.shape] = torch.zeros(2, *layout.shape, 3)
        fill_mosaic_cpu(frames, filled[layout.shape], layout, plugin.input_size)
    for level, part in zip(whole.levels, parts.levels, strict=True):
        rows, cols = part.in_level
        expected = filled[whole.shape][:, level.top + rows.start:level.top + rows.stop,
                                       level.left + cols.start:level.left + cols.stop]
        np.testing.assert_array_equal(filled[parts.shape][(slice(None), *part.in_mosaic)],
                                      expected)
