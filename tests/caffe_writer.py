"""Write ``.caffemodel`` files (protobuf wire format) with chosen weights, for parity tests.

cv2.dnn cannot run a prototxt without weights and ignores ``setParam`` for inner-product
layers, so the only way to make OpenCV run a net with weights we know is to write the binary
file. Layout mirrors the original Levi-Hassner caffemodels (inspected field by field):
``NetParameter.layers`` (field 2) of ``V1LayerParameter`` {name = 4, type = 5 (enum),
blobs = 6} holding ``BlobProto`` {num, channels, height, width = 1..4, data = 5 packed float}.
"""

from __future__ import annotations

import numpy as np

from agegender.caffe_io import PARAM_LAYERS

#: V1LayerParameter.LayerType values (Caffe's caffe.proto, as used by the original files).
V1_CONVOLUTION = 4
V1_INNER_PRODUCT = 14

_VARINT, _LEN = 0, 2


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint((field << 3) | wire)


def _len_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LEN) + _varint(len(payload)) + payload


def _int_field(field: int, value: int) -> bytes:
    return _key(field, _VARINT) + _varint(value)


def blob_proto(array: np.ndarray) -> bytes:
    """A BlobProto with legacy 4-D dims (left-padded with 1s, as Caffe V1 stored fc weights)."""
    dims = (1,) * (4 - array.ndim) + tuple(array.shape)
    if len(dims) != 4:
        raise ValueError(f"blob must have at most 4 dims, got {array.shape}")
    out = b"".join(_int_field(i + 1, d) for i, d in enumerate(dims))
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    return out + _len_field(5, data)


def v1_layer(name: str, layer_type: int, blobs: list[np.ndarray]) -> bytes:
    payload = _len_field(4, name.encode()) + _int_field(5, layer_type)
    payload += b"".join(_len_field(6, blob_proto(b)) for b in blobs)
    return _len_field(2, payload)


def caffemodel_bytes(
    params: dict[str, tuple[np.ndarray, np.ndarray]], net_name: str = "CaffeNet"
) -> bytes:
    """Serialise ``{layer: (weight, bias)}`` (torch layouts) as a Levi-Hassner caffemodel."""
    out = _len_field(1, net_name.encode())
    for name in PARAM_LAYERS:
        weight, bias = params[name]
        layer_type = V1_CONVOLUTION if weight.ndim == 4 else V1_INNER_PRODUCT
        out += v1_layer(name, layer_type, [weight, bias.reshape(1, 1, 1, -1)])
    return out


def random_levi_hassner_params(
    num_outputs: int, seed: int = 0
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """He-scaled random weights for conv1..fc8, scaled so the softmax is far from uniform
    (a parity check on near-constant outputs would prove nothing)."""
    rng = np.random.default_rng(seed)
    shapes = {
        "conv1": (96, 3, 7, 7),
        "conv2": (256, 96, 5, 5),
        "conv3": (384, 256, 3, 3),
        "fc6": (512, 384 * 7 * 7),
        "fc7": (512, 512),
        "fc8": (num_outputs, 512),
    }
    params = {}
    for name, shape in shapes.items():
        fan_in = int(np.prod(shape[1:]))
        # Inputs are mean-subtracted 0-255 pixels: shrink conv1 so activations stay O(1..10).
        std = np.sqrt(2.0 / fan_in) * (0.02 if name == "conv1" else 1.0)
        weight = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        bias = rng.standard_normal(shape[0], dtype=np.float32) * np.float32(0.1)
        params[name] = (weight, bias)
    return params
