"""Input (faceinfer.sources): finding sources, reading images of every kind (and every kind of bad
one), exact video frame counts over containers and codecs, broken videos, and the reader thread."""
from __future__ import annotations

import fractions
import functools
import os
import struct
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import pytest

from faceinfer import sources
from faceinfer.errors import PipelineClosedError
from faceinfer.sources import (
    Frame,
    FrameReader,
    InputError,
    InputSource,
    find_sources,
    natural_key,
    read_frames,
)
from faceinfer.threads import CancellableQueue
from tests.conftest import SHARED, pipeline_threads
from tests.test_face_png import make_chunk

SAMPLES = SHARED / "data" / "faceswap_samples"
SAMPLE_VIDEO = SAMPLES / "test.mp4"
SAMPLE_FRAMES = 91
needs_samples = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(),
                                   reason=f"the shared sample data is absent: {SAMPLE_VIDEO}")
WAIT = 30.0
"""Seconds a test waits for the reader thread before failing (never reached when it works)."""


# --- synthetic image files -------------------------------------------------------------------

def noise(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def encode(image: np.ndarray, ext: str, *params: int) -> bytes:
    ok, data = cv2.imencode(ext, image, list(params))
    assert ok
    return data.tobytes()


def png_bytes(rows: np.ndarray, color_type: int, bit_depth: int, extra: bytes = b"") -> bytes:
    """A PNG written by hand (for the kinds OpenCV does not write): ``rows`` holds each row's
    samples as bytes (big-endian for 16 bits), ``extra`` chunks go before IDAT."""
    height, width = rows.shape[0], rows.shape[1]
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)
    return (sources.PNG_SIGNATURE + make_chunk(b"IHDR", header) + extra
            + make_chunk(b"IDAT", zlib.compress(raw)) + make_chunk(b"IEND", b""))


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """A JPEG with an EXIF APP1 segment holding only the orientation tag, after its SOI."""
    tiff = (b"MM\0\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
            + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0))
    body = b"Exif\0\0" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def with_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """A JPEG carrying a whole other JPEG (an EXIF-style thumbnail) in an APP1 segment."""
    body = b"Exif\0\0" + thumbnail
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- natural order and folders ---------------------------------------------------------------

def test_natural_order_compares_numbers_by_value_and_letters_without_case() -> None:
    names = ["img10.png", "img2.png", "IMG3.png", "img1.png", "b.png", "A.png", "img02.png"]
    assert sorted(names, key=natural_key) == [
        "A.png", "b.png", "img1.png", "img02.png", "img2.png", "IMG3.png", "img10.png"]


def test_a_folder_lists_its_images_in_natural_order_and_nothing_else(tmp_path: Path) -> None:
    good = encode(noise(8, 8), ".png")
    for name in ("img10.png", "img2.PNG", "Img3.jpg", ".hidden.png", "notes.txt",
                 "alignments.fia", "clip.mp4"):
        write(tmp_path / name, good)
    (tmp_path / "sub").mkdir()
    source = InputSource(tmp_path, is_video=False)
    assert source.image_names() == ["img2.PNG", "Img3.jpg", "img10.png"]
    assert source.frame_count() == 3
    assert [source.frame_name(i) for i in range(3)] == source.image_names()
    assert source.name == tmp_path.name
    assert source.default_alignments_path() == tmp_path / "alignments.fia"
    with pytest.raises(IndexError, match="holds 3 images"):
        source.frame_name(3)


# --- every bad image kind, mixed with good ones ----------------------------------------------

def test_every_bad_image_gives_one_error_frame_naming_it_and_the_good_ones_all_come(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    jpeg = encode(cv2.GaussianBlur(noise(96, 128, 1), (5, 5), 2), ".jpg")
    progressive = encode(noise(64, 64, 2), ".jpg", cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
    png = encode(noise(40, 50, 3), ".png")
    webp = encode(noise(20, 24, 4), ".webp", cv2.IMWRITE_WEBP_QUALITY, 101)
    good = {
        "f01.jpg": jpeg,
        "f03.png": png,
        "f05.webp": webp,
        "f07.bmp": encode(noise(9, 7, 5), ".bmp"),
        "f09.tif": encode(noise(11, 13, 6), ".tif"),
        "f11.jpg": jpeg + b"\0\0trailing data after the end-of-image marker \xff\xd8",
        "f13.jpg": with_thumbnail(progressive, jpeg),
        "f15.jpg": progressive,
    }
    bad = {  # name: (bytes, or None for a folder; words the error must hold)
        "f02.jpg": (b"", "empty file"),
        "f04.jpg": (jpeg[:len(jpeg) // 2], "truncated JPEG"),
        "f06.png": (png[:len(png) // 2], "truncated PNG"),
        "f08.jpg": (b"these are not the pixels you are looking for\n" * 20, "not a readable"),
        "f10.jpg": (b"", "cannot read the file: Permission denied"),
        "f12.jpg": (None, "a folder"),
        "f14.webp": (webp[:len(webp) - 10], "truncated WebP"),
        "f16.jpg": (with_thumbnail(progressive, jpeg)[:-200], "truncated JPEG"),
        "f17.png": (encode(noise(4, 4), ".png")[:-12], "truncated PNG"),
    }
    for name, data in good.items():
        write(folder / name, data)
    for name, (content, _) in bad.items():
        if content is None:
            (folder / name).mkdir()
        else:
            write(folder / name, content)
    unreadable = folder / "f10.jpg"
    if os.geteuid() == 0:  # root reads any file: make the read fail as it does for a user
        read_bytes = Path.read_bytes

        def denied(path: Path) -> bytes:
            if path == unreadable:
                raise PermissionError(13, "Permission denied", str(path))
            return read_bytes(path)

        monkeypatch.setattr(Path, "read_bytes", denied)
    else:
        unreadable.chmod(0)

    [source] = find_sources(folder)
    with FrameReader([source], queue_size=2) as reader:
        frames = list(reader)

    names = sorted([*good, *bad], key=natural_key)
    assert [frame.name for frame in frames] == names
    assert [frame.index for frame in frames] == list(range(len(names)))
    for frame in frames:
        path = folder / frame.name
        if frame.name in good:
            assert frame.error is None, frame.error
            assert frame.image is not None
            expected = cv2.imread(str(path))
            np.testing.assert_array_equal(frame.image, expected, err_msg=frame.name)
        else:
            assert frame.image is None
            assert frame.error is not None
            assert frame.error.startswith(f"{path}: "), frame.error
            assert bad[frame.name][1] in frame.error, frame.error
            assert "\n" not in frame.error
    lossless = {"f03.png": png, "f05.webp": webp}
    for frame in frames:
        if frame.name in lossless:
            expected = cv2.imdecode(np.frombuffer(lossless[frame.name], np.uint8),
                                    cv2.IMREAD_COLOR)
            np.testing.assert_array_equal(frame.image, expected)


# --- conversion to 8-bit BGR -----------------------------------------------------------------

GRAY = np.array([[0, 7, 128, 255]], dtype=np.uint8)
PALETTE = bytes([255, 0, 0, 0, 255, 0, 10, 20, 30])  # RGB entries: red, green, (10, 20, 30)
WORDS = np.array([0, 200, 257 * 100 + 128, 257 * 100 + 129, 32896, 65535], dtype=np.uint16)
RGB16 = np.stack([WORDS, WORDS[::-1], 65535 - WORDS], axis=-1)[None]  # (1, 6, 3) R, G, B


def bgr(*rows: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


CONVERSIONS: list[tuple[str, Callable[[], bytes], np.ndarray]] = [
    ("gray.png", lambda: encode(GRAY, ".png"), np.repeat(GRAY[..., None], 3, axis=2)),
    ("gray-alpha.png",
     lambda: png_bytes(np.array([[[16, 0], [32, 128], [48, 255]]], np.uint8), 4, 8),
     bgr([(16, 16, 16), (32, 32, 32), (48, 48, 48)])),
    # alpha is dropped, not composited: a fully transparent pixel keeps its colour
    ("rgba.png",
     lambda: encode(np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8), ".png"),
     bgr([(10, 20, 30), (40, 50, 60)])),
    ("palette.png",
     lambda: png_bytes(np.array([[2, 0, 1]], np.uint8), 3, 8,
                       make_chunk(b"PLTE", PALETTE) + make_chunk(b"tRNS", bytes([0, 128, 255]))),
     bgr([(30, 20, 10), (0, 0, 255), (0, 255, 0)])),
    ("one-bit.png", lambda: png_bytes(np.array([[0b10100000]], np.uint8)[:, :1], 0, 1),
     bgr([(255, 255, 255)])),
    # 16 bits round to the nearest 8-bit value, v / 257 (OpenCV's own v >> 8 gives 0, 100, 100,
    # 100, 128, 255 here)
    ("rgb16.png", lambda: png_bytes(RGB16.astype(">u2"), 2, 16),
     RGB16[..., ::-1].astype(np.float64)),
    ("gray16.png", lambda: png_bytes(WORDS[None].astype(">u2"), 0, 16),
     np.repeat(WORDS[None, :, None], 3, axis=2).astype(np.float64)),
    ("rgb16.tif", lambda: encode(RGB16, ".tif"), RGB16.astype(np.float64)),  # OpenCV's BGR
    ("float.tif",
     lambda: encode(np.array([[[0.0, 0.5, 1.0], [2.0, -1.0, 0.2]]], np.float32), ".tif"),
     bgr([(0, 128, 255), (255, 0, 51)])),
]


@pytest.mark.parametrize(("name", "make", "expected"), CONVERSIONS,
                         ids=[case[0] for case in CONVERSIONS])
def test_images_of_every_kind_become_exact_8bit_bgr(tmp_path: Path, name: str,
                                                    make: Callable[[], bytes],
                                                    expected: np.ndarray) -> None:
    write(tmp_path / name, make())
    [frame] = read_frames(InputSource(tmp_path, is_video=False))
    assert frame.error is None, frame.error
    assert frame.image is not None
    if expected.dtype == np.float64:  # 16-bit words: the exact rounding, v / 257
        expected = np.floor(expected / 257 + 0.5).astype(np.uint8)
    assert frame.image.dtype == np.uint8
    assert frame.image.flags.c_contiguous
    np.testing.assert_array_equal(frame.image, expected)


def test_the_exif_orientation_of_a_jpeg_is_applied(tmp_path: Path) -> None:
    jpeg = encode(noise(16, 32), ".jpg")
    write(tmp_path / "rotated.jpg", with_exif_orientation(jpeg, 6))
    [frame] = read_frames(InputSource(tmp_path, is_video=False))
    stored = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert frame.image is not None
    np.testing.assert_array_equal(frame.image, cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE))


def test_a_path_that_is_not_ascii_is_read(tmp_path: Path) -> None:
    folder = tmp_path / "visages_été"
    folder.mkdir()
    image = noise(6, 5)
    write(folder / "über_1.png", encode(image, ".png"))
    [frame] = read_frames(find_sources(folder)[0])
    assert frame.name == "über_1.png"
    np.testing.assert_array_equal(frame.image, image)


# --- every_n and skip ------------------------------------------------------------------------

def test_every_n_and_skip_choose_frames_and_skipped_images_are_not_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for index in range(1, 8):
        write(tmp_path / f"img{index}.png", encode(noise(4, 4, index), ".png"))
    read: list[str] = []
    read_image = sources._read_image

    def counting(path: Path) -> tuple[Any, str | None]:
        read.append(path.name)
        return read_image(path)

    monkeypatch.setattr(sources, "_read_image", counting)
    asked: list[str] = []

    def skip(name: str) -> bool:
        asked.append(name)
        return name == "img3.png"

    frames = list(read_frames(InputSource(tmp_path, is_video=False), every_n=2, skip=skip))
    assert [(frame.index, frame.name) for frame in frames] == [
        (0, "img1.png"), (4, "img5.png"), (6, "img7.png")]
    assert asked == ["img1.png", "img3.png", "img5.png", "img7.png"]
    assert read == ["img1.png", "img5.png", "img7.png"]
    with pytest.raises(ValueError, match="every_n must be >= 1, got 0"):
        read_frames(InputSource(tmp_path, is_video=False), every_n=0)


# --- video -----------------------------------------------------------------------------------

def decode_all(path: Path) -> list[np.ndarray]:
    """Every frame of a video by a plain PyAV decode: the reference the reader must match."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


@functools.cache
def _sample_images() -> tuple[np.ndarray, ...]:
    return tuple(decode_all(SAMPLE_VIDEO))


def sample_images(count: int) -> list[np.ndarray]:
    """The first ``count`` frames of the sample video (decoded once)."""
    return list(_sample_images()[:count])


def encode_video(path: Path, codec: str, images: list[np.ndarray],
                 options: dict[str, str] | None = None, pts_ms: list[int] | None = None,
                 rate: int = 5) -> Path:
    """Encode ``images`` with PyAV; ``pts_ms`` gives each frame's time (variable frame rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        if pts_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for index, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], fractions.Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def remux(source: Path, path: Path, shift: int = 0, options: dict[str, str] | None = None,
          at_least: int | None = None, first: int = 0) -> Path:
    """Copy a video's stream into another container, timestamps moved back by ``shift`` (in
    the stream's time base: frames before 0 are then cut by an MP4 edit list); with
    ``at_least``, only the first packets, up to the first place after that many where they hold
    exactly the earliest frames (so no B-frame loses its reference); from packet ``first``."""
    with av.open(str(source)) as src, av.open(str(path), "w", options=options or {}) as dst:
        stream = src.streams.video[0]
        out = dst.add_stream_from_template(stream)
        packets = [packet for packet in src.demux(stream) if packet.dts is not None]
        count = len(packets)
        if at_least is not None:
            times = [packet.pts for packet in packets]
            earliest = sorted(times)
            count = next(k for k in range(at_least, len(times) + 1)
                         if set(times[:k]) == set(earliest[:k]))
        for packet in packets[first:count]:
            packet.pts -= shift
            packet.dts -= shift
            packet.stream = out
            dst.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample video remuxed and re-encoded into every container and codec tested."""
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"the shared sample data is absent: {SAMPLE_VIDEO}")
    folder = tmp_path_factory.mktemp("videos")
    images = sample_images(16)
    frame_ticks = 2048  # the sample's frame duration in its 1/10240 s time base
    made = {
        "mp4": SAMPLE_VIDEO,
        "mkv": remux(SAMPLE_VIDEO, folder / "remux.mkv", at_least=24),
        "mov": remux(SAMPLE_VIDEO, folder / "remux.mov", at_least=24),
        "ts": remux(SAMPLE_VIDEO, folder / "remux.ts", at_least=24),
        "faststart mp4": remux(SAMPLE_VIDEO, folder / "faststart.mp4", at_least=24,
                               options={"movflags": "faststart"}),
        "edit list mp4": remux(SAMPLE_VIDEO, folder / "editlist.mp4", shift=2 * frame_ticks,
                               at_least=24),
        "avi mpeg4": encode_video(folder / "mpeg4.avi", "mpeg4", images),
        "mpg mpeg2": encode_video(folder / "mpeg2.mpg", "mpeg2video", images, rate=25),
        "mp4 h264 b-frames": encode_video(folder / "bframes.mp4", "libx264", images,
                                          {"preset": "ultrafast", "bf": "3"}),
        "mkv variable frame rate": encode_video(
            folder / "vfr.mkv", "libx264", images, {"preset": "ultrafast"},
            pts_ms=[0, 40, 240, 280, 780, 800, 1000, 1500, 1540, 1740, 1780, 2280, 2300, 2500,
                    3000, 3040]),
    }
    if "libvpx" in av.codecs_available:
        made["webm vp8"] = encode_video(folder / "vp8.webm", "libvpx", images)
    if "libvpx-vp9" in av.codecs_available:
        made["webm vp9"] = encode_video(folder / "vp9.webm", "libvpx-vp9", images,
                                        {"deadline": "realtime", "cpu-used": "8"})
    return made


FORMATS = ["mp4", "mkv", "mov", "ts", "faststart mp4", "edit list mp4", "avi mpeg4", "mpg mpeg2",
           "mp4 h264 b-frames", "mkv variable frame rate", "webm vp8", "webm vp9"]


@pytest.mark.parametrize("kind", FORMATS)
def test_frame_count_is_exact_in_every_container(videos: dict[str, Path], kind: str) -> None:
    if kind not in videos:
        pytest.skip(f"this FFmpeg build cannot encode {kind}")
    path = videos[kind]
    source = InputSource(path, is_video=True)
    reference = decode_all(path)
    frames = list(read_frames(source))
    assert [frame.error for frame in frames if frame.error] == []
    assert source.frame_count() == len(frames) == len(reference)
    for frame, image in zip(frames, reference, strict=True):
        np.testing.assert_array_equal(frame.image, image)
    if kind == "edit list mp4":  # the container's own figure counts the 2 frames cut
        with av.open(str(path)) as container:
            assert container.streams.video[0].frames == len(reference) + 2


@needs_samples
def test_video_frames_are_keyed_by_stem_and_1_based_number() -> None:
    source = InputSource(SAMPLE_VIDEO, is_video=True)
    frames = list(read_frames(source))
    assert source.name == "test"
    assert source.default_alignments_path() == SAMPLES / "test_alignments.fia"
    assert len(frames) == SAMPLE_FRAMES == source.frame_count()
    assert [frame.name for frame in frames] == [f"test_{i:06d}" for i in range(1, 92)]
    assert [frame.index for frame in frames] == list(range(SAMPLE_FRAMES))
    image = frames[0].image
    assert image is not None
    assert image.shape == (240, 426, 3)
    assert image.dtype == np.uint8
    assert image.flags.c_contiguous


@needs_samples
def test_video_every_n_and_skip_do_not_convert_skipped_frames(
        monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[int] = []
    to_bgr = sources._video_frame_to_bgr

    def counting(frame: Any) -> np.ndarray:
        converted.append(frame.pts)
        return to_bgr(frame)

    monkeypatch.setattr(sources, "_video_frame_to_bgr", counting)
    source = InputSource(SAMPLE_VIDEO, is_video=True)
    frames = list(read_frames(source, every_n=10, skip=lambda name: name == "test_000021"))
    assert [frame.index for frame in frames] == [0, 10, 30, 40, 50, 60, 70, 80, 90]
    assert len(converted) == 9
    reference = sample_images(91)
    for frame in frames:
        np.testing.assert_array_equal(frame.image, reference[frame.index])


def truncate(source: Path, path: Path, packet: int) -> tuple[Path, int]:
    """A copy of a video cut in the middle of the video packet at ``packet`` (an index into its
    packets, which may be negative), and the number of packets before the cut."""
    with av.open(str(source)) as container:
        packets = [(item.pos, item.size) for item in container.demux(video=0) if item.size]
    index = range(len(packets))[packet]
    position, size = packets[index]
    return write(path, source.read_bytes()[:position + size // 2]), index


@pytest.mark.parametrize("where", ["middle", "first frame"])
@pytest.mark.parametrize("kind", ["faststart mp4", "mkv", "avi mpeg4", "webm vp9"])
def test_a_truncated_video_yields_its_good_frames_then_one_error_naming_the_frame(
        videos: dict[str, Path], tmp_path: Path, kind: str, where: str) -> None:
    if kind not in videos:
        pytest.skip(f"this FFmpeg build cannot encode {kind}")
    whole = decode_all(videos[kind])
    path, kept = truncate(videos[kind], tmp_path / f"cut{videos[kind].suffix}",
                          len(whole) // 2 if where == "middle" else 0)
    source = InputSource(path, is_video=True)
    *good, last = list(read_frames(source))
    assert kept - 3 <= len(good) <= kept  # a decoder may hold back the frames before a cut
    assert [frame.error for frame in good] == [None] * len(good)
    for frame, image in zip(good, whole, strict=False):
        np.testing.assert_array_equal(frame.image, image)
    assert last.image is None
    assert last.index == len(good)
    assert last.name == source.frame_name(len(good))
    assert last.error is not None
    assert last.error.startswith(f"{path}: the video breaks at frame {len(good) + 1}: "), (
        last.error)


@needs_samples
def test_a_broken_or_fake_video_gives_one_error_frame(tmp_path: Path) -> None:
    cases = {
        "empty.mp4": b"",
        "text.mkv": b"this is a shopping list, not a film\n" * 50,
        "moov-at-end-cut.mp4": SAMPLE_VIDEO.read_bytes()[:100_000],  # its index is at the end
    }
    for name, data in cases.items():
        write(tmp_path / name, data)
    (tmp_path / "folder.avi").mkdir()
    for name in [*cases, "folder.avi"]:
        source = InputSource(tmp_path / name, is_video=True)
        [frame] = list(read_frames(source))
        assert frame.image is None
        assert frame.index == 0
        assert frame.name == source.frame_name(0)
        assert frame.error is not None
        assert frame.error.startswith(f"{tmp_path / name}: cannot open the video: "), frame.error
        assert source.frame_count() == 0


@needs_samples
@pytest.mark.parametrize("suffix", [".ts", ".mkv"])
def test_a_video_that_starts_without_a_key_frame_gives_one_error_frame(tmp_path: Path,
                                                                       suffix: str) -> None:
    path = remux(SAMPLE_VIDEO, tmp_path / f"cut{suffix}", first=1)  # the sample's one key frame
    [frame] = list(read_frames(InputSource(path, is_video=True)))
    assert frame.image is None
    assert frame.index == 0
    assert frame.error is not None
    assert frame.error.startswith(f"{path}: the video breaks at frame 1: "), frame.error


# --- find_sources ----------------------------------------------------------------------------

def make_tree(root: Path, spec: dict[str, Any]) -> None:
    """Folders (dicts) and files (bytes) under root."""
    for name, item in spec.items():
        if isinstance(item, dict):
            (root / name).mkdir()
            make_tree(root / name, item)
        else:
            write(root / name, item)


PNG = encode(np.zeros((2, 2, 3), np.uint8), ".png")
FIND_ERRORS: list[tuple[str, dict[str, Any], str, bool, str]] = [
    # (case, tree, input path under it, batch mode, words of the error)
    ("missing", {}, "nowhere", False, "input not found: {path}"),
    ("not a video", {"notes.txt": b"x"}, "notes.txt", False, "{path} is not a video file"),
    ("one image", {"a.png": PNG}, "a.png", False, "{path} is a single image"),
    ("empty folder", {"in": {}}, "in", False, "no images (.bmp"),
    ("videos, no images", {"in": {"a.mp4": b"", "set": {"b.png": PNG}}}, "in", False,
     "it holds 1 video(s) and 1 sub-folder(s): use -b/--batch-mode"),
    ("batch on a file", {"a.mp4": b""}, "a.mp4", True, "batch mode (-b) expects a folder"),
    ("batch with nothing", {"in": {"a.png": PNG, "empty": {}, ".hid": {"b.png": PNG}}}, "in",
     True, "batch mode: no videos"),
]


@pytest.mark.parametrize(("case", "tree", "given", "batch", "words"), FIND_ERRORS,
                         ids=[case[0] for case in FIND_ERRORS])
def test_find_sources_refuses_unusable_input_naming_the_path(
        tmp_path: Path, case: str, tree: dict[str, Any], given: str, batch: bool,
        words: str) -> None:
    make_tree(tmp_path, tree)
    path = tmp_path / given
    with pytest.raises(InputError) as raised:
        find_sources(path, batch_mode=batch)
    assert str(path) in str(raised.value)
    assert words.format(path=path) in str(raised.value)


def test_find_sources_takes_a_video_or_a_folder_of_images(tmp_path: Path) -> None:
    make_tree(tmp_path, {"clip.MKV": b"", "photos": {"b.jpg": PNG}})
    assert find_sources(tmp_path / "clip.MKV") == [InputSource(tmp_path / "clip.MKV", True)]
    assert find_sources(str(tmp_path / "photos")) == [InputSource(tmp_path / "photos", False)]


def test_batch_mode_takes_videos_and_image_folders_in_natural_order(tmp_path: Path) -> None:
    make_tree(tmp_path, {
        "b10.mp4": b"", "b2.mkv": b"", "b3": {"x.png": PNG}, "loose.png": PNG,
        "no images": {"readme.txt": b"x"}, ".hidden": {"y.png": PNG}, ".h.mp4": b"",
        "notes.txt": b"x",
    })
    assert find_sources(tmp_path, batch_mode=True) == [
        InputSource(tmp_path / "b2.mkv", True), InputSource(tmp_path / "b3", False),
        InputSource(tmp_path / "b10.mp4", True)]


# --- FrameReader -----------------------------------------------------------------------------

def image_folder(root: Path, name: str, count: int) -> InputSource:
    folder = root / name
    folder.mkdir()
    for index in range(count):
        write(folder / f"{name}_{index}.png", encode(noise(4, 4, index), ".png"))
    return InputSource(folder, is_video=False)


class WatchedQueue(CancellableQueue[Any]):
    """The reader's queue, telling the test when a put is about to wait for room."""

    def __init__(self, maxsize: int = 1) -> None:
        super().__init__(maxsize)
        self.waiting = threading.Event()

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self.mutex:
            if 0 < self.maxsize <= self._qsize():  # never for an unbounded queue
                self.waiting.set()
        super().put(item, block, timeout)


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> list[WatchedQueue]:
    made: list[WatchedQueue] = []

    def make(maxsize: int = 1) -> WatchedQueue:
        made.append(WatchedQueue(maxsize))
        return made[-1]

    monkeypatch.setattr(sources, "CancellableQueue", make)
    return made


def reader_threads() -> list[threading.Thread]:
    return [thread for thread in pipeline_threads() if thread.name == "frame-reader"]


@needs_samples
def test_the_reader_yields_every_source_in_order(tmp_path: Path) -> None:
    first = image_folder(tmp_path, "a", 3)
    video = InputSource(SAMPLE_VIDEO, is_video=True)
    second = image_folder(tmp_path, "b", 2)
    with FrameReader([first, video, second], every_n=2) as reader:
        got = [(frame.source, frame.name) for frame in reader]
    expected = [(frame.source, frame.name) for source in (first, video, second)
                for frame in read_frames(source, every_n=2)]
    assert got == expected
    assert len(got) == 2 + 46 + 1


def test_the_reader_runs_at_most_queue_size_plus_one_frames_ahead(
        tmp_path: Path, watched: list[WatchedQueue]) -> None:
    source = image_folder(tmp_path, "f", 12)
    asked: list[str] = []
    reader = FrameReader([source], skip=lambda name: bool(asked.append(name)), queue_size=3)
    [queue] = watched
    frames = iter(reader)
    assert queue.waiting.wait(WAIT), "the reader never filled its queue"
    assert len(asked) == 4  # three frames waiting, the fourth read and waiting for room
    queue.waiting.clear()
    first = next(frames)
    assert queue.waiting.wait(WAIT)
    assert first.name == "f_0.png"
    assert len(asked) == 5
    reader.close()
    assert not reader_threads()


def test_close_stops_a_reader_blocked_on_a_full_queue(tmp_path: Path,
                                                       watched: list[WatchedQueue]) -> None:
    reader = FrameReader([image_folder(tmp_path, "f", 6)], queue_size=1)
    frames = iter(reader)
    assert watched[0].waiting.wait(WAIT)
    assert reader_threads()
    reader.close()
    assert not reader_threads()
    reader.close()  # idempotent
    with pytest.raises(PipelineClosedError):
        next(frames)


def test_a_consumer_that_stops_early_leaves_no_thread(tmp_path: Path) -> None:
    source = image_folder(tmp_path, "f", 20)
    for frame in FrameReader([source], queue_size=2):
        assert frame.index == 0
        break
    assert not reader_threads()
    with FrameReader([source], queue_size=2) as reader:
        frames = iter(reader)
        assert next(frames).index == 0
    assert not reader_threads()
    del frames


def test_an_exception_in_the_reader_thread_reaches_the_caller(tmp_path: Path) -> None:
    source = image_folder(tmp_path, "f", 8)
    failure = RuntimeError("the skip callback failed")

    def skip(name: str) -> bool:
        if name == "f_5.png":
            raise failure
        return False

    got: list[Frame] = []
    with pytest.raises(RuntimeError) as raised, FrameReader([source], skip=skip) as reader:
        got.extend(reader)
    assert raised.value is failure
    assert len(got) <= 5
    assert not reader_threads()
    with pytest.raises(ValueError, match="queue_size must be >= 1, got 0"):
        FrameReader([source], queue_size=0)
