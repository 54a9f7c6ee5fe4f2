"""Contract tests run over every registered plugin, so a new plugin is checked for shapes,
dtypes, batch of one, batch of many, empty input where a stage can get it, and determinism
without anyone remembering to add it here."""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from faceinfer import Align, Detect, Identity, Mask
from faceinfer._registry import get_plugin, list_plugins
from faceinfer.handler import ExtractHandler
from faceinfer.objects import ExtractBatch
from faceinfer.plugins.base import PLUGIN_TYPES, PluginSpec, PluginType
from tests.conftest import blob_boxes, make_frame, run_stage

HANDLERS: dict[str, type[ExtractHandler]] = {
    "detect": Detect, "align": Align, "mask": Mask, "identity": Identity}
ALL = [(kind, name) for kind in PLUGIN_TYPES for name in list_plugins(kind, include_test=True)]


def plugin_params(kind: PluginType) -> list[Any]:
    """The registered plugins of a type, those declaring ``speed = "slow"`` marked slow (run
    them with ``pytest -m slow``)."""
    return [pytest.param(name, marks=pytest.mark.slow)
            if get_plugin(kind, name).speed == "slow" else pytest.param(name)
            for name in list_plugins(kind, include_test=True)]


def face_batch(faces: int, landmarks: bool = False) -> ExtractBatch:
    """One frame with ``faces`` blobs and their boxes, and with ``landmarks`` the test
    aligner's 68 landmarks on them."""
    batch = ExtractBatch(["frame"], [make_frame(faces)])
    batch.set_faces(blob_boxes(faces), np.zeros(faces, dtype=np.int32))
    if landmarks:
        run_stage(Align("test-landmarks"), batch)
        batch.clear_transient()
    return batch


@pytest.mark.parametrize(("kind", "name"), ALL)
def test_plugin_declares_a_frozen_spec(kind: str, name: str) -> None:
    cls = get_plugin(kind, name)  # type: ignore[arg-type]
    assert cls.name == name
    assert cls.plugin_type == kind
    assert cls.description, "every plugin describes itself in one line"
    handler = HANDLERS[kind](name)
    spec = handler.plugin.spec
    assert isinstance(spec, PluginSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.input_size = 1  # type: ignore[misc]
    assert spec.input_size > 0
    assert spec.batch_size == handler.batch_size >= 1
    assert spec.dtype in ("uint8", "float16", "float32")
    assert spec.resample in ("area", "linear")
    if kind == "align":
        assert spec.landmark_type is not None
    if kind in ("mask", "identity"):
        assert spec.centering is not None
        assert spec.storage_name


@pytest.mark.parametrize("name", plugin_params("detect"))
@pytest.mark.parametrize("frames", [0, 1, 5])
def test_detector_contract(name: str, frames: int) -> None:
    handler = Detect(name)
    handler.init_model()
    images = [make_frame(k % 4 + 1, seed=k) for k in range(frames)]

    def detect() -> ExtractBatch:
        return run_stage(handler, ExtractBatch([f"f{k}" for k in range(frames)], list(images)))

    first, second = detect(), detect()
    assert first.bboxes.dtype == np.int32
    assert first.bboxes.shape == (first.num_faces, 4)
    assert np.all(first.bboxes[:, 2:] > first.bboxes[:, :2])
    assert np.all(np.diff(first.frame_ids) >= 0)
    assert np.all((first.frame_ids >= 0) & (first.frame_ids < max(frames, 1)))
    np.testing.assert_array_equal(first.bboxes, second.bboxes)
    np.testing.assert_array_equal(first.frame_ids, second.frame_ids)


@pytest.mark.parametrize("name", plugin_params("align"))
@pytest.mark.parametrize("faces", [1, 7])
def test_aligner_contract(name: str, faces: int) -> None:
    handler = Align(name)
    handler.init_model()
    first, second = run_stage(handler, face_batch(faces)), run_stage(handler, face_batch(faces))
    assert first.landmarks is not None
    assert second.landmarks is not None
    assert first.landmarks.dtype == np.float32
    assert first.landmarks.shape[0] == faces
    assert first.landmark_type == handler.plugin.landmark_type
    assert np.isfinite(first.landmarks).all()
    np.testing.assert_array_equal(first.landmarks, second.landmarks)


@pytest.mark.parametrize("name", plugin_params("mask"))
@pytest.mark.parametrize("faces", [1, 7])
def test_mask_contract(name: str, faces: int) -> None:
    handler = Mask(name)
    handler.init_model()
    first, second = (run_stage(handler, face_batch(faces, landmarks=True)) for _ in range(2))
    stored = first.masks[handler.storage_name]
    assert stored.masks.dtype == np.uint8
    assert stored.masks.shape[0] == faces
    assert stored.masks.shape[1] == stored.masks.shape[2]
    assert stored.matrices.shape == (faces, 3, 3)
    assert stored.centering == handler.plugin.centering
    np.testing.assert_array_equal(stored.masks, second.masks[handler.storage_name].masks)


@pytest.mark.parametrize("name", plugin_params("identity"))
@pytest.mark.parametrize("faces", [1, 7])
def test_identity_contract(name: str, faces: int) -> None:
    handler = Identity(name)
    handler.init_model()
    first, second = (run_stage(handler, face_batch(faces, landmarks=True)) for _ in range(2))
    embeddings = first.identities[handler.storage_name]
    assert embeddings.dtype == np.float32
    assert embeddings.ndim == 2
    assert embeddings.shape[0] == faces
    assert np.isfinite(embeddings).all()
    np.testing.assert_array_equal(embeddings, second.identities[handler.storage_name])
