"""The plugin registry and entry points, typed config resolution, device choice, input formatting
and the plugin loader."""
from __future__ import annotations

import logging
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from faceinfer import _registry
from faceinfer._registry import (
    ENTRY_POINT_GROUP,
    get_plugin,
    list_plugins,
    register_plugin,
    unregister_plugin,
)
from faceinfer.config import load_config_file, resolve_config
from faceinfer.device import resolve_device
from faceinfer.errors import ConfigError, FaceInferError, PluginError
from faceinfer.handler import PluginLoader, format_images
from faceinfer.plugins.align.testing import LandmarksAligner
from faceinfer.plugins.base import (
    DetectPlugin,
    DType,
    ExtractPlugin,
    IdentityPlugin,
    PluginConfig,
    PluginType,
)
from faceinfer.plugins.detect.testing import BlobsConfig, BlobsDetector
from faceinfer.plugins.identity.testing import ColourLayoutIdentity
from faceinfer.plugins.mask.testing import BrightMask

Register = Callable[[PluginType, str, type[ExtractPlugin]], type[ExtractPlugin]]


def detector_class(qualname: str = "UnitDetector", batch_from_config: bool = True
                   ) -> type[DetectPlugin]:
    """A new minimal detector class (a fresh class each call, so the registry's ``name`` does
    not leak between tests)."""

    class UnitDetector(DetectPlugin):
        def __init__(self, config: PluginConfig) -> None:
            super().__init__(8, config.batch_size if batch_from_config else 1, config=config)

        def process(self, batch: np.ndarray) -> np.ndarray:
            return batch

        def post_process(self, batch: np.ndarray) -> list[Any]:
            return [np.zeros((0, 4), np.float32) for _ in batch]

    UnitDetector.__qualname__ = qualname
    return UnitDetector


class UnitIdentity(IdentityPlugin):
    """A minimal identity plugin whose input spec is set by the test."""

    def __init__(self, is_rgb: bool = False, dtype: DType = "float32",
                 scale: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(4, 1, is_rgb=is_rgb, dtype=dtype, scale=scale)

    def process(self, batch: np.ndarray) -> np.ndarray:
        return batch

    def post_process(self, batch: np.ndarray) -> Any:
        return batch


@pytest.fixture
def register() -> Iterator[Register]:
    """Register plugins for one test; every one is unregistered afterwards."""
    done: list[tuple[PluginType, str]] = []

    def _register(kind: PluginType, name: str, cls: type[ExtractPlugin]) -> type[ExtractPlugin]:
        out = register_plugin(kind, name)(cls)
        done.append((kind, name))
        return out

    yield _register
    for kind, name in done:
        unregister_plugin(kind, name)


# ----------------------------------------------------------------------------------------------
# Registry


def test_register_plugin_registers_and_names(register: Register) -> None:
    cls = detector_class()
    assert register("detect", "zz-unit-detector", cls) is cls
    assert cls.name == "zz-unit-detector"
    assert get_plugin("detect", "zz-unit-detector") is cls
    assert "zz-unit-detector" in list_plugins("detect")
    assert "zz-unit-detector" not in list_plugins("align")


def test_unregister_plugin_removes_it(register: Register) -> None:
    register("detect", "zz-unit-detector", detector_class())
    unregister_plugin("detect", "zz-unit-detector")
    assert "zz-unit-detector" not in list_plugins("detect")
    with pytest.raises(PluginError):
        get_plugin("detect", "zz-unit-detector")
    unregister_plugin("detect", "zz-unit-detector")  # unknown names are ignored


def test_duplicate_name_names_both_classes(register: Register) -> None:
    first = detector_class("FirstDetector")
    second = detector_class("SecondDetector")
    register("detect", "zz-unit-detector", first)
    with pytest.raises(PluginError) as info:
        register_plugin("detect", "zz-unit-detector")(second)
    message = str(info.value)
    assert "zz-unit-detector" in message
    assert f"{first.__module__}.FirstDetector" in message
    assert f"{second.__module__}.SecondDetector" in message
    assert get_plugin("detect", "zz-unit-detector") is first


def test_duplicate_of_builtin_is_refused() -> None:
    list_plugins("detect")  # make sure the built-in plugins are loaded
    with pytest.raises(PluginError, match="BlobsDetector"):
        register_plugin("detect", "test-blobs")(detector_class())
    assert get_plugin("detect", "test-blobs") is BlobsDetector


def test_same_name_for_other_type_is_allowed(register: Register) -> None:
    register("detect", "zz-unit-shared", detector_class())
    register("identity", "zz-unit-shared", type("SharedIdentity", (UnitIdentity,), {}))
    assert get_plugin("identity", "zz-unit-shared") is not get_plugin("detect", "zz-unit-shared")


@pytest.mark.parametrize(("kind", "cls"), [
    ("detect", UnitIdentity),  # an identity plugin registered as a detector
    ("identity", detector_class()),
    ("align", DetectPlugin),
    ("detect", object),
    ("detect", "not a class"),
])
def test_wrong_base_class_is_refused(kind: PluginType, cls: Any) -> None:
    with pytest.raises(PluginError, match="expected a subclass of"):
        register_plugin(kind, "zz-unit-wrong")(cls)
    assert "zz-unit-wrong" not in list_plugins(kind, include_test=True)


@pytest.mark.parametrize("name", ["", "Upper", " lead", "two words", "trail "])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(PluginError, match="lower-case"):
        register_plugin("detect", name)(detector_class())


def test_list_plugins_hides_test_plugins(register: Register) -> None:
    register("detect", "zz-unit-detector", detector_class())
    register("detect", "test-zz-unit", detector_class())
    visible = list_plugins("detect")
    everything = list_plugins("detect", include_test=True)
    assert "zz-unit-detector" in visible
    assert not [name for name in visible if name.startswith("test-")]
    assert {"test-blobs", "test-zz-unit", "zz-unit-detector"} <= set(everything)
    assert everything == sorted(everything)
    assert set(visible) < set(everything)


@pytest.mark.parametrize(("kind", "name"), [
    ("detect", "test-blobs"), ("align", "test-landmarks"), ("mask", "test-mask"),
    ("identity", "test-identity")])
def test_builtin_test_plugins_are_registered(kind: PluginType, name: str) -> None:
    assert name in list_plugins(kind, include_test=True)
    assert name not in list_plugins(kind)
    assert get_plugin(kind, name).name == name


def test_unknown_name_lists_known_plugins(register: Register) -> None:
    register("detect", "zz-unit-detector", detector_class())
    with pytest.raises(PluginError) as info:
        get_plugin("detect", "no-such-detector")
    message = str(info.value)
    assert "'no-such-detector'" in message
    assert "zz-unit-detector" in message


@pytest.mark.parametrize("call", [
    lambda: list_plugins("bogus"),  # type: ignore[arg-type]
    lambda: get_plugin("bogus", "x"),  # type: ignore[arg-type]
    lambda: register_plugin("bogus", "x"),  # type: ignore[arg-type]
    lambda: unregister_plugin("bogus", "x"),  # type: ignore[arg-type]
])
def test_unknown_type_is_refused(call: Callable[[], Any]) -> None:
    with pytest.raises(PluginError, match="'bogus'") as info:
        call()
    for kind in ("detect", "align", "mask", "identity"):
        assert kind in str(info.value)


def test_errors_share_the_library_base() -> None:
    assert issubclass(PluginError, FaceInferError)
    assert issubclass(ConfigError, FaceInferError)


# ----------------------------------------------------------------------------------------------
# Entry points

ENTRY_MODULE = "zz_faceinfer_unit_entry"
ENTRY_SOURCE = """
from faceinfer._registry import register_plugin
from faceinfer.plugins.base import IdentityPlugin


@register_plugin("identity", "zz-unit-entry")
class EntryIdentity(IdentityPlugin):
    def process(self, batch):
        return batch

    def post_process(self, batch):
        return batch
"""
RAISING_MODULE = "zz_faceinfer_unit_raising"


@pytest.fixture
def entry_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two importable modules: one registering a plugin, one raising on import."""
    (tmp_path / f"{ENTRY_MODULE}.py").write_text(textwrap.dedent(ENTRY_SOURCE))
    (tmp_path / f"{RAISING_MODULE}.py").write_text("raise RuntimeError('broken plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    unregister_plugin("identity", "zz-unit-entry")
    for name in (ENTRY_MODULE, RAISING_MODULE):
        sys.modules.pop(name, None)


@pytest.mark.usefixtures("entry_modules")
@pytest.mark.parametrize("broken", [
    pytest.param("zz_faceinfer_no_such_module", id="missing-module"),
    pytest.param(RAISING_MODULE, id="raises-on-import"),
    pytest.param("json:no_such_attribute", id="missing-attribute"),
])
def test_entry_points_load_and_broken_one_warns(broken: str, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    entries = [metadata.EntryPoint("broken-entry", broken, ENTRY_POINT_GROUP),
               metadata.EntryPoint("good-entry", ENTRY_MODULE, ENTRY_POINT_GROUP)]
    calls: list[dict[str, Any]] = []

    def entry_points(**kwargs: Any) -> list[metadata.EntryPoint]:
        calls.append(kwargs)
        return entries

    monkeypatch.setattr(_registry, "metadata", SimpleNamespace(entry_points=entry_points))
    monkeypatch.setattr(_registry, "_loaded", False)
    with caplog.at_level(logging.WARNING, logger="faceinfer._registry"):
        names = list_plugins("identity")
    assert calls == [{"group": "faceinfer.plugins"}]
    assert "zz-unit-entry" in names
    assert get_plugin("identity", "zz-unit-entry").__name__ == "EntryIdentity"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "broken-entry" in warnings[0].getMessage()
    assert broken in warnings[0].getMessage()
    # Entry points are read once per process.
    list_plugins("identity")
    get_plugin("identity", "zz-unit-entry")
    assert len(calls) == 1


# ----------------------------------------------------------------------------------------------
# Config


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faceinfer.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(("toml", "overrides", "expected"), [
    pytest.param(None, None, {"batch_size": 8, "threshold": 200, "min_area": 4}, id="defaults"),
    pytest.param("[detect.test-blobs]\nbatch_size = 4\nthreshold = 150\n", None,
                 {"batch_size": 4, "threshold": 150, "min_area": 4}, id="file"),
    pytest.param("[detect.test-blobs]\nbatch_size = 4\nthreshold = 150\n", {"threshold": 100},
                 {"batch_size": 4, "threshold": 100, "min_area": 4}, id="arguments-win"),
    pytest.param(None, {"min_area": 9}, {"batch_size": 8, "threshold": 200, "min_area": 9},
                 id="arguments-only"),
    pytest.param("[detect.other]\nbatch_size = 2\n[align.test-blobs]\nbatch_size = 3\n"
                 "[detect.test-blobs]\nmin_area = 1\n", {},
                 {"batch_size": 8, "threshold": 200, "min_area": 1}, id="other-tables-ignored"),
    pytest.param("[align.test-landmarks]\nnot_a_setting = 1\n", None,
                 {"batch_size": 8, "threshold": 200, "min_area": 4}, id="no-table-for-plugin"),
])
def test_resolve_config_precedence(tmp_path: Path, toml: str | None,
                                   overrides: dict[str, Any] | None,
                                   expected: dict[str, Any]) -> None:
    path = None if toml is None else write_toml(tmp_path, toml)
    config = resolve_config(BlobsConfig, "detect", "test-blobs", path, overrides)
    assert isinstance(config, BlobsConfig)
    for key, value in expected.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize(("toml", "overrides", "source", "key"), [
    ("[detect.test-blobs]\nthreshhold = 1\n", None, "faceinfer.toml", "threshhold"),
    (None, {"batch": 2}, "arguments", "batch"),
    ("[detect.test-blobs]\nbatch_size = 2\n", {"minarea": 2}, "arguments", "minarea"),
])
def test_resolve_config_unknown_key(tmp_path: Path, toml: str | None,
                                    overrides: dict[str, Any] | None, source: str,
                                    key: str) -> None:
    path = None if toml is None else write_toml(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        resolve_config(BlobsConfig, "detect", "test-blobs", path, overrides)
    message = str(info.value)
    assert key in message
    assert source in message
    assert "test-blobs" in message


def test_resolve_config_bad_toml_names_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[detect.test-blobs\nbatch_size = \n")
    with pytest.raises(ConfigError, match="not a valid TOML") as info:
        resolve_config(BlobsConfig, "detect", "test-blobs", path)
    assert str(path) in str(info.value)


def test_resolve_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        resolve_config(BlobsConfig, "detect", "test-blobs", path)
    assert str(path) in str(info.value)


def test_load_config_file_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))):
        load_config_file(tmp_path)


def test_resolve_config_table_must_be_a_table(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[detect]\ntest-blobs = 3\n")
    with pytest.raises(ConfigError, match=r"expected a table \[detect.test-blobs\]"):
        resolve_config(BlobsConfig, "detect", "test-blobs", path)


@pytest.mark.parametrize(("toml", "overrides", "key"), [
    ("[detect.test-blobs]\nbatch_size = \"4\"\n", None, "batch_size"),
    ("[detect.test-blobs]\nthreshold = 1.5\n", None, "threshold"),
    (None, {"min_area": True}, "min_area"),
    (None, {"fail_at": 3}, "fail_at"),
    (None, {"batch_size": 2.0}, "batch_size"),
])
def test_resolve_config_wrong_type(tmp_path: Path, toml: str | None,
                                   overrides: dict[str, Any] | None, key: str) -> None:
    path = None if toml is None else write_toml(tmp_path, toml)
    with pytest.raises(ConfigError, match=rf"BlobsConfig\.{key}: expected"):
        resolve_config(BlobsConfig, "detect", "test-blobs", path, overrides)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 0}, "expected >= 1"),
    ({"batch_size": -3}, "expected >= 1"),
    ({"batch_size": True}, "expected an integer"),
    ({"batch_size": "2"}, "expected an integer"),
])
def test_plugin_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PluginConfig(**kwargs)


def test_plugin_config_is_frozen() -> None:
    config = PluginConfig(batch_size=3)
    assert config.batch_size == 3
    with pytest.raises(AttributeError):
        config.batch_size = 4  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------
# Device


@pytest.mark.parametrize(("spec", "expected"), [
    ("cpu", "cpu"), (" CPU ", "cpu"), ("mps", "mps")])
def test_resolve_device(spec: str, expected: str) -> None:
    assert resolve_device(spec) == expected


@pytest.mark.parametrize("spec", ["auto", None, "", "AUTO"])
def test_resolve_device_auto(spec: str | None) -> None:
    assert resolve_device(spec) == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_resolve_device_cuda_without_cuda(spec: str) -> None:
    with pytest.raises(ConfigError, match="no CUDA device") as info:
        resolve_device(spec)
    assert spec in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resolve_device_cuda_with_cuda() -> None:
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    with pytest.raises(ConfigError, match="sees only"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "cuda0", "tpu"])
def test_resolve_device_malformed(spec: str) -> None:
    with pytest.raises(ConfigError, match="expected a device"):
        resolve_device(spec)


# ----------------------------------------------------------------------------------------------
# format_images

IMAGES = np.array([[[[0, 51, 255], [102, 204, 153]]]], dtype=np.uint8)  # (1, 1, 2, 3) BGR


@pytest.mark.parametrize(("is_rgb", "dtype", "scale", "expected"), [
    pytest.param(False, "uint8", (0.0, 255.0), IMAGES, id="bgr-uint8-kept"),
    pytest.param(True, "uint8", (0.0, 255.0), IMAGES[..., ::-1], id="rgb-uint8"),
    pytest.param(False, "float32", (0.0, 255.0), IMAGES.astype(np.float32), id="float-0-255"),
    pytest.param(False, "float32", (0.0, 1.0), IMAGES / 255.0, id="float-0-1"),
    pytest.param(False, "float32", (-1.0, 1.0), IMAGES / 127.5 - 1.0, id="float-minus1-1"),
    pytest.param(True, "float32", (-1.0, 1.0), IMAGES[..., ::-1] / 127.5 - 1.0,
                 id="rgb-float-minus1-1"),
    pytest.param(False, "float16", (0.0, 1.0), IMAGES / 255.0, id="float16-0-1"),
    pytest.param(False, "float32", (10.0, 20.0), IMAGES / 25.5 + 10.0, id="float-10-20"),
])
def test_format_images(is_rgb: bool, dtype: DType, scale: tuple[float, float],
                       expected: np.ndarray) -> None:
    images = IMAGES.copy()
    out = format_images(images, UnitIdentity(is_rgb, dtype, scale))
    assert out.dtype == np.dtype(dtype)
    assert out.shape == IMAGES.shape
    assert out.flags.c_contiguous
    tolerance = 1e-3 if dtype == "float16" else 1e-6
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(images, IMAGES)  # the input is left alone


@pytest.mark.parametrize(("scale", "low", "high"), [((0.0, 1.0), 0.0, 1.0),
                                                    ((-1.0, 1.0), -1.0, 1.0)])
def test_format_images_maps_full_range(scale: tuple[float, float], low: float,
                                       high: float) -> None:
    images = np.zeros((2, 4, 4, 3), np.uint8)
    images[1] = 255
    out = format_images(images, UnitIdentity(dtype="float32", scale=scale))
    assert np.all(out[0] == np.float32(low))
    np.testing.assert_allclose(out[1], high, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# PluginLoader


@pytest.mark.parametrize(("getter", "name", "cls"), [
    (PluginLoader.get_detector, "test-blobs", BlobsDetector),
    (PluginLoader.get_aligner, "test-landmarks", LandmarksAligner),
    (PluginLoader.get_masker, "test-mask", BrightMask),
    (PluginLoader.get_recognition, "test-identity", ColourLayoutIdentity),
])
def test_plugin_loader_getters(getter: Callable[[str], type[ExtractPlugin]], name: str,
                               cls: type[ExtractPlugin]) -> None:
    assert getter(name) is cls
    with pytest.raises(PluginError, match="'zz-no-such-plugin'"):
        getter("zz-no-such-plugin")


def test_plugin_loader_getters_check_the_type() -> None:
    with pytest.raises(PluginError):
        PluginLoader.get_aligner("test-blobs")


def test_plugin_loader_available_extractors() -> None:
    assert "test-blobs" not in PluginLoader.get_available_extractors("detect")
    assert "test-blobs" in PluginLoader.get_available_extractors("detect", include_test=True)


def test_plugin_loader_load_defaults() -> None:
    plugin = PluginLoader.load("detect", "test-blobs")
    assert isinstance(plugin, BlobsDetector)
    assert plugin.batch_size == 8
    assert plugin.config == BlobsConfig()


def test_plugin_loader_load_resolves_config(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[detect.test-blobs]\nbatch_size = 3\nthreshold = 99\n")
    plugin = PluginLoader.load("detect", "test-blobs", str(path), {"min_area": 7})
    assert isinstance(plugin, BlobsDetector)
    assert plugin.batch_size == 3
    assert plugin.settings == BlobsConfig(batch_size=3, threshold=99, min_area=7)


def test_plugin_loader_load_rejects_unknown_setting() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        PluginLoader.load("identity", "test-identity", overrides={"bogus": 1})


def test_plugin_loader_load_refuses_plugin_ignoring_batch_size(register: Register) -> None:
    register("detect", "zz-unit-fixed-batch", detector_class(batch_from_config=False))
    assert PluginLoader.load("detect", "zz-unit-fixed-batch").batch_size == 1
    with pytest.raises(PluginError, match="ignores its configured batch size"):
        PluginLoader.load("detect", "zz-unit-fixed-batch", overrides={"batch_size": 4})
