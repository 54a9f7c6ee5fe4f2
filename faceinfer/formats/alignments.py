"""faceinfer's alignments file: every frame's faces, appended record by record, crash-safe.

The byte layout is specified in ``docs/alignments-format.md``; in short:

* a 16-byte header: the magic ``b"\\x89FIA\\r\\n\\x1a\\n"``, the little-endian uint32 schema
  version (:data:`SCHEMA_VERSION`) and the CRC-32 of those 12 bytes;
* then records, each a 12-byte record header (uint32 payload length, CRC-32 of the payload,
  CRC-32 of those 8 bytes) and the payload. A payload is a metadata record (``b"M"`` and a JSON
  object) or a frame record (``b"F"``, the frame's name, a small JSON descriptor and the
  frame's arrays as raw little-endian bytes).

:class:`AlignmentsWriter` appends one record per frame with a single ``write`` call, so a
``kill -9`` loses at most the record being written; :func:`load_alignments` treats an incomplete
last record as the end of the file (with a warning), and the writer drops it before appending.
A later record for the same frame name replaces the earlier one. Nothing is ever unpickled or
evaluated: payloads are JSON and raw numbers.
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from faceinfer._version import __version__
from faceinfer.errors import FaceInferError
from faceinfer.formats.records import FrameRecord, StoredMasks

try:  # advisory lock against two writers on one file; not available on Windows
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["MAGIC", "SCHEMA_VERSION", "Alignments", "AlignmentsError", "AlignmentsWriter",
           "FrameRecord", "StoredMasks", "load_alignments", "synthetic_alignments"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
"""The version of the layout written, and the newest one read."""
MAGIC: Final = b"\x89FIA\r\n\x1a\n"
"""The eight bytes an alignments file starts with (PNG-style: catches text-mode transfers)."""

_FILE_HEADER = struct.Struct("<8sII")  # magic, version, CRC-32 of magic + version
_RECORD_HEADER = struct.Struct("<III")  # payload length, payload CRC-32, CRC-32 of the first 8
_NAME_LENGTH = struct.Struct("<H")
_DESCRIPTOR_LENGTH = struct.Struct("<I")
_FRAME, _META = b"F", b"M"
_INT32, _FLOAT32 = np.dtype("<i4"), np.dtype("<f4")

Migration = Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]
"""Upgrades one frame record (JSON descriptor, array bytes) from schema version n to n + 1."""
_MIGRATIONS: dict[int, Migration] = {}
"""Key n: the migration from version n to n + 1. Only version 1 exists: none yet. A version 2
adds ``_MIGRATIONS[1]``, and :func:`_decode_frame` then reads a version-1 record through it."""
assert set(_MIGRATIONS) == set(range(1, SCHEMA_VERSION)), "one migration per version step"


class AlignmentsError(FaceInferError):
    """An alignments file is missing, malformed, corrupt or of an unknown version."""


# --------------------------------------------------------------------------------------- encoding
def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def _frame_header(version: int) -> bytes:
    head = MAGIC + struct.pack("<I", version)
    return head + struct.pack("<I", _crc(head))


def _record(payload: bytes) -> bytes:
    head = struct.pack("<II", len(payload), _crc(payload))
    return head + struct.pack("<I", _crc(head)) + payload


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode("utf-8")


def _encode_frame(record: FrameRecord) -> bytes:
    """A frame record's payload (layout in ``docs/alignments-format.md``)."""
    name = record.name.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError(f"expected a frame name of at most 65535 UTF-8 bytes, got {len(name)}")
    descriptor = {
        "source": record.source, "frame_size": list(record.frame_size),
        "faces": len(record), "keypoints": int(record.keypoints.shape[1]),
        "landmarks": None if record.landmarks is None else int(record.landmarks.shape[1]),
        "masks": {key: {"centering": masks.centering, "stored_size": int(masks.stored_size),
                        "interpolator": int(masks.interpolator),
                        "lengths": [len(item) for item in masks.data]}
                  for key, masks in record.masks.items()},
        "identities": {key: int(value.shape[1]) for key, value in record.identities.items()},
        "thumbnails": [len(thumb) for thumb in record.thumbnails]}
    parts: list[bytes] = [record.bboxes.astype("<i4").tobytes(),
                          record.keypoints.astype("<f4").tobytes()]
    if record.landmarks is not None:
        parts.append(record.landmarks.astype("<f4").tobytes())
    parts.append(record.align_scores.astype("<f4").tobytes())
    for masks in record.masks.values():
        parts.append(masks.affine_matrices.astype("<f4").tobytes())
        parts.extend(masks.data)
    parts.extend(value.astype("<f4").tobytes() for value in record.identities.values())
    parts.extend(record.thumbnails)
    text = _json(descriptor)
    return b"".join([_FRAME, _NAME_LENGTH.pack(len(name)), name,
                     _DESCRIPTOR_LENGTH.pack(len(text)), text, *parts])


# --------------------------------------------------------------------------------------- decoding
class _Blob:
    """Reads the arrays of one frame record in order, checking every length."""

    def __init__(self, data: bytes, fail: Callable[[str], AlignmentsError]) -> None:
        self.data, self.pos, self.fail = data, 0, fail

    def take(self, size: int) -> bytes:
        end = self.pos + size
        if size < 0 or end > len(self.data):
            raise self.fail(f"expected {size} more array bytes at {self.pos}, got "
                            f"{len(self.data) - self.pos}")
        out, self.pos = self.data[self.pos:end], end
        return out

    def array(self, dtype: np.dtype[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
        """The next array: ``dtype`` (little-endian) of ``shape``, as a native-order copy."""
        count = math.prod(shape)
        start = self.pos
        self.take(count * dtype.itemsize)
        array = np.frombuffer(self.data, dtype, count, start).reshape(shape)
        return array.astype(dtype.newbyteorder("="))  # a copy, in native byte order


def _count(value: Any, what: str, fail: Callable[[str], AlignmentsError]) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise fail(f"expected {what} to be an integer >= 0, got {value!r}")
    return value


def _decode_frame(payload: bytes, version: int, fail: Callable[[str], AlignmentsError]
                  ) -> FrameRecord:
    """A frame record from its payload (which starts with the kind byte ``F``)."""
    (name_length,) = _NAME_LENGTH.unpack_from(payload, 1)
    start = 1 + _NAME_LENGTH.size + name_length
    name = payload[1 + _NAME_LENGTH.size:start].decode("utf-8")  # checked by _scan

    def bad(message: str) -> AlignmentsError:
        return fail(f"frame '{name}': {message}")

    try:
        (text_length,) = _DESCRIPTOR_LENGTH.unpack_from(payload, start)
        start += _DESCRIPTOR_LENGTH.size
        descriptor = json.loads(payload[start:start + text_length].decode("utf-8"))
        blob = payload[start + text_length:]
        for step in range(version, SCHEMA_VERSION):
            descriptor, blob = _MIGRATIONS[step](descriptor, blob)
        return _frame_from(name, descriptor, _Blob(blob, bad), bad)
    except (KeyError, TypeError, AttributeError, ValueError, struct.error) as err:
        raise bad(f"bad descriptor or arrays: {err!r}") from None


def _frame_from(name: str, desc: dict[str, Any], blob: _Blob,
                bad: Callable[[str], AlignmentsError]) -> FrameRecord:
    count = _count(desc["faces"], "faces", bad)
    keypoints = _count(desc["keypoints"], "keypoints", bad)
    points = None if desc["landmarks"] is None else _count(desc["landmarks"], "landmarks", bad)
    bboxes = blob.array(_INT32, (count, 4))
    kps = blob.array(_FLOAT32, (count, keypoints, 2))
    landmarks = None if points is None else blob.array(_FLOAT32, (count, points, 2))
    scores = blob.array(_FLOAT32, (count,))
    masks: dict[str, StoredMasks] = {}
    for key, info in desc["masks"].items():
        matrices = blob.array(_FLOAT32, (count, 3, 3))
        lengths = [_count(size, f"mask '{key}' lengths", bad) for size in info["lengths"]]
        if len(lengths) != count:
            raise bad(f"expected {count} '{key}' mask lengths, got {len(lengths)}")
        masks[key] = StoredMasks(info["centering"], _count(info["stored_size"], "stored_size",
                                                           bad),
                                 matrices, [blob.take(size) for size in lengths],
                                 _count(info["interpolator"], "interpolator", bad))
    identities = {key: blob.array(_FLOAT32, (count, _count(size, f"identity '{key}'", bad)))
                  for key, size in desc["identities"].items()}
    thumbnails = [blob.take(_count(size, "thumbnail lengths", bad))
                  for size in desc["thumbnails"]]
    if blob.pos != len(blob.data):
        raise bad(f"expected {blob.pos} array bytes, got {len(blob.data)}")
    height, width = desc["frame_size"]
    source = desc["source"]
    if not isinstance(source, str):
        raise bad(f"expected the source to be a string, got {source!r}")
    if len(thumbnails) != count:
        raise bad(f"expected {count} thumbnails, got {len(thumbnails)}")
    # Every array was read at the shape the descriptor declares, so the record is valid by
    # construction: skip FrameRecord's checks and conversions (a third of the decoding time).
    record = object.__new__(FrameRecord)
    record.__dict__.update(
        name=name, source=source, frame_size=(_count(height, "height", bad),
                                              _count(width, "width", bad)),
        bboxes=bboxes, keypoints=kps, landmarks=landmarks, align_scores=scores, masks=masks,
        identities=identities, thumbnails=thumbnails)
    return record


# ----------------------------------------------------------------------------------------- scanning
@dataclass
class _Scan:
    """What a sequential pass over a file found."""

    version: int
    meta: dict[str, Any]
    index: dict[str, tuple[int, int]]
    """Frame name -> (offset of its last record, end of that record's payload)."""
    end: int
    """The end of the last complete, intact record: where appends go."""


def _check_header(data: bytes, label: str) -> int | None:
    """The file's schema version, or None for a file cut short inside its header (a crash
    while creating it: an empty file)."""
    if len(data) < _FILE_HEADER.size and MAGIC.startswith(data[:len(MAGIC)]):
        if data:
            logger.warning("%s: incomplete header (%d bytes): treated as empty", label,
                           len(data))
        return None
    magic, version, crc = _FILE_HEADER.unpack_from(data.ljust(_FILE_HEADER.size, b"\0"))
    if magic != MAGIC:
        hint = (" (it looks like a faceswap .fsa file: convert it with `faceinfer alignments "
                "import`)" if data[:1] == b"\x78" else "")
        raise AlignmentsError(f"{label}: not a faceinfer alignments file: expected it to start "
                              f"with {MAGIC!r}, got {data[:8]!r}{hint}")
    if _crc(data[:12]) != crc:
        raise AlignmentsError(f"{label}: corrupt header: CRC mismatch at byte 0")
    if version > SCHEMA_VERSION:
        raise AlignmentsError(f"{label}: schema version {version} is newer than this faceinfer "
                              f"reads (1 to {SCHEMA_VERSION}): upgrade faceinfer to read it")
    if version < 1:
        raise AlignmentsError(f"{label}: expected a schema version >= 1, got {version}")
    return int(version)


def _record_end(view: memoryview, offset: int, label: str) -> int | None:
    """The end of the intact record at ``offset``, or None when the file ends in a record cut
    short (or one whose payload fails its CRC and ends the file): the one in flight in a crash.
    A record that fails a check anywhere else is an :class:`AlignmentsError`."""
    size = len(view)
    start = offset + _RECORD_HEADER.size
    if start > size:
        return None
    length, payload_crc, head_crc = _RECORD_HEADER.unpack_from(view, offset)
    if _crc(view[offset:offset + 8]) != head_crc:
        if not any(view[offset:]):
            return None  # zeros from a file system that grew the file but lost the data
        raise AlignmentsError(f"{label}: corrupt record header at byte {offset}: CRC mismatch")
    end: int = start + length
    if end > size:
        return None
    if _crc(view[start:end]) != payload_crc:
        if end == size:
            return None
        raise AlignmentsError(f"{label}: corrupt record at byte {offset}: payload CRC mismatch")
    return end


def _scan(data: bytes, label: str) -> _Scan:
    """Check the header and every record's CRCs, index the frames and merge the metadata.

    An incomplete last record, or a last record whose payload fails its CRC, is dropped with a
    warning: it was being written when the writer died. Anything else that fails a check is an
    :class:`AlignmentsError` naming the file and the byte offset.
    """
    version = _check_header(data, label)
    if version is None:
        return _Scan(SCHEMA_VERSION, {}, {}, 0)
    meta: dict[str, Any] = {}
    index: dict[str, tuple[int, int]] = {}
    offset, view = _FILE_HEADER.size, memoryview(data)
    while offset < len(data):
        end = _record_end(view, offset, label)
        if end is None:
            logger.warning("%s: the last record (from byte %d, %d bytes) is incomplete: frames "
                           "lost to a crash, or a writer still running; ignored", label, offset,
                           len(data) - offset)
            break
        start = offset + _RECORD_HEADER.size
        kind = data[start:start + 1]
        try:
            if kind == _FRAME:
                (name_length,) = _NAME_LENGTH.unpack_from(data, start + 1)
                name_start = start + 1 + _NAME_LENGTH.size
                index[data[name_start:name_start + name_length].decode("utf-8")] = (offset, end)
            elif kind == _META:
                update = json.loads(data[start + 1:end])
                if not isinstance(update, dict):
                    raise ValueError(f"expected a JSON object, got {type(update).__name__}")
                meta.update(update)
            else:
                raise ValueError(f"unknown record kind {kind!r}")
        except (ValueError, struct.error) as err:
            raise AlignmentsError(f"{label}: corrupt record at byte {offset}: {err}") from None
        offset = end
    return _Scan(version, meta, index, offset)


# ------------------------------------------------------------------------------------------ public
class Alignments(Mapping[str, FrameRecord]):
    """A loaded alignments file: frame name -> :class:`FrameRecord`, the last record written for
    each name winning, in the order the names first appeared.

    Records are decoded when accessed (the file's bytes stay in memory), so loading costs one
    read and one CRC pass. Use :func:`load_alignments` to make one.
    """

    def __init__(self, path: Path, data: bytes, scan: _Scan) -> None:
        self.path = path
        """The file loaded."""
        self.version: int = scan.version
        """The schema version the file was written with."""
        self.meta: dict[str, Any] = scan.meta
        """The file's metadata: every metadata record merged, later keys winning
        (``faceinfer_version``, ``created``, ``opened`` and what the writers added)."""
        self._data = data
        self._index = scan.index

    def __getitem__(self, name: str) -> FrameRecord:
        offset, end = self._index[name]

        def fail(message: str) -> AlignmentsError:
            return AlignmentsError(f"{self.path}: corrupt frame record at byte {offset}: "
                                   f"{message}")

        return _decode_frame(self._data[offset + _RECORD_HEADER.size:end], self.version, fail)

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __repr__(self) -> str:
        return f"Alignments({str(self.path)!r}, frames={len(self)}, version={self.version})"


def load_alignments(path: str | os.PathLike[str]) -> Alignments:
    """Load an alignments file (fast: one read, one CRC pass; records decode on access).

    Raises
    ------
    AlignmentsError
        If the file cannot be read, is not an alignments file, is of a newer schema version, or
        is corrupt before its last record (naming the file and the byte offset). An incomplete
        last record (a crash while writing it) is ignored with a warning.
    """
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as err:
        raise AlignmentsError(f"{target}: cannot read the alignments file: {err}") from err
    return Alignments(target, data, _scan(data, str(target)))


class AlignmentsWriter:
    """Appends frame records to an alignments file, each reaching the OS before ``write``
    returns. Use from one thread at a time (a lock guards against interleaving).

    Creates the file, or opens an existing one for appending after dropping an incomplete last
    record. Every opening appends a metadata record: ``faceinfer_version``, ``opened`` (UTC,
    ISO 8601), ``created`` for a new file, and ``meta``. Holds an advisory lock (``flock``,
    where available) so a second writer on the same file fails at once.

    Raises
    ------
    AlignmentsError
        If the file cannot be opened, is locked by another writer, is not an alignments file,
        is corrupt, or has another schema version; or ``meta`` is not JSON-serialisable.
    """

    def __init__(self, path: str | os.PathLike[str], meta: Mapping[str, Any] | None = None
                 ) -> None:
        self.path = Path(path)
        """The file written."""
        self.records_written = 0
        """Frame records written by this writer."""
        self._lock = threading.Lock()
        now = datetime.now(UTC).isoformat(timespec="seconds")
        info: dict[str, Any] = {"faceinfer_version": __version__, "opened": now, **(meta or {})}
        try:
            _json(info)
        except (TypeError, ValueError) as err:
            raise AlignmentsError(f"{self.path}: cannot store the metadata: {err}") from err
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as err:
            raise AlignmentsError(f"{self.path}: cannot open the alignments file: {err}"
                                  ) from err
        self._fd: int | None = fd
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as err:
                    raise AlignmentsError(f"{self.path}: another writer (in this or another "
                                          "process) is writing this alignments file") from err
            with open(fd, "rb", closefd=False) as handle:
                data = handle.read()
            scan = _scan(data, str(self.path))
            if scan.version != SCHEMA_VERSION:
                raise AlignmentsError(f"{self.path}: cannot append to a schema version "
                                      f"{scan.version} file (this faceinfer writes "
                                      f"{SCHEMA_VERSION}): write a new file")
            if scan.end == 0:
                os.ftruncate(fd, 0)
                self._write(_frame_header(SCHEMA_VERSION))
                info = {"created": now, **info}
            elif scan.end < len(data):
                logger.warning("%s: dropping the incomplete last record (%d bytes) before "
                               "appending", self.path, len(data) - scan.end)
                os.ftruncate(fd, scan.end)
            self._write(_record(_META + _json(info)))
        except BaseException:
            self._fd = None
            os.close(fd)
            raise

    def _write(self, data: bytes) -> None:
        assert self._fd is not None
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def write(self, record: FrameRecord) -> None:
        """Append one frame's record; it replaces any earlier record of the same name.

        Raises
        ------
        AlignmentsError
            If the writer is closed.
        OSError
            If the write fails (disk full...).
        """
        data = _record(_encode_frame(record))
        with self._lock:
            if self._fd is None:
                raise AlignmentsError(f"{self.path}: the alignments writer is closed")
            self._write(data)
            self.records_written += 1

    def close(self) -> None:
        """Flush the file to disk (fsync) and close it. Idempotent."""
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> AlignmentsWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


# ----------------------------------------------------------------------------------------- bench
def synthetic_alignments(path: str | os.PathLike[str], frames: int, seed: int = 0) -> Path:
    """Write a synthetic alignments file of ``frames`` frames, for benchmarks of
    :func:`load_alignments`: one face per frame with 68 landmarks, 5 keypoints, a 128 px mask
    (an ellipse, zlib-compressed), a 128-d identity and a 3,000-byte thumbnail (random bytes,
    as incompressible as a JPEG). Returns the path."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((128, 128), np.uint8)
    cv2.ellipse(mask, (64, 70), (44, 56), 0, 0, 360, 255, -1)
    packed = zlib.compress(mask.tobytes())
    thumbs = [rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() for _ in range(16)]
    matrix = np.array([[[0.5, 0.0, -10.0], [0.0, 0.5, -12.0], [0.0, 0.0, 1.0]]], np.float32)
    with AlignmentsWriter(path, {"synthetic": True}) as writer:
        for index in range(frames):
            points = rng.uniform(0, 512, (1, 73, 2)).astype(np.float32)
            identity = rng.standard_normal((1, 128)).astype(np.float32)
            writer.write(FrameRecord(
                f"synthetic_{index + 1:06d}", "synthetic", (720, 1280),
                np.array([[100, 120, 300, 340]]), points[:, 68:], points[:, :68],
                rng.uniform(0, 1, 1).astype(np.float32),
                {"components": StoredMasks("face", 128, matrix, [packed])},
                {"dlib-resnet": identity}, [thumbs[index % 16]]))
    return Path(path)
