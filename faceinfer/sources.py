"""Input: find what to extract from (a video, a folder of images, or a batch of them) and read
its frames, decoding ahead of the pipeline in a thread of their own.

Images
------
A folder's images are the files directly in it whose extension (any case) is one of
:data:`IMAGE_EXTENSIONS`, hidden (dot) files left out, in natural order (``img2`` before
``img10``, case-insensitive). Each is read as bytes and decoded by OpenCV (:func:`cv2.imdecode`,
so paths that are not ASCII work) keeping its sample depth, then made 8-bit BGR:

* grayscale and palette images become three equal or looked-up channels;
* alpha is dropped, never composited: the colour under a transparent pixel is kept as stored.
  This is what :func:`cv2.imread` (and so faceswap) gives, so faces and landmarks land on the
  same pixels as faceswap's for the same file;
* 16-bit samples are rounded to the nearest 8-bit value, ``round(v * 255 / 65535)``: 65535 gives
  255 and ``257 * k`` gives ``k`` exactly (OpenCV's own conversion truncates, ``v >> 8``);
* floating-point samples (float TIFFs) are taken on OpenCV's 0-1 scale: clipped to it, then
  rounded to 0-255;
* the EXIF orientation of a JPEG is applied, as :func:`cv2.imread` does.

A file that cannot be made an image gives one :class:`Frame` with ``image`` None and ``error`` a
line naming the file and the problem: an empty file, a truncated one, data that is not an image,
a file that cannot be read (permission denied), a folder named like an image, a sample type that
has no 8-bit meaning. Truncation is checked from the file's structure before decoding: a JPEG
must reach its end-of-image marker, a PNG its ``IEND`` chunk, a WebP the size its RIFF header
declares. A truncated file is an error even when the decoder could show part of it (OpenCV 4
does, with grey below the break): its faces would be wrong or missing and a resumed run would
count the frame as done, so the user is told to replace the file instead.

Video
-----
Videos (:data:`VIDEO_EXTENSIONS`) are decoded with PyAV (FFmpeg) to BGR, frame by frame in
display order, with FFmpeg's own threading. Frame ``i`` (0-based) is named
``<stem>_<i + 1, 6 digits>``. A video that cannot be opened or has no video stream gives one
error :class:`Frame`; one that breaks gives its good frames, then one error :class:`Frame` at
the frame where it broke, and its source ends. A break is an FFmpeg error while demuxing or
decoding, frames or a last packet flagged corrupt at the end (a corrupt frame with sound frames
after it is yielded: FFmpeg concealed the damage), fewer packets than the container's header
declares (MP4, MOV, AVI), a Matroska or WebM stream stopping more than ``max(0.5 s, 3 frames)``
short of its declared duration, or fewer frames decoded than packets. A stream that declares no
length (MPEG-TS, MPEG-PS) cut short cannot be told from a short stream: it ends quietly.
"""
from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

from faceinfer.errors import FaceInferError, PipelineError
from faceinfer.formats.png import PNG_SIGNATURE
from faceinfer.threads import CancellableQueue, Cancelled, ErrorState, PipelineThread

__all__ = ["IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS", "Frame", "FrameReader", "InputError",
           "InputSource", "find_sources", "natural_key", "read_frames"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS: tuple[str, ...] = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
"""Extensions (lower case) of the image files read from a folder."""
VIDEO_EXTENSIONS: tuple[str, ...] = (".avi", ".flv", ".m4v", ".mkv", ".mov", ".mp4", ".mpeg",
                                     ".mpg", ".ts", ".vob", ".webm", ".wmv")
"""Extensions (lower case) of the files read as videos."""

ALIGNMENTS_SUFFIX = ".fia"
"""The extension of faceinfer's alignments file."""

_IMREAD_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
"""Keep 16-bit and float samples, give 1 or 3 channels (alpha dropped by the decoder) and apply
the EXIF orientation (OpenCV skips it only for ``IMREAD_UNCHANGED``)."""

_JOIN_SECONDS = 30.0
"""How long :meth:`FrameReader.close` waits for the reader thread to finish the file it is
reading before leaving it (a daemon thread) and saying so."""

_JPEG_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
"""After a JPEG scan's entropy-coded data, the next marker: 0xFF followed by anything but a
stuffed zero, a restart marker RST0-7 or a fill byte."""

_STREAM_SHORT_S = 0.5
_STREAM_SHORT_FRAMES = 3
"""A Matroska video stream ending more than this many seconds, or this many average frame
durations (whichever is longer), before its declared duration is reported as broken."""

_DIGITS = re.compile(r"(\d+)")


class InputError(FaceInferError):
    """The input path as a whole cannot be used: missing, not a video, no images in it."""


def natural_key(name: str) -> tuple[tuple[Any, ...], str]:
    """Sort key of natural order: digit runs compare as numbers, letters case-insensitively
    (``img2`` < ``IMG3`` < ``img10``); names equal under that order keep a fixed order."""
    parts = _DIGITS.split(name.casefold())
    return tuple(int(part) if index % 2 else part for index, part in enumerate(parts)), name


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _list_folder(folder: Path) -> list[os.DirEntry[str]]:
    """The folder's entries that are not hidden, in natural order of their names."""
    with os.scandir(folder) as entries:
        listed = [entry for entry in entries if not _is_hidden(entry.name)]
    return sorted(listed, key=lambda entry: natural_key(entry.name))


def _has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _image_names(folder: Path) -> list[str]:
    """Names of the folder's image entries in natural order. Folders named like images are
    kept: reading one gives an error frame that names it."""
    return [entry.name for entry in _list_folder(folder)
            if _has_extension(entry.name, IMAGE_EXTENSIONS)]


@dataclass(frozen=True)
class InputSource:
    """One thing to extract from: a video file or a folder of images.

    Attributes
    ----------
    path:
        The video file or the image folder.
    is_video:
        True for a video file.
    """

    path: Path
    is_video: bool
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def name(self) -> str:
        """A video's file stem, or the folder's name."""
        return self.path.stem if self.is_video else self.path.name

    def image_names(self) -> list[str]:
        """A folder's image file names in natural order, listed once and then kept, so that
        :meth:`frame_count`, :meth:`frame_name` and :func:`read_frames` agree.

        Raises
        ------
        InputError
            If this is a video, or the folder cannot be listed.
        """
        if self.is_video:
            raise InputError(f"{self.path} is a video, not a folder of images")
        names = self._cache.get("names")
        if names is None:
            try:
                names = _image_names(self.path)
            except OSError as err:
                raise InputError(f"cannot list the folder {self.path}: {_reason(err)}") from err
            self._cache["names"] = names
        return list(names)

    def frame_count(self) -> int:
        """The number of frames :func:`read_frames` goes through (before ``every_n`` and
        ``skip``).

        A folder: the number of its image files (bad ones included: each gives an error frame).

        A video: the exact number of frames it decodes to, counted by demuxing the video
        stream's packets without decoding them (one read of the file: about 9 us a packet plus
        the I/O, 0.25 s for 27,300 packets and 91 MB read from the page cache). Empty packets and
        packets the container marks to be dropped (before an MP4 edit list's start) are not
        counted. The container's own figures are not used because none is reliable: an MP4's
        sample count includes the frames an edit list drops and the frames a truncated file has
        lost, an AVI header's count likewise, and Matroska, WebM, MPEG-TS and MPEG-PS store
        none. A video that cannot be opened counts 0, one that breaks counts the packets before
        the break. Counted once, then kept.
        """
        if not self.is_video:
            try:
                return len(self.image_names())
            except InputError:
                return 0
        count = self._cache.get("count")
        if count is None:
            count = _count_video_frames(self.path)
            self._cache["count"] = count
        return int(count)

    def frame_name(self, index: int) -> str:
        """The key of frame ``index`` (0-based): a folder's image file name (``img_001.jpg``),
        or ``<video stem>_<index + 1, 6 digits>`` (``clip_000001``)."""
        if index < 0:
            raise IndexError(f"frame index must be >= 0, got {index}")
        if self.is_video:
            return f"{self.path.stem}_{index + 1:06d}"
        names = self.image_names()
        if index >= len(names):
            raise IndexError(f"{self.path} holds {len(names)} images, got frame index {index}")
        return names[index]

    def default_alignments_path(self) -> Path:
        """``<folder>/alignments.fia`` for a folder, ``<video dir>/<stem>_alignments.fia`` for a
        video (faceswap's places, with faceinfer's extension)."""
        if self.is_video:
            return self.path.with_name(f"{self.path.stem}_alignments{ALIGNMENTS_SUFFIX}")
        return self.path / f"alignments{ALIGNMENTS_SUFFIX}"


def _sources_hint(folder: Path) -> str:
    """Advice for a folder with no images: what -b would find in it."""
    try:
        entries = _list_folder(folder)
    except OSError:
        return ""
    videos = sum(1 for entry in entries if _has_extension(entry.name, VIDEO_EXTENSIONS))
    folders = sum(1 for entry in entries if entry.is_dir())
    if not videos and not folders:
        return ""
    return (f"; it holds {videos} video(s) and {folders} sub-folder(s): use -b/--batch-mode to "
            "extract from each of them")


def _batch_sources(folder: Path) -> list[InputSource]:
    try:
        entries = _list_folder(folder)
    except OSError as err:
        raise InputError(f"cannot list the folder {folder}: {_reason(err)}") from err
    sources: list[InputSource] = []
    loose = 0
    for entry in entries:
        path = folder / entry.name
        if entry.is_dir():
            source = InputSource(path, is_video=False)
            try:
                found = bool(source.image_names())
            except InputError as err:
                logger.warning("Skipping %s", err)
                continue
            if found:
                sources.append(source)
            else:
                logger.debug("Batch mode: no images in the sub-folder %s", path)
        elif _has_extension(entry.name, VIDEO_EXTENSIONS):
            sources.append(InputSource(path, is_video=True))
        elif _has_extension(entry.name, IMAGE_EXTENSIONS):
            loose += 1
    if loose:
        logger.warning("Batch mode reads videos and image sub-folders: the %s image(s) directly "
                       "in %s are ignored (run without -b to extract them)", loose, folder)
    if not sources:
        raise InputError(f"batch mode: no videos ({', '.join(VIDEO_EXTENSIONS)}) and no "
                         f"sub-folders with images in {folder}")
    return sources


def find_sources(path: str | os.PathLike[str], batch_mode: bool = False) -> list[InputSource]:
    """The sources to extract from.

    Parameters
    ----------
    path:
        A video file or a folder of images; with ``batch_mode`` a folder whose videos and image
        sub-folders each become one source, in natural order (loose images in it are ignored).
    batch_mode:
        Read ``path`` as a folder of videos and image folders.

    Raises
    ------
    InputError
        Naming the path, if it does not exist, is a file that is not a video, is a folder with
        no images (without ``batch_mode``) or, in batch mode, is not a folder or holds nothing
        usable.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if batch_mode and not path.is_dir():
        raise InputError(f"batch mode (-b) expects a folder of videos and image folders, got "
                         f"the file {path}")
    if path.is_dir():
        if batch_mode:
            return _batch_sources(path)
        source = InputSource(path, is_video=False)
        if source.image_names():
            videos = [entry for entry in _list_folder(path)
                      if _has_extension(entry.name, VIDEO_EXTENSIONS)]
            if videos:
                logger.warning("%s: reading its images; its %s video(s) are ignored (use "
                               "-b/--batch-mode to extract them too)", path, len(videos))
            return [source]
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in the folder {path}"
                         f"{_sources_hint(path)}")
    if _has_extension(path.name, VIDEO_EXTENSIONS):
        return [InputSource(path, is_video=True)]
    if _has_extension(path.name, IMAGE_EXTENSIONS):
        raise InputError(f"{path} is a single image: expected a video file or a folder of "
                         "images (put the image in a folder and pass the folder)")
    raise InputError(f"{path} is not a video file: expected a folder of images or a video "
                     f"({', '.join(VIDEO_EXTENSIONS)})")


@dataclass(eq=False)
class Frame:
    """One frame read from a source (equal only to itself: it holds an array).

    Attributes
    ----------
    source:
        Where it comes from.
    index:
        Its 0-based position in the source (a video's frame number - 1). For a video that
        breaks, the error frame's index is that of the first frame not decoded (0 if the video
        could not be opened).
    name:
        ``source.frame_name(index)``.
    image:
        (H, W, 3) uint8 BGR, C-contiguous; None when it could not be read.
    error:
        None, or one line naming the file (and frame) and the problem.
    """

    source: InputSource
    index: int
    name: str
    image: npt.NDArray[np.uint8] | None
    error: str | None = None


def _reason(err: BaseException) -> str:
    """One line saying what went wrong, without Python's or FFmpeg's decoration."""
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def _jpeg_truncated(data: bytes) -> bool:
    """True if a JPEG's markers run off the end of the data before the end-of-image marker.
    Segments are skipped by their lengths (so an EXIF thumbnail's markers do not count) and
    anything after the end-of-image marker (a motion photo's video) is ignored."""
    size = len(data)
    pos = 2
    while True:
        start = data.find(b"\xff", pos)
        if start < 0:
            return True
        pos = start + 1
        while pos < size and data[pos] == 0xFF:
            pos += 1
        if pos >= size:
            return True
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            return False
        if marker in {0x00, 0x01} or 0xD0 <= marker <= 0xD7:
            continue
        if pos + 2 > size:
            return True
        pos += int.from_bytes(data[pos:pos + 2], "big")
        if pos > size:
            return True
        if marker == 0xDA:
            found = _JPEG_NEXT_MARKER.search(data, pos)
            if found is None:
                return True
            pos = found.start()


def _png_truncated(data: bytes) -> bool:
    """True if a PNG's chunks run off the end of the data before ``IEND``."""
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        end = pos + 12 + int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IEND":
            return end > len(data)
        pos = end
    return True


def _truncation(data: bytes) -> str | None:
    """What is missing from a truncated JPEG, PNG or WebP (by content, not extension)."""
    if data.startswith(b"\xff\xd8"):
        if _jpeg_truncated(data):
            return "truncated JPEG: the data ends before the end-of-image marker"
    elif data.startswith(PNG_SIGNATURE):
        if _png_truncated(data):
            return "truncated PNG: the data ends before the IEND chunk"
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        declared = int.from_bytes(data[4:8], "little") + 8
        if len(data) < declared:
            return f"truncated WebP: {len(data)} of its {declared} bytes"
    return None


def _to_bgr8(image: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
    """An image as decoded by OpenCV made (H, W, 3) uint8 BGR, C-contiguous (see the module
    docstring for the conversions).

    Raises
    ------
    ValueError
        For a sample type or channel count that has no 8-bit BGR meaning.
    """
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    elif image.dtype.kind == "f":
        image = np.rint(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported sample type {image.dtype}: expected 8-bit, 16-bit or "
                         "floating-point samples")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    elif image.ndim != 3 or image.shape[2] not in {3, 4}:
        raise ValueError(f"unsupported image shape {image.shape}: expected 1, 3 or 4 channels")
    return np.ascontiguousarray(image[..., :3])


class _BadImage(Exception):  # noqa: N818 (internal: carries the message of an error frame)
    """What is wrong with an image file, in words."""


def _load_image(path: Path) -> npt.NDArray[np.uint8]:
    """Read, check, decode and convert one image file.

    Raises
    ------
    _BadImage
        Saying what is wrong with the file.
    """
    try:
        data = path.read_bytes()
    except IsADirectoryError as err:
        raise _BadImage("a folder, not an image file") from err
    except OSError as err:
        raise _BadImage(f"cannot read the file: {_reason(err)}") from err
    if not data:
        raise _BadImage("empty file (0 bytes)")
    problem = _truncation(data)
    if problem is not None:
        raise _BadImage(problem)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), _IMREAD_FLAGS)
    except cv2.error as err:
        raise _BadImage(f"not a readable image: {_reason(err)}") from err
    if image is None:
        raise _BadImage(f"not a readable image ({len(data)} bytes that OpenCV cannot decode: "
                        "another kind of file, or a damaged or unsupported image)")
    try:
        return _to_bgr8(image)
    except ValueError as err:
        raise _BadImage(str(err)) from err


def _read_image(path: Path) -> tuple[npt.NDArray[np.uint8] | None, str | None]:
    """One image file: (image, None), or (None, a line naming the file and its problem)."""
    try:
        return _load_image(path), None
    except _BadImage as err:
        return None, f"{path}: {err}"


def _never() -> bool:
    return False


def _wanted(index: int, name: str, every_n: int, skip: Callable[[str], bool] | None) -> bool:
    return index % every_n == 0 and not (skip is not None and skip(name))


def _image_frames(source: InputSource, every_n: int, skip: Callable[[str], bool] | None,
                  cancelled: Callable[[], bool]) -> Iterator[Frame]:
    for index, name in enumerate(source.image_names()):
        if cancelled():
            return
        if _wanted(index, name, every_n, skip):
            image, error = _read_image(source.path / name)
            yield Frame(source, index, name, image, error)


def _video_frame_to_bgr(frame: Any) -> npt.NDArray[np.uint8]:
    """A decoded PyAV frame as (H, W, 3) uint8 BGR, C-contiguous."""
    return np.ascontiguousarray(frame.to_ndarray(format="bgr24"))


def _count_video_frames(path: Path) -> int:
    count = 0
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if not container.streams.video:
                return 0
            for packet in container.demux(container.streams.video[0]):
                if packet.size and not packet.is_discard:
                    count += 1
    except (av.error.FFmpegError, OSError) as err:
        logger.debug("Counting the frames of %s stopped after %s: %s", path, count, err)
    return count


def _declared_duration(container: Any, stream: Any) -> float | None:
    """The end time in seconds that a Matroska/WebM video stream's header declares, if any."""
    if "matroska" not in container.format.name:
        return None
    tag = stream.metadata.get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    if len(container.streams) == 1 and container.duration:
        return float(container.duration + (container.start_time or 0)) / av.time_base
    return None


@dataclass
class _VideoTally:
    """What was seen of a video's stream, to tell a complete one from a broken one at its end."""

    packets: int = 0
    """Packets holding data, those to be dropped included."""
    usable: int = 0
    """Packets holding a frame to show."""
    last_corrupt: bool = False
    last_dts: int | None = None
    end_s: float | None = None
    """The end time of the last packet, in seconds (the stream's timestamps, not from its
    start: as Matroska's declared duration counts)."""

    def add(self, packet: Any) -> None:
        if not packet.size:
            return
        self.packets += 1
        self.usable += not packet.is_discard
        self.last_corrupt = bool(packet.is_corrupt)
        if packet.dts is not None:
            self.last_dts = packet.dts
        if packet.pts is not None and packet.time_base is not None:
            self.end_s = float((packet.pts + (packet.duration or 0)) * packet.time_base)

    def in_place(self, frame: Any) -> bool:
        """Whether a frame drained from the decoder at the end of a broken stream surely has its
        place: no packet after the break can show before it (a packet's pts is at least its
        dts, and those after the break have later dts)."""
        return (frame.pts is not None and self.last_dts is not None
                and frame.pts <= self.last_dts)

    def break_reason(self, container: Any, stream: Any, decoded: int) -> str | None:
        """Why the stream must have been cut or damaged, or None if it looks complete."""
        if self.last_corrupt:
            return "its last packet is incomplete (the file is truncated)"
        declared = int(stream.frames or 0)
        if 0 < self.packets < declared:
            return (f"the file holds {self.packets} of the {declared} frames its header "
                    "declares (truncated)")
        duration = _declared_duration(container, stream)
        end_s = self.end_s or 0.0
        rate = float(stream.average_rate or 0)
        slack = max(_STREAM_SHORT_S, _STREAM_SHORT_FRAMES / rate if rate > 0 else 0.0)
        if duration is not None and duration - end_s > slack:
            return (f"the stream stops at {end_s:.1f} s of the {duration:.1f} s its header "
                    "declares (truncated)")
        if not decoded:
            return f"none of its {self.usable} frames could be decoded"
        if decoded < self.usable:
            return f"only {decoded} of its {self.usable} frames could be decoded"
        return None


class _VideoReader:
    """Decodes one video's frames in display order, numbering them as they come.

    Frames FFmpeg flags corrupt are held until a sound frame follows (then they are yielded:
    FFmpeg concealed the damage); corrupt frames at the end are where the video broke. Frames
    drained from the decoder at the end are held until the stream is known to be complete: in a
    cut stream, a frame shown after frames lost in the cut would otherwise take their number.
    """

    def __init__(self, source: InputSource, every_n: int,
                 skip: Callable[[str], bool] | None) -> None:
        self.source = source
        self.every_n = every_n
        self.skip = skip
        self.index = 0
        self.held: list[tuple[int, Any]] = []

    def broken(self, problem: str) -> Frame:
        """The error frame of a video that broke, at its first frame not yielded."""
        index = self.held[0][0] if self.held else self.index
        return Frame(self.source, index, self.source.frame_name(index), None,
                     f"{self.source.path}: the video breaks at frame {index + 1}: {problem}")

    def unreadable(self, problem: str) -> Frame:
        return Frame(self.source, 0, self.source.frame_name(0), None,
                     f"{self.source.path}: {problem}")

    def emit(self, decoded: Iterable[Any]) -> Iterator[Frame]:
        """Number decoded frames and yield those wanted, holding corrupt ones."""
        for frame in decoded:
            self.held.append((self.index, frame))
            self.index += 1
            if frame.is_corrupt:
                continue
            for index, sound in self.held:
                name = self.source.frame_name(index)
                if _wanted(index, name, self.every_n, self.skip):
                    yield Frame(self.source, index, name, _video_frame_to_bgr(sound))
            self.held.clear()

    def frames(self, cancelled: Callable[[], bool]) -> Iterator[Frame]:
        try:
            container = av.open(str(self.source.path), metadata_errors="ignore")
        except (av.error.FFmpegError, OSError) as err:
            yield self.unreadable(f"cannot open the video: {_reason(err)}")
            return
        with container:
            if not container.streams.video:
                yield self.unreadable("not a video: the file has no video stream")
                return
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tally = _VideoTally()
            drained: list[Any] = []
            packets = container.demux(stream)
            while True:
                if cancelled():
                    return
                try:
                    packet = next(packets, None)
                    if packet is None:
                        break
                    tally.add(packet)
                    decoded = packet.decode()
                except (av.error.FFmpegError, OSError) as err:
                    yield self.broken(_reason(err))
                    return
                if packet.size:
                    yield from self.emit(decoded)
                else:
                    drained.extend(decoded)
            reason = tally.break_reason(container, stream, self.index + len(drained))
            if reason is None:
                yield from self.emit(drained)
                if self.held:
                    yield self.broken("its last frames are damaged")
                return
            placed = 0
            while placed < len(drained) and tally.in_place(drained[placed]):
                placed += 1
            yield from self.emit(drained[:placed])
            yield self.broken(reason)


def _source_frames(source: InputSource, every_n: int, skip: Callable[[str], bool] | None,
            cancelled: Callable[[], bool]) -> Iterator[Frame]:
    if every_n < 1:
        raise ValueError(f"every_n must be >= 1, got {every_n}")
    if source.is_video:
        return _VideoReader(source, every_n, skip).frames(cancelled)
    return _image_frames(source, every_n, skip, cancelled)


def read_frames(source: InputSource, every_n: int = 1,
                skip: Callable[[str], bool] | None = None) -> Iterator[Frame]:
    """The frames of one source, in order.

    Parameters
    ----------
    source:
        The video or image folder.
    every_n:
        Keep only the frames whose index is a multiple of it (1: every frame).
    skip:
        Called with the name of each frame ``every_n`` keeps; the frames it accepts are neither
        decoded into images (a video's are still decoded, in order, but not converted) nor
        yielded.

    Yields
    ------
    Frame
        8-bit BGR images; one error frame for each bad image and for a video that breaks, after
        which the video ends. Never raises for bad media.

    Raises
    ------
    ValueError
        If ``every_n`` is below 1.
    InputError
        If the folder cannot be listed.
    """
    return _source_frames(source, every_n, skip, _never)


class FrameReader:
    """Reads the frames of several sources in a thread of its own, ahead of the caller, holding
    at most ``queue_size`` frames ready (and one more being decoded).

    Iterate it once for the frames of every source in order. :meth:`close` (or leaving a
    ``with`` block, or dropping the iterator) stops the thread at once, even while it waits for
    room in the queue. An unexpected exception in the thread (bad media are error frames, not
    exceptions; a ``skip`` that raises is one) is re-raised to the caller with its traceback at
    its next frame, frames still queued being dropped; a caller iterating while another thread
    closes the reader gets :class:`~faceinfer.errors.PipelineClosedError`.

    Parameters
    ----------
    sources:
        What to read, in order.
    every_n, skip:
        As :func:`read_frames`; ``skip`` is called in the reader thread.
    queue_size:
        The most frames decoded ahead and waiting.
    """

    def __init__(self, sources: Iterable[InputSource], every_n: int = 1,
                 skip: Callable[[str], bool] | None = None, queue_size: int = 8) -> None:
        if every_n < 1:
            raise ValueError(f"every_n must be >= 1, got {every_n}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._sources = list(sources)
        self._every_n = every_n
        self._skip = skip
        self._state = ErrorState()
        self._queue: CancellableQueue[Frame | None] = CancellableQueue(queue_size)
        self._state.watch(self._queue)
        self._lock = threading.Lock()
        self._thread: PipelineThread | None = None

    def _read(self) -> None:
        for source in self._sources:
            for frame in _source_frames(source, self._every_n, self._skip, self._cancelled):
                self._queue.put(frame)
            if self._cancelled():
                return
        self._queue.put(None)

    def _cancelled(self) -> bool:
        return self._state.cancelled

    def __iter__(self) -> Iterator[Frame]:
        with self._lock:
            if self._thread is not None:
                raise PipelineError("a FrameReader is iterated once: make a new one")
            if self._state.cancelled:
                raise PipelineError("the FrameReader is closed")
            self._thread = PipelineThread("frame-reader", self._read, self._state)
            self._thread.start()
        return self._frames()

    def _frames(self) -> Iterator[Frame]:
        try:
            while True:
                try:
                    frame = self._queue.get()
                except Cancelled:
                    self._join()
                    self._state.re_raise()
                    raise
                if frame is None:
                    return
                yield frame
        finally:
            self.close()

    def _join(self) -> None:
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            return
        thread.join(_JOIN_SECONDS)
        if thread.is_alive():
            logger.warning("The frame reader thread is still reading a file after %s s; "
                           "leaving it to finish on its own", _JOIN_SECONDS)

    def close(self) -> None:
        """Stop the reader thread and wait for it; idempotent."""
        self._state.close()
        self._join()

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
