"""Torch plugin helpers (finding modules, random input, warm-up, compiling) with a tiny real
torch plugin, and the out-of-memory message of a handler's predict."""
from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from faceinfer import Identity
from faceinfer._registry import register_plugin, unregister_plugin
from faceinfer.errors import OutOfMemoryError
from faceinfer.plugin_utils import (
    compile_models,
    get_torch_modules,
    random_input_from_plugin,
    warmup_plugin,
)
from faceinfer.plugins.base import DType, IdentityPlugin, PluginConfig

SIZE = 8
"""Input side of the test plugins: not 3, so a channels-last batch is no valid channels-first
one and the other way round."""


class ChannelsFirstNet(torch.nn.Module):
    """Takes (N, 3, S, S) only."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ChannelsLastNet(ChannelsFirstNet):
    """Takes (N, S, S, 3) only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2))


class ModelHolder:
    """What a plugin might keep in its ``model``."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net


class TorchIdentity(IdentityPlugin):
    """A small real torch plugin: a seeded conv net on float input."""

    def __init__(self, channels_last: bool = False, dtype: DType = "float32",
                 scale: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__(SIZE, 2, dtype=dtype, scale=scale)
        torch.manual_seed(0)
        self.model = ModelHolder(ChannelsLastNet() if channels_last else ChannelsFirstNet())
        self.seen: list[tuple[tuple[int, ...], np.dtype[Any]]] = []

    def process(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append((batch.shape, batch.dtype))
        with torch.inference_mode():
            return np.asarray(self.model.net(torch.from_numpy(batch).float()).numpy())

    def post_process(self, batch: np.ndarray) -> Any:
        return batch.reshape(len(batch), -1)


class BrokenIdentity(TorchIdentity):
    """Fails on any input."""

    def process(self, batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("this model takes nothing")


# ----------------------------------------------------------------------------------------------
# get_torch_modules


class Inner:
    def __init__(self, module: torch.nn.Module, parent: Any) -> None:
        self.module = module
        self.parent = parent  # a cycle back to the holder


class Holder:
    pass


def test_get_torch_modules_walks_same_package_objects() -> None:
    direct, in_list, in_dict, in_tuple, nested, foreign = (
        torch.nn.Linear(2, 2) for _ in range(6))
    outer = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    holder = Holder()
    holder.direct = direct  # type: ignore[attr-defined]
    holder.items = [in_list, {"key": in_dict}, (in_tuple,)]  # type: ignore[attr-defined]
    holder.inner = Inner(nested, holder)  # type: ignore[attr-defined]
    holder.outer = outer  # type: ignore[attr-defined]
    holder.again = [direct, holder]  # type: ignore[attr-defined]
    holder.foreign = SimpleNamespace(module=foreign)  # type: ignore[attr-defined]
    holder.array = np.zeros(3)  # type: ignore[attr-defined]
    holder.nothing = None  # type: ignore[attr-defined]
    found = get_torch_modules(holder)
    # Outermost modules only, each once, in attribute order; nothing from another package's
    # object (SimpleNamespace lives in ``types``).
    assert [id(m) for m in found] == [id(m) for m in (direct, in_list, in_dict, in_tuple,
                                                      nested, outer)]


def test_get_torch_modules_of_a_module_is_itself() -> None:
    module = ChannelsFirstNet()
    assert get_torch_modules(module) == [module]


@pytest.mark.parametrize("obj", [None, 3, "text", np.zeros(2), Holder()])
def test_get_torch_modules_finds_nothing(obj: Any) -> None:
    assert get_torch_modules(obj) == []


def test_get_torch_modules_stays_in_given_package() -> None:
    module = ChannelsFirstNet()
    # The package to stay in is that of the object given ...
    assert get_torch_modules(SimpleNamespace(m=module)) == [module]
    # ... unless another is named.
    assert get_torch_modules(SimpleNamespace(m=module), mod="faceinfer") == []
    holder = Holder()
    holder.inner = SimpleNamespace(m=module)  # type: ignore[attr-defined]
    assert get_torch_modules(holder) == []


def test_get_torch_modules_handles_self_referencing_containers() -> None:
    module = torch.nn.Linear(1, 1)
    items: list[Any] = [module]
    items.append(items)
    table: dict[str, Any] = {"m": module}
    table["self"] = table
    items.append(table)
    assert get_torch_modules(items) == [module]


def test_get_torch_modules_of_a_plugin() -> None:
    plugin = TorchIdentity()
    assert get_torch_modules(plugin.model) == [plugin.model.net]


# ----------------------------------------------------------------------------------------------
# random_input_from_plugin


@pytest.mark.parametrize(("dtype", "scale"), [
    ("uint8", (0.0, 255.0)),
    ("float32", (0.0, 1.0)),
    ("float32", (-1.0, 1.0)),
    ("float16", (0.0, 255.0)),
])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("batch_size", [1, 5])
def test_random_input_from_plugin(dtype: DType, scale: tuple[float, float], channels_last: bool,
                                  batch_size: int) -> None:
    plugin = TorchIdentity(dtype=dtype, scale=scale)
    out = random_input_from_plugin(plugin, batch_size, channels_last)
    expected = (batch_size, SIZE, SIZE, 3) if channels_last else (batch_size, 3, SIZE, SIZE)
    assert out.shape == expected
    assert out.dtype == np.dtype(dtype)
    low, high = scale
    values = out.astype(np.float64)
    assert values.min() >= low
    assert values.max() <= high
    # Spread over the range, not a constant.
    assert values.max() - values.min() > 0.5 * (high - low)


def test_random_input_from_plugin_uint8_reaches_extremes() -> None:
    plugin = TorchIdentity(dtype="uint8", scale=(0.0, 255.0))
    plugin.input_size = 64
    out = random_input_from_plugin(plugin, 4, channels_last=True)
    assert out.min() == 0
    assert out.max() == 255


# ----------------------------------------------------------------------------------------------
# warmup_plugin


@pytest.mark.parametrize(("channels_last", "expected"), [(False, False), (True, True)])
def test_warmup_plugin_detects_channel_order(channels_last: bool, expected: bool) -> None:
    plugin = TorchIdentity(channels_last=channels_last)
    assert warmup_plugin(plugin, 3) is expected
    assert plugin.seen[-1] == (((3, SIZE, SIZE, 3) if expected else (3, 3, SIZE, SIZE)),
                               np.dtype("float32"))


def test_warmup_plugin_tries_channels_first_first() -> None:
    plugin = TorchIdentity(channels_last=True)
    warmup_plugin(plugin, 2)
    assert [shape for shape, _ in plugin.seen] == [(2, 3, SIZE, SIZE), (2, SIZE, SIZE, 3)]


@pytest.mark.parametrize(("channels_last", "order", "expected"), [
    (False, False, False), (False, True, None), (True, True, True), (True, False, None)])
def test_warmup_plugin_with_given_order(channels_last: bool, order: bool,
                                        expected: bool | None) -> None:
    plugin = TorchIdentity(channels_last=channels_last)
    assert warmup_plugin(plugin, 1, channels_last=order) is expected
    assert len(plugin.seen) == 1


def test_warmup_plugin_none_when_nothing_works() -> None:
    assert warmup_plugin(BrokenIdentity(), 2) is None


# ----------------------------------------------------------------------------------------------
# compile_models


def _compile_unusable() -> str | None:
    """Why torch.compile cannot run here, or None when it can. Compiles a net of the same class
    as the test's, so the test itself then costs little."""
    net = ChannelsFirstNet()
    feed = torch.rand(2, 3, SIZE, SIZE)
    try:
        with torch.inference_mode():
            expected = net(feed)
            net.compile()
            result = net(feed)
    except Exception as err:  # noqa: BLE001 (any failure means: skip, with the reason)
        return f"torch.compile is not usable on this machine: {type(err).__name__}: {err}"
    if not torch.allclose(result, expected, rtol=1e-5, atol=1e-5):
        return "torch.compile gives different results from eager mode on this machine"
    return None


@pytest.mark.timeout(120)  # slow-ish: compiling on a CPU takes several seconds
def test_compile_models_compiles_in_place() -> None:
    reason = _compile_unusable()
    if reason is not None:
        pytest.skip(reason)
    plugin = TorchIdentity()
    feed = random_input_from_plugin(plugin, 2, channels_last=False)
    before = plugin.process(feed)
    module = plugin.model.net
    modules = get_torch_modules(plugin.model)
    assert modules == [module]
    assert module._compiled_call_impl is None
    compile_models(plugin, modules)
    assert plugin.model.net is module  # compiled in place, not replaced
    assert module._compiled_call_impl is not None
    after = plugin.process(feed)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Out of memory in ExtractHandler.predict

OOM_PLUGIN = "test-zz-unit-oom"


class OutOfMemoryIdentity(IdentityPlugin):
    """Raises the error set on the class from ``process``."""

    error: Exception = RuntimeError("unset")

    def __init__(self, config: PluginConfig) -> None:
        super().__init__(SIZE, config.batch_size, config=config)

    def process(self, batch: np.ndarray) -> np.ndarray:
        raise type(self).error

    def post_process(self, batch: np.ndarray) -> Any:
        return batch


@pytest.fixture
def oom_plugin() -> Iterator[type[OutOfMemoryIdentity]]:
    cls = register_plugin("identity", OOM_PLUGIN)(
        type("RaisingIdentity", (OutOfMemoryIdentity,), {}))
    try:
        yield cls
    finally:
        unregister_plugin("identity", OOM_PLUGIN)


@pytest.mark.parametrize("error", [
    pytest.param(torch.cuda.OutOfMemoryError("CUDA out of memory"), id="torch-oom"),
    pytest.param(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                 id="runtime-error-oom"),
])
@pytest.mark.parametrize(("device", "device_word"), [("cpu", "cpu"), ("cuda:0", "GPU")])
def test_predict_turns_out_of_memory_into_advice(oom_plugin: type[OutOfMemoryIdentity],
                                                 error: Exception, device: str,
                                                 device_word: str) -> None:
    oom_plugin.error = error
    handler = Identity(OOM_PLUGIN, config={"batch_size": 7})
    handler.plugin.device = device
    with pytest.raises(OutOfMemoryError) as info:
        handler.predict(np.zeros((7, SIZE, SIZE, 3), np.float32))
    message = str(info.value)
    assert f"'{OOM_PLUGIN}'" in message
    assert "batch size of 7" in message
    assert f"[identity.{OOM_PLUGIN}]" in message
    assert f"The {device_word} ran out of memory" in message
    assert info.value.__cause__ is error


@pytest.mark.parametrize("error", [ValueError("out of memory"), RuntimeError("shape mismatch")])
def test_predict_passes_other_errors_through(oom_plugin: type[OutOfMemoryIdentity],
                                             error: Exception) -> None:
    oom_plugin.error = error
    handler = Identity(OOM_PLUGIN, config={"batch_size": 2})
    with pytest.raises(type(error)) as info:
        handler.predict(np.zeros((2, SIZE, SIZE, 3), np.float32))
    assert info.value is error


def test_get_torch_modules_searches_plugin_objects_inside_a_list_model() -> None:
    """A model held as a list of this package's wrappers: the wrappers are searched too."""
    inner = torch.nn.Linear(2, 2)
    wrapper = _Holder(inner)
    found = get_torch_modules([wrapper, {"other": torch.nn.ReLU()}])
    assert any(module is inner for module in found)
    assert len(found) == 2


class _Holder:
    """A plain object of the tests' package holding a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
