"""The default chain on a CUDA device against the same chain on the CPU: mtcnn -> dlib-68
(re-aligned) -> components -> dlib-resnet, through the threaded pipeline, on the sample photos
and the first frames of the sample video. Skipped where torch sees no CUDA device.

The two devices round differently (cuDNN's convolution algorithms; TF32 is switched off for the
comparison), so results are compared with tolerances: boxes within 2 pixels, landmarks within
1 pixel, masks differing in under 1% of pixels, embeddings with cosine similarity 0.999 and
more."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt
import pytest
import torch

from faceinfer import Align, Detect, Identity, Mask
from faceinfer.objects import FrameFaces
from faceinfer.runner import ExtractRunner, get_pipeline
from tests.conftest import SHARED

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SAMPLES = SHARED / "data" / "faceswap_samples"
VIDEO_FRAMES = 24


def frames() -> list[tuple[str, npt.NDArray[np.uint8]]]:
    """The sample photos and the first video frames, as (name, BGR image)."""
    if not SAMPLES.is_dir():
        pytest.skip(f"the faceswap samples are not at {SAMPLES}")
    out = []
    for path in sorted(SAMPLES.glob("*.jpg")):
        image = cv2.imread(str(path))
        assert image is not None, f"cannot read {path}"
        out.append((path.stem, np.asarray(image, dtype=np.uint8)))
    with av.open(str(SAMPLES / "test.mp4")) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == VIDEO_FRAMES:
                break
            out.append((f"video_{index:03d}",
                        np.asarray(frame.to_ndarray(format="bgr24"), dtype=np.uint8)))
    return out


def chain(device: str) -> ExtractRunner[Any]:
    """The default chain with identity, every stage on ``device``."""
    detect = Detect("mtcnn", device=device)
    align = Align("dlib-68", re_align=True, device=device)
    mask = Mask("components", device=device)
    identity = Identity("dlib-resnet", device=device)
    return identity(mask(align(detect())))


def run(device: str, inputs: list[tuple[str, npt.NDArray[np.uint8]]]) -> list[FrameFaces]:
    """Every frame through the chain on ``device``."""
    pipeline = chain(device)

    def feed() -> None:
        for name, image in inputs:
            pipeline.put(name, image)
        pipeline.stop()

    with pipeline:
        threading.Thread(target=feed, daemon=True).start()
        return list(pipeline)


@pytest.fixture(scope="module")
def results() -> Iterator[tuple[list[FrameFaces], list[FrameFaces]]]:
    """Both devices' results, CUDA's with TF32 off. With torch's default (cuDNN convolutions
    in TF32), mtcnn's boxes and keypoints move by a pixel or so, and dlib's 68-point regression
    trees turn that into up to 9.4 px on the jaw of a face of ``test_img1`` (measured on an
    H200): that is TF32's rounding, not what this module tests."""
    inputs = frames()
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield run("cpu", inputs), run("cuda", inputs)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_the_torch_plugins_run_on_cuda() -> None:
    pipeline = chain("cuda")
    with pipeline:
        pipeline.stop()
        assert list(pipeline) == []
    devices = {runner.handler.plugin.name: runner.handler.plugin.device
               for runner in get_pipeline(pipeline)}
    assert devices["mtcnn"] == "cuda"
    assert devices["dlib-resnet"] == "cuda"


def test_cuda_finds_the_faces_the_cpu_finds(
        results: tuple[list[FrameFaces], list[FrameFaces]]) -> None:
    cpu, cuda = results
    assert [f.filename for f in cpu] == [f.filename for f in cuda]
    assert sum(len(f.bboxes) for f in cpu) >= VIDEO_FRAMES
    for on_cpu, on_cuda in zip(cpu, cuda, strict=True):
        assert len(on_cpu.bboxes) == len(on_cuda.bboxes), on_cpu.filename
        if not len(on_cpu.bboxes):
            continue
        assert np.abs(on_cpu.bboxes.astype(np.int64) - on_cuda.bboxes).max() <= 2
        assert np.abs(np.asarray(on_cpu.landmarks) - np.asarray(on_cuda.landmarks)).max() <= 1.0


def test_cuda_masks_and_embeddings_match_the_cpu(
        results: tuple[list[FrameFaces], list[FrameFaces]]) -> None:
    cpu, cuda = results
    for on_cpu, on_cuda in zip(cpu, cuda, strict=True):
        if not len(on_cpu.bboxes):
            continue
        masks_cpu = on_cpu.masks["components"].masks.astype(np.int16)
        masks_cuda = on_cuda.masks["components"].masks.astype(np.int16)
        assert np.mean(np.abs(masks_cpu - masks_cuda) > 8) < 0.01, on_cpu.filename
        embed_cpu = on_cpu.identities["dlib-resnet"]
        embed_cuda = on_cuda.identities["dlib-resnet"]
        cosine = np.sum(embed_cpu * embed_cuda, axis=1)
        assert cosine.min() >= 0.999, (on_cpu.filename, cosine)
