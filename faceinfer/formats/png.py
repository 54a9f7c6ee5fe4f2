"""The metadata that faceinfer stores inside an extracted face PNG, and how to read it back.

Layout
------
A face PNG is an ordinary PNG of the aligned face (as :func:`cv2.imencode` writes it) with one
extra chunk, placed immediately before the first ``IDAT`` chunk:

* chunk type ``iTXt`` (international text, PNG 1.2 section 11.3.4.5), keyword ``faceinfer``,
  compression flag 0, compression method 0, empty language tag and empty translated keyword:
  the chunk data is ``b"faceinfer" + 5 * b"\\0"`` followed by the text;
* the text is UTF-8 JSON (RFC 8259: no NaN or Infinity) of one object::

      {"version": 1,
       "alignments": {"x", "y", "w", "h", "landmarks_xy", "mask", "identity"},
       "source": {"alignments_version", "original_filename", "face_index",
                  "source_filename", "source_is_video", "source_frame_dims"}}

  ``alignments`` and ``source`` follow faceswap's ``PNGHeader`` layout (see
  :class:`~faceinfer.formats.types.PNGAlignments` and
  :class:`~faceinfer.formats.types.PNGSource`): box and landmarks in frame pixels, stored masks
  and identity embeddings by storage name, the source frame's name, the face's index in it, and
  the frame's (height, width). ``version`` is the integer version of this layout;
* byte strings (the zlib-compressed masks) are written as ``{"$base64": "<standard base64>"}``;
  ``source_frame_dims`` is a two-item list (read back as a tuple) or null.

Readers scan every chunk, checking lengths and CRCs; a compressed iTXt (flag 1, zlib) is accepted
too. The text is only ever parsed as JSON: faceswap's own ``faceswap`` chunk (a Python literal)
is ignored, never evaluated.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.errors import FaceInferError
from faceinfer.formats.types import PNGAlignments, PNGSource

__all__ = ["HEADER_VERSION", "PNG_KEYWORD", "PNG_SIGNATURE", "FaceMetadataError", "PNGHeader",
           "encode_face_png", "read_png_header", "write_face_png"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
"""The eight bytes every PNG file starts with."""
PNG_KEYWORD = "faceinfer"
"""The keyword of faceinfer's iTXt chunk."""
HEADER_VERSION = 1
"""The version of the JSON layout written, and the newest one read."""

_BYTES_TAG = "$base64"
_MAX_CHUNK = 2**31 - 1  # PNG 1.2, section 5.3
_MAX_TEXT = 64 * 2**20  # a bound on decompressed text: no header comes near it
_CENTERINGS = ("legacy", "face", "head")


class FaceMetadataError(FaceInferError, ValueError):
    """A face PNG or its faceinfer metadata is malformed."""


class PNGHeader(TypedDict):
    """The metadata of one extracted face: faceswap's ``PNGHeader`` layout."""

    alignments: PNGAlignments
    """The face in its frame: box, landmarks, masks and identities."""
    source: PNGSource
    """The frame the face came from."""


# ----------------------------------------------------------------------------------------- chunks
def _chunks(data: bytes, name: str) -> Iterator[tuple[bytes, int, int]]:
    """Yield each chunk's (type, start of its length field, end of its CRC), checking lengths
    and CRCs, up to and including IEND.

    Raises
    ------
    FaceMetadataError
        If the data is not a PNG, or a chunk is truncated, oversized or fails its CRC.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise FaceMetadataError(f"{name}: expected a PNG file, got data starting {data[:8]!r}")
    offset = len(PNG_SIGNATURE)
    while True:
        if offset + 8 > len(data):
            raise FaceMetadataError(f"{name}: truncated PNG: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, offset)
        end = offset + 12 + length
        if length > _MAX_CHUNK or end > len(data):
            raise FaceMetadataError(f"{name}: truncated or corrupt PNG: chunk {kind!r} at byte "
                                    f"{offset} claims {length} bytes")
        if not kind.isalpha():
            raise FaceMetadataError(f"{name}: corrupt PNG: bad chunk type {kind!r} at byte "
                                    f"{offset}")
        (crc,) = struct.unpack_from(">I", data, end - 4)
        if zlib.crc32(data[offset + 4:end - 4]) != crc:
            raise FaceMetadataError(f"{name}: corrupt PNG: CRC mismatch in chunk {kind!r} at "
                                    f"byte {offset}")
        yield kind, offset, end
        if kind == b"IEND":
            return
        offset = end


def _make_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _itxt_text(body: bytes, name: str) -> str | None:
    """The text of an iTXt chunk, or None when the chunk is not faceinfer's."""
    keyword, sep, rest = body.partition(b"\0")
    if not sep or keyword != PNG_KEYWORD.encode("latin-1"):
        return None
    if len(rest) < 2:
        raise FaceMetadataError(f"{name}: corrupt '{PNG_KEYWORD}' chunk: no compression fields")
    flag, method = rest[0], rest[1]
    parts = rest[2:].split(b"\0", 2)
    if len(parts) != 3:
        raise FaceMetadataError(f"{name}: corrupt '{PNG_KEYWORD}' chunk: expected a language "
                                "tag and a translated keyword")
    text = parts[2]
    if flag == 1 and method == 0:
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(text, _MAX_TEXT)
        except zlib.error as err:
            raise FaceMetadataError(f"{name}: corrupt '{PNG_KEYWORD}' chunk: {err}") from err
        if inflater.unconsumed_tail:
            raise FaceMetadataError(f"{name}: '{PNG_KEYWORD}' chunk text exceeds {_MAX_TEXT} "
                                    "bytes")
    elif flag != 0:
        raise FaceMetadataError(f"{name}: corrupt '{PNG_KEYWORD}' chunk: compression flag "
                                f"{flag}, method {method}")
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FaceMetadataError(f"{name}: '{PNG_KEYWORD}' chunk text is not UTF-8: {err}"
                                ) from err


# ------------------------------------------------------------------------------------------- JSON
def _to_json(value: Any) -> Any:
    """json's fallback for the types a header may hold beyond JSON's own."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES_TAG: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"expected JSON-compatible header values, got {type(value).__name__}")


def _from_json(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and isinstance(obj.get(_BYTES_TAG), str):
        try:
            return base64.b64decode(obj[_BYTES_TAG], validate=True)
        except binascii.Error as err:
            raise ValueError(f"bad base64 data: {err}") from err
    return obj


def _reject_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not valid JSON")


def _header_json(header: PNGHeader) -> str:
    try:
        return json.dumps({"version": HEADER_VERSION, "alignments": header["alignments"],
                           "source": header["source"]},
                          default=_to_json, allow_nan=False, ensure_ascii=False,
                          separators=(",", ":"))
    except (TypeError, ValueError, KeyError) as err:
        raise FaceMetadataError(f"cannot store the face header: {err}") from err


# ------------------------------------------------------------------------------------ validation
class _Checker:
    """Checks the decoded JSON against the header layout, naming the file and the bad field."""

    def __init__(self, name: str) -> None:
        self.name = name

    def fail(self, path: str, expected: str, value: object) -> FaceMetadataError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return FaceMetadataError(f"{self.name}: bad faceinfer metadata: expected {path} to be "
                                 f"{expected}, got {shown}")

    def obj(self, value: object, path: str, keys: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, "an object", value)
        missing = [key for key in keys if key not in value]
        if missing:
            raise self.fail(path, f"an object with keys {', '.join(missing)}", sorted(value))
        return value

    def integer(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(path, "an integer", value)
        return value

    def number(self, value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, "a number", value)
        return float(value)

    def text(self, value: object, path: str) -> str:
        if not isinstance(value, str):
            raise self.fail(path, "a string", value)
        return value

    def numbers(self, value: object, path: str, shape: tuple[int | None, ...]) -> None:
        """A nested list of numbers of the given shape (None: any length)."""
        wanted = " x ".join("N" if n is None else str(n) for n in shape)

        def walk(item: object, depth: int) -> None:
            if depth == len(shape):
                if isinstance(item, bool) or not isinstance(item, int | float):
                    raise self.fail(path, f"a {wanted} list of numbers", value)
                return
            size = shape[depth]
            if not isinstance(item, list) or (size is not None and len(item) != size):
                raise self.fail(path, f"a {wanted} list of numbers", value)
            for part in item:
                walk(part, depth + 1)

        walk(value, 0)

    def alignments(self, value: object) -> PNGAlignments:
        face = self.obj(value, "alignments",
                        ("x", "y", "w", "h", "landmarks_xy", "mask", "identity"))
        for key in ("x", "y", "w", "h"):
            self.integer(face[key], f"alignments.{key}")
        self.numbers(face["landmarks_xy"], "alignments.landmarks_xy", (None, 2))
        masks = self.obj(face["mask"], "alignments.mask", ())
        for mask_name, mask in masks.items():
            path = f"alignments.mask.{mask_name}"
            entry = self.obj(mask, path, ("mask", "affine_matrix", "interpolator",
                                          "stored_size", "stored_centering"))
            if not isinstance(entry["mask"], bytes):
                raise self.fail(f"{path}.mask", "base64 bytes", entry["mask"])
            self.numbers(entry["affine_matrix"], f"{path}.affine_matrix", (3, 3))
            self.integer(entry["interpolator"], f"{path}.interpolator")
            self.integer(entry["stored_size"], f"{path}.stored_size")
            if entry["stored_centering"] not in _CENTERINGS:
                raise self.fail(f"{path}.stored_centering", f"one of {_CENTERINGS}",
                                entry["stored_centering"])
        identities = self.obj(face["identity"], "alignments.identity", ())
        for identity_name, embedding in identities.items():
            self.numbers(embedding, f"alignments.identity.{identity_name}", (None,))
        return face  # type: ignore[return-value]  # checked field by field above

    def source(self, value: object) -> PNGSource:
        source = self.obj(value, "source", ("alignments_version", "original_filename",
                                            "face_index", "source_filename", "source_is_video",
                                            "source_frame_dims"))
        self.number(source["alignments_version"], "source.alignments_version")
        self.text(source["original_filename"], "source.original_filename")
        self.integer(source["face_index"], "source.face_index")
        self.text(source["source_filename"], "source.source_filename")
        if not isinstance(source["source_is_video"], bool):
            raise self.fail("source.source_is_video", "true or false", source["source_is_video"])
        dims = source["source_frame_dims"]
        if dims is not None:
            if not isinstance(dims, list) or len(dims) != 2:
                raise self.fail("source.source_frame_dims", "[height, width] or null", dims)
            source["source_frame_dims"] = (self.integer(dims[0], "source.source_frame_dims"),
                                           self.integer(dims[1], "source.source_frame_dims"))
        return source  # type: ignore[return-value]  # checked field by field above


def _parse_header(text: str, name: str) -> PNGHeader:
    try:
        data = json.loads(text, object_hook=_from_json, parse_constant=_reject_constant)
    except ValueError as err:  # JSONDecodeError, bad base64, NaN
        raise FaceMetadataError(f"{name}: '{PNG_KEYWORD}' chunk is not valid faceinfer JSON: "
                                f"{err}") from err
    check = _Checker(name)
    top = check.obj(data, "the metadata", ("version", "alignments", "source"))
    version = check.integer(top["version"], "version")
    if not 1 <= version <= HEADER_VERSION:
        raise FaceMetadataError(f"{name}: expected faceinfer metadata version 1 to "
                                f"{HEADER_VERSION}, got {version} (written by a newer "
                                "faceinfer?)")
    return {"alignments": check.alignments(top["alignments"]),
            "source": check.source(top["source"])}


# --------------------------------------------------------------------------------------- public
def encode_face_png(image: npt.NDArray[np.uint8], header: PNGHeader) -> bytes:
    """Encode an aligned face as PNG bytes carrying its metadata (see the module docstring).

    Parameters
    ----------
    image:
        The aligned face, uint8 BGR (H, W, 3).
    header:
        The face's metadata. Byte strings, numpy arrays and numpy scalars are stored as
        described in the module docstring.

    Raises
    ------
    FaceMetadataError
        If the header holds values that cannot be stored (NaN, unknown types).
    ValueError
        If OpenCV cannot encode the image.
    """
    text = _header_json(header)
    success, encoded = cv2.imencode(".png", image)
    if not success:
        raise ValueError(f"OpenCV could not encode a {getattr(image, 'shape', '?')} image as PNG")
    data = encoded.tobytes()
    idat = next(start for kind, start, _ in _chunks(data, "the encoded face")
                if kind in (b"IDAT", b"IEND"))
    body = PNG_KEYWORD.encode("latin-1") + b"\0" * 5 + text.encode("utf-8")
    return data[:idat] + _make_chunk(b"iTXt", body) + data[idat:]


def write_face_png(path: str | os.PathLike[str], image: npt.NDArray[np.uint8],
                   header: PNGHeader) -> None:
    """Write an aligned face and its metadata to ``path`` atomically (temp file, then rename).

    Raises
    ------
    FaceMetadataError, ValueError
        As :func:`encode_face_png`.
    OSError
        If the file cannot be written.
    """
    data = encode_face_png(image, header)
    target = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_png_header(source: str | os.PathLike[str] | bytes, name: str | None = None
                    ) -> PNGHeader | None:
    """Read the faceinfer metadata of a face PNG.

    Parameters
    ----------
    source:
        The PNG file's path, or its bytes.
    name:
        How to name the data in errors. Default: the path, or ``<bytes>``.

    Returns
    -------
    The face's metadata, or None when the PNG carries no faceinfer chunk (a plain PNG, or one
    with only faceswap's chunk, which is never evaluated).

    Raises
    ------
    FaceMetadataError
        If the data is not a well-formed PNG (bad signature, truncated, CRC mismatch), holds more
        than one faceinfer chunk, or the chunk's text is not valid faceinfer metadata.
    OSError
        If the file cannot be read.
    """
    if isinstance(source, bytes):
        data, label = source, name or "<bytes>"
    else:
        data, label = Path(source).read_bytes(), name or os.fspath(source)
    found: list[str] = []
    for kind, start, end in _chunks(data, label):
        if kind == b"iTXt":
            text = _itxt_text(data[start + 8:end - 4], label)
            if text is not None:
                found.append(text)
    if len(found) > 1:
        raise FaceMetadataError(f"{label}: expected one '{PNG_KEYWORD}' chunk, got {len(found)}")
    return _parse_header(found[0], label) if found else None
