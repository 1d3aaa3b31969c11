"""MTCNN's three networks (P-, R-, O-net) with facenet-pytorch's trained weights.

Defined here, not imported, because importing ``facenet_pytorch`` after torch costs 3.8 s and
190 MB peak RSS (``python -X importtime``, ``/usr/bin/time``; 2 shared cores: its ``__init__``
pulls in torchvision, InceptionResnetV1 and requests) against 13 ms for this driver, and one
photo cold must start in <= 2 s. The layer names and shapes are facenet-pytorch 2.5.3's, so
its state dicts (``facenet_pytorch/data/{pnet,rnet,onet}.pt``) load unchanged; the files are
located by :func:`agegender.mtcnn_onnx.facenet_weights_dir`, which finds the package without
executing it.
"""

from __future__ import annotations

import torch
from torch import nn

from agegender.mtcnn_onnx import facenet_weights_dir


class PNet(nn.Module):
    """Proposal net: fully convolutional, 12 x 12 receptive field, stride 2; per position a
    face probability and a box regression."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(regression N x 4 x h x w, probabilities N x 2 x h x w)."""
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)


class RNet(nn.Module):
    """Refine net on 24 x 24 crops: face probability and box regression per candidate."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(regression N x 4, probabilities N x 2)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        # The weights come from Caffe via TF: the dense layer reads W-major (N, W, H, C).
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output net on 48 x 48 crops: face probability, box regression and 5 landmarks."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(regression N x 4, landmarks N x 10 as x1..x5 then y1..y5, probabilities N x 2)."""
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


def load_nets(device: str | torch.device = "cpu") -> tuple[PNet, RNet, ONet]:
    """The three nets in eval mode with the trained weights (``weights_only``: plain tensors).

    The files are facenet-pytorch's legacy (non-zip) pickles, which ``mmap=True`` cannot map;
    together they are 2 MB, so reading them costs ~10 ms.
    """
    folder = facenet_weights_dir()
    nets = (PNet(), RNet(), ONet())
    for net, name in zip(nets, ("pnet", "rnet", "onet"), strict=True):
        path = folder / f"{name}.pt"
        if not path.is_file():
            raise FileNotFoundError(f"MTCNN weights not found: {path} (reinstall facenet-pytorch)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        net.eval().requires_grad_(False).to(device)
    return nets
