"""The reader of dlib's ``.dat`` network files on the two installed CNN models, and on damaged
copies of one.

* Both files parse to their last byte (the reader fails on bytes left over) into the documented
  layers: the face descriptor's 29 convolutions, 29 affine layers and 14 residual adds with a
  256 -> 128 fc layer without bias on 150 x 150 input; the MMOD detector's 7 convolutions and 6
  batch norms (eps 1e-4) down to one 45 x 9 x 9 score filter.
* A truncated copy, a copy with a damaged layer tag or tensor version, and a copy with bytes
  after the end fail with :class:`DatFormatError`, naming the file and the byte offset.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from faceinfer.formats.dlib_dat import DatFormatError, DatNetwork, read_network
from faceinfer.plugins._dlib import model_path

pytest.importorskip("face_recognition_models")
DESCRIPTOR = model_path("face_recognition_model_location")
DETECTOR = model_path("cnn_face_detector_model_location")

DESCRIPTOR_PARAMETERS = 5_614_592
"""Weights and biases of the descriptor, counted from its documented layers (29 convs with
biases, 29 affine gamma/beta pairs, a 256 x 128 fc; dlib's own count adds the input layer's 3
means: 5,614,595)."""
DETECTOR_PARAMETERS = 181_141
"""Weights and biases of the detector (7 convs with biases, 6 batch-norm gamma/beta pairs)."""


@pytest.fixture(scope="module")
def descriptor() -> DatNetwork:
    return read_network(DESCRIPTOR)


@pytest.fixture(scope="module")
def detector() -> DatNetwork:
    return read_network(DETECTOR)


def kinds(network: DatNetwork) -> Counter[str]:
    """How many layers of each kind the network holds."""
    return Counter(layer.kind for layer in network.layers)


def test_the_descriptor_file_holds_dlibs_resnet(descriptor: DatNetwork) -> None:
    assert descriptor.path == DESCRIPTOR
    assert descriptor.loss["tag"] == "loss_metric_2"
    assert descriptor.loss["margin"] == pytest.approx(0.04)
    assert descriptor.loss["distance_threshold"] == pytest.approx(0.6)
    assert descriptor.input["tag"] == "input_rgb_image_sized"
    assert descriptor.input["size"] == (150, 150)
    np.testing.assert_allclose(descriptor.input["mean"], (122.782, 117.001, 104.298), rtol=1e-6)
    assert kinds(descriptor) == {"con": 29, "affine": 29, "relu": 29, "add_prev": 14,
                                 "max_pool": 1, "avg_pool": 5, "fc": 1}
    stem, *_, everything, fc = descriptor.layers
    assert stem.fields["weight"].shape == (32, 3, 7, 7)
    assert (stem.fields["stride"], stem.fields["padding"]) == ((2, 2), (0, 0))
    assert everything.kind == "avg_pool"
    assert everything.fields["size"] == (0, 0), "avg_pool_everything"
    assert fc.kind == "fc"
    assert fc.fields["weight"].shape == (256, 128), "stored (inputs, outputs)"
    assert fc.fields["bias"] is None
    assert all(layer.fields["mode"] == "conv" for layer in descriptor.layers
               if layer.kind == "affine")
    filters = [layer.fields["weight"].shape[0] for layer in descriptor.layers
               if layer.kind == "con"]
    assert filters == [32] * 7 + [64] * 8 + [128] * 6 + [256] * 8
    assert descriptor.parameter_count() == DESCRIPTOR_PARAMETERS


def test_the_detector_file_holds_dlibs_mmod_net(detector: DatNetwork) -> None:
    assert detector.loss["tag"] == "loss_mmod_"
    assert detector.loss["windows"] == [(80, 80)]
    assert detector.loss["nms_iou"] == pytest.approx(0.33828, abs=1e-5)
    assert detector.input["tag"] == "input_rgb_image_pyramid"
    assert (detector.input["padding"], detector.input["outer_padding"]) == (10, 11)
    assert kinds(detector) == {"con": 7, "bn_con": 6, "relu": 6}
    norms = [layer for layer in detector.layers if layer.kind == "bn_con"]
    assert all(layer.tag == "bn_con2" for layer in norms)
    assert all(layer.fields["eps"] == pytest.approx(1e-4) for layer in norms)
    convs = [layer.fields for layer in detector.layers if layer.kind == "con"]
    assert [fields["weight"].shape[0] for fields in convs] == [16, 32, 32, 45, 45, 45, 1]
    assert convs[-1]["weight"].shape == (1, 45, 9, 9)
    assert (convs[-1]["stride"], convs[-1]["padding"]) == ((1, 1), (4, 4))
    assert detector.parameter_count() == DETECTOR_PARAMETERS


def _truncated(data: bytes, network: DatNetwork) -> tuple[bytes, int | None]:
    """Cut in the middle of the second layer's weights."""
    cut = (network.layers[1].offset + network.layers[3].offset) // 2
    return data[:cut], None


def _bad_tag(data: bytes, network: DatNetwork) -> tuple[bytes, int | None]:
    """The third layer's version string ("relu_") with its first letter changed."""
    offset = network.layers[2].offset
    assert data[offset + 2:offset + 7] == b"relu_"
    return data[:offset + 2] + b"X" + data[offset + 3:], offset


def _bad_tensor_version(data: bytes, network: DatNetwork) -> tuple[bytes, int | None]:
    """The fourth layer's ("con_4") weight tensor with version 3 instead of 2."""
    offset = network.layers[3].offset
    assert data[offset + 2:offset + 9] == b"con_4\x01\x02"
    at = offset + 7
    return data[:at + 1] + b"\x03" + data[at + 2:], at


def _trailing(data: bytes, network: DatNetwork) -> tuple[bytes, int | None]:
    """One zero byte after the end."""
    return data + b"\x00", len(data)


@pytest.mark.parametrize(("damage", "message"), [
    (_truncated, "truncated file"),
    (_bad_tag, "unknown layer 'Xelu_'"),
    (_bad_tensor_version, "unknown con params version 3"),
    (_trailing, "1 bytes left after the last layer"),
])
def test_a_damaged_file_fails_naming_the_file_and_the_offset(
        tmp_path: Path, detector: DatNetwork,
        damage: Callable[[bytes, DatNetwork], tuple[bytes, int | None]], message: str) -> None:
    data, offset = damage(DETECTOR.read_bytes(), detector)
    path = tmp_path / "damaged.dat"
    path.write_bytes(data)
    with pytest.raises(DatFormatError, match=re.escape(message)) as caught:
        read_network(path)
    text = str(caught.value)
    assert str(path) in text
    found = re.search(r"at byte (\d+)", text)
    assert found is not None, text
    if offset is not None:
        assert int(found.group(1)) == offset


def test_a_missing_file_fails_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "absent.dat"
    with pytest.raises(DatFormatError, match=re.escape(str(path))):
        read_network(path)
