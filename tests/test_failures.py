"""Failure paths: every one ends with a clear error, no hang, and no thread left alive (the
autouse fixture in conftest checks the threads; pytest-timeout catches hangs)."""
from __future__ import annotations

import threading
import traceback
from typing import Any

import pytest

from faceinfer import Align, Detect, FileHandler, Identity, Mask
from faceinfer.errors import PipelineClosedError, PipelineError
from faceinfer.plugins._testing import InjectedFailureError
from faceinfer.runner import ExtractRunner
from faceinfer.threads import ErrorState
from tests.conftest import Feeder, make_frame, pipeline_threads

pytestmark = pytest.mark.timeout(30)

STAGES = ("detect", "align", "mask", "identity")
STEPS = ("load_model", "pre_process", "process", "post_process")


def chain_failing_at(stage: str, step: str, after: int) -> ExtractRunner[Any]:
    """The four test plugins with small batches, one configured to fail."""
    def config(name: str, size: int) -> dict[str, Any]:
        settings: dict[str, Any] = {"batch_size": size}
        if name == stage:
            settings.update(fail_at=step, fail_after=after)
        return settings

    detect = Detect("test-blobs", config=config("detect", 2))()
    align = Align("test-landmarks", config=config("align", 3))(detect)
    mask = Mask("test-mask", config=config("mask", 2))(align)
    return Identity("test-identity", config=config("identity", 3))(mask)


CASES = [(stage, step, after) for stage in STAGES for step in STEPS
         for after in ((0,) if step == "load_model" else (0, 2))]  # a model loads only once


@pytest.mark.parametrize(("stage", "step", "after"), CASES)
def test_an_error_in_any_thread_stops_the_pipeline_and_reaches_the_caller(
        stage: str, step: str, after: int) -> None:
    pipeline = chain_failing_at(stage, step, after)
    frames = [(f"f{i}", make_frame(3)) for i in range(40)]
    feeder = Feeder(pipeline, frames).start()
    received = 0
    with pytest.raises(InjectedFailureError, match=f"injected failure in {step}") as caught:
        for _ in pipeline:
            received += 1
    feeder.join()
    assert received < len(frames)
    assert not pipeline_threads(), "threads alive after the error was raised"
    # The original traceback: the frame that raised is the plugin's own step.
    names = [entry.name for entry in traceback.extract_tb(caught.value.__traceback__)]
    assert "__call__" in names
    assert step in names
    # The feeder, blocked in put() or arriving later, is told too (or had finished).
    assert feeder.error is None or isinstance(feeder.error, InjectedFailureError)
    # Later calls keep telling the same story instead of hanging.
    with pytest.raises(InjectedFailureError):
        pipeline.put("late", make_frame(1))


def test_error_reaches_a_caller_blocked_in_put() -> None:
    """Nobody iterates: the caller fills the queues and blocks in put(); the error frees it."""
    pipeline = chain_failing_at("align", "process", 3)
    with pytest.raises(InjectedFailureError), pipeline:
        for index in range(10_000):
            pipeline.put(f"f{index}", make_frame(4))


def test_stopping_iteration_early_and_closing_ends_every_thread() -> None:
    pipeline = chain_failing_at("none", "", 0)
    frames = [(f"f{i}", make_frame(2)) for i in range(500)]
    feeder = Feeder(pipeline, frames).start()
    with pipeline:
        for index, _ in enumerate(pipeline):
            if index == 5:
                break
    feeder.join()
    assert isinstance(feeder.error, PipelineClosedError)
    with pytest.raises(PipelineClosedError):
        pipeline.put("after-close", make_frame(1))
    with pytest.raises(PipelineClosedError):
        next(pipeline)


def test_put_after_stop_is_a_clear_error() -> None:
    pipeline = Align("test-landmarks")(Detect("test-blobs")())
    with pipeline:
        pipeline.stop()
        with pytest.raises(PipelineError, match="stop"):
            pipeline.put("late", make_frame(1))
        with pytest.raises(PipelineError, match="stop"):
            pipeline.flush()
        pipeline.stop()  # a second stop is harmless
        assert list(pipeline) == []


def test_a_runner_called_twice_is_rejected() -> None:
    detect = Detect("test-blobs")()
    with pytest.raises(ValueError, match="already been called"):
        detect(None, False)
    handler = Align("test-landmarks")
    runner = handler(detect)
    with pytest.raises(ValueError, match="already been called"):
        handler(detect)
    runner.close()


def test_a_chain_built_wrongly_is_rejected() -> None:
    detect = Detect("test-blobs")()
    align = Align("test-landmarks")(detect)
    with pytest.raises(ValueError, match="already feeds"):
        Align("test-landmarks")(detect)
    with pytest.raises(ValueError, match="must be called"):
        Mask("test-mask")(ExtractRunner(Detect("test-blobs")), False)
    with pytest.raises(ValueError, match="has not been called"):
        Mask("test-mask")(Detect("test-blobs"))
    with pytest.raises(ValueError, match="no input plugin"):
        FileHandler()(detect)
    align.close()


def test_iterating_a_runner_that_is_not_last_is_rejected() -> None:
    detect = Detect("test-blobs")()
    align = Align("test-landmarks")(detect)
    with pytest.raises(RuntimeError, match="final runner"):
        next(detect)
    align.close()


def test_bad_images_are_rejected_with_the_file_name() -> None:
    pipeline = Detect("test-blobs")()
    with pipeline:
        with pytest.raises(ValueError, match=r"gray\.png: expected a uint8 BGR image"):
            pipeline.put("gray.png", make_frame(1)[..., 0])
        with pytest.raises(ValueError, match=r"float\.png"):
            pipeline.put("float.png", make_frame(1).astype(float))  # type: ignore[arg-type]


def test_mixing_aligned_and_frame_input_stops_the_pipeline() -> None:
    pipeline = Mask("test-mask")(Align("test-landmarks")())
    from faceinfer.objects import DetectedFace

    face = [DetectedFace(0, 0, 16, 16)]
    # Both frames wait in one part-filled batch, so joining them fails in the stage's thread;
    # the error surfaces in whichever call of the caller comes next.
    with pytest.raises(ValueError, match="aligned faces, or neither"), pipeline:
        pipeline.put("frame", make_frame(1), detected_faces=face)
        pipeline.put("aligned", make_frame(1), detected_faces=face, is_aligned=True)
        pipeline.stop()
        list(pipeline)


def test_an_external_error_state_stops_a_pipeline_without_threads() -> None:
    pipeline = FileHandler()()
    reader = ErrorState()
    pipeline.register_external_error_state(reader)

    def read() -> None:
        try:
            pipeline.put("one", make_frame(1))
            raise OSError("disk gone")
        except OSError:
            reader.set()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    with pytest.raises(OSError, match="disk gone"):
        list(pipeline)
    thread.join()


def test_an_external_error_state_needs_a_runner_without_threads() -> None:
    pipeline = Detect("test-blobs")()
    with pytest.raises(RuntimeError, match="before any thread"):
        pipeline.register_external_error_state(ErrorState())
    pipeline.close()


def test_unknown_plugins_and_bad_settings_fail_before_any_thread() -> None:
    from faceinfer.errors import ConfigError, PluginError

    with pytest.raises(PluginError, match="test-nothing"):
        Detect("test-nothing")
    with pytest.raises(ConfigError, match="batch_size"):
        Detect("test-blobs", config={"batch_size": 0})
    with pytest.raises(ConfigError, match="unknown setting"):
        Align("test-landmarks", config={"bacth_size": 2})
    with pytest.raises(PluginError, match=r"expected a detect plugin in \(.*, test-noop\)"):
        Detect("test-landmarks")
    assert not pipeline_threads()
