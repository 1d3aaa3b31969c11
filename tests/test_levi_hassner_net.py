"""Shape and structure of the Levi-Hassner net against the Caffe spec."""

from __future__ import annotations

import pytest
import torch

from agegender.models import LeviHassnerNet, LeviHassnerTrunk
from agegender.models.levi_hassner import CAFFE_FACE_SPEC as SPEC
from agegender.models.levi_hassner import CaffeInput


def test_trunk_sizes_follow_caffe_ceil_pooling() -> None:
    trunk = LeviHassnerTrunk().eval()
    x = torch.zeros(1, 3, 227, 227)
    x = trunk.pool1(trunk.conv1(x))
    assert x.shape[-2:] == (28, 28)
    x = trunk.pool2(trunk.conv2(x))
    assert x.shape[-2:] == (14, 14)
    x = trunk.pool5(trunk.conv3(x))
    assert x.shape[1:] == (384, 7, 7)
    assert trunk.fc6.in_features == 18816


@pytest.mark.parametrize("mode,expected", [("shared", 11_416_074), ("separate", 22_827_018)])
def test_parameter_counts(mode: str, expected: int) -> None:
    net = LeviHassnerNet(mode)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net.trunk_for("age").fc6.weight.numel() == 18816 * 512


def test_outputs_per_task_and_channels_last() -> None:
    net = LeviHassnerNet("shared").eval()
    x = torch.rand(3, 3, 227, 227) * 255
    out = net(x)
    assert out["age"].shape == (3, 8) and out["gender"].shape == (3, 2)
    out_cl = net.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl["age"], out["age"], rtol=1e-4, atol=1e-4)


def test_single_task_and_bad_mode() -> None:
    assert set(LeviHassnerNet("separate", tasks=("gender",))(torch.zeros(1, 3, 227, 227))) == {
        "gender"
    }
    with pytest.raises(ValueError):
        LeviHassnerNet("both")
    with pytest.raises(ValueError):
        LeviHassnerNet(tasks=("height",))


def test_caffe_input_swaps_to_bgr_and_subtracts_mean() -> None:
    rgb = torch.tensor([10.0, 20.0, 30.0]).view(1, 3, 1, 1)
    bgr = CaffeInput()(rgb).flatten().tolist()
    expected = [30 - SPEC.mean[0], 20 - SPEC.mean[1], 10 - SPEC.mean[2]]
    assert bgr == pytest.approx(expected)


def test_caffe_init_biases() -> None:
    trunk = LeviHassnerNet("shared").trunk
    assert torch.all(trunk.conv2.bias == 1) and torch.all(trunk.fc6.bias == 1)
    assert torch.all(trunk.conv1.bias == 0) and torch.all(trunk.conv3.bias == 0)
    assert 0.004 < trunk.fc6.weight.std().item() < 0.006


@pytest.mark.parametrize("channels_last", [False, True])
def test_caffe_lrn_equals_torch_local_response_norm(channels_last: bool) -> None:
    """Our LRN is the same function as torch's (values and gradients), edge channels
    included, in both memory formats; only its speed differs."""
    from agegender.models.levi_hassner import CaffeLRN

    torch.manual_seed(0)
    x = torch.randn(2, 7, 5, 6) * 30  # large values: the normaliser matters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    y_ours = CaffeLRN(5, 1e-4, 0.75, 1.0)(ours)
    y_ref = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(ref)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-6, atol=1e-5)
    grad = torch.randn_like(x)
    y_ours.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=1e-5, atol=1e-6)
    # and the normaliser is really applied: not the identity
    assert (y_ours - x).abs().max() > 1.0
