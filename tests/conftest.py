"""Shared fixtures: synthetic frames for the test plugins, a threaded feeder, and a check that no
pipeline thread outlives its test."""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from faceinfer.handler import ExtractHandler
from faceinfer.objects import ExtractBatch
from faceinfer.runner import ExtractRunner
from faceinfer.threads import PipelineThread

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

FRAME = 128
"""Side of the synthetic frames: the test-blobs detector's input size, so boxes map exactly."""
CELL = 32
BLOB = 16


def blob_boxes(count: int) -> np.ndarray:
    """(count, 4) boxes (left, top, right, bottom) of the blobs drawn by :func:`make_frame`, in
    the raster order the detector reports them."""
    index = np.arange(count)
    left = (index % 4) * CELL + (CELL - BLOB) // 2
    top = (index // 4) * CELL + (CELL - BLOB) // 2
    return np.stack([left, top, left + BLOB, top + BLOB], axis=1).astype(np.int32)


def make_frame(count: int, seed: int = 0) -> np.ndarray:
    """A FRAME x FRAME black frame with ``count`` (<= 16) bright square blobs on a 4x4 grid,
    each of its own colour (all channels >= 200, so the detector sees them)."""
    image = np.zeros((FRAME, FRAME, 3), dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for left, top, right, bottom in blob_boxes(count).tolist():
        image[top:bottom, left:right] = rng.integers(200, 256, size=3, dtype=np.uint8)
    return image


def run_stage(handler: ExtractHandler, batch: ExtractBatch) -> ExtractBatch:
    """Run one stage's three steps on a batch in this thread (loading the model first)."""
    handler.init_model()
    handler.pre_process(batch)
    handler.process(batch)
    handler.post_process(batch)
    return batch


@dataclass
class Feeder:
    """Puts frames into a pipeline from its own thread, with optional flushes, then stops it."""

    pipeline: ExtractRunner[Any]
    frames: Sequence[tuple[str, np.ndarray]]
    flush_after: set[int] = field(default_factory=set)
    stop: bool = True
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            for index, (name, image) in enumerate(self.frames):
                self.pipeline.put(name, image)
                if index in self.flush_after:
                    self.pipeline.flush()
            if self.stop:
                self.pipeline.stop()
        except BaseException as err:  # noqa: BLE001 (inspected by the test)
            self.error = err

    def start(self) -> Feeder:
        self.thread = threading.Thread(target=self.run, name="test-feeder", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float = 30.0) -> None:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the feeder thread hung"


def pipeline_threads() -> list[threading.Thread]:
    """The pipeline threads alive now."""
    return [t for t in threading.enumerate() if isinstance(t, PipelineThread) and t.is_alive()]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    """Fail a test that leaves a pipeline thread running."""
    before = set(pipeline_threads())
    yield
    left = [t.name for t in pipeline_threads() if t not in before]
    assert not left, f"pipeline threads still alive after the test: {left}"
