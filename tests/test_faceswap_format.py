"""faceswap interop: the .fsa round trip, the file's layout as faceswap's own loader sees it,
crafted pickles refused without running anything, the restricted unpickler's numpy stand-ins,
older layouts, faceswap's PNG header chunk, and import into faceinfer's format."""
from __future__ import annotations

import ast
import io
import os
import pickle
import pickletools
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from faceinfer.formats.alignments import AlignmentsError, FrameRecord, load_alignments
from faceinfer.formats.faceswap import (
    FSA_VERSION,
    add_faceswap_chunk,
    encode_faceswap_png,
    faceswap_frame_key,
    import_fsa,
    read_faceswap_png_header,
    read_fsa,
    write_fsa,
)
from faceinfer.formats.png import FaceMetadataError, PNGHeader, encode_face_png, read_png_header
from faceinfer.formats.safe_pickle import restricted_loads, unwrap
from faceinfer.objects import FrameFaces
from tests.test_alignments_format import assert_same_face_data, make_record, pipeline_records

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def pipeline_output() -> list[FrameFaces]:
    from tests.conftest import make_frame
    from tests.test_pipeline import build_chain, run_frames

    return run_frames(build_chain(), [(f"img_{count}.png", make_frame(count, seed=count))
                                      for count in (0, 2)])


def video_records(records: list[FrameRecord]) -> list[FrameRecord]:
    """The records renamed as frames of clip.mp4."""
    return [FrameRecord(**(record.__dict__ | {"name": f"clip_{index + 1:06d}",
                                              "source": "clip"}))
            for index, record in enumerate(records)]


def assert_faceswap_equal(got: FrameRecord, want: FrameRecord) -> None:
    """What faceswap's layout holds (everything but keypoints, scores and frame size; a frame
    without faces is just an empty list of faces)."""
    assert (got.name, got.source, got.frame_size) == (want.name, want.source, (0, 0))
    np.testing.assert_array_equal(got.bboxes, want.bboxes)
    assert got.keypoints.shape == (len(want), 0, 2)
    assert np.isnan(got.align_scores).all()
    if not len(want):
        assert (got.landmarks, got.masks, got.identities, got.thumbnails) == (None, {}, {}, [])
        return
    assert got.landmarks is not None
    assert want.landmarks is not None
    np.testing.assert_array_equal(got.landmarks, want.landmarks)
    assert_same_face_data(got, want)


# --------------------------------------------------------------------------------- round trip
def test_video_round_trip(pipeline_output: list[FrameFaces], tmp_path: Path) -> None:
    extra = make_record("x", 3, masks=("a", "b"), identities=(("i", 4), ("j", 8)))
    records = video_records([*pipeline_records(pipeline_output), extra])
    path = tmp_path / "clip_alignments.fsa"
    write_fsa(path, records, video_extension=".mp4")
    back = read_fsa(path)
    assert [record.name for record in back] == ["clip_000001", "clip_000002", "clip_000003"]
    for got, want in zip(back, records, strict=True):
        assert_faceswap_equal(got, want)


def test_image_round_trip(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    records = [make_record(name, count, seed=count, source="photos")
               for count, name in enumerate(["img_001.jpg", "img_002.png", "clip_000003.png"])]
    write_fsa(folder / "alignments.fsa", records)
    back = read_fsa(folder / "alignments.fsa")
    for got, want in zip(back, records, strict=True):
        assert_faceswap_equal(got, want)


def test_frame_keys() -> None:
    assert faceswap_frame_key("img_001.jpg") == "img_001.jpg"
    assert faceswap_frame_key("clip_000001", ".mp4") == "clip_000001.mp4"
    with pytest.raises(ValueError, match="video extension"):
        faceswap_frame_key("clip_000001", "mp4")


def test_pre_2_4_video_keys_need_the_hint(tmp_path: Path) -> None:
    """Before 2.4 video keys ended in .png: read as images unless told it is a video."""
    path = tmp_path / "old.fsa"
    write_fsa(path, video_records([make_record("x", 1), make_record("y", 1)]), ".png")
    assert [record.name for record in read_fsa(path)] == ["clip_000001.png", "clip_000002.png"]
    assert [(record.name, record.source) for record in read_fsa(path, is_video=True)] == [
        ("clip_000001", "clip"), ("clip_000002", "clip")]


def test_faces_without_landmarks_are_refused(tmp_path: Path) -> None:
    with pytest.raises(AlignmentsError, match=r"frame 'f' has faces without landmarks"):
        write_fsa(tmp_path / "a.fsa", [make_record("f", 1, landmarks=None)])
    assert not (tmp_path / "a.fsa").exists()


def test_written_atomically(tmp_path: Path) -> None:
    """A failed write leaves the old file whole, and no temporary file behind."""
    path = tmp_path / "a.fsa"
    write_fsa(path, [make_record("f", 1)])
    before = path.read_bytes()
    with pytest.raises(AlignmentsError):
        write_fsa(path, [make_record("g", 1), make_record("h", 1, landmarks=None)])
    assert path.read_bytes() == before
    assert [item.name for item in tmp_path.iterdir()] == ["a.fsa"]


# ------------------------------------------------------------------- faceswap's view of the file
def test_the_file_faceswap_loads(pipeline_output: list[FrameFaces], tmp_path: Path) -> None:
    """faceswap's loader is zlib.decompress + pickle.loads: applied to our own, fresh file
    (trusted data), it gives the documented 2.4 structure and types."""
    records = video_records(pipeline_records(pipeline_output))
    path = tmp_path / "clip_alignments.fsa"
    write_fsa(path, records, video_extension=".mp4")
    payload = zlib.decompress(path.read_bytes())
    tree = pickle.loads(payload)
    assert set(tree) == {"__meta__", "__data__"}
    assert tree["__meta__"] == {"version": 2.4}
    assert isinstance(tree["__meta__"]["version"], float)
    assert list(tree["__data__"]) == ["clip_000001.mp4", "clip_000002.mp4"]
    for record, entry in zip(records, tree["__data__"].values(), strict=True):
        assert set(entry) == {"faces", "video_meta"}
        assert entry["video_meta"] == {}
        assert len(entry["faces"]) == len(record)
        for index, face in enumerate(entry["faces"]):
            assert set(face) == {"x", "y", "w", "h", "landmarks_xy", "mask", "identity", "thumb"}
            left, top, right, bottom = record.bboxes[index].tolist()
            assert [face[key] for key in "xywh"] == [left, top, right - left, bottom - top]
            assert all(type(face[key]) is int for key in "xywh")
            assert face["landmarks_xy"].dtype == np.float32
            assert face["landmarks_xy"].shape == (68, 2)
            mask = face["mask"]["test-mask"]
            assert set(mask) == {"mask", "affine_matrix", "interpolator", "stored_size",
                                 "stored_centering"}
            assert isinstance(mask["mask"], bytes)
            assert len(zlib.decompress(mask["mask"])) == mask["stored_size"] ** 2
            assert np.array(mask["affine_matrix"]).shape == (3, 3)
            assert all(type(value) is float for row in mask["affine_matrix"] for value in row)
            assert type(mask["interpolator"]) is int
            assert type(mask["stored_size"]) is int
            assert mask["stored_centering"] in ("legacy", "face", "head")
            identity = face["identity"]["test-identity"]
            assert isinstance(identity, list)
            assert all(type(v) is float for v in identity)
            thumb = face["thumb"]
            assert thumb.dtype == np.uint8
            assert thumb.shape[1] == 1
            assert cv2.imdecode(thumb, cv2.IMREAD_UNCHANGED).shape == (96, 96, 3)
    globals_used = {arg for op, arg, _ in pickletools.genops(payload)
                    if op.name in ("GLOBAL", "STACK_GLOBAL", "SHORT_BINUNICODE")
                    and isinstance(arg, str) and arg.startswith(("numpy", "_codecs"))}
    assert globals_used <= {"numpy._core.multiarray", "numpy.core.multiarray", "numpy"}


# ----------------------------------------------------------------------------- crafted pickles
class _RunsCode:
    def __init__(self, call: Any, *args: Any) -> None:
        self.call, self.args = call, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.call, self.args


def fsa_with(face_value: Any) -> bytes:
    tree = {"__meta__": {"version": 2.4},
            "__data__": {"a.png": {"faces": [{"x": 0, "y": 0, "w": 1, "h": 1,
                                               "landmarks_xy": face_value}],
                                   "video_meta": {}}}}
    return zlib.compress(pickle.dumps(tree))


@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.exec",
                                     "numpy.savetxt", "numpy-object-array", "reconstruct-dtype",
                                     "subprocess"])
def test_crafted_pickles_are_refused_without_running(tmp_path: Path, payload: str) -> None:
    """Each payload would create the marker file if anything in it ran."""
    marker = tmp_path / "ran"
    value: Any = {
        "os.system": _RunsCode(os.system, f"touch {marker}"),
        "builtins.eval": _RunsCode(eval, f"open({str(marker)!r}, 'w').close()"),
        "builtins.exec": _RunsCode(exec, f"open({str(marker)!r}, 'w').close()"),
        "numpy.savetxt": _RunsCode(np.savetxt, str(marker), [1.0]),
        "numpy-object-array": np.array([1, "two", None], dtype=object),
        "reconstruct-dtype": _RunsCode(np._core.multiarray._reconstruct, np.dtype, (0,), b"b"),
        "subprocess": _RunsCode(__import__("subprocess").call, ["touch", str(marker)]),
    }[payload]
    path = tmp_path / "evil.fsa"
    path.write_bytes(fsa_with(value))
    with pytest.raises(AlignmentsError, match=r"evil\.fsa: not a safe faceswap alignments file: "
                       "refused"):
        read_fsa(path)
    with pytest.raises(AlignmentsError, match="refused"):
        import_fsa(path, tmp_path / "out.fia")
    assert not marker.exists()
    assert not (tmp_path / "out.fia").exists()


def test_persistent_ids_are_refused(tmp_path: Path) -> None:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            return "outside" if obj == "x" else None

    buffer = io.BytesIO()
    Pickler(buffer).dump({"__meta__": {"version": 2.4}, "__data__": {"x": "x"}})
    path = tmp_path / "a.fsa"
    path.write_bytes(zlib.compress(buffer.getvalue()))
    with pytest.raises(AlignmentsError, match="refused a persistent id"):
        read_fsa(path)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_numeric_arrays_through_the_stand_ins(protocol: int) -> None:
    """numpy's own pickles of numeric arrays (every protocol, byte order, memory order, dtype)
    and scalars come back equal, without numpy's unpickling code."""
    rng = np.random.default_rng(0)
    values = [rng.random((3, 4)).astype(np.float32), np.arange(6, dtype=">i8").reshape(2, 3),
              np.asfortranarray(rng.random((5, 2))), np.array([True, False]),
              np.zeros((0, 68, 2), np.float16), np.arange(7, dtype=np.uint8).reshape(-1, 1),
              np.float32(1.5), np.int64(-7)]
    back = restricted_loads(pickle.dumps(values, protocol=protocol))
    for item, want in zip(back, values, strict=True):
        got = unwrap(item)
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray)
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype.newbyteorder("=")
        else:
            assert got == want.item()
            assert type(got) is type(want.item())


@pytest.mark.parametrize(("tree", "message"), [
    ({"__data__": {}}, r"older than 2\.0"),
    ({"__meta__": {"version": 1.0}, "__data__": {}}, r"version 1\.0 is older than 2\.0"),
    ({"__meta__": {"version": "2.4"}, "__data__": {}}, "numeric __meta__ version"),
    ({"__meta__": {"version": 2.4}, "__data__": []}, "__data__ to be a dict"),
    ({"__meta__": {"version": 2.4}, "__data__": {"a": {"faces": 3}}}, "frame 'a'"),
    ({"__meta__": {"version": 2.4}, "__data__": {"a": {"faces": [{"x": 0}]}}},
     r"frame 'a', face 0: expected y to be an integer"),
    ({"__meta__": {"version": 2.4}, "__data__": {"a": {"faces": [
        {"x": 0, "y": 0, "w": 1, "h": 1, "landmarks_xy": [[1, 2, 3]]}]}}}, r"\(P, 2\)"),
    ({"__meta__": {"version": 2.4}, "__data__": {"a": {"faces": [
        {"x": 0, "y": 0, "w": 1, "h": 1, "landmarks_xy": [], "mask": {"m": {"mask": "str"}}}]}}},
     "mask 'm'"),
    ({"__meta__": {"version": 2.4}, "__data__": {"a": {"faces": [
        {"x": 0, "y": 0, "w": 1, "h": 1, "thumb": [300]}]}}}, "thumb"),
    (["not", "a", "dict"], "expected a dict at the top"),
])
def test_bad_layouts(tmp_path: Path, tree: Any, message: str) -> None:
    path = tmp_path / "bad.fsa"
    path.write_bytes(zlib.compress(pickle.dumps(tree)))
    with pytest.raises(AlignmentsError, match=rf"bad\.fsa: .*{message}"):
        read_fsa(path)


def test_not_zlib(tmp_path: Path) -> None:
    path = tmp_path / "a.fsa"
    path.write_bytes(b"plain text")
    with pytest.raises(AlignmentsError, match=r"a\.fsa: not a faceswap \.fsa file"):
        read_fsa(path)


def test_older_layouts(tmp_path: Path) -> None:
    """2.1: a frame is a list of faces, landmarksXY, masks without stored_centering, no
    identity, no video_meta; one face has a mask and an identity the other lacks."""
    mask = zlib.compress(bytes(64 * 64))
    tree = {"__meta__": {"version": 2.1}, "__data__": {
        "a.png": [
            {"x": 1, "y": 2, "w": 3, "h": 4, "landmarksXY": [[1.0, 2.0]] * 68,
             "mask": {"components": {"mask": mask, "affine_matrix": np.eye(3).tolist(),
                                     "interpolator": 1, "stored_size": 64}}},
            {"x": 5, "y": 6, "w": 7, "h": 8, "landmarksXY": np.ones((68, 2)),
             "identity": {"vggface2": [0.5] * 4}, "thumb": None}],
        "b.png": {"faces": []}}}
    path = tmp_path / "old.fsa"
    path.write_bytes(zlib.compress(pickle.dumps(tree, protocol=2)))
    first, second = read_fsa(path)
    assert (first.name, len(first), second.name, len(second)) == ("a.png", 2, "b.png", 0)
    np.testing.assert_array_equal(first.bboxes, [[1, 2, 4, 6], [5, 6, 12, 14]])
    assert first.landmarks is not None
    assert first.landmarks.shape == (2, 68, 2)
    stored = first.masks["components"]
    assert stored.centering == "face"
    assert stored.data == [mask, b""]
    assert first.png_alignments(1)["mask"] == {}
    assert np.isnan(first.identities["vggface2"][0]).all()
    assert first.png_alignments(1)["identity"] == {"vggface2": [0.5] * 4}
    assert first.thumbnails == [b"", b""]


def test_mixed_landmark_counts_in_a_frame(tmp_path: Path) -> None:
    tree = {"__meta__": {"version": 2.4}, "__data__": {"a.png": {"faces": [
        {"x": 0, "y": 0, "w": 1, "h": 1, "landmarks_xy": [[0, 0]] * 68},
        {"x": 0, "y": 0, "w": 1, "h": 1, "landmarks_xy": [[0, 0]] * 4}]}}}
    path = tmp_path / "a.fsa"
    path.write_bytes(zlib.compress(pickle.dumps(tree)))
    with pytest.raises(AlignmentsError, match=r"frame 'a\.png': expected the same number of "
                       r"landmarks for every face, got \[4, 68\]"):
        read_fsa(path)


# ------------------------------------------------------------------------------------- import
def test_import_fsa(pipeline_output: list[FrameFaces], tmp_path: Path) -> None:
    records = video_records(pipeline_records(pipeline_output))
    fsa = tmp_path / "clip_alignments.fsa"
    write_fsa(fsa, records, video_extension=".mkv")
    out = tmp_path / "clip_alignments.fia"
    assert import_fsa(fsa, out) == 2
    loaded = load_alignments(out)
    assert loaded.meta["imported_from"] == str(fsa)
    assert list(loaded) == ["clip_000001", "clip_000002"]
    for record in records:
        assert_faceswap_equal(loaded[record.name], record)
    assert sorted(item.name for item in tmp_path.iterdir()) == sorted([fsa.name, out.name])


# ------------------------------------------------------------------------------- PNG header
def face_header(record: FrameRecord, index: int) -> PNGHeader:
    return {"alignments": record.png_alignments(index),
            "source": {"alignments_version": 1.0, "original_filename": f"clip_000001_{index}.png",
                       "face_index": index, "source_filename": "clip_000001.mp4",
                       "source_is_video": True, "source_frame_dims": (720, 1280)}}


def chunk_types(data: bytes) -> list[bytes]:
    offset, out = 8, []
    while offset < len(data):
        length = int.from_bytes(data[offset:offset + 4], "big")
        out.append(data[offset + 4:offset + 8])
        offset += 12 + length
    return out


def test_png_header_round_trip(pipeline_output: list[FrameFaces]) -> None:
    record = pipeline_records(pipeline_output)[1]
    header = face_header(record, 1)
    image = np.full((64, 64, 3), 90, np.uint8)
    data = encode_faceswap_png(image, header)
    types = chunk_types(data)
    assert types.index(b"iTXt") < types.index(b"IDAT")
    back = read_faceswap_png_header(data)
    expected = {"alignments": header["alignments"],
                "source": {**header["source"], "alignments_version": FSA_VERSION}}
    assert back == expected
    # the text is exactly what faceswap parses: keyword, five NULs, a Python literal
    start = data.index(b"faceswap\0")
    length = int.from_bytes(data[start - 8:start - 4], "big")
    body = data[start:start + length]
    assert body.startswith(b"faceswap" + b"\0" * 5)
    assert ast.literal_eval(body[13:].decode()) == expected
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8),
                                               cv2.IMREAD_UNCHANGED), image)
    assert read_png_header(data) is None  # no faceinfer chunk in a faceswap-only PNG


def test_both_chunks_faceswap_first() -> None:
    """faceswap rewrites the first iTXt chunk it finds: its own must come first."""
    header = face_header(make_record("f", 1), 0)
    data = add_faceswap_chunk(encode_face_png(np.zeros((8, 8, 3), np.uint8), header), header)
    assert chunk_types(data).count(b"iTXt") == 2
    assert data.index(b"faceswap\0") < data.index(b"faceinfer\0")
    assert read_faceswap_png_header(data) is not None
    assert read_png_header(data) is not None


def replace_text(data: bytes, text: str) -> bytes:
    """The PNG with its faceswap chunk's text replaced (CRC recomputed)."""
    start = data.index(b"iTXtfaceswap\0") - 4
    length = int.from_bytes(data[start:start + 4], "big")
    body = b"faceswap" + b"\0" * 5 + text.encode()
    chunk = (len(body).to_bytes(4, "big") + b"iTXt" + body
             + zlib.crc32(b"iTXt" + body).to_bytes(4, "big"))
    return data[:start] + chunk + data[start + 12 + length:]


def test_a_chunk_with_code_is_rejected_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    header = face_header(make_record("f", 1), 0)
    data = encode_faceswap_png(np.zeros((8, 8, 3), np.uint8), header)
    for text in (f"__import__('os').system('touch {marker}')",
                 f"{{'alignments': open({str(marker)!r}, 'w'), 'source': {{}}}}",
                 "{'alignments': {}, 'source': {}}"):
        with pytest.raises(FaceMetadataError, match=r"face\.png: "):
            read_faceswap_png_header(replace_text(data, text), "face.png")
    assert not marker.exists()


def test_header_values_a_literal_cannot_hold() -> None:
    header = face_header(make_record("f", 1), 0)
    header["alignments"]["identity"] = {"x": [float("nan")]}
    with pytest.raises(FaceMetadataError, match="nan"):
        encode_faceswap_png(np.zeros((8, 8, 3), np.uint8), header)
