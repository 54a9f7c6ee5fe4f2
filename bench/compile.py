"""Speed of the mtcnn detector with and without ``compile_model`` (torch.compile, inductor) on
the CPU, through the Detect stage.

Input: the sample video's frames (426x240) looped to ``--frames`` frames. Two
``Detect("mtcnn", device="cpu")`` handlers are built and loaded, one compiled and warmed up
(timed apart, as ``compile_s``); each then runs one batch to warm it. The frames then go
through each stage's pre_process (the letterbox), process and post_process a batch at a time
(mtcnn's own worker threads share each batch), in ``--rounds`` rounds alternating the two
handlers; each one's best round gives its frames/s, so that other load on the machine weighs
on both alike. Graphs dynamo compiles after the warm-up are counted (expected: 0).

Prints both rates, then as the last line a JSON object::

    {"mtcnn_fps": ..., "mtcnn_compiled_fps": ..., "compile_s": ...}

With ``--crop-nets`` it first compares, for R-Net and O-Net alone, the two ways of compiling
a net fed a varying number of candidates: static shapes with counts padded to power-of-two
buckets (a compile per bucket) against one graph with the count marked dynamic (what mtcnn
does): compile seconds, and milliseconds a call at a few counts.

``compile_s`` is what a run takes with inductor's on-disk caches as they are (a second run
reuses the first's kernels); ``--cold`` disables them (``TORCHINDUCTOR_FORCE_DISABLE_CACHES``)
to time a first compile.

Usage: ``python bench/compile.py [--frames N] [--rounds N] [--crop-nets] [--cold]``
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import av
import numpy as np

from faceinfer import Detect
from faceinfer.objects import ExtractBatch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "faceswap_samples"


def load_frames(count: int) -> list[tuple[str, np.ndarray]]:
    """The video's frames looped to ``count``."""
    with av.open(str(DATA / "test.mp4")) as container:
        video = [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]
    return [(f"test_{index + 1:06d}", video[index % len(video)]) for index in range(count)]


def graphs() -> int:
    """Graphs dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters  # noqa: PLC0415

    return int(counters["stats"]["unique_graphs"])


def seconds(detect: Detect, frames: list[tuple[str, np.ndarray]]) -> tuple[float, int]:
    """Seconds and faces for the frames through the stage, a batch at a time."""
    faces = 0
    start = time.perf_counter()
    for first in range(0, len(frames), detect.batch_size):
        part = frames[first:first + detect.batch_size]
        batch = ExtractBatch([name for name, _ in part], [image for _, image in part])
        for step in (detect.pre_process, detect.process, detect.post_process):
            step(batch)
        faces += batch.num_faces
    return time.perf_counter() - start, faces


def bucket(count: int) -> int:
    """The power-of-two bucket (16 at least) a count of crops is padded to for static shapes."""
    return 1 << max(4, (count - 1).bit_length())


def crop_nets(counts: tuple[int, ...] = (20, 100, 300)) -> None:
    """Print compile seconds and ms a call of R-Net and O-Net at ``counts`` candidates: eager,
    static shapes padded to power-of-two buckets (a compile per bucket), and one graph with a
    dynamic count (mtcnn's way)."""
    import torch  # noqa: PLC0415
    import torch._dynamo  # noqa: PLC0415

    from faceinfer.plugins.detect._mtcnn_nets import (  # noqa: PLC0415
        ONET_SIZE,
        RNET_SIZE,
        build_nets,
    )

    def ms_a_call(net: torch.nn.Module, crops: torch.Tensor, dynamic: bool) -> float:
        times = []
        for _ in range(20):
            start = time.perf_counter()
            if dynamic:
                torch._dynamo.maybe_mark_dynamic(crops, 0)
            net(crops)
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))

    print(f"R-Net and O-Net alone, ms a call at {counts} candidates (CPU)")
    for name, size in (("rnet", RNET_SIZE), ("onet", ONET_SIZE)):
        def crops(count: int, side: int = size) -> torch.Tensor:
            return torch.rand(count, 3, side, side).contiguous(memory_format=torch.channels_last)

        for way in ("eager", "buckets", "dynamic"):
            torch._dynamo.reset()
            net = build_nets()[name].to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            shapes = {"eager": [], "buckets": sorted({bucket(c) for c in counts}),
                      "dynamic": [16]}[way]
            sizes = [bucket(c) for c in counts] if way == "buckets" else list(counts)
            with torch.inference_mode():
                start = time.perf_counter()
                if way != "eager":
                    net.compile(fullgraph=True, dynamic=False)
                for count in shapes:
                    batch = crops(count)
                    if way == "dynamic":
                        torch._dynamo.maybe_mark_dynamic(batch, 0)
                    net(batch)
                compile_s = time.perf_counter() - start
                line = " ".join(f"{ms_a_call(net, crops(c), way == 'dynamic'):6.2f}"
                                for c in sizes)
            print(f"  {name} {way:8s} {line}  ({len(shapes)} compiles, {compile_s:.1f} s)")
    torch._dynamo.reset()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=200, help="video frames (looped)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each handler")
    parser.add_argument("--crop-nets", action="store_true",
                        help="first compare static buckets and a dynamic count for R/O-Net")
    parser.add_argument("--cold", action="store_true",
                        help="disable inductor's on-disk caches: time a first compile")
    args = parser.parse_args()
    if args.cold:  # read when torch._inductor is first imported, which is later
        os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"
    if not DATA.is_dir():
        print(f"needs the sample data in {DATA}", file=sys.stderr)
        return 2
    if args.crop_nets:
        crop_nets()
    frames = load_frames(args.frames)
    handlers: dict[bool, Detect] = {}
    load_s: dict[bool, float] = {}
    for compile_model in (False, True):
        detect = Detect("mtcnn", compile_model=compile_model, device="cpu")
        start = time.perf_counter()
        detect.init_model()
        load_s[compile_model] = time.perf_counter() - start
        seconds(detect, frames[:detect.batch_size])
        handlers[compile_model] = detect
    compiled = graphs()
    best: dict[bool, float] = {False: float("inf"), True: float("inf")}
    faces: dict[bool, int] = {}
    for _ in range(args.rounds):
        for compile_model, detect in handlers.items():
            took, faces[compile_model] = seconds(detect, frames)
            best[compile_model] = min(best[compile_model], took)
    recompiles = graphs() - compiled
    eager_fps, compiled_fps = len(frames) / best[False], len(frames) / best[True]
    compile_s = load_s[True]
    print(f"mtcnn on {len(frames)} video frames, CPU, through the Detect stage, best of "
          f"{args.rounds} rounds (inductor caches {'off' if args.cold else 'as they are'})")
    print(f"  eager:    {eager_fps:6.2f} frames/s ({faces[False]} faces), loaded in "
          f"{load_s[False]:.1f} s")
    print(f"  compiled: {compiled_fps:6.2f} frames/s ({faces[True]} faces), loaded, compiled "
          f"and warmed up in {compile_s:.1f} s, {recompiles} graphs compiled after the warm-up")
    print(f"  speed-up {compiled_fps / eager_fps:.2f}x")
    print(json.dumps({"mtcnn_fps": round(eager_fps, 2), "mtcnn_compiled_fps":
                      round(compiled_fps, 2), "compile_s": round(compile_s, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
