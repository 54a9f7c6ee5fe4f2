"""Convert facenet-pytorch's MTCNN weights into the vendored ``mtcnn.npz`` and check the result.

Usage::

    pip download --no-deps facenet-pytorch==2.6.0 -d /tmp/wheel
    python tools/convert_mtcnn.py /tmp/wheel/facenet_pytorch-2.6.0-py3-none-any.whl

The state dicts ``facenet_pytorch/data/{pnet,rnet,onet}.pt`` are read from the wheel with
``torch.load(..., weights_only=True)`` (nothing else is unpickled) and written as one float32
``.npz`` keyed ``<net>.<layer>.<param>``. The zip is written with fixed timestamps, so the same
wheel always gives the same bytes and sha256. The wheel's MIT license is copied next to it, the
sha256s go into ``weights/README.md`` and the plugin's ``WEIGHTS_SHA256`` constant is updated.

The check: every tensor read back from the ``.npz`` must equal its source exactly, and the
plugin's modules loaded from the ``.npz`` must give the same outputs (within 1e-5) as a plain
functional forward pass written here from the original state dicts. Exits 1 on any mismatch.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from faceinfer.plugins.detect._mtcnn_nets import build_nets  # noqa: E402 (after the path is set)

NETS = ("pnet", "rnet", "onet")
SOURCE = "facenet_pytorch/data/{}.pt"
LICENSE_NAME = "LICENSE"
WEIGHTS_DIR = ROOT / "faceinfer" / "plugins" / "detect" / "weights"
MODULE_FILE = ROOT / "faceinfer" / "plugins" / "detect" / "mtcnn.py"
TOLERANCE = 1e-5
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
"""The timestamp of every member of the written zip, so its bytes are reproducible."""

StateDict = dict[str, torch.Tensor]


def sha256(data: bytes) -> str:
    """Hex sha256 of some bytes."""
    return hashlib.sha256(data).hexdigest()


def read_wheel(wheel: Path) -> tuple[dict[str, StateDict], dict[str, str], str]:
    """The three state dicts, the sha256 of each source ``.pt`` and the license text."""
    states: dict[str, StateDict] = {}
    hashes: dict[str, str] = {}
    with zipfile.ZipFile(wheel) as archive:
        for net in NETS:
            raw = archive.read(SOURCE.format(net))
            hashes[net] = sha256(raw)
            state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
            states[net] = {str(k): v for k, v in state.items()}
        licenses = [n for n in archive.namelist()
                    if ".dist-info/" in n and n.rsplit("/", 1)[-1].upper().startswith(LICENSE_NAME)]
        if len(licenses) != 1:
            raise SystemExit(f"expected one LICENSE file in the wheel's dist-info, "
                             f"found {licenses}")
        license_text = archive.read(licenses[0]).decode("utf-8")
    if "MIT License" not in license_text or "Timothy Esler" not in license_text:
        raise SystemExit("the wheel's license is not the expected MIT license of Timothy Esler")
    return states, hashes, license_text


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` of the arrays, with fixed member timestamps."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=ZIP_DATE)
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


# A plain functional forward pass of each net, written from the state dict layout, independent
# of the plugin's modules: conv -> PReLU (-> max pool, ceil mode) ..., Caffe's transposed flatten
# (N, W, H, C) before the dense layers, softmax over the two classes.

def _block(x: torch.Tensor, state: StateDict, conv: str, prelu: str,
           pool: tuple[int, int] | None = None) -> torch.Tensor:
    x = functional.conv2d(x, state[f"{conv}.weight"], state[f"{conv}.bias"])
    x = functional.prelu(x, state[f"{prelu}.weight"])
    if pool is not None:
        x = functional.max_pool2d(x, pool[0], pool[1], ceil_mode=True)
    return x


def _dense(x: torch.Tensor, state: StateDict, name: str) -> torch.Tensor:
    return functional.linear(x, state[f"{name}.weight"], state[f"{name}.bias"])


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 3, 2, 1).contiguous().view(x.shape[0], -1)


def reference_pnet(state: StateDict, x: torch.Tensor) -> list[torch.Tensor]:
    """P-Net: [face probability map (N, H, W), regression (N, 4, H, W)]."""
    x = _block(x, state, "conv1", "prelu1", (2, 2))
    x = _block(x, state, "conv2", "prelu2")
    x = _block(x, state, "conv3", "prelu3")
    cls = functional.conv2d(x, state["conv4_1.weight"], state["conv4_1.bias"])
    reg = functional.conv2d(x, state["conv4_2.weight"], state["conv4_2.bias"])
    return [functional.softmax(cls, dim=1)[:, 1], reg]


def reference_rnet(state: StateDict, x: torch.Tensor) -> list[torch.Tensor]:
    """R-Net: [face probability (N,), regression (N, 4)]."""
    x = _block(x, state, "conv1", "prelu1", (3, 2))
    x = _block(x, state, "conv2", "prelu2", (3, 2))
    x = _block(x, state, "conv3", "prelu3")
    x = functional.prelu(_dense(_flatten(x), state, "dense4"), state["prelu4.weight"])
    return [functional.softmax(_dense(x, state, "dense5_1"), dim=1)[:, 1],
            _dense(x, state, "dense5_2")]


def reference_onet(state: StateDict, x: torch.Tensor) -> list[torch.Tensor]:
    """O-Net: [face probability (N,), regression (N, 4), keypoints (N, 10)]."""
    x = _block(x, state, "conv1", "prelu1", (3, 2))
    x = _block(x, state, "conv2", "prelu2", (3, 2))
    x = _block(x, state, "conv3", "prelu3", (2, 2))
    x = _block(x, state, "conv4", "prelu4")
    x = functional.prelu(_dense(_flatten(x), state, "dense5"), state["prelu5.weight"])
    return [functional.softmax(_dense(x, state, "dense6_1"), dim=1)[:, 1],
            _dense(x, state, "dense6_2"), _dense(x, state, "dense6_3")]


REFERENCES: dict[str, tuple[Callable[[StateDict, torch.Tensor], list[torch.Tensor]],
                            tuple[int, ...]]] = {
    "pnet": (reference_pnet, (2, 3, 61, 84)),
    "rnet": (reference_rnet, (16, 3, 24, 24)),
    "onet": (reference_onet, (16, 3, 48, 48)),
}
"""Each net's reference forward pass and the shape of its random test input."""


def check(path: Path, states: dict[str, StateDict]) -> list[str]:
    """Compare the written file with the source state dicts. Returns the problems found."""
    problems: list[str] = []
    with np.load(path, allow_pickle=False) as data:
        loaded = {key: data[key] for key in data.files}
    expected = {f"{net}.{key}" for net, state in states.items() for key in state}
    if set(loaded) != expected:
        problems.append(f"keys differ: missing {sorted(expected - set(loaded))}, "
                        f"extra {sorted(set(loaded) - expected)}")
        return problems
    for net, state in states.items():
        for key, tensor in state.items():
            array = loaded[f"{net}.{key}"]
            if array.dtype != np.float32 or not np.array_equal(array, tensor.numpy()):
                problems.append(f"{net}.{key}: stored tensor differs from the source")
    modules = build_nets(loaded)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for net, module in modules.items():
            for key, tensor in module.state_dict().items():
                if not torch.equal(tensor, states[net][key]):
                    problems.append(f"{net}.{key}: module tensor differs from the source")
            forward, shape = REFERENCES[net]
            x = torch.rand(shape, generator=generator) * 2 - 1
            ours, theirs = module(x), forward(states[net], x)
            for index, (mine, ref) in enumerate(zip(ours, theirs, strict=True)):
                error = float((mine - ref).abs().max())
                print(f"  {net} output {index} {tuple(mine.shape)}: max abs error {error:.2e}")
                if mine.shape != ref.shape or not error <= TOLERANCE:
                    problems.append(f"{net} output {index}: max abs error {error} "
                                    f"> {TOLERANCE}")
    return problems


def record(npz_sha: str, wheel: Path, wheel_sha: str, hashes: dict[str, str],
           arrays: dict[str, np.ndarray]) -> None:
    """Write the weights README and set ``WEIGHTS_SHA256`` in the plugin module."""
    rows = "\n".join(f"| `{key}` | {tuple(value.shape)} |" for key, value in arrays.items())
    sources = "\n".join(f"- `{SOURCE.format(net)}`: `{digest}`" for net, digest in hashes.items())
    (WEIGHTS_DIR / "README.md").write_text(f"""# Vendored weights

## mtcnn.npz

The MTCNN P-Net, R-Net and O-Net weights (Zhang et al., 2016, trained in Caffe), as converted to
PyTorch by facenet-pytorch 2.6.0 (MIT License, Copyright (c) 2019 Timothy Esler: see
`MTCNN_LICENSE.txt`), re-saved as float32 arrays by `tools/convert_mtcnn.py`:

    pip download --no-deps facenet-pytorch==2.6.0
    python tools/convert_mtcnn.py {wheel.name}

- `mtcnn.npz` sha256: `{npz_sha}` (checked by the plugin when it loads)
- source wheel `{wheel.name}` sha256: `{wheel_sha}`
{sources}

The script reads the state dicts with `torch.load(..., weights_only=True)`, writes the zip with
fixed timestamps (the same wheel gives the same bytes), and checks every stored tensor against
its source and the plugin's nets against a reference forward pass (max error 1e-5).

| key | shape |
| --- | --- |
{rows}
""", encoding="utf-8")
    source = MODULE_FILE.read_text(encoding="utf-8")
    updated, count = re.subn(r'^WEIGHTS_SHA256 = "[^"]*"$', f'WEIGHTS_SHA256 = "{npz_sha}"',
                             source, flags=re.MULTILINE)
    if count != 1:
        raise SystemExit(f"{MODULE_FILE}: expected one WEIGHTS_SHA256 line, found {count}")
    if updated != source:
        MODULE_FILE.write_text(updated, encoding="utf-8")
        print(f"updated WEIGHTS_SHA256 in {MODULE_FILE.relative_to(ROOT)}")


def main() -> int:
    """Convert, record and check. Returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("wheel", type=Path, help="facenet_pytorch-2.6.0-py3-none-any.whl")
    parser.add_argument("--output", type=Path, default=WEIGHTS_DIR / "mtcnn.npz",
                        help="where to write the .npz (default: the vendored file)")
    args = parser.parse_args()
    states, hashes, license_text = read_wheel(args.wheel)
    arrays = {f"{net}.{key}": tensor.detach().numpy().astype(np.float32)
              for net, state in states.items() for key, tensor in state.items()}
    data = npz_bytes(arrays)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(data)
    npz_sha = sha256(data)
    wheel_sha = sha256(args.wheel.read_bytes())
    print(f"wheel {args.wheel.name}: sha256 {wheel_sha}")
    for net, digest in hashes.items():
        print(f"source {SOURCE.format(net)}: sha256 {digest}")
    print(f"wrote {args.output} ({len(data)} bytes, {len(arrays)} tensors): sha256 {npz_sha}")
    if args.output.resolve() == (WEIGHTS_DIR / "mtcnn.npz").resolve():
        (WEIGHTS_DIR / "MTCNN_LICENSE.txt").write_text(license_text, encoding="utf-8")
        record(npz_sha, args.wheel, wheel_sha, hashes, arrays)
    problems = check(args.output, states)
    for problem in problems:
        print(f"MISMATCH: {problem}", file=sys.stderr)
    if problems:
        return 1
    print("check passed: every tensor equal, every output within 1e-5")
    return 0


if __name__ == "__main__":
    sys.exit(main())
