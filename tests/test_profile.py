"""The batch-size profiler: the search (on synthetic throughput, deterministic), the memory
bounds, the threaded profile of one or several torch plugins, out-of-memory and other errors,
the Profiler on a chain (sizes set where the runners read them, threads started after), the
config file, and ModelProfile. Timings are tiny; no assertion depends on wall-clock speed."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from faceinfer import Align, Detect
from faceinfer._registry import register_plugin
from faceinfer.errors import ConfigError, PipelineError
from faceinfer.plugins.base import ExtractPlugin
from faceinfer.plugins.detect.testing import BlobsConfig, BlobsDetector
from faceinfer.profile import (
    DataTracker,
    Events,
    MemoryProbe,
    ModelProfile,
    Output,
    PipelineProfile,
    Profiler,
    save_batch_sizes,
)
from faceinfer.runner import get_pipeline
from faceinfer.threads import ErrorState
from tests.conftest import Feeder, make_frame

FAST = {"warmup_time": 0.0, "run_time": 0.02}


# ------------------------------------------------------------------------- a torch test plugin
@dataclass(frozen=True)
class TorchBlobsConfig(BlobsConfig):
    """test-blobs with a small torch convolution in front of it."""

    oom_above: int = 0
    """Raise torch.OutOfMemoryError for batches larger than this (0: never)."""
    error_above: int = 0
    """Raise ValueError for batches larger than this (0: never)."""
    call_cost: float = 0.0
    """Seconds each process call costs on top of its work, whatever the batch size: makes
    bigger batches clearly faster per sample, so the search cannot stop on timing noise."""


@register_plugin("detect", "test-conv-blobs")
class TorchBlobs(BlobsDetector):
    """test-blobs whose process first runs a torch convolution over (N, S, S, 3) input."""

    config_class = TorchBlobsConfig
    settings: TorchBlobsConfig

    def __init__(self, config: TorchBlobsConfig) -> None:
        super().__init__(config)
        self.sizes_seen: list[int] = []
        self.threads_seen: set[str] = set()

    def load_model(self) -> None:
        torch.manual_seed(0)
        self.model = {"conv": torch.nn.Conv2d(3, 4, 3)}

    def process(self, batch: np.ndarray) -> np.ndarray:
        size = self.input_size
        if batch.shape[1:] != (size, size, 3):
            raise ValueError(f"expected (N, {size}, {size}, 3), got {batch.shape}")
        count = len(batch)
        self.sizes_seen.append(count)
        self.threads_seen.add(threading.current_thread().name)
        if self.settings.oom_above and count > self.settings.oom_above:
            raise torch.OutOfMemoryError("out of memory (test)")
        if self.settings.error_above and count > self.settings.error_above:
            raise ValueError("a real plugin error (test)")
        if self.settings.call_cost:
            time.sleep(self.settings.call_cost)  # a fixed cost per call, not synchronisation
        with torch.inference_mode():
            self.model["conv"](torch.from_numpy(batch[:, :16, :16].astype(np.float32))
                               .permute(0, 3, 1, 2))
        return super().process(batch)


def torch_plugin(**config: Any) -> TorchBlobs:
    plugin = TorchBlobs(TorchBlobsConfig(**config))
    plugin.load_model()
    return plugin


# ------------------------------------------------------------------ the search, synthetically
class FakeProbe(MemoryProbe):
    """A CPU probe whose readings come from a function of the batch sizes under test."""

    def __init__(self, limit: float, usage: Callable[[np.ndarray], float]) -> None:
        super().__init__("cpu", 50)
        self.limit = limit
        self.usage = usage
        self.sizes = np.ones(1, dtype=np.int64)

    def read(self) -> tuple[int, int]:
        used = int(self.usage(self.sizes))
        return used, used


def simulate(data: DataTracker, rate: Callable[[int, int], float],
             oom: Callable[[int, int], bool] = lambda _p, _s: False,
             probe: FakeProbe | None = None, steps: int = 60) -> np.ndarray:
    """Drive the tracker as PipelineProfile does, with samples/s ``rate(plugin, size)``."""
    for _ in range(steps):
        if data.combos_exhausted:
            break
        data.add_iterations_row()
        sizes = data.next_batch_sizes
        if probe is not None:
            probe.sizes = sizes
        for plugin, size in enumerate(sizes.tolist()):
            if oom(plugin, size):
                data.update_iterations(-1, plugin, 0.0)
            else:  # 10 batches in the time that gives rate(plugin, size) samples/s
                data.update_iterations(10, plugin, 10 * size / rate(plugin, size))
        data.collect_vram()
        data.add_next_batch_sizes()
    assert data.combos_exhausted
    return data.tested


def test_search_doubles_then_halves_the_step_after_a_failure() -> None:
    data = DataTracker(1, 85, 2, True)
    tested = simulate(data, lambda _p, size: float(size), oom=lambda _p, size: size > 40)
    assert tested[:, 0].tolist() == [1, 2, 4, 8, 16, 32, 64, 48, 40, 44]
    assert data.batch_sizes[:, 0].tolist() == [1, 2, 4, 8, 16, 32, 40]
    best = data.best()
    assert best is not None
    assert best.tolist() == [40]


def test_a_slower_step_counts_as_a_failure_and_the_best_size_wins() -> None:
    peak = {1: 1.0, 2: 2.0, 4: 5.0, 8: 9.0, 16: 8.0, 12: 9.5, 10: 9.2, 14: 8.5}
    data = DataTracker(1, 85, 2, True)
    tested = simulate(data, lambda _p, size: peak[size])
    assert tested[:, 0].tolist() == [1, 2, 4, 8, 16, 12, 14]
    best = data.best()
    assert best is not None
    assert best.tolist() == [12]


def test_one_plugin_ending_its_search_does_not_end_the_others() -> None:
    # Plugin 0 is the slowest, so it is searched first, and runs out of memory above 2: its
    # search ends after a failed step of 2, and plugin 1 keeps searching up to its limit.
    data = DataTracker(2, 85, 1, True, max_batch_size=64)
    tested = simulate(data, lambda plugin, size: size * (0.1 if plugin == 0 else 1.0),
                      oom=lambda plugin, size: size > (2 if plugin == 0 else 16))
    assert tested[:3].tolist() == [[1, 1], [2, 1], [4, 1]]
    assert tested[3:, 0].tolist() == [2] * (len(tested) - 3)
    assert tested[3:, 1].tolist() == [2, 4, 8, 16, 32, 24, 20]
    best = data.best()
    assert best is not None
    assert best[0] == 2


def test_non_detector_throughput_is_scaled_by_the_expected_faces() -> None:
    data = DataTracker(2, 85, 4, True)
    data.add_iterations_row()
    data.update_iterations(10, 0, 10.0)  # 1 frame/s
    data.update_iterations(20, 1, 5.0)  # 4 faces/s
    data.collect_vram()
    np.testing.assert_allclose(data.get_samples(0), [1.0, 4.0])
    np.testing.assert_allclose(data.get_samples(0, adjusted=True), [1.0, 1.0])
    assert data.get_samples_stats("min", 0) == pytest.approx(1.0)
    assert data.get_samples_stats("mean", 0) == pytest.approx(2.5)
    unscaled = DataTracker(2, 85, 4, has_detector=False)
    unscaled.add_iterations_row()
    unscaled.update_iterations(20, 1, 5.0)
    np.testing.assert_allclose(unscaled.get_samples(0, adjusted=True), [0.0, 4.0])


def test_a_step_over_the_memory_bound_fails_like_out_of_memory() -> None:
    probe = FakeProbe(limit=1000.0, usage=lambda sizes: 100.0 * float(sizes.sum()))
    data = DataTracker(1, 85, 2, True, probe=probe, min_step=1)
    assert data.vram_limit == 1000.0
    tested = simulate(data, lambda _p, size: float(size), probe=probe)
    assert tested[:, 0].tolist() == [1, 2, 4, 8, 16, 12, 10, 11]
    assert data.batch_sizes[:, 0].tolist() == [1, 2, 4, 8, 10]
    assert data.vram[4] == (1600, 1600)
    best = data.best()
    assert best is not None
    assert best.tolist() == [10]


def test_nothing_fitting_ends_the_search_with_no_result() -> None:
    data = DataTracker(1, 85, 2, True)
    simulate(data, lambda _p, _s: 1.0, oom=lambda _p, _s: True)
    assert data.has_oom
    assert data.best() is None


def test_the_cpu_bound_is_on_the_process_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    import psutil

    probe = MemoryProbe("cpu", 50)
    own = psutil.Process().memory_info().rss
    assert own < probe.limit <= own + psutil.virtual_memory().total
    monkeypatch.setattr(MemoryProbe, "_rss", staticmethod(lambda: int(probe.limit) + 1))
    probe.reset()
    assert probe.read()[1] > probe.limit
    with pytest.raises(ValueError, match="0 to 100 percent"):
        MemoryProbe("cpu", 0)


def test_the_cuda_bound_is_on_peak_reserved_vram(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    @dataclass
    class Properties:
        total_memory: int = 1000 * 1024 * 1024

    cuda = torch.cuda
    monkeypatch.setattr(cuda, "get_device_properties", lambda _device: Properties())
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda _d: calls.append("reset"))
    monkeypatch.setattr(cuda, "empty_cache", lambda: calls.append("empty"))
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda _d: 300)
    monkeypatch.setattr(cuda, "max_memory_reserved", lambda _d: 900 * 1024 * 1024)
    probe = MemoryProbe("cuda:0", 85)
    assert probe.unit == "VRAM"
    assert probe.limit == pytest.approx(850 * 1024 * 1024)
    probe.empty_cache()
    probe.reset()
    assert calls == ["empty", "reset"]
    assert probe.read() == (300, 900 * 1024 * 1024)
    data = DataTracker(1, 85, 2, True, probe=probe)
    data.add_iterations_row()
    data.update_iterations(5, 0, 1.0)
    data.collect_vram()
    assert data.has_oom
    assert data.best() is None


def test_output_logs_a_table_row_per_step(caplog: pytest.LogCaptureFixture) -> None:
    data = DataTracker(2, 85, 2, True)
    output = Output(["mtcnn", "aligner"], data, 0.5)
    data.add_iterations_row()
    data.update_iterations(4, 0, 2.0)
    data.update_iterations(-1, 1, 0.0)
    data.collect_vram()
    with caplog.at_level(logging.INFO, logger="faceinfer.profile"):
        line = output()
    assert "S/s mtcnn" in output.header
    assert "Scaled min (2x)" in output.header
    assert "RSS MB used/peak/limit" in output.header
    assert line.split("|")[2].strip() == "OOM"
    assert caplog.text.count("[Profiler]") == 2


def test_events_wait_for_every_plugin_then_clear() -> None:
    events = Events([threading.Event(), threading.Event()])
    threads = [threading.Thread(target=events.set_ready, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    events.wait_ready()
    for thread in threads:
        thread.join()
    assert not any(event.is_set() for event in events.ready)


# ------------------------------------------------------------------ threaded, real plugins
def test_pipeline_profile_runs_several_plugins_together_and_handles_out_of_memory() -> None:
    plugins: list[ExtractPlugin] = [torch_plugin(oom_above=4, call_cost=0.005),
                                    torch_plugin(oom_above=8, call_cost=0.005)]
    profile = PipelineProfile(plugins, ErrorState(), [True, True], has_detector=False,
                              max_batch_size=16, **FAST)
    profile()
    data = profile.data
    assert data.combos_exhausted
    assert (data.tested[:, 0] > 4).any()
    assert (data.tested[:, 1] > 8).any()
    assert (data.batch_sizes[:, 0] <= 4).all()
    assert (data.batch_sizes[:, 1] <= 8).all()
    assert (data.get_samples() > 0).all()
    best = data.best()
    assert best is not None
    assert best[0] <= 4
    assert best[1] <= 8
    for plugin in plugins:
        assert isinstance(plugin, TorchBlobs)
        assert plugin.threads_seen == {f"profile.{plugin.name}"}
    assert not any(t.name.startswith("profile.") for t in threading.enumerate())


def test_a_plugin_error_other_than_memory_stops_profiling_and_is_raised() -> None:
    state = ErrorState()
    profile = PipelineProfile([torch_plugin(error_above=1)], state, [True], has_detector=True,
                              **FAST)
    with pytest.raises(ValueError, match="a real plugin error"):
        profile()
    assert state.has_error
    assert not any(t.name.startswith("profile.") for t in threading.enumerate())


def test_an_error_in_one_plugin_ends_every_profiling_thread() -> None:
    # The failing plugin fails in its warm-up, while the other waits for the measured run.
    plugins: list[ExtractPlugin] = [torch_plugin(error_above=1, call_cost=0.005),
                                    torch_plugin(call_cost=0.001)]
    profile = PipelineProfile(plugins, ErrorState(), [True, True], has_detector=False, **FAST)
    with pytest.raises(ValueError, match="a real plugin error"):
        profile()
    assert not any(t.name.startswith("profile.") for t in threading.enumerate())


def test_model_profile_tries_powers_of_two_until_out_of_memory() -> None:
    plugin = torch_plugin(oom_above=8)
    profile = ModelProfile(plugin, max_batch_size=64, channels_last=True, run_time=0.02,
                           warmup_time=0.0)
    profile()
    assert sorted(profile.results) == [1, 2, 4, 8]
    assert 16 in plugin.sizes_seen
    assert 32 not in plugin.sizes_seen
    assert profile.best_batch_size in profile.results
    assert profile.run_time == 0.02


# --------------------------------------------------------------------------- the Profiler
def run_frames(runner: Any, count: int) -> list[Any]:
    frames = [(f"f{i}", make_frame(i % 5, seed=i)) for i in range(count)]
    feeder = Feeder(runner, frames).start()
    out = list(runner)
    feeder.join()
    return out


def test_profiler_sets_the_sizes_where_the_runners_read_them_then_starts_the_threads(
        caplog: pytest.LogCaptureFixture) -> None:
    detect = Detect("test-conv-blobs", config={"oom_above": 4, "batch_size": 1})
    runner = Align("test-landmarks")(detect(profile=True), profile=True)
    with runner:
        assert not any(r.started for r in get_pipeline(runner))
        with caplog.at_level(logging.INFO, logger="faceinfer.profile"):
            Profiler(runner, max_batch_size=16, **FAST)()
        plugin = detect.plugin
        assert isinstance(plugin, TorchBlobs)
        chosen = plugin.batch_size
        assert 1 <= chosen <= 4
        assert plugin.config.batch_size == chosen
        assert detect.batch_size == chosen
        assert detect.runner.queues[0].maxsize == max(2, chosen)
        assert f"[Profiler] Setting optimal batch sizes: detect.test-conv-blobs: {chosen}" \
            in caplog.text
        assert "Not profiling align plugin 'test-landmarks'" in caplog.text
        assert all(r.started for r in get_pipeline(runner))
        plugin.sizes_seen.clear()
        out = run_frames(runner, 9)
    assert [f.filename for f in out] == [f"f{i}" for i in range(9)]
    assert [len(f.bboxes) for f in out] == [i % 5 for i in range(9)]
    assert max(plugin.sizes_seen) == chosen


def test_a_compiled_plugin_is_profiled_uncompiled_then_compiled_once_at_the_chosen_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    compiled_at: list[int] = []

    def record(plugin: ExtractPlugin, modules: list[torch.nn.Module], fullgraph: bool) -> None:
        compiled_at.append(plugin.batch_size)  # stands in for torch.compile: shapes only

    monkeypatch.setattr("faceinfer.handler.compile_models", record)
    detect = Detect("test-conv-blobs", compile_model=True,
                    config={"oom_above": 4, "batch_size": 1})
    with detect(profile=True) as runner:
        Profiler(runner, max_batch_size=16, **FAST)()
        plugin = detect.plugin
        assert isinstance(plugin, TorchBlobs)
        assert len(set(plugin.sizes_seen)) >= 2  # the search ran, uncompiled
        assert compiled_at == [plugin.batch_size]
        assert 1 <= plugin.batch_size <= 4


def test_profiler_without_torch_plugins_just_starts_the_threads(
        caplog: pytest.LogCaptureFixture) -> None:
    detect = Detect("test-blobs")
    runner = Align("test-landmarks")(detect(profile=True), profile=True)
    with runner:
        with caplog.at_level(logging.INFO, logger="faceinfer.profile"):
            Profiler(runner, **FAST)()
        assert "No torch plugin to profile" in caplog.text
        assert detect.batch_size == 8
        out = run_frames(runner, 3)
    assert len(out) == 3


def test_profiler_refuses_a_chain_whose_threads_run() -> None:
    with Detect("test-conv-blobs")() as runner, pytest.raises(PipelineError,
                                                               match="profile=True"):
        Profiler(runner, **FAST)()


def test_profiler_saves_the_chosen_sizes_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("# mine\n[detect.test-conv-blobs]\nbatch_size = 1 # old\n"
                      "oom_above = 2\n\n[align.test-landmarks]\nbatch_size = 3\n")
    detect = Detect("test-conv-blobs", config_file=str(config))
    with detect(profile=True) as runner:
        profiler = Profiler(runner, max_batch_size=8, save_config=config, **FAST)
        profiler()
    chosen = profiler.chosen["detect.test-conv-blobs"]
    assert chosen in (1, 2)
    text = config.read_text()
    assert text.startswith("# mine\n[detect.test-conv-blobs]\n")
    assert f"batch_size = {chosen}\noom_above = 2\n" in text
    assert "[align.test-landmarks]\nbatch_size = 3\n" in text


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="no CUDA GPU"))])
def test_real_mtcnn_is_profiled_alone_in_its_chain(device: str) -> None:
    detect = Detect("mtcnn", config={"batch_size": 8, "input_size": 64, "min_size": 20},
                    device=device)
    with detect(profile=True) as runner:
        profiler = Profiler(runner, max_batch_size=4, **FAST)
        profiler()
        chosen = profiler.chosen["detect.mtcnn"]
        assert chosen in (1, 2, 4)
        assert detect.batch_size == chosen
        runner.stop()
        assert list(runner) == []


# ---------------------------------------------------------------------------- config file
def test_save_batch_sizes_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('# top\n[detect.mtcnn]\nthreshold = 0.9  # keep\nbatch_size = 8\n\n'
                    '[align."dlib-68"]\nre_feed = 1\n')
    save_batch_sizes(path, {("detect", "mtcnn"): 16, ("align", "dlib-68"): 32,
                            ("mask", "components"): 4})
    assert path.read_text() == (
        '# top\n[detect.mtcnn]\nthreshold = 0.9  # keep\nbatch_size = 16\n\n'
        '[align."dlib-68"]\nbatch_size = 32\nre_feed = 1\n\n[mask.components]\n'
        'batch_size = 4\n')
    fresh = tmp_path / "new.toml"
    save_batch_sizes(fresh, {("detect", "mtcnn"): 2})
    assert fresh.read_text() == "[detect.mtcnn]\nbatch_size = 2\n"


@pytest.mark.parametrize("text", ["detect.mtcnn.batch_size = 8\n", "detect = [\n"])
def test_save_batch_sizes_refuses_what_it_cannot_edit(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        save_batch_sizes(path, {("detect", "mtcnn"): 16})
    assert path.read_text() == text
