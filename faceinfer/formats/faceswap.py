"""faceswap interop: its alignments file (``.fsa``) and its face PNG header chunk.

Writing
-------
:func:`write_fsa` writes faceswap's alignments layout version 2.4: ``zlib.compress`` of a
protocol-4 pickle of ``{"__meta__": {"version": 2.4}, "__data__": {frame_key: {"faces": [...],
"video_meta": {}}}}``, each face ``{x, y, w, h, landmarks_xy, mask, identity, thumb}``, frame keys
as faceswap 2.4 makes them (:func:`faceswap_frame_key`). The file is written to a temporary file,
fsynced and renamed over the target.

``landmarks_xy`` is a (P, 2) float32 numpy array and ``thumb`` a (L, 1) uint8 numpy array of the
JPEG bytes, as faceswap's own extract stores them: faceswap's thumbnail reader calls ``.shape`` on
``thumb`` and treats any non-empty value as present, so a plain list would break its manual tool
(with no ``thumb`` at all it regenerates them, but the thumbnails would not round-trip). The
pickle therefore references numpy's array-reconstruction globals; everything else is plain
dicts, lists, bytes, strings and numbers.

Reading
-------
:func:`read_fsa` never runs the plain unpickler: it uses
:func:`~faceinfer.formats.safe_pickle.restricted_loads`, which reads plain data and numeric numpy
arrays only, through inert stand-ins (no numpy or other code runs), and refuses every other
global and every persistent id; a refusal is an
:class:`~faceinfer.formats.alignments.AlignmentsError` naming the file.

Layouts 2.0 to 2.4 are read: the old ``{frame: [faces]}`` structure, ``landmarksXY``, masks
without ``stored_centering`` ("face"), faces without ``identity`` and frames without
``video_meta``. Files older than 2.0 are refused, as faceswap refuses them.

PNG header
----------
:func:`add_faceswap_chunk` inserts faceswap's iTXt chunk (keyword ``faceswap``, text the Python
literal of the header dict, made with :func:`repr` of plain containers only) before the PNG's
first iTXt or IDAT chunk; :func:`read_faceswap_png_header` parses it with
:func:`ast.literal_eval` only.
"""
from __future__ import annotations

import ast
import logging
import math
import os
import pickle
import re
import tempfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.formats.alignments import AlignmentsError, AlignmentsWriter
from faceinfer.formats.png import (
    FaceMetadataError,
    PNGHeader,
    _Checker,
    _chunks,
    _make_chunk,
)
from faceinfer.formats.records import CENTERINGS, FrameRecord, StoredMasks
from faceinfer.formats.safe_pickle import restricted_loads, unwrap
from faceinfer.sources import VIDEO_EXTENSIONS

__all__ = ["FSA_VERSION", "MIN_FSA_VERSION", "PNG_KEYWORD", "add_faceswap_chunk",
           "encode_faceswap_png", "faceswap_frame_key", "import_fsa", "read_faceswap_png_header",
           "read_fsa", "write_fsa"]

logger = logging.getLogger(__name__)

FSA_VERSION: Final = 2.4
"""The faceswap alignments layout written."""
MIN_FSA_VERSION: Final = 2.0
"""The oldest faceswap alignments layout read (faceswap itself refuses older files)."""
PNG_KEYWORD: Final = "faceswap"
"""The keyword of faceswap's iTXt chunk."""

# Protocol 4: numpy then pickles arrays through numpy._core.multiarray._reconstruct, which the
# numpy._core shim of numpy 1.26 (faceswap's minimum) resolves; protocol 5 would use
# numpy._core.numeric._frombuffer, which that shim lacks.
_PICKLE_PROTOCOL = 4
_VIDEO_KEY = re.compile(r"^(?P<name>(?P<stem>.+)_\d{6})(?P<ext>\.[^./\\]+)$")


def faceswap_frame_key(name: str, video_extension: str | None = None) -> str:
    """faceswap 2.4's key of a frame: the image file name, or for a video frame
    ``<stem>_<6 digits><video extension>`` (``clip_000001`` -> ``clip_000001.mp4``)."""
    if video_extension is None:
        return name
    if not video_extension.startswith(".") or len(video_extension) < 2:
        raise ValueError(f"expected a video extension such as '.mp4', got {video_extension!r}")
    return name + video_extension


# --------------------------------------------------------------------------------------- writing
def _face(record: FrameRecord, index: int) -> dict[str, Any]:
    assert record.landmarks is not None
    face: dict[str, Any] = dict(record.png_alignments(index))
    face["landmarks_xy"] = record.landmarks[index].copy()
    thumb = record.thumbnails[index]
    face["thumb"] = np.frombuffer(thumb, np.uint8).reshape(-1, 1).copy() if thumb else None
    return face


def _atomic_write(target: Path, data: bytes) -> None:
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def write_fsa(path: str | os.PathLike[str], records: Iterable[FrameRecord],
              video_extension: str | None = None) -> None:
    """Write faceswap's alignments file (layout 2.4, see the module docstring) atomically.

    Parameters
    ----------
    path:
        The ``.fsa`` file to write (replaced if it exists).
    records:
        The frames, all from one source (faceswap keeps one file per video or folder).
    video_extension:
        The video's extension (``".mp4"``) when the frames come from a video, else None.

    Raises
    ------
    AlignmentsError
        If a frame has faces without landmarks (faceswap cannot use them: run an aligner).
    OSError
        If the file cannot be written.
    """
    target = Path(path)
    data: dict[str, dict[str, Any]] = {}
    for record in records:
        if len(record) and record.landmarks is None:
            raise AlignmentsError(f"{target}: frame '{record.name}' has faces without landmarks: "
                                  "faceswap's alignments need them (run an aligner)")
        data[faceswap_frame_key(record.name, video_extension)] = {
            "faces": [_face(record, index) for index in range(len(record))], "video_meta": {}}
    tree = {"__meta__": {"version": FSA_VERSION}, "__data__": data}
    _atomic_write(target, zlib.compress(pickle.dumps(tree, protocol=_PICKLE_PROTOCOL)))


# --------------------------------------------------------------------------------------- reading
class _Frame:
    """Turns faceswap's face dicts of one frame into :class:`FrameRecord` fields, checking them
    and naming the file, frame and face in every error."""

    def __init__(self, label: str, key: str) -> None:
        self.label, self.key = label, key

    def fail(self, face: int | None, message: str) -> AlignmentsError:
        where = f"frame '{self.key}'" + ("" if face is None else f", face {face}")
        return AlignmentsError(f"{self.label}: {where}: {message}")

    def array(self, value: object, face: int, what: str, ndim: int) -> npt.NDArray[np.float32]:
        value = unwrap(value)
        try:
            out = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError, RecursionError) as err:
            raise self.fail(face, f"expected {what} to be numbers, got {err}") from None
        if out.ndim != ndim and out.size:
            raise self.fail(face, f"expected {what} with {ndim} dimensions, got shape "
                            f"{out.shape}")
        return out

    def mapping(self, value: object, face: int, what: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
            raise self.fail(face, f"expected {what} to be a dict by name, got {value!r:.60}")
        return value

    def integer(self, value: object, face: int, what: str) -> int:
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value != int(value)):
            raise self.fail(face, f"expected {what} to be an integer, got {value!r:.60}")
        return int(value)

    def thumb(self, value: object, face: int) -> bytes:
        if value is None:
            return b""
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        value = unwrap(value)
        try:
            pixels = np.asarray(value)
        except (TypeError, ValueError, RecursionError):
            pixels = np.asarray([])
        if pixels.dtype.kind not in "ui" or ((pixels < 0) | (pixels > 255)).any():
            raise self.fail(face, f"expected thumb to be JPEG bytes, got {value!r:.60}")
        return pixels.astype(np.uint8).tobytes()

    def mask(self, value: object, face: int, name: str) -> tuple[dict[str, Any], bytes]:
        if not isinstance(value, dict) or not isinstance(value.get("mask"), bytes | bytearray):
            raise self.fail(face, f"expected mask '{name}' to be a dict holding mask bytes, got "
                            f"{value!r:.60}")
        centering = value.get("stored_centering", "face")  # "face" before layout 2.2
        if centering not in CENTERINGS:
            raise self.fail(face, f"expected mask '{name}' centering in {CENTERINGS}, got "
                            f"{centering!r:.40}")
        matrix = self.array(value.get("affine_matrix"), face, f"mask '{name}' affine_matrix", 2)
        if matrix.shape != (3, 3):
            raise self.fail(face, f"expected a 3 x 3 mask '{name}' affine_matrix, got "
                            f"{matrix.shape}")
        info = {"centering": centering, "matrix": matrix,
                "stored_size": self.integer(value.get("stored_size"), face, "stored_size"),
                "interpolator": self.integer(value.get("interpolator", cv2.INTER_LINEAR), face,
                                             "interpolator")}
        return info, bytes(value["mask"])

    def faces(self, faces: list[Any]) -> dict[str, Any]:
        """The FrameRecord fields (all but name, source and frame_size) of these faces."""
        count = len(faces)
        boxes = np.zeros((count, 4), np.int32)
        points: list[npt.NDArray[np.float32]] = []
        masks: dict[str, dict[str, Any]] = {}
        identities: dict[str, npt.NDArray[np.float32]] = {}
        thumbs: list[bytes] = []
        for index, face in enumerate(faces):
            if not isinstance(face, dict):
                raise self.fail(index, f"expected a dict, got {type(face).__name__}")
            left, top, width, height = (self.integer(face.get(key), index, key)
                                        for key in ("x", "y", "w", "h"))
            boxes[index] = (left, top, left + width, top + height)
            landmarks = self.array(face.get("landmarks_xy", face.get("landmarksXY", [])), index,
                                   "landmarks_xy", 2)
            if landmarks.size and landmarks.shape[1] != 2:
                raise self.fail(index, f"expected (P, 2) landmarks_xy, got {landmarks.shape}")
            points.append(landmarks.reshape(-1, 2))
            for name, value in self.mapping(face.get("mask"), index, "mask").items():
                info, data = self.mask(value, index, name)
                entry = masks.setdefault(name, {**info, "data": [b""] * count,
                                                "matrices": np.zeros((count, 3, 3), np.float32)})
                if any(entry[key] != info[key]
                       for key in ("centering", "stored_size", "interpolator")):
                    raise self.fail(index, f"mask '{name}' differs in centering, size or "
                                    "interpolator from the frame's other faces")
                entry["data"][index], entry["matrices"][index] = data, info["matrix"]
            for name, value in self.mapping(face.get("identity"), index, "identity").items():
                vector = self.array(value, index, f"identity '{name}'", 1)
                table = identities.setdefault(
                    name, np.full((count, len(vector)), np.nan, np.float32))
                if table.shape[1] != len(vector):
                    raise self.fail(index, f"expected a {table.shape[1]}-d identity '{name}', "
                                    f"got {len(vector)}")
                table[index] = vector
            thumbs.append(self.thumb(face.get("thumb"), index))
        sizes = {len(item) for item in points}
        if len(sizes) > 1:
            raise self.fail(None, f"expected the same number of landmarks for every face, got "
                            f"{sorted(sizes)}")
        return {
            "bboxes": boxes, "keypoints": np.zeros((count, 0, 2), np.float32),
            "landmarks": np.stack(points) if points and sizes != {0} else None,
            "align_scores": np.full((count,), np.nan, np.float32),
            "masks": {name: StoredMasks(entry["centering"], entry["stored_size"],
                                        entry["matrices"], entry["data"], entry["interpolator"])
                      for name, entry in masks.items()},
            "identities": identities, "thumbnails": thumbs}


def _unpickle(target: Path) -> Any:
    label = str(target)
    try:
        raw = target.read_bytes()
    except OSError as err:
        raise AlignmentsError(f"{label}: cannot read the faceswap alignments file: {err}"
                              ) from err
    try:
        payload = zlib.decompress(raw)
    except zlib.error as err:
        raise AlignmentsError(f"{label}: not a faceswap .fsa file (not zlib data: {err})"
                              ) from None
    try:
        return restricted_loads(payload)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RecursionError, MemoryError) as err:
        raise AlignmentsError(f"{label}: not a safe faceswap alignments file: {err}") from None


def _names(keys: list[str], label: str, is_video: bool | None, folder: str
           ) -> dict[str, tuple[str, str]]:
    """faceswap frame key -> (faceinfer frame name, source name)."""
    matches = [_VIDEO_KEY.match(key) for key in keys]
    if is_video is None:
        is_video = bool(keys) and all(
            match is not None and match["ext"].lower() in VIDEO_EXTENSIONS for match in matches)
        is_video = is_video and len({match["stem"] for match in matches if match}) == 1
    if not is_video:
        return {key: (key, folder) for key in keys}
    out: dict[str, tuple[str, str]] = {}
    for key, match in zip(keys, matches, strict=True):
        if match is None:
            raise AlignmentsError(f"{label}: expected video frame keys '<stem>_<6 digits><ext>', "
                                  f"got '{key}'")
        out[key] = (match["name"], match["stem"])
    return out


def read_fsa(path: str | os.PathLike[str], is_video: bool | None = None) -> list[FrameRecord]:
    """Read a faceswap alignments file (layouts 2.0 to 2.4) safely (see the module docstring).

    Parameters
    ----------
    path:
        The ``.fsa`` file.
    is_video:
        Whether the frames come from a video. None: decide from the keys (all
        ``<stem>_<6 digits><video extension>`` with one stem). Pre-2.4 video files end their keys
        in ``.png``: pass True for them.

    Returns
    -------
    One record per frame in the file's order. Video frame names lose the extension
    (``clip_000001.mp4`` -> ``clip_000001``, source ``clip``); image frames keep their file name,
    with the ``.fsa``'s folder name as the source. Frame sizes are unknown to faceswap: (0, 0).
    Keypoints are empty and align scores NaN. A face lacking a mask or identity that another face
    of its frame has gets ``b""`` mask data or a NaN embedding.

    Raises
    ------
    AlignmentsError
        If the file cannot be read, is not zlib data, holds anything but plain data and numeric
        arrays, is older than 2.0, or does not have faceswap's layout; naming the file (and the
        frame and face).
    """
    target = Path(path)
    label = str(target)
    tree = _unpickle(target)
    if not isinstance(tree, dict):
        raise AlignmentsError(f"{label}: expected a dict at the top, got {type(tree).__name__}")
    meta = tree.get("__meta__", {"version": 1.0})
    version = meta.get("version") if isinstance(meta, dict) else None
    if isinstance(version, bool) or not isinstance(version, int | float):
        raise AlignmentsError(f"{label}: expected a numeric __meta__ version, got {version!r:.40}")
    if version < MIN_FSA_VERSION:
        raise AlignmentsError(f"{label}: faceswap alignments version {version} is older than "
                              f"{MIN_FSA_VERSION}: update it with faceswap's own tools first")
    if version > FSA_VERSION:
        logger.warning("%s: faceswap alignments version %s is newer than %s: reading it as %s",
                       label, version, FSA_VERSION, FSA_VERSION)
    data = tree.get("__data__")
    if not isinstance(data, dict) or not all(isinstance(key, str) for key in data):
        raise AlignmentsError(f"{label}: expected __data__ to be a dict of frame names")
    names = _names(list(data), label, is_video, target.resolve().parent.name)
    records: list[FrameRecord] = []
    for key, entry in data.items():
        faces = entry if isinstance(entry, list) else (
            entry.get("faces", []) if isinstance(entry, dict) else None)
        frame = _Frame(label, key)
        if not isinstance(faces, list):
            raise frame.fail(None, f"expected a dict with a list of faces, got {entry!r:.60}")
        name, source = names[key]
        try:
            records.append(FrameRecord(name=name, source=source, frame_size=(0, 0),
                                       **frame.faces(faces)))
        except ValueError as err:
            raise frame.fail(None, str(err)) from None
    return records


def import_fsa(fsa_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
               is_video: bool | None = None) -> int:
    """Convert a faceswap ``.fsa`` into a faceinfer alignments file, returning the number of
    frames. The output is written to a temporary file and renamed over ``out_path``, so it is
    either complete or untouched; its metadata names the ``.fsa`` (``imported_from``).

    Raises
    ------
    AlignmentsError
        As :func:`read_fsa`, or if the output cannot be written.
    """
    records = read_fsa(fsa_path, is_video)
    target = Path(out_path)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        with AlignmentsWriter(temp, {"imported_from": os.fspath(fsa_path)}) as writer:
            for record in records:
                writer.write(record)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return len(records)


# ------------------------------------------------------------------------------------ PNG header
def _plain(value: Any, path: str) -> Any:
    """``value`` as plain Python containers and numbers whose ``repr`` is a literal."""
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {str(key): _plain(item, f"{path}.{key}") for key, item in value.items()}
    if isinstance(value, list | tuple):
        items = [_plain(item, path) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, float) and not math.isfinite(value):
        raise FaceMetadataError(f"cannot store {value} in {path}: faceswap's header is a Python "
                                "literal")
    if value is None or isinstance(value, str | bytes | int | float):
        return value
    raise FaceMetadataError(f"cannot store a {type(value).__name__} in {path} of faceswap's "
                            "header")


def add_faceswap_chunk(png: bytes, header: PNGHeader) -> bytes:
    """Insert faceswap's ``faceswap`` iTXt chunk (the header as a Python literal) into PNG
    bytes, before the first iTXt or IDAT chunk: faceswap rewrites the first iTXt chunk it finds,
    so it must be its own. ``source.alignments_version`` is written as 2.4. Works on the output
    of :func:`~faceinfer.formats.png.encode_face_png` too, giving a PNG that both faceswap and
    faceinfer read.

    Raises
    ------
    FaceMetadataError
        If ``png`` is not a well-formed PNG, or the header holds values a literal cannot hold.
    """
    dims = header["source"]["source_frame_dims"]
    source: dict[str, Any] = {**header["source"], "alignments_version": FSA_VERSION,
                              "source_frame_dims": None if dims is None else tuple(dims)}
    text = repr(_plain({"alignments": header["alignments"], "source": source}, "header"))
    where = next(start for kind, start, _ in _chunks(png, "the PNG")
                 if kind in (b"iTXt", b"IDAT", b"IEND"))
    body = PNG_KEYWORD.encode("latin-1") + b"\0" * 5 + text.encode("utf-8")
    return png[:where] + _make_chunk(b"iTXt", body) + png[where:]


def encode_faceswap_png(image: npt.NDArray[np.uint8], header: PNGHeader) -> bytes:
    """Encode an aligned face as faceswap writes it: OpenCV's PNG plus faceswap's header chunk
    (:func:`add_faceswap_chunk`).

    Raises
    ------
    FaceMetadataError
        If the header holds values a literal cannot hold.
    ValueError
        If OpenCV cannot encode the image.
    """
    success, encoded = cv2.imencode(".png", image)
    if not success:
        raise ValueError(f"OpenCV could not encode a {getattr(image, 'shape', '?')} image as PNG")
    return add_faceswap_chunk(encoded.tobytes(), header)


class _FaceswapChecker(_Checker):
    def fail(self, path: str, expected: str, value: object) -> FaceMetadataError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return FaceMetadataError(f"{self.name}: bad faceswap metadata: expected {path} to be "
                                 f"{expected}, got {shown}")


def _lists(value: Any) -> Any:
    """Tuples as lists, recursively (the checker reads JSON's shapes)."""
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(item) for item in value]
    return value


def read_faceswap_png_header(source: str | os.PathLike[str] | bytes, name: str | None = None
                             ) -> PNGHeader | None:
    """Read faceswap's metadata from a face PNG: its ``faceswap`` iTXt chunk, parsed with
    :func:`ast.literal_eval` only (no code runs) and checked field by field. Layouts from 2.1
    are read (``identity`` and ``stored_centering`` default to empty and "face").

    Returns
    -------
    The face's metadata, or None when the PNG has no ``faceswap`` chunk.

    Raises
    ------
    FaceMetadataError
        If the PNG is malformed, or the chunk is not a literal of faceswap's layout.
    OSError
        If ``source`` is a path that cannot be read.
    """
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    label = name or ("<bytes>" if isinstance(source, bytes) else os.fspath(source))
    prefix = PNG_KEYWORD.encode("latin-1") + b"\0"
    for kind, start, end in _chunks(data, label):
        body = data[start + 8:end - 4]
        if kind != b"iTXt" or not body.startswith(prefix):
            continue
        rest = body[len(prefix):]
        if rest[:2] != b"\0\0" or rest[2:4] != b"\0\0":
            raise FaceMetadataError(f"{label}: expected an uncompressed '{PNG_KEYWORD}' chunk "
                                    "with no language tag")
        try:
            value = ast.literal_eval(rest[4:].decode("utf-8"))
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError,
                UnicodeDecodeError) as err:
            raise FaceMetadataError(f"{label}: '{PNG_KEYWORD}' chunk is not a Python literal: "
                                    f"{err!r:.200}") from None
        check = _FaceswapChecker(label)
        top = check.obj(_lists(value), "the metadata", ("alignments", "source"))
        face = check.obj(top["alignments"], "alignments", ())
        face.setdefault("identity", {})
        for mask in (face.get("mask") or {}).values():
            if isinstance(mask, dict):
                mask.setdefault("stored_centering", "face")
        return {"alignments": check.alignments(face), "source": check.source(top["source"])}
    return None
