"""The identity stage: L2-normalised embeddings, the identity filter (filter, nfilter, both,
thresholds, counts) and the reference loader (plain images through the pipeline, face PNGs from
their metadata or through the identity runner alone), on the test plugins and on real photos."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from faceinfer import Align, Detect, Identity
from faceinfer.errors import ConfigError, PipelineError
from faceinfer.formats.png import PNGHeader, write_face_png
from faceinfer.geometry.aligned import aligned_matrices, warp_aligned
from faceinfer.geometry.constants import Centering
from faceinfer.identity import FilterLoader, IdentityFilter, l2_normalize
from faceinfer.objects import ExtractBatch, FrameFaces, frame_faces_to_alignment
from faceinfer.plugins.identity.testing import ColourLayoutIdentity
from faceinfer.runner import ExtractRunner
from tests.conftest import FRAME, SHARED, blob_boxes, run_stage

pytestmark = pytest.mark.timeout(60)

NAME = "test-identity"
THRESHOLD = 0.95
"""Between the test identity's same-shape similarity (1.0) and its highest between the four
shapes drawn by :func:`shapes_frame` (0.81)."""


# ----------------------------------------------------------------------------- synthetic faces
def shapes_frame(shapes: list[int], keep: set[int] | None = None) -> npt.NDArray[np.uint8]:
    """A black frame with one white 16 px blob per entry of ``shapes`` on the test grid (see
    :func:`~tests.conftest.blob_boxes`), each missing the quadrant given (0 top-left .. 3
    bottom-right), so that the test identity tells the shapes apart. ``keep``: draw only the
    blobs at these indices (the others' places stay black)."""
    image = np.zeros((FRAME, FRAME, 3), dtype=np.uint8)
    for index, (left, top, right, bottom) in enumerate(blob_boxes(len(shapes)).tolist()):
        if keep is not None and index not in keep:
            continue
        image[top:bottom, left:right] = 255
        row, col = divmod(shapes[index], 2)
        image[top + 8 * row:top + 8 * row + 8, left + 8 * col:left + 8 * col + 8] = 0
    return image


TARGET = [0, 1, 2, 3]
"""The target frame's four faces: four different shapes."""


def write_image(path: Path, image: npt.NDArray[np.uint8]) -> str:
    assert cv2.imwrite(str(path), image)
    return str(path)


def batch_with(embeddings: npt.ArrayLike, name: str = NAME) -> ExtractBatch:
    """A one-frame batch with one face per embedding (boxes 0, 1, 2 ... as their left edge)."""
    values = np.asarray(embeddings, dtype=np.float32)
    batch = ExtractBatch(["frame"], [np.zeros((8, 8, 3), np.uint8)])
    boxes = np.array([[i, 0, i + 1, 1] for i in range(len(values))], dtype=np.int32)
    batch.set_faces(boxes, np.zeros(len(values), dtype=np.int32))
    batch.identities[name] = values
    return batch


def kept(batch: ExtractBatch) -> list[int]:
    """The indices (from :func:`batch_with`) of the faces still in the batch."""
    return batch.bboxes[:, 0].tolist()


@pytest.fixture
def pipeline() -> Iterator[ExtractRunner[Any]]:
    """detect -> align -> identity with the test plugins, closed after the test."""
    runner = Identity(NAME, threshold=THRESHOLD)(Align("test-landmarks")(Detect("test-blobs")()))
    with runner:
        yield runner


def loader_for(runner: ExtractRunner[Any], filter_files: list[str] | None = None,
               nfilter_files: list[str] | None = None) -> FilterLoader:
    """A loader whose references are loaded into ``runner`` (the identity runner, last)."""
    loader = FilterLoader(THRESHOLD, filter_files, nfilter_files)
    loader.add_identity_plugin(runner)
    loader.get_embeddings(runner)
    return loader


def run_target(runner: ExtractRunner[Any]) -> list[list[int]]:
    """The boxes the pipeline keeps in the target frame."""
    return runner.put("target", shapes_frame(TARGET), passthrough=True).bboxes.tolist()


def boxes_of(*indices: int) -> list[list[int]]:
    return blob_boxes(len(TARGET))[list(indices)].tolist()


# ---------------------------------------------------------------------------- IdentityFilter
E1, E2, E3, E4 = np.eye(4, dtype=np.float32)


@pytest.mark.parametrize(("filters", "nfilters", "faces", "expected", "counts"), [
    # filter keeps the faces matching any reference; scale does not matter (cosine)
    ([E1], None, [E1, E2, 5 * E1, E3], [0, 2], {"filter": 2, "nfilter": 0, "combined": 0}),
    ([E1, E3], None, [E1, E2, E3], [0, 2], {"filter": 1, "nfilter": 0, "combined": 0}),
    # nfilter drops them
    (None, [E1], [E1, E2, 5 * E1, E3], [1, 3], {"filter": 0, "nfilter": 2, "combined": 0}),
    # both: keep = filter match AND NOT nfilter match. Faces: filter only, both, nfilter only,
    # neither.
    ([E1, E2], [E2, E3], [E1, E2, E3, E4], [0], {"filter": 2, "nfilter": 2, "combined": 3}),
], ids=["filter", "filter-two-refs", "nfilter", "both"])
def test_filter_nfilter_and_both(filters: list[np.ndarray] | None,
                                 nfilters: list[np.ndarray] | None, faces: list[np.ndarray],
                                 expected: list[int], counts: dict[str, int]) -> None:
    identity_filter = IdentityFilter(0.9, NAME)
    if filters is not None:
        identity_filter.add_identities(np.stack(filters), is_filter=True)
    if nfilters is not None:
        identity_filter.add_identities(np.stack(nfilters), is_filter=False)
    assert identity_filter.enabled
    batch = batch_with(faces)
    identity_filter(batch)
    assert kept(batch) == expected
    assert len(batch.identities[NAME]) == len(expected)  # the faces' data went with them
    assert identity_filter.counts == counts


@pytest.mark.parametrize(("threshold", "keeps"), [
    (0.59, True), (0.61, False), (0.0, True), (1.0, False)])
def test_threshold_is_the_lowest_cosine_similarity_that_matches(threshold: float,
                                                                 keeps: bool) -> None:
    identity_filter = IdentityFilter(threshold, NAME)
    identity_filter.add_identities(np.array([[1.0, 0.0]], np.float32), is_filter=True)
    batch = batch_with([[0.6, 0.8]])  # cosine similarity 0.6 with the reference
    identity_filter(batch)
    assert (batch.num_faces == 1) is keeps


def test_a_similarity_equal_to_the_threshold_matches() -> None:
    identity_filter = IdentityFilter(1.0, NAME)
    identity_filter.add_identities(np.array([[0.0, 2.0]], np.float32), is_filter=True)
    batch = batch_with([[0.0, 3.0], [0.1, 3.0]])
    identity_filter(batch)
    assert kept(batch) == [0]


def test_counts_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    identity_filter = IdentityFilter(0.9, NAME)
    with caplog.at_level(logging.INFO, logger="faceinfer.identity"):
        identity_filter.output_counts()
        assert not caplog.records  # disabled: nothing to say
        identity_filter.add_identities(E1[None], is_filter=True)
        identity_filter(batch_with([E1, E2, E3]))
        identity_filter.output_counts()
        assert caplog.records[-1].getMessage() == \
            "[Identity filter] Faces dropped (threshold 0.9): Filter: 2"
        identity_filter.add_identities(E2[None], is_filter=False)
        identity_filter(batch_with([E1, E2, E3]))
        identity_filter.output_counts()
    assert caplog.records[-1].levelno == logging.INFO
    assert caplog.records[-1].getMessage() == \
        "[Identity filter] Faces dropped (threshold 0.9): Filter: 4, nFilter: 1, Combined: 2"


def test_without_references_the_filter_is_disabled_and_keeps_everything() -> None:
    identity_filter = IdentityFilter(0.5, NAME)
    assert not identity_filter.enabled
    batch = batch_with([E1, E2])
    identity_filter(batch)
    assert kept(batch) == [0, 1]


def test_zero_references_are_ignored(caplog: pytest.LogCaptureFixture) -> None:
    identity_filter = IdentityFilter(0.0, NAME)
    identity_filter.add_identities(np.zeros((2, 4), np.float32), is_filter=True)
    assert not identity_filter.enabled
    assert "No non-zero filter embedding" in caplog.text
    identity_filter.add_identities(np.stack([np.zeros(4, np.float32), E1]), is_filter=False)
    assert identity_filter.similarities(np.stack([E1, E2]), is_filter=False).tolist() == [1, 0]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan")])
def test_threshold_out_of_range_is_refused(threshold: float) -> None:
    with pytest.raises(ConfigError, match="expected an identity threshold in"):
        IdentityFilter(threshold, NAME)
    with pytest.raises(ConfigError, match="expected an identity threshold in"):
        FilterLoader(threshold, ["x.png"], None)


def test_bad_references_and_batches_are_refused() -> None:
    identity_filter = IdentityFilter(0.5, NAME)
    with pytest.raises(ValueError, match=r"expected \(N, D\) finite"):
        identity_filter.add_identities(np.array([[np.nan, 1.0]], np.float32), is_filter=True)
    identity_filter.add_identities(E1[None], is_filter=True)
    with pytest.raises(ValueError, match="expected 4-d reference embeddings"):
        identity_filter.add_identities(np.ones((1, 3), np.float32), is_filter=False)
    with pytest.raises(ValueError, match="expected 4-d 'test-identity' embeddings"):
        identity_filter(batch_with(np.ones((2, 3), np.float32)))
    with pytest.raises(ValueError, match="expected 'test-identity' embeddings in the batch"):
        identity_filter(batch_with([E1], name="other"))


# -------------------------------------------------------------------------------- Identity stage
def test_identity_stores_l2_normalised_embeddings_zero_stays_zero(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handler = Identity(NAME)
    raw = np.array([[3.0, 4.0], [0.0, 0.0], [-1e-3, 0.0]], np.float32)
    monkeypatch.setattr(handler.plugin, "post_process", lambda data: raw)  # unnormalised
    batch = ExtractBatch(["frame"], [shapes_frame([0, 1, 2])])
    batch.set_faces(blob_boxes(3), np.zeros(3, np.int32))
    run_stage(handler, batch)
    np.testing.assert_allclose(batch.identities[NAME], [[0.6, 0.8], [0, 0], [-1, 0]], atol=1e-6)
    assert batch.identities[NAME].dtype == np.float32
    np.testing.assert_array_equal(l2_normalize(np.zeros((0, 5))), np.zeros((0, 5)))


def test_identity_threshold_default_and_plugin_own(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Identity(NAME).threshold == 0.4
    assert Identity(NAME, threshold=0.7).threshold == 0.7
    assert Identity(NAME, threshold=None).threshold == 0.4  # the plugin has no measured one
    monkeypatch.setattr(ColourLayoutIdentity, "threshold", 0.83)
    assert Identity(NAME, threshold=None).threshold == 0.83
    assert Identity(NAME).threshold == 0.4
    with pytest.raises(ConfigError, match="expected an identity threshold"):
        Identity(NAME, threshold=2.0)


def test_identity_stage_filters_in_its_pipeline_and_logs_counts(
        pipeline: ExtractRunner[Any], caplog: pytest.LogCaptureFixture) -> None:
    everything = pipeline.put("all", shapes_frame(TARGET), passthrough=True)
    embeddings = everything.identities[NAME]
    pipeline.handler.add_filter_identities(embeddings[[1]], is_filter=True)
    pipeline.handler.add_filter_identities(embeddings[[1]] + embeddings[[2]], is_filter=False)
    with caplog.at_level(logging.INFO, logger="faceinfer.identity"):
        assert run_target(pipeline) == boxes_of(1)
        pipeline.stop()
        assert list(pipeline) == []
    assert "[Identity filter] Faces dropped (threshold 0.95): Filter: 3, nFilter: 0, " \
        "Combined: 3" in caplog.text


# ---------------------------------------------------------------------------------- FilterLoader
def test_filter_image_keeps_its_face(pipeline: ExtractRunner[Any], tmp_path: Path) -> None:
    reference = write_image(tmp_path / "face2.jpg", shapes_frame(TARGET, keep={2}))
    loader = loader_for(pipeline, [reference])
    assert loader.enabled
    assert loader.threshold == THRESHOLD
    assert run_target(pipeline) == boxes_of(2)


def test_nfilter_image_drops_all_its_faces(pipeline: ExtractRunner[Any], tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    reference = write_image(tmp_path / "two.png", shapes_frame(TARGET, keep={0, 3}))
    with caplog.at_level(logging.INFO, logger="faceinfer.identity"):
        loader_for(pipeline, None, [reference])
    assert f"nFilter file '{reference}' holds 2 faces: using all of them" in caplog.text
    assert run_target(pipeline) == boxes_of(1, 2)


def test_filter_and_nfilter_together(pipeline: ExtractRunner[Any], tmp_path: Path) -> None:
    keep = [write_image(tmp_path / f"keep{i}.png", shapes_frame(TARGET, keep={i}))
            for i in (0, 1)]
    drop = write_image(tmp_path / "drop.png", shapes_frame(TARGET, keep={1}))
    with pytest.raises(ConfigError, match="in only one of filter and nfilter"):
        FilterLoader(THRESHOLD, keep, [keep[1]])  # the same file twice
    loader_for(pipeline, [keep[0]], [drop])
    assert run_target(pipeline) == boxes_of(0)


@pytest.mark.parametrize("faces", [set(), {0, 2}])
def test_a_filter_image_needs_exactly_one_face(pipeline: ExtractRunner[Any], tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture,
                                               faces: set[int]) -> None:
    bad = write_image(tmp_path / "bad.png", shapes_frame(TARGET, keep=faces))
    good = write_image(tmp_path / "good.png", shapes_frame(TARGET, keep={3}))
    loader_for(pipeline, [bad, good])
    assert f"Filter file '{bad}' holds {len(faces)} faces, expected exactly 1: skipping" \
        in caplog.text
    assert run_target(pipeline) == boxes_of(3)


def test_folders_give_their_image_files(pipeline: ExtractRunner[Any], tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    write_image(folder / "a.PNG", shapes_frame(TARGET, keep={0}))
    write_image(folder / "b.jpg", shapes_frame(TARGET, keep={3}))
    (folder / "notes.txt").write_text("not an image")
    empty = tmp_path / "empty"
    empty.mkdir()
    loader_for(pipeline, [str(folder), str(empty)])
    assert f"Filter folder '{empty}' holds no image files" in caplog.text
    assert run_target(pipeline) == boxes_of(0, 3)


def test_the_same_file_in_both_lists_is_an_error_before_any_work(tmp_path: Path) -> None:
    folder = tmp_path / "refs"
    folder.mkdir()
    inside = write_image(folder / "a.png", shapes_frame(TARGET, keep={0}))
    with pytest.raises(ConfigError, match=r"got both for: .*a\.png"):
        FilterLoader(THRESHOLD, [inside], [inside])
    with pytest.raises(ConfigError, match=r"got both for: .*a\.png"):
        FilterLoader(THRESHOLD, [str(folder)], [str(tmp_path / "refs" / ".." / "refs" / "a.png")])


def test_unusable_paths(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("x")
    missing = tmp_path / "missing.png"
    with pytest.raises(ConfigError, match=r"none of the nFilter paths holds an image file: "
                                          r".*missing\.png, .*notes\.txt"):
        FilterLoader(THRESHOLD, None, [str(missing), str(text)])
    assert f"nFilter file '{missing}' does not exist" in caplog.text
    assert f"nFilter file '{text}' is not an image file" in caplog.text
    assert not FilterLoader(THRESHOLD, None, []).enabled
    assert not FilterLoader(None, None, None).enabled


def test_unreadable_files_are_skipped_with_a_warning(pipeline: ExtractRunner[Any],
                                                     tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not a jpeg")
    good = write_image(tmp_path / "good.png", shapes_frame(TARGET, keep={1}))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good).read_bytes()[:100])
    loader_for(pipeline, [str(garbage), str(truncated), good])
    assert f"Cannot decode reference image '{garbage}': skipping" in caplog.text
    assert f"Cannot read reference file '{truncated}': {truncated}: truncated" in caplog.text
    assert run_target(pipeline) == boxes_of(1)


def test_no_usable_reference_is_an_error_naming_the_files(pipeline: ExtractRunner[Any],
                                                          tmp_path: Path) -> None:
    empty = write_image(tmp_path / "empty.png", shapes_frame([]))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"junk")
    with pytest.raises(ConfigError, match=r"no usable nFilter reference face in: "
                                          r".*empty\.png, .*garbage\.png"):
        loader_for(pipeline, None, [empty, str(garbage)])


def test_loader_needs_its_identity_runner_first(pipeline: ExtractRunner[Any],
                                                tmp_path: Path) -> None:
    reference = write_image(tmp_path / "a.png", shapes_frame(TARGET, keep={0}))
    loader = FilterLoader(THRESHOLD, [reference], None)
    with pytest.raises(PipelineError, match="add_identity_plugin"):
        loader.get_embeddings(pipeline)
    with Align("test-landmarks")(Detect("test-blobs")()) as no_identity:
        with pytest.raises(ValueError, match="expected the runner of an Identity handler"):
            loader.add_identity_plugin(no_identity)
        loader.add_identity_plugin(pipeline)
        with pytest.raises(PipelineError, match="no 'test-identity' embeddings"):
            loader.get_embeddings(no_identity)


# --------------------------------------------------------------------------------- face PNGs
def face_png_header(media: FrameFaces, index: int, with_identity: bool) -> PNGHeader:
    alignments = frame_faces_to_alignment(media)[index]
    if not with_identity:
        alignments["identity"] = {}
    return {"alignments": alignments,
            "source": {"alignments_version": 2.4, "original_filename": f"target_{index}.png",
                       "face_index": index, "source_filename": "target.png",
                       "source_is_video": False, "source_frame_dims": (FRAME, FRAME)}}


def forbid(what: str) -> Callable[..., None]:
    """A stand-in for a method that must not be called: it fails the test with ``what``."""
    def call(*args: object, **kwargs: object) -> None:
        raise AssertionError(what)
    return call


def test_face_png_with_stored_embedding_is_used_without_running_a_model(
        pipeline: ExtractRunner[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media = pipeline.put("target", shapes_frame(TARGET), passthrough=True)
    path = tmp_path / "face.png"
    # The pixels show face 0, but the stored embedding is face 3's: only reading the metadata
    # makes the filter keep face 3.
    write_face_png(path, shapes_frame(TARGET, keep={0}), face_png_header(media, 3, True))
    forbidden = forbid("a model ran for a face PNG with a stored embedding")
    monkeypatch.setattr(pipeline, "put", forbidden)
    monkeypatch.setattr(pipeline, "put_direct", forbidden)
    loader_for(pipeline, [str(path)])
    monkeypatch.undo()
    assert run_target(pipeline) == boxes_of(3)


def test_references_of_different_dimensions_are_an_error(pipeline: ExtractRunner[Any],
                                                       tmp_path: Path) -> None:
    media = pipeline.put("target", shapes_frame(TARGET), passthrough=True)
    header = face_png_header(media, 0, True)
    header["alignments"]["identity"][NAME] = [1.0, 0.0, 0.0, 0.0]  # not the plugin's 48-d
    stale = tmp_path / "stale.png"
    write_face_png(stale, shapes_frame(TARGET, keep={0}), header)
    good = write_image(tmp_path / "good.png", shapes_frame(TARGET, keep={1}))
    with pytest.raises(ConfigError, match=r"expected reference embeddings of one dimension for "
                                          r"'test-identity', got: .*stale\.png \(4-d\), "
                                          r".*good\.png \(48-d\)"):
        loader_for(pipeline, [str(stale)], [good])


def test_face_png_without_embedding_goes_through_the_identity_runner_alone(
        pipeline: ExtractRunner[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = shapes_frame(TARGET)
    media = pipeline.put("target", frame, passthrough=True)
    # Face 2 as an extracted face: the head-centred aligned crop of its landmarks.
    frame_to_image = aligned_matrices(media.aligned.matrices, 64, Centering.HEAD,
                                      media.aligned.offsets(Centering.HEAD))
    aligned = warp_aligned([frame], np.zeros(1, np.int32), frame_to_image[[2]], 64)[0]
    path = tmp_path / "face.png"
    write_face_png(path, aligned, face_png_header(media, 2, False))

    calls: list[dict[str, Any]] = []
    direct = pipeline.put_direct

    def spy(filename: str, image: np.ndarray, faces: list[Any], **kwargs: Any) -> ExtractBatch:
        calls.append({"filename": filename, "faces": faces, **kwargs})
        return direct(filename, image, faces, **kwargs)
    monkeypatch.setattr(pipeline, "put_direct", spy)
    monkeypatch.setattr(pipeline, "put", forbid("the full pipeline ran for an aligned face PNG"))
    loader_for(pipeline, [str(path)])
    monkeypatch.undo()
    assert len(calls) == 1
    assert calls[0]["is_aligned"] is True
    assert calls[0]["frame_size"] == (FRAME, FRAME)
    np.testing.assert_allclose(calls[0]["faces"][0].landmarks_xy, media.landmarks[2],
                               atol=1e-5)
    assert run_target(pipeline) == boxes_of(2)


# ------------------------------------------------------------------ real faces: test_img1
SAMPLES = SHARED / "data" / "faceswap_samples"
REAL_THRESHOLD = 0.96
"""Stricter than dlib-resnet's own 0.91: dlib's descriptor, trained on adults, rates the three
children of test_img1 0.90 to 0.92 alike (dlib's own pipeline measures Euclidean distances of
0.58 to 0.65, around its 0.6 rule), so at 0.91 the filter cannot tell them apart. A reference
cut from the photo itself rates its face 0.99 and above. These tests check the filter's
mechanics on real faces and models, not the descriptor's power to tell children apart."""


def real_pipeline() -> ExtractRunner[Any]:
    """mtcnn -> dlib-68 -> dlib-resnet."""
    return Identity("dlib-resnet", threshold=REAL_THRESHOLD)(Align("dlib-68")(Detect("mtcnn")()))


@pytest.fixture(scope="module")
def img1_reference(tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32], int, str]:
    """test_img1, its faces' boxes unfiltered, the index of the face used as reference (the
    leftmost whole face) and a JPEG of the photo cut around that face with a margin of half
    the face on each side (so that it holds that face only)."""
    pytest.importorskip("dlib")
    pytest.importorskip("face_recognition_models")
    if not SAMPLES.is_dir():
        pytest.skip(f"the faceswap samples are not at {SAMPLES} (shared data missing)")
    image = cv2.imread(str(SAMPLES / "test_img1.jpg"))
    assert image is not None
    with real_pipeline() as runner:
        boxes = runner.put("test_img1.jpg", image, passthrough=True).bboxes
    assert len(boxes) >= 3, boxes  # three whole faces (see NOTICE.txt)
    chosen = int(np.argmin(boxes[:, 0]))
    left, top, right, bottom = boxes[chosen].tolist()
    half_w, half_h = (right - left) // 2, (bottom - top) // 2
    crop = image[max(top - half_h, 0):bottom + half_h, max(left - half_w, 0):right + half_w]
    path = write_image(tmp_path_factory.mktemp("refs") / "one_face.jpg", np.ascontiguousarray(crop))
    return image, boxes, chosen, path


@pytest.mark.parametrize("is_filter", [True, False], ids=["filter", "nfilter"])
def test_one_face_of_test_img1_as_filter_and_nfilter(
        img1_reference: tuple[npt.NDArray[np.uint8], npt.NDArray[np.int32], int, str],
        is_filter: bool) -> None:
    image, boxes, chosen, reference = img1_reference
    others = [index for index in range(len(boxes)) if index != chosen]
    with real_pipeline() as runner:
        loader = loader_for(runner, [reference] if is_filter else None,
                            None if is_filter else [reference])
        assert loader.enabled
        result = runner.put("test_img1.jpg", image, passthrough=True)
    expected = boxes[[chosen]] if is_filter else boxes[others]
    np.testing.assert_array_equal(result.bboxes, expected)
