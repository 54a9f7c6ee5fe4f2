"""faceinfer's alignments file: round trips of every field, real pipeline output, crash safety
(torn tails at every byte, a real kill -9), last-wins updates, corruption and version errors,
safety (nothing is unpickled or evaluated) and the byte layout of docs/alignments-format.md,
checked by an independent reader written from the document."""
from __future__ import annotations

import builtins
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from faceinfer.formats import alignments
from faceinfer.formats.alignments import (
    MAGIC,
    SCHEMA_VERSION,
    AlignmentsError,
    AlignmentsWriter,
    FrameRecord,
    StoredMasks,
    load_alignments,
    synthetic_alignments,
)
from faceinfer.objects import ExtractBatchMask, FrameFaces, frame_faces_to_alignment

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------- records
def mask_bytes(seed: int, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    return zlib.compress(((rng.random((size, size)) > 0.5) * 255).astype(np.uint8).tobytes())


def make_record(name: str, faces: int, *, seed: int = 0, keypoints: int = 5,
                landmarks: int | None = 68, masks: tuple[str, ...] = ("components", "extended"),
                identities: tuple[tuple[str, int], ...] = (("dlib-resnet", 128),),
                source: str = "clip") -> FrameRecord:
    """A record with every field filled from a seed (NaNs, empty thumbnails included)."""
    rng = np.random.default_rng(seed)
    left_top = rng.integers(0, 500, (faces, 2))
    scores = rng.random(faces).astype(np.float32)
    scores[::2] = np.nan
    return FrameRecord(
        name=name, source=source, frame_size=(480 + seed, 640),
        bboxes=np.concatenate([left_top, left_top + rng.integers(10, 200, (faces, 2))], axis=1),
        keypoints=rng.uniform(0, 640, (faces, keypoints, 2)),
        landmarks=None if landmarks is None else rng.uniform(0, 640, (faces, landmarks, 2)),
        align_scores=scores,
        masks={key: StoredMasks(("face", "head", "legacy")[number % 3], 16,
                                rng.normal(size=(faces, 3, 3)),
                                [mask_bytes(seed * 100 + number * 10 + face)
                                 for face in range(faces)], cv2.INTER_CUBIC + number)
               for number, key in enumerate(masks)},
        identities={key: rng.normal(size=(faces, size)) for key, size in identities},
        thumbnails=[bytes(rng.integers(0, 256, 50 + face, dtype=np.uint8)) if face % 2 == 0
                    else b"" for face in range(faces)])


def assert_same(got: FrameRecord, want: FrameRecord) -> None:
    """Every field equal, bit for bit (NaN in the same places), with the same dtypes."""
    assert (got.name, got.source, got.frame_size) == (want.name, want.source, want.frame_size)
    for field in ("bboxes", "keypoints", "align_scores"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field))
        assert getattr(got, field).dtype == getattr(want, field).dtype
    if want.landmarks is None:
        assert got.landmarks is None
    else:
        assert got.landmarks is not None
        np.testing.assert_array_equal(got.landmarks, want.landmarks)
        assert got.landmarks.dtype == np.float32
    assert_same_face_data(got, want)


def assert_same_face_data(got: FrameRecord, want: FrameRecord) -> None:
    """The same masks, identities (float32) and thumbnails."""
    assert list(got.masks) == list(want.masks)
    for key, masks in want.masks.items():
        other = got.masks[key]
        assert (other.centering, other.stored_size, other.interpolator, other.data) == (
            masks.centering, masks.stored_size, masks.interpolator, masks.data)
        np.testing.assert_array_equal(other.affine_matrices, masks.affine_matrices)
    assert list(got.identities) == list(want.identities)
    for key, value in want.identities.items():
        np.testing.assert_array_equal(got.identities[key], value)
        assert got.identities[key].dtype == np.float32
    assert got.thumbnails == want.thumbnails


def write(path: Path, records: list[FrameRecord], meta: dict[str, Any] | None = None) -> None:
    with AlignmentsWriter(path, meta) as writer:
        for record in records:
            writer.write(record)


VARIETY = [
    make_record("clip_000001", 3),
    make_record("clip_000002", 0),  # a frame without faces
    make_record("clip_000003", 1, landmarks=None, seed=3),  # no aligner
    make_record("clip_000004", 2, keypoints=0, seed=4),  # a detector without keypoints
    make_record("clip_000005", 2, masks=(), identities=(), seed=5),
    make_record("clip_000006", 4, masks=("a", "b", "c"),
                identities=(("x", 3), ("y", 512)), seed=6),
    make_record("frame é 🙂.jpg", 1, landmarks=4, seed=7, source="dossier é"),
]


def test_round_trip_every_field(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    write(path, VARIETY, {"settings": {"detector": "mtcnn"}, "sources": ["clip.mp4"]})
    loaded = load_alignments(path)
    assert loaded.version == SCHEMA_VERSION
    assert list(loaded) == [record.name for record in VARIETY]
    assert len(loaded) == len(VARIETY)
    for record in VARIETY:
        assert record.name in loaded
        assert_same(loaded[record.name], record)
    assert loaded.meta["settings"] == {"detector": "mtcnn"}
    assert loaded.meta["sources"] == ["clip.mp4"]
    assert loaded.meta["faceinfer_version"]
    assert loaded.meta["created"] == loaded.meta["opened"]


def test_a_face_without_one_mask_or_identity(tmp_path: Path) -> None:
    """b"" mask data and NaN embedding rows mean "this face has none" (faceswap imports)."""
    record = make_record("f", 2)
    record.masks["components"].data[1] = b""
    record.identities["dlib-resnet"][0] = np.nan
    write(tmp_path / "a.fia", [record])
    loaded = load_alignments(tmp_path / "a.fia")["f"]
    assert loaded.masks["components"].alignment(1) is None
    assert loaded.png_alignments(1)["mask"].keys() == {"extended"}
    assert loaded.png_alignments(0)["identity"] == {}
    faces = loaded.detected_faces()
    assert set(faces[1].mask) == {"extended"}
    assert faces[0].identity == {}
    assert set(faces[1].identity) == {"dlib-resnet"}


@pytest.mark.parametrize(("change", "message"), [
    ({"bboxes": np.zeros((2, 3))}, "boxes"),
    ({"keypoints": np.zeros((2, 5))}, "keypoints"),
    ({"landmarks": np.zeros((3, 68, 2))}, "landmarks"),
    ({"align_scores": np.zeros(3)}, "align scores"),
    ({"identities": {"x": np.zeros((1, 8))}}, "'x' identities"),
    ({"thumbnails": [b""]}, "2 thumbnails"),
    ({"masks": {"m": StoredMasks("face", 16, np.zeros((1, 3, 3)), [b"x"])}}, "2 'm' masks"),
    ({"name": ""}, "frame name"),
    ({"frame_size": (-1, 5)}, "frame size"),
])
def test_record_validation(change: dict[str, Any], message: str) -> None:
    fields = make_record("f", 2).__dict__ | change
    with pytest.raises(ValueError, match=message):
        FrameRecord(**fields)


@pytest.mark.parametrize(("args", "message"), [
    (("middle", 16, np.zeros((1, 3, 3)), [b"x"]), "centering"),
    (("face", 16, np.zeros((2, 3, 3)), [b"x"]), "mask matrices"),
    (("face", -1, np.zeros((1, 3, 3)), [b"x"]), "stored size"),
])
def test_stored_masks_validation(args: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StoredMasks(*args)


# ------------------------------------------------------------------------- pipeline objects
@pytest.fixture(scope="module")
def pipeline_output() -> list[FrameFaces]:
    """Frames with 0, 1 and 3 faces through the test detector, aligner, masker and identity."""
    from tests.conftest import make_frame
    from tests.test_pipeline import build_chain, run_frames

    return run_frames(build_chain(), [(f"img_{count}.png", make_frame(count, seed=count))
                                      for count in (0, 1, 3)])


def pipeline_records(frames: list[FrameFaces]) -> list[FrameRecord]:
    """Records of real pipeline output, with real 96 px JPEG thumbnails."""
    out = []
    for media in frames:
        thumbs = []
        for index in range(len(media.bboxes)):
            pixels = np.full((96, 96, 3), 40 * index, np.uint8)
            thumbs.append(cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, 60])[1]
                          .tobytes())
        out.append(FrameRecord.from_frame_faces(media, media.filename, "imgs", thumbs))
    return out


def test_from_frame_faces_and_back(pipeline_output: list[FrameFaces], tmp_path: Path) -> None:
    """Real pipeline output -> record -> file -> record: the stored faces are the pipeline's,
    in the layout of frame_faces_to_alignment, and feed back as DetectedFaces."""
    records = pipeline_records(pipeline_output)
    write(tmp_path / "a.fia", records)
    loaded = load_alignments(tmp_path / "a.fia")
    assert [len(loaded[name]) for name in loaded] == [0, 1, 3]
    for media, record in zip(pipeline_output, records, strict=True):
        stored = loaded[media.filename]
        assert_same(stored, record)
        assert stored.frame_size == media.image_size
        np.testing.assert_array_equal(stored.bboxes, media.bboxes)
        if not len(media.bboxes):
            continue
        assert media.landmarks is not None
        assert stored.landmarks is not None
        np.testing.assert_array_equal(stored.landmarks, media.landmarks)
        np.testing.assert_array_equal(stored.align_scores, media.align_scores)
        np.testing.assert_array_equal(stored.identities["test-identity"],
                                      media.identities["test-identity"])
        expected = frame_faces_to_alignment(media)
        assert [stored.png_alignments(i) for i in range(len(stored))] == expected
        mask = media.masks["test-mask"]
        for index, face in enumerate(stored.detected_faces()):
            box = media.bboxes[index]
            assert (face.left, face.top, face.right, face.bottom) == tuple(box.tolist())
            np.testing.assert_array_equal(face.landmarks_xy, media.landmarks[index])
            assert face.align_score == pytest.approx(float(media.align_scores[index]))
            np.testing.assert_array_equal(face.identity["test-identity"],
                                          media.identities["test-identity"][index])
            restored = face.mask["test-mask"]
            assert restored.centering == mask.centering
            np.testing.assert_allclose(restored.matrices[0], mask.matrices[index], rtol=1e-5,
                                       atol=1e-6)
            side = restored.masks.shape[1]
            resized = cv2.resize(mask.masks[index], (side, side), interpolation=cv2.INTER_LINEAR)
            np.testing.assert_array_equal(restored.masks[0], resized)
            # stored again, the face's mask is the same stored mask
            assert restored.to_alignment(0)["mask"] == expected[index]["mask"]["test-mask"]["mask"]


def test_decoded_masks_match_the_stored_ones() -> None:
    stored = make_record("f", 2).masks["components"]
    alignment = stored.alignment(1)
    assert alignment is not None
    pixels = ExtractBatchMask.decode(alignment)
    assert pixels.tobytes() == zlib.decompress(stored.data[1])


# ------------------------------------------------------------------------------- crash safety
def record_offsets(data: bytes) -> list[int]:
    """The byte offset of every record, walking the documented layout."""
    offset, out = 16, []
    while offset < len(data):
        out.append(offset)
        offset += 12 + struct.unpack_from("<I", data, offset)[0]
    return out


def test_torn_tail_at_every_byte(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file cut anywhere inside its last record loads every complete record (warning of the
    loss); a writer reopening it drops the torn tail and appends valid records."""
    path = tmp_path / "full.fia"
    records = [make_record(f"f{i}", 1, seed=i, masks=("m",), landmarks=5) for i in range(3)]
    write(path, records)
    data = path.read_bytes()
    last = record_offsets(data)[-1]
    cut_file = tmp_path / "cut.fia"
    for cut in range(last, len(data)):
        cut_file.write_bytes(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loaded = load_alignments(cut_file)
        assert list(loaded) == ["f0", "f1"], cut
        assert_same(loaded["f1"], records[1])
        assert (cut == last) or "incomplete" in caplog.text, cut
    for cut in (last + 1, last + 12, last + 40, len(data) - 1):
        cut_file.write_bytes(data[:cut])
        write(cut_file, [records[2], make_record("f3", 2, seed=9)])
        loaded = load_alignments(cut_file)
        assert list(loaded) == ["f0", "f1", "f2", "f3"], cut
        assert_same(loaded["f2"], records[2])
        resumed = cut_file.read_bytes()
        assert resumed.startswith(data[:last])  # the torn tail was cut off, the rest kept
        assert last in record_offsets(resumed)


def test_a_file_cut_inside_its_header_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    write(path, [make_record("f", 1)])
    data = path.read_bytes()
    for cut in range(16):
        path.write_bytes(data[:cut])
        assert len(load_alignments(path)) == 0
    write(path, [make_record("g", 1)])  # the writer starts it afresh
    assert list(load_alignments(path)) == ["g"]


def test_zero_filled_tail_is_a_torn_tail(tmp_path: Path) -> None:
    """A file system may grow a file in a power cut without its data: zeros at the end."""
    path = tmp_path / "a.fia"
    write(path, [make_record("f", 1)])
    with path.open("ab") as out:
        out.write(bytes(4096))
    assert list(load_alignments(path)) == ["f"]


def child_record(index: int) -> FrameRecord:
    """The records the killed writer writes: two faces, a 3,000-byte mask and thumbnail."""
    rng = np.random.default_rng(index)
    return FrameRecord(
        f"clip_{index + 1:06d}", "clip", (720, 1280), rng.integers(0, 99, (2, 4)),
        rng.random((2, 5, 2)), rng.random((2, 68, 2)), rng.random(2),
        {"m": StoredMasks("face", 8, rng.random((2, 3, 3)), [rng.bytes(3000), rng.bytes(9)])},
        {"i": rng.random((2, 128))}, [rng.bytes(3000), b""])


CHILD = """
import sys
from faceinfer.formats.alignments import AlignmentsWriter
from tests.test_alignments_format import child_record
writer = AlignmentsWriter(sys.argv[1], {"run": "killed"})
index = 0
while True:
    writer.write(child_record(index))
    index += 1
    if index % 25 == 0:
        print(index, flush=True)
"""


def test_kill_9_while_writing(tmp_path: Path) -> None:
    """A real crash: a subprocess writes records in a loop and is killed with SIGKILL. The file
    loads without error and holds a prefix of the records, intact; a writer then resumes it."""
    path = tmp_path / "killed.fia"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    try:
        assert child.stdout is not None
        while int(child.stdout.readline() or "0") < 100:
            assert child.poll() is None, "the writer died on its own"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    loaded = load_alignments(path)
    assert len(loaded) >= 100
    assert list(loaded) == [f"clip_{index + 1:06d}" for index in range(len(loaded))]
    assert loaded.meta["run"] == "killed"
    for index in range(len(loaded)):
        assert_same(loaded[f"clip_{index + 1:06d}"], child_record(index))
    write(path, [make_record("resumed", 1)], {"run": "resumed"})
    resumed = load_alignments(path)
    assert list(resumed)[-1] == "resumed"
    assert len(resumed) == len(loaded) + 1
    assert resumed.meta["run"] == "resumed"


def test_later_records_replace_earlier_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    first, second = make_record("a", 1, seed=1), make_record("a", 3, seed=2)
    write(path, [first, make_record("b", 1)])
    write(path, [second], {"pass": 2})
    loaded = load_alignments(path)
    assert list(loaded) == ["a", "b"]
    assert_same(loaded["a"], second)
    assert loaded.meta["pass"] == 2


def test_meta_merges_and_keeps_created(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    write(path, [], {"settings": 1, "sources": ["a"]})
    created = load_alignments(path).meta["created"]
    write(path, [], {"sources": ["a", "b"]})
    meta = load_alignments(path).meta
    assert meta["created"] == created
    assert meta["settings"] == 1
    assert meta["sources"] == ["a", "b"]


def test_meta_must_be_json(tmp_path: Path) -> None:
    with pytest.raises(AlignmentsError, match=r"a\.fia: cannot store the metadata"):
        AlignmentsWriter(tmp_path / "a.fia", {"bad": object()})
    with pytest.raises(AlignmentsError, match="cannot store the metadata"):
        AlignmentsWriter(tmp_path / "b.fia", {"nan": float("nan")})
    assert list(tmp_path.iterdir()) == []  # refused before any file is made


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    with AlignmentsWriter(path) as writer:
        with pytest.raises(AlignmentsError, match=r"another writer .* is writing"):
            AlignmentsWriter(path)
        writer.write(make_record("f", 1))
    with AlignmentsWriter(path) as again:  # the lock went with the first writer
        again.write(make_record("g", 1))
    assert list(load_alignments(path)) == ["f", "g"]


def test_closed_writer(tmp_path: Path) -> None:
    writer = AlignmentsWriter(tmp_path / "a.fia")
    writer.close()
    writer.close()  # idempotent
    with pytest.raises(AlignmentsError, match="closed"):
        writer.write(make_record("f", 1))


# ----------------------------------------------------------------------- corruption, versions
def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0, 3, 20, -1])
def test_corruption_before_the_last_record_names_file_and_offset(tmp_path: Path, where: int
                                                                  ) -> None:
    """A flipped bit in a record header (0, 3), payload (20) or the record's last byte (-1),
    before the last record: a clear error, never silent loss."""
    path = tmp_path / "a.fia"
    write(path, [make_record(f"f{i}", 1, seed=i) for i in range(3)])
    offsets = record_offsets(path.read_bytes())
    target = offsets[2]  # the second frame record (after the metadata record)
    flip(path, target + where if where >= 0 else offsets[3] + where)
    with pytest.raises(AlignmentsError, match=rf"a\.fia: corrupt record.* at byte {target}"):
        load_alignments(path)
    with pytest.raises(AlignmentsError, match="corrupt record"):
        AlignmentsWriter(path)  # a writer will not append to a corrupt file


def test_a_corrupt_last_record_is_a_lost_record(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    write(path, [make_record("f", 1), make_record("g", 1)])
    flip(path, path.stat().st_size - 3)
    assert list(load_alignments(path)) == ["f"]


def test_corrupt_file_header(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    write(path, [make_record("f", 1)])
    flip(path, 9)  # the version field: the header CRC catches it
    with pytest.raises(AlignmentsError, match=r"a\.fia: corrupt header"):
        load_alignments(path)


def header(version: int) -> bytes:
    head = MAGIC + struct.pack("<I", version)
    return head + struct.pack("<I", zlib.crc32(head))


def test_unknown_newer_version(tmp_path: Path) -> None:
    path = tmp_path / "future.fia"
    path.write_bytes(header(SCHEMA_VERSION + 1) + b"anything a newer faceinfer writes")
    with pytest.raises(AlignmentsError, match=rf"future\.fia: schema version "
                       rf"{SCHEMA_VERSION + 1} is newer .* upgrade faceinfer"):
        load_alignments(path)
    with pytest.raises(AlignmentsError, match="newer"):
        AlignmentsWriter(path)
    path.write_bytes(header(0))
    with pytest.raises(AlignmentsError, match="version >= 1"):
        load_alignments(path)


def test_migration_hook_runs_per_version_step(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A version 1 file read by a (simulated) version 2 faceinfer goes through _MIGRATIONS[1];
    a version 2 writer refuses to append to it."""
    path = tmp_path / "a.fia"
    write(path, [make_record("f", 2)])

    def to_v2(descriptor: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        return {**descriptor, "source": descriptor["source"] + " (migrated)"}, blob

    monkeypatch.setattr(alignments, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(alignments._MIGRATIONS, 1, to_v2)
    loaded = load_alignments(path)
    assert loaded.version == 1
    assert loaded["f"].source == "clip (migrated)"
    with pytest.raises(AlignmentsError, match="cannot append to a schema version 1 file"):
        AlignmentsWriter(path)


def test_not_an_alignments_file(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 a jpeg")
    with pytest.raises(AlignmentsError, match=r"photo\.jpg: not a faceinfer alignments file"):
        load_alignments(path)
    with pytest.raises(AlignmentsError, match="not a faceinfer alignments file"):
        AlignmentsWriter(path)  # never clobbered
    assert path.read_bytes() == b"\xff\xd8\xff\xe0 a jpeg"
    fsa = tmp_path / "alignments.fsa"
    fsa.write_bytes(zlib.compress(pickle.dumps({"__meta__": {"version": 2.4}})))
    with pytest.raises(AlignmentsError, match="faceinfer alignments import"):
        load_alignments(fsa)
    with pytest.raises(AlignmentsError, match=r"missing\.fia: cannot read"):
        load_alignments(tmp_path / "missing.fia")


def test_a_bad_descriptor_under_a_valid_crc(tmp_path: Path) -> None:
    """A record whose CRCs hold but whose content lies (a buggy writer): the error names the
    file, the offset and the frame when the record is read."""
    path = tmp_path / "a.fia"
    descriptor = json.dumps({"source": "s", "frame_size": [1, 1], "faces": 1, "keypoints": 0,
                             "landmarks": None, "masks": {}, "identities": {},
                             "thumbnails": [0]}).encode()
    payload = (b"F" + struct.pack("<H", 3) + b"bad" + struct.pack("<I", len(descriptor))
               + descriptor + b"\0" * 7)  # 16 + 4 bytes of arrays expected
    path.write_bytes(header(1) + independent_record(payload))
    loaded = load_alignments(path)
    assert list(loaded) == ["bad"]
    with pytest.raises(AlignmentsError, match=r"a\.fia: corrupt frame record at byte 16: "
                       "frame 'bad'"):
        loaded["bad"]


# -------------------------------------------------------------------------------------- safety
def test_nothing_is_unpickled_or_evaluated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    """Strings that would be code to pickle or eval stay inert strings; loading calls neither."""
    marker = tmp_path / "ran"
    evil = f"__import__('os').system('touch {marker}')"
    record = make_record(evil, 1, source="cos\nsystem\n(S'touch ran'\ntR.",
                         masks=(evil,), identities=(("__reduce__", 4),))
    write(tmp_path / "a.fia", [record], {"__reduce__": evil, "py/object": "os.system"})

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the loader must not unpickle or evaluate")

    for module, name in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"),
                         (builtins, "eval"), (builtins, "exec")):
        monkeypatch.setattr(module, name, refuse)
    loaded = load_alignments(tmp_path / "a.fia")
    assert_same(loaded[evil], record)
    assert loaded.meta["__reduce__"] == evil
    assert not marker.exists()


# --------------------------------------------------------------------- the documented layout
def independent_record(payload: bytes) -> bytes:
    """A record as docs/alignments-format.md specifies it, built without faceinfer."""
    head = struct.pack("<II", len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def independent_read(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The reader sketched in docs/alignments-format.md: metadata and every frame's arrays."""
    data = path.read_bytes()
    assert data[:8] == b"\x89FIA\r\n\x1a\n"
    version, crc = struct.unpack_from("<II", data, 8)
    assert version == 1
    assert crc == zlib.crc32(data[:12])
    meta: dict[str, Any] = {}
    frames: dict[str, dict[str, Any]] = {}
    offset = 16
    while offset + 12 <= len(data):
        length, payload_crc, head_crc = struct.unpack_from("<III", data, offset)
        payload = data[offset + 12:offset + 12 + length]
        if head_crc != zlib.crc32(data[offset:offset + 8]) or len(payload) < length \
                or zlib.crc32(payload) != payload_crc:
            break
        offset += 12 + length
        if payload[:1] == b"M":
            meta.update(json.loads(payload[1:]))
            continue
        (name_length,) = struct.unpack_from("<H", payload, 1)
        name = payload[3:3 + name_length].decode()
        (desc_length,) = struct.unpack_from("<I", payload, 3 + name_length)
        start = 7 + name_length
        desc = json.loads(payload[start:start + desc_length])
        blob, pos = payload[start + desc_length:], 0

        def take(size: int, blob: bytes = blob) -> bytes:
            nonlocal pos
            pos += size
            return blob[pos - size:pos]

        n = desc["faces"]
        frame: dict[str, Any] = {"source": desc["source"], "frame_size": desc["frame_size"]}
        frame["bboxes"] = np.frombuffer(take(16 * n), "<i4").reshape(n, 4)
        frame["keypoints"] = np.frombuffer(take(8 * n * desc["keypoints"]), "<f4")
        if desc["landmarks"] is not None:
            frame["landmarks"] = np.frombuffer(take(8 * n * desc["landmarks"]), "<f4")
        frame["align_scores"] = np.frombuffer(take(4 * n), "<f4")
        for key, info in desc["masks"].items():
            frame[f"mask {key}"] = (np.frombuffer(take(36 * n), "<f4"),
                                    [take(size) for size in info["lengths"]])
        for key, size in desc["identities"].items():
            frame[f"identity {key}"] = np.frombuffer(take(4 * n * size), "<f4")
        frame["thumbnails"] = [take(size) for size in desc["thumbnails"]]
        assert pos == len(blob)
        frames[name] = frame
    return meta, frames


def test_the_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "a.fia"
    write(path, VARIETY, {"k": "v"})
    meta, frames = independent_read(path)
    assert meta["k"] == "v"
    assert list(frames) == [record.name for record in VARIETY]
    for record in VARIETY:
        frame = frames[record.name]
        assert frame["frame_size"] == list(record.frame_size)
        np.testing.assert_array_equal(frame["bboxes"], record.bboxes)
        np.testing.assert_array_equal(frame["keypoints"], record.keypoints.ravel())
        if record.landmarks is not None:
            np.testing.assert_array_equal(frame["landmarks"], record.landmarks.ravel())
        np.testing.assert_array_equal(frame["align_scores"], record.align_scores)
        for key, masks in record.masks.items():
            np.testing.assert_array_equal(frame[f"mask {key}"][0], masks.affine_matrices.ravel())
            assert frame[f"mask {key}"][1] == masks.data
        for key, value in record.identities.items():
            np.testing.assert_array_equal(frame[f"identity {key}"], value.ravel())
        assert frame["thumbnails"] == record.thumbnails


def test_synthetic_alignments(tmp_path: Path) -> None:
    """The benchmark's file: one face per frame with the documented sizes."""
    path = synthetic_alignments(tmp_path / "syn.fia", 20)
    loaded = load_alignments(path)
    assert len(loaded) == 20
    record = loaded["synthetic_000020"]
    assert record.landmarks is not None
    assert record.landmarks.shape == (1, 68, 2)
    assert record.keypoints.shape == (1, 5, 2)
    assert record.identities["dlib-resnet"].shape == (1, 128)
    assert len(record.thumbnails[0]) == 3000
    alignment = record.masks["components"].alignment(0)
    assert alignment is not None
    assert ExtractBatchMask.decode(alignment).shape == (128, 128)
