"""Face PNG metadata (faceinfer.formats.png): round trip, plain PNGs, corrupt data, and
faceswap's Python-literal chunk, which must never be evaluated."""
from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from faceinfer.formats.png import (
    PNG_SIGNATURE,
    FaceMetadataError,
    PNGHeader,
    encode_face_png,
    read_png_header,
    write_face_png,
)


def face_image() -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)


def sample_header() -> PNGHeader:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:56] = 255
    return {
        "alignments": {
            "x": 10, "y": 20, "w": 30, "h": 40,
            "landmarks_xy": [[11.5, 21.25], [30.0, 45.125], [-2.0, 1e-3]],
            "mask": {"components": {"mask": zlib.compress(mask.tobytes()),
                                    "affine_matrix": [[1.5, 0.0, -3.0], [0.0, 1.5, 2.0],
                                                      [0.0, 0.0, 1.0]],
                                    "interpolator": cv2.INTER_LINEAR, "stored_size": 64,
                                    "stored_centering": "face"}},
            "identity": {"test-identity": [0.1, -0.25, 0.3333333432674408, 0.0],
                         "dlib-resnet": np.linspace(-1, 1, 128, dtype=np.float32).tolist()},
        },
        "source": {"alignments_version": 2.4, "original_filename": "frame_1.png",
                   "face_index": 1, "source_filename": "frame.png", "source_is_video": False,
                   "source_frame_dims": (720, 1280)},
    }


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk, unchecked."""
    out, offset = [], len(PNG_SIGNATURE)
    while offset < len(data):
        length, kind = struct.unpack_from(">I4s", data, offset)
        out.append((kind, data[offset + 8:offset + 8 + length]))
        offset += 12 + length
    return out


def make_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(data: bytes, chunk: bytes) -> bytes:
    """``data`` with ``chunk`` inserted right after the IHDR chunk."""
    ihdr_end = len(PNG_SIGNATURE) + 12 + struct.unpack_from(">I", data, 8)[0]
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def test_round_trip_keeps_every_field_masks_and_embeddings(tmp_path: Path) -> None:
    header = sample_header()
    path = tmp_path / "frame_1.png"
    write_face_png(path, face_image(), header)
    assert [p.name for p in tmp_path.iterdir()] == ["frame_1.png"]  # no temp file left
    back = read_png_header(path)
    assert back == header
    assert back is not None
    assert isinstance(back["alignments"]["mask"]["components"]["mask"], bytes)
    assert back["source"]["source_frame_dims"] == (720, 1280)
    np.testing.assert_array_equal(cv2.imread(str(path)), face_image())  # pixels untouched


def test_chunk_layout_itxt_before_first_idat_with_json_text() -> None:
    data = encode_face_png(face_image(), sample_header())
    kinds = [kind for kind, _ in chunks(data)]
    assert kinds.count(b"iTXt") == 1
    assert kinds.index(b"iTXt") == kinds.index(b"IDAT") - 1
    body = dict(chunks(data))[b"iTXt"]
    assert body.startswith(b"faceinfer" + b"\0" * 5)
    text = json.loads(body[len(b"faceinfer") + 5:].decode("utf-8"))
    assert text["version"] == 1
    assert text["alignments"]["mask"]["components"]["mask"].keys() == {"$base64"}


def test_numpy_values_are_stored_as_plain_numbers() -> None:
    header = sample_header()
    embedding = np.arange(4, dtype=np.float32) / 3
    header["alignments"]["identity"] = {"test-identity": embedding}  # type: ignore[dict-item]
    header["alignments"]["x"] = np.int64(10)  # type: ignore[typeddict-item]
    back = read_png_header(encode_face_png(face_image(), header))
    assert back is not None
    assert back["alignments"]["x"] == 10
    np.testing.assert_array_equal(np.asarray(back["alignments"]["identity"]["test-identity"],
                                             np.float32), embedding)


def test_a_header_that_cannot_be_json_is_refused() -> None:
    header = sample_header()
    header["alignments"]["landmarks_xy"] = [[float("nan"), 1.0]]
    with pytest.raises(FaceMetadataError, match="cannot store"):
        encode_face_png(face_image(), header)


def test_a_plain_png_has_no_header(tmp_path: Path) -> None:
    path = tmp_path / "plain.png"
    cv2.imwrite(str(path), face_image())
    assert read_png_header(path) is None


def test_a_compressed_itxt_chunk_is_read() -> None:
    plain = encode_face_png(face_image(), sample_header())
    text = dict(chunks(plain))[b"iTXt"][len(b"faceinfer") + 5:]
    body = b"faceinfer\0\x01\x00\0\0" + zlib.compress(text)
    ok, encoded = cv2.imencode(".png", face_image())
    assert ok
    assert read_png_header(with_chunk(encoded.tobytes(), make_chunk(b"iTXt", body))) == \
        sample_header()


def corrupt_crc(data: bytes) -> bytes:
    start = data.index(b"iTXt")
    return data[:start + 20] + bytes([data[start + 20] ^ 0xFF]) + data[start + 21:]


def replace_text(data: bytes, text: bytes) -> bytes:
    """``data`` with faceinfer's chunk holding ``text`` instead (valid CRC)."""
    start = data.index(b"iTXt") - 4
    length = struct.unpack_from(">I", data, start)[0]
    return data[:start] + make_chunk(b"iTXt", b"faceinfer" + b"\0" * 5 + text) + \
        data[start + 12 + length:]


def edit_text(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with ``old`` replaced by ``new`` in faceinfer's JSON text (valid CRC)."""
    text = dict(chunks(data))[b"iTXt"][len(b"faceinfer") + 5:]
    assert old in text, old
    return replace_text(data, text.replace(old, new))


@pytest.mark.parametrize(("damage", "message"), [
    (corrupt_crc, "CRC mismatch in chunk b'iTXt'"),
    (lambda d: d[:len(d) // 2], "truncated"),
    (lambda d: b"GIF89a" + d[6:], "expected a PNG file"),
    (lambda d: replace_text(d, b"{not json"), "not valid faceinfer JSON"),
    (lambda d: replace_text(d, b"\xff\xfe"), "not UTF-8"),
    (lambda d: replace_text(d, b'{"version": 1, "alignments": {}, "source": {}}'),
     "expected alignments to be an object with keys x, y, w, h"),
    (lambda d: replace_text(d, json.dumps({"version": 9}).encode()), "version"),
    (lambda d: replace_text(d, json.dumps({"version": 1}).encode()),
     "expected the metadata to be an object with keys alignments, source"),
    (lambda d: edit_text(d, b'"x":10', b'"x":"10"'), "expected alignments.x to be an integer"),
    (lambda d: edit_text(d, b'"y":20', b'"y":true'), "expected alignments.y to be an integer"),
    (lambda d: edit_text(d, b'"stored_centering":"face"', b'"stored_centering":"top"'),
     "stored_centering to be one of"),
    (lambda d: edit_text(d, b'[0.1,', b'["0.1",'), "identity.test-identity to be a N list"),
    (lambda d: edit_text(d, b'[720,1280]', b'[720]'), "source_frame_dims"),
    (lambda d: edit_text(d, b'{"$base64":"', b'{"$base64":"!'), "bad base64"),
    (lambda d: replace_text(d, b'{"version": 1, "x": NaN}'), "NaN is not valid JSON"),
], ids=["crc", "truncated", "not-png", "not-json", "not-utf8", "missing-keys", "newer-version",
        "no-sections", "str-for-int", "bool-for-int", "centering", "str-in-embedding",
        "frame-dims", "bad-base64", "nan"])
def test_malformed_data_raises_a_clear_error_naming_the_file(damage: Callable[[bytes], bytes],
                                                            message: str) -> None:
    data = damage(encode_face_png(face_image(), sample_header()))
    with pytest.raises(FaceMetadataError, match=f"^face.png: .*{message}") as info:
        read_png_header(data, name="face.png")
    assert "face.png" in str(info.value)


def test_two_faceinfer_chunks_are_refused() -> None:
    data = encode_face_png(face_image(), sample_header())
    body = dict(chunks(data))[b"iTXt"]
    with pytest.raises(FaceMetadataError, match="expected one 'faceinfer' chunk, got 2"):
        read_png_header(with_chunk(data, make_chunk(b"iTXt", body)))


def test_a_python_literal_is_never_evaluated(tmp_path: Path) -> None:
    """faceswap stores str(dict) and reads it with literal_eval; faceinfer reads JSON only. A
    literal that would run code if evaluated is ignored (faceswap keyword) or refused
    (faceinfer keyword), and runs nothing."""
    marker = tmp_path / "evaluated"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()".encode()
    literal = b"{'alignments': {'x': 1, 'mask': {'m': {'mask': b'\\x00'}}}, 'source': " + \
        payload + b"}"
    ok, encoded = cv2.imencode(".png", face_image())
    assert ok
    faceswap = with_chunk(encoded.tobytes(),
                          make_chunk(b"iTXt", b"faceswap" + b"\0" * 5 + literal))
    assert read_png_header(faceswap) is None
    ours = with_chunk(encoded.tobytes(), make_chunk(b"iTXt", b"faceinfer" + b"\0" * 5 + literal))
    with pytest.raises(FaceMetadataError, match="not valid faceinfer JSON"):
        read_png_header(ours)
    assert not marker.exists()
