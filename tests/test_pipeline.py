"""The engine end to end: chains of the test plugins, re-batching, signals, passthrough and
direct puts. Property tests draw frame counts, faces per frame, batch sizes and flush points."""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from faceinfer import Align, Detect, FileHandler, Identity, Mask
from faceinfer.objects import DetectedFace, FrameFaces
from faceinfer.plugins.align.testing import pattern_68
from faceinfer.runner import ExtractRunner, get_pipeline
from tests.conftest import FRAME, Feeder, blob_boxes, make_frame, pipeline_threads

pytestmark = pytest.mark.timeout(60)


def build_chain(sizes: tuple[int, int, int, int] = (8, 16, 16, 16)) -> ExtractRunner[Any]:
    """detect -> align -> mask -> identity with the test plugins at the given batch sizes."""
    detect = Detect("test-blobs", config={"batch_size": sizes[0]})()
    align = Align("test-landmarks", config={"batch_size": sizes[1]})(detect)
    mask = Mask("test-mask", config={"batch_size": sizes[2]})(align)
    return Identity("test-identity", config={"batch_size": sizes[3]})(mask)


def expected_landmarks(boxes: np.ndarray) -> np.ndarray:
    """The test aligner's pattern placed in each box's square region, in frame pixels."""
    boxes = boxes.astype(np.int64)
    side = np.maximum(np.max(boxes[:, 2:] - boxes[:, :2], axis=1), 1)
    left = (boxes[:, 0] + boxes[:, 2] - side) // 2
    top = (boxes[:, 1] + boxes[:, 3] - side) // 2
    return (pattern_68()[None] * side[:, None, None]
            + np.stack([left, top], axis=1)[:, None, :]).astype(np.float32)


def run_frames(pipeline: ExtractRunner[Any], frames: list[tuple[str, np.ndarray]],
               flush_after: set[int] | None = None) -> list[FrameFaces]:
    feeder = Feeder(pipeline, frames, flush_after or set()).start()
    with pipeline:
        out = list(pipeline)
    feeder.join()
    assert feeder.error is None, feeder.error
    return out


def check_frame(media: FrameFaces, name: str, count: int, reference: dict[str, Any]) -> None:
    """One output frame holds exactly the faces drawn in it, with intact per-face data."""
    assert media.filename == name
    np.testing.assert_array_equal(media.bboxes, blob_boxes(count))
    if count == 0:
        return
    assert media.landmarks is not None
    np.testing.assert_allclose(media.landmarks, expected_landmarks(blob_boxes(count)), atol=1e-4)
    np.testing.assert_allclose(media.identities["test-identity"],
                               reference["identity"][:count], atol=1e-6)
    np.testing.assert_array_equal(media.masks["test-mask"].masks, reference["mask"][:count])


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    """Per-face results for a frame with 16 blobs, computed by one-shot direct puts (no
    batching), to compare the pipeline's batched results against. All frames use seed 0, so
    face k of any frame has the same colour and therefore the same results."""
    pipeline = build_chain((1, 16, 16, 16))
    with pipeline:
        chain = get_pipeline(pipeline)
        image = make_frame(16)
        faces = [DetectedFace(b[0], b[1], b[2] - b[0], b[3] - b[1])
                 for b in blob_boxes(16).tolist()]
        aligned = chain[1].put_direct("ref", image, faces)
        assert aligned.landmarks is not None
        faces = [DetectedFace(f.left, f.top, f.width, f.height, landmarks_xy=points)
                 for f, points in zip(faces, aligned.landmarks, strict=True)]
        masked = chain[2].put_direct("ref", image, faces)
        embedded = chain[3].put_direct("ref", image, faces)
        pipeline.stop()
        assert list(pipeline) == []
    return {"identity": embedded.identities["test-identity"],
            "mask": masked.masks["test-mask"].masks}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 7), min_size=0, max_size=24),
       sizes=st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6),
                       st.integers(1, 6)),
       flushes=st.sets(st.integers(0, 23), max_size=4))
def test_every_frame_comes_out_in_order_with_its_faces(
        counts: list[int], sizes: tuple[int, int, int, int], flushes: set[int],
        reference: dict[str, Any]) -> None:
    frames = [(f"frame_{i:04d}", make_frame(count)) for i, count in enumerate(counts)]
    out = run_frames(build_chain(sizes), frames, flushes)
    assert [m.filename for m in out] == [name for name, _ in frames]
    for media, (name, _), count in zip(out, frames, counts, strict=True):
        check_frame(media, name, count, reference)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(0, 16), min_size=1, max_size=10),
       sizes=st.tuples(st.integers(1, 3), st.integers(1, 4)))
def test_detect_and_align_chain(counts: list[int], sizes: tuple[int, int]) -> None:
    pipeline = Align("test-landmarks", config={"batch_size": sizes[1]})(
        Detect("test-blobs", config={"batch_size": sizes[0]})())
    frames = [(f"f{i}", make_frame(c)) for i, c in enumerate(counts)]
    out = run_frames(pipeline, frames)
    assert [len(m.bboxes) for m in out] == counts
    for media, count in zip(out, counts, strict=True):
        if count:
            assert media.landmarks is not None
            np.testing.assert_allclose(media.landmarks, expected_landmarks(blob_boxes(count)),
                                       atol=1e-4)


def test_frames_are_letterboxed_and_mapped_back() -> None:
    """Non-square frames of other sizes: boxes come back in frame pixels."""
    image = np.zeros((200, 400, 3), dtype=np.uint8)  # scaled by 128/400 = 0.32
    image[50:150, 100:200] = 255
    image[25:125, 250:350] = 255
    out = run_frames(Detect("test-blobs")(), [("wide", image)])
    assert len(out) == 1
    boxes = out[0].bboxes
    assert boxes.shape == (2, 4)
    np.testing.assert_allclose(boxes[np.argsort(boxes[:, 0])], [[100, 50, 200, 150],
                                                                [250, 25, 350, 125]], atol=4)


def test_min_and_max_size_filter_faces() -> None:
    image = np.zeros((128, 128, 3), dtype=np.uint8)
    image[10:14, 10:14] = 255     # 4 px: 3% of 128
    image[40:60, 40:60] = 255     # 20 px: 15%
    image[70:120, 70:120] = 255   # 50 px: 39%
    out = run_frames(Detect("test-blobs", min_size=10, max_size=30)(), [("f", image)])
    np.testing.assert_array_equal(out[0].bboxes, [[40, 40, 60, 60]])


def test_flush_drains_and_the_pipeline_keeps_working() -> None:
    pipeline = build_chain((4, 3, 5, 2))
    with pipeline:
        first = [(f"a{i}", make_frame(i % 4)) for i in range(5)]
        feeder = Feeder(pipeline, first, {4}, stop=False).start()
        got = [next(pipeline) for _ in range(5)]  # only reachable because flush drains
        feeder.join()
        assert [m.filename for m in got] == [name for name, _ in first]
        second = [(f"b{i}", make_frame(3)) for i in range(3)]
        Feeder(pipeline, second).start().join()
        rest = list(pipeline)
    assert [m.filename for m in rest] == [name for name, _ in second]
    assert all(len(m.bboxes) == 3 for m in rest)


def test_frames_without_faces_are_not_held_back() -> None:
    """A faceless frame behind a part-filled batch leaves once a flush comes; a run of faceless
    frames leaves on its own."""
    pipeline = build_chain((1, 16, 16, 16))
    with pipeline:
        feeder = Feeder(pipeline, [("empty", make_frame(0))], stop=False).start()
        assert next(pipeline).filename == "empty"
        feeder.join()
        pipeline.stop()
        assert list(pipeline) == []


def test_passthrough_returns_the_frame_at_once() -> None:
    pipeline = build_chain((2, 2, 3, 2))
    with pipeline:
        result = pipeline.put("alone", make_frame(7), passthrough=True)
        assert isinstance(result, FrameFaces)
        np.testing.assert_array_equal(result.bboxes, blob_boxes(7))
        assert result.identities["test-identity"].shape == (7, 48)
        again = pipeline.put("again", make_frame(0), passthrough=True)
        assert again.filename == "again"
        assert len(again.bboxes) == 0
        pipeline.stop()
        assert list(pipeline) == []


def test_passthrough_needs_an_idle_pipeline() -> None:
    from faceinfer.errors import PipelineError

    pipeline = build_chain()
    with pipeline:
        pipeline.put("queued", make_frame(1))
        with pytest.raises(PipelineError, match="idle"):
            pipeline.put("now", make_frame(1), passthrough=True)
        pipeline.stop()
        assert [m.filename for m in pipeline] == ["queued"]


def test_put_media_with_known_faces_into_an_aligner_first_chain() -> None:
    """A chain that starts at the aligner takes the faces given with each frame."""
    pipeline = Mask("test-mask", config={"batch_size": 3})(
        Align("test-landmarks", config={"batch_size": 2})())
    boxes = blob_boxes(5)
    faces = [DetectedFace(b[0], b[1], b[2] - b[0], b[3] - b[1]) for b in boxes.tolist()]

    def feed() -> None:
        for index in range(4):
            pipeline.put(f"f{index}", make_frame(5), detected_faces=faces[:index + 1])
        pipeline.stop()

    import threading

    thread = threading.Thread(target=feed, daemon=True)
    with pipeline:
        thread.start()
        out = list(pipeline)
    thread.join()
    assert [len(m.bboxes) for m in out] == [1, 2, 3, 4]
    np.testing.assert_array_equal(out[3].bboxes, boxes[:4])
    assert out[3].masks["test-mask"].masks.shape == (4, 32, 32)


def test_put_direct_runs_one_stage() -> None:
    pipeline = Align("test-landmarks", config={"batch_size": 2})(Detect("test-blobs")())
    with pipeline:
        faces = [DetectedFace(*b[:2], b[2] - b[0], b[3] - b[1]) for b in blob_boxes(5).tolist()]
        result = pipeline.put_direct("direct", make_frame(5), faces)
        np.testing.assert_array_equal(result.bboxes, blob_boxes(5))
        assert result.landmarks is not None
        np.testing.assert_allclose(result.landmarks, expected_landmarks(blob_boxes(5)),
                                   atol=1e-4)
        with pytest.raises(ValueError, match="first"):
            get_pipeline(pipeline)[0].put_direct("x", make_frame(1), faces)
        with pytest.raises(ValueError, match="takes frames"):
            pipeline.put_direct("x", make_frame(1), faces, is_aligned=True, frame_size=(9, 9))
        pipeline.stop()
        assert list(pipeline) == []


def test_put_direct_aligned_face_needs_its_frame_size() -> None:
    pipeline = Mask("test-mask")(Align("test-landmarks")())
    with pipeline:
        with pytest.raises(ValueError, match="frame_size"):
            pipeline.put_direct("face.png", make_frame(1), [DetectedFace(0, 0, 9, 9)],
                                is_aligned=True)
        pipeline.stop()


def test_chain_order_and_runner_properties() -> None:
    detect = Detect("test-blobs")()
    align = Align("test-landmarks")(detect)
    mask = Mask("test-mask")(align.handler)  # a handler is resolved to its runner
    chain = get_pipeline(mask)
    assert chain == [detect, align, mask]
    assert get_pipeline(detect) == chain
    assert len({runner.uuid for runner in chain}) == 3
    assert [type(r.handler).__name__ for r in chain] == ["Detect", "Align", "Mask"]
    assert align.out_queue is not detect.out_queue
    mask.close()


def test_file_handler_passes_frames_through() -> None:
    pipeline = FileHandler()()
    frames = [(f"f{i}", make_frame(i)) for i in range(5)]
    out = run_frames(pipeline, frames)
    assert [m.filename for m in out] == [name for name, _ in frames]
    assert all(m.image is image for m, (_, image) in zip(out, frames, strict=True))


def test_pipeline_threads_are_named_by_plugin_and_processor() -> None:
    pipeline = Align("test-landmarks")(Detect("test-blobs")())
    names = {t.name for t in pipeline_threads()}
    assert {"test-blobs.pre_process", "test-blobs.process", "test-blobs.post_process",
            "test-landmarks.pre_process", "test-landmarks.process",
            "test-landmarks.post_process"} <= names
    assert pipeline.threads.enabled == ["test-landmarks.pre_process", "test-landmarks.process",
                                        "test-landmarks.post_process"]
    pipeline.close()


def test_profile_mode_starts_no_thread_until_start() -> None:
    detect = Detect("test-blobs")(profile=True)
    align = Align("test-landmarks")(detect, profile=True)
    assert not detect.threads.is_alive()
    assert not align.threads.is_alive()
    for runner in get_pipeline(align):
        runner.start()
    out = run_frames(align, [("f", make_frame(2))])
    assert len(out[0].bboxes) == 2


def test_frame_sizes_other_than_the_input() -> None:
    """Frames smaller than the detector input are upscaled into it and mapped back."""
    image = np.zeros((64, 32, 3), dtype=np.uint8)
    image[8:24, 8:24] = 255
    out = run_frames(Detect("test-blobs")(), [("small", image)])
    np.testing.assert_allclose(out[0].bboxes, [[8, 8, 24, 24]], atol=1)
    assert out[0].image_size == (64, 32)
    assert FRAME == 128
