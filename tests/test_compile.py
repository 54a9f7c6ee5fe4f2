"""Compiled models (``compile_model=True``): a small real torch plugin compiled through its
handler (channel order found, padded short batches, trimmed outputs, no recompiles), a plugin
without torch modules left alone, output trimming, and mtcnn compiled against eager on real
frames."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from faceinfer import Detect, Identity
from faceinfer._registry import register_plugin, unregister_plugin
from faceinfer.objects import ExtractBatch
from faceinfer.plugin_utils import get_torch_modules, is_compiled, pad_batch, trim_output
from faceinfer.plugins.base import IdentityPlugin, PluginConfig
from tests.conftest import SHARED

SIZE = 8
"""Input side of the test plugin: not 3, so channels-first input is no channels-last input."""
BATCH = 4
TORCH_PLUGIN = "test-zz-compile-torch"
NUMPY_PLUGIN = "test-zz-compile-numpy"
BREAK_PLUGIN = "test-zz-compile-graph-break"


def graphs() -> int:
    """How many graphs dynamo has compiled in this process (each recompile adds one)."""
    return int(counters["stats"]["unique_graphs"])


class ChannelsLastNet(torch.nn.Module):
    """Takes (N, S, S, 3) only: a channels-first batch fails its convolution."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x.permute(0, 3, 1, 2))).mean(dim=(2, 3))


class GraphBreakNet(ChannelsLastNet):
    """Cannot be compiled as one graph."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x.permute(0, 3, 1, 2))
        torch._dynamo.graph_break()
        return torch.relu(x).mean(dim=(2, 3))


class TorchIdentity(IdentityPlugin):
    """A small real torch plugin that records the shape of every batch it is given."""

    def __init__(self, config: PluginConfig) -> None:
        super().__init__(SIZE, config.batch_size, config=config)
        self.seen: list[tuple[int, ...]] = []

    def load_model(self) -> None:
        self.model = ChannelsLastNet()

    def process(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch.shape)
        with torch.inference_mode():
            return np.asarray(self.model(torch.from_numpy(batch)).numpy())

    def post_process(self, batch: np.ndarray) -> Any:
        return batch


class GraphBreakIdentity(TorchIdentity):
    """The torch plugin with a graph break in its model."""

    def load_model(self) -> None:
        self.model = GraphBreakNet()


class NumpyIdentity(TorchIdentity):
    """The same plugin without torch: a mean per channel."""

    def load_model(self) -> None:
        self.model = None

    def process(self, batch: np.ndarray) -> np.ndarray:
        self.seen.append(batch.shape)
        return np.asarray(batch.mean(axis=(1, 2)))


@pytest.fixture
def plugins() -> Iterator[None]:
    register_plugin("identity", TORCH_PLUGIN)(type("Torch", (TorchIdentity,), {}))
    register_plugin("identity", NUMPY_PLUGIN)(type("Numpy", (NumpyIdentity,), {}))
    register_plugin("identity", BREAK_PLUGIN)(type("Break", (GraphBreakIdentity,), {}))
    try:
        yield
    finally:
        for name in (TORCH_PLUGIN, NUMPY_PLUGIN, BREAK_PLUGIN):
            unregister_plugin("identity", name)


@pytest.mark.timeout(240)  # compiling on a 2-core CPU takes seconds to tens of seconds
def test_compiled_torch_plugin_pads_trims_and_never_recompiles(plugins: None) -> None:
    handler = Identity(TORCH_PLUGIN, compile_model=True, config={"batch_size": BATCH})
    plugin = handler.plugin
    assert isinstance(plugin, TorchIdentity)
    before = graphs()
    handler.init_model()
    assert graphs() > before
    (module,) = get_torch_modules(plugin.model)
    assert is_compiled(module)
    # The channel order was found by one uncompiled frame (channels-first tried first), then
    # the compiled model warmed up at the full batch size, channels-last.
    assert plugin.seen == [(1, 3, SIZE, SIZE), (1, SIZE, SIZE, 3), (BATCH, SIZE, SIZE, 3)]
    eager = ChannelsLastNet()
    compiled = graphs()
    rng = np.random.default_rng(1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for count in (3, 1, BATCH, 2):
            feed = rng.uniform(0.0, 1.0, (count, SIZE, SIZE, 3)).astype(np.float32)
            out = handler.predict(feed)
            assert plugin.seen[-1] == (BATCH, SIZE, SIZE, 3)  # padded to the compiled size
            assert out.shape == (count, 4)  # and trimmed back
            with torch.inference_mode():
                expected = eager(torch.from_numpy(feed)).numpy()
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert graphs() == compiled


@pytest.mark.timeout(240)
def test_model_with_a_graph_break_compiles_without_fullgraph(
        plugins: None, caplog: pytest.LogCaptureFixture) -> None:
    handler = Identity(BREAK_PLUGIN, compile_model=True, config={"batch_size": BATCH})
    with caplog.at_level(logging.DEBUG, logger="faceinfer.handler"):
        handler.init_model()
    assert f"Plugin '{BREAK_PLUGIN}' does not compile as whole graphs" in caplog.text
    assert is_compiled(handler.plugin.model)
    feed = np.random.default_rng(2).uniform(0.0, 1.0, (2, SIZE, SIZE, 3)).astype(np.float32)
    with torch.inference_mode():
        expected = GraphBreakNet()(torch.from_numpy(feed)).numpy()
    np.testing.assert_allclose(handler.predict(feed), expected, rtol=1e-4, atol=1e-5)


def test_plugin_without_torch_modules_is_left_alone(plugins: None,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    handler = Identity(NUMPY_PLUGIN, compile_model=True, config={"batch_size": BATCH})
    with caplog.at_level(logging.DEBUG, logger="faceinfer.handler"):
        handler.init_model()
    assert f"Plugin '{NUMPY_PLUGIN}' has no torch modules to compile" in caplog.text
    plugin = handler.plugin
    assert isinstance(plugin, NumpyIdentity)
    assert plugin.seen == []  # no warm-up either
    feed = np.ones((3, SIZE, SIZE, 3), np.float32)
    assert handler.predict(feed).shape == (3, 3)
    assert plugin.seen == [(3, SIZE, SIZE, 3)]  # not padded


def test_pad_batch() -> None:
    batch = np.arange(6, dtype=np.int16).reshape(3, 2) + 1
    padded = pad_batch(batch, 5)
    assert padded.dtype == np.int16
    np.testing.assert_array_equal(padded, [[1, 2], [3, 4], [5, 6], [0, 0], [0, 0]])
    assert pad_batch(batch, 3) is batch
    assert pad_batch(batch, 2) is batch


def test_trim_output() -> None:
    rows = np.arange(8).reshape(4, 2)
    np.testing.assert_array_equal(trim_output(rows, 3, 4), rows[:3])
    # Parallel outputs, each of the padded size: each trimmed, the container kept.
    pair = trim_output((rows, rows[:, 0]), 2, 4)
    assert isinstance(pair, tuple)
    np.testing.assert_array_equal(pair[0], rows[:2])
    np.testing.assert_array_equal(pair[1], rows[:2, 0])
    assert isinstance(trim_output([rows, rows], 1, 4), list)
    # One item per sample.
    assert trim_output(["a", "b", "c", "d"], 2, 4) == ["a", "b"]
    assert trim_output([np.zeros(2), np.zeros(3), np.zeros(1), np.zeros(5)], 1, 4)[0].shape == (2,)
    # Anything not of the padded size is not the batch: left alone.
    assert trim_output(np.zeros(()), 1, 4).shape == ()
    assert trim_output("abcd", 2, 4) == "abcd"


# ----------------------------------------------------------------------------------------------
# mtcnn, compiled


def _frames() -> list[np.ndarray]:
    """The sample photos (1 to 8 faces) and video frames (1 face), mixed."""
    av = pytest.importorskip("av")
    cv2 = pytest.importorskip("cv2")
    samples = SHARED / "data" / "faceswap_samples"
    photos = [cv2.imread(str(samples / f"test_img{index}.jpg")) for index in range(1, 5)]
    with av.open(str(samples / "test.mp4")) as container:
        video = [frame.to_ndarray(format="bgr24")
                 for _, frame in zip(range(12), container.decode(video=0), strict=False)]
    return photos + video[:5] + photos[::-1] + video[5:]


def _raw(handler: Detect, images: list[np.ndarray]) -> np.ndarray:
    """The plugin's raw output (N, M, 15) for the frames, through the Detect stage."""
    batch = ExtractBatch([str(index) for index in range(len(images))], images)
    handler.pre_process(batch)
    handler.process(batch)
    return np.asarray(batch.data)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_mtcnn_matches_eager_without_recompiles() -> None:
    frames = _frames()
    eager = Detect("mtcnn", device="cpu")
    eager.init_model()
    compiled = Detect("mtcnn", compile_model=True, device="cpu")
    start = time.perf_counter()
    compiled.init_model()
    print(f"mtcnn compiled and warmed up in {time.perf_counter() - start:.1f} s")
    assert all(is_compiled(module) for module in get_torch_modules(compiled.plugin.model))
    before = graphs()  # counted in every thread (torch's config patch holds in this one only)
    size = compiled.batch_size
    counts: set[int] = set()
    with torch._dynamo.config.patch(error_on_recompile=True):
        for first in range(0, len(frames), size):  # the last batch is short
            part = frames[first:first + size]
            expected, found = _raw(eager, part), _raw(compiled, part)
            assert found.shape == expected.shape
            np.testing.assert_array_equal(np.isnan(found), np.isnan(expected))
            np.testing.assert_allclose(found, expected, rtol=1e-3, atol=1e-2, equal_nan=True)
            counts.update((~np.isnan(expected[:, :, 0])).sum(axis=1).tolist())
    assert len(counts) >= 3  # face counts vary from frame to frame
    assert graphs() == before
