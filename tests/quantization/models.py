"""Small models with the layer kinds mmquant must handle."""
import torch
import torch.nn.functional as F
from torch import nn


class SamePadConv(nn.Conv2d):
    """A conv that pads inside ``forward`` (TF 'SAME' style)."""

    def forward(self, x):
        kh, kw = self.weight.shape[-2:]
        x = F.pad(x, [(kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0,
                        self.dilation, self.groups)


class TinyNet(nn.Module):
    """Stem conv, depthwise, grouped, dilated-strided, a pad-in-forward
    conv used twice, pooling and a Linear head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.grouped = nn.Conv2d(16, 32, 3, stride=2, padding=2,
                                 dilation=2, groups=4)
        self.same = SamePadConv(32, 32, 3)
        self.pw = nn.Conv2d(32, 32, 1, bias=False)
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.relu(self.dw(x))
        x = F.relu(self.grouped(x))
        x = F.relu(self.same(x))
        x = F.relu(self.same(x))  # the same module runs twice
        x = F.relu(self.pw(x))
        return self.head(x.mean((2, 3)))


class DeepNet(nn.Module):
    """A plain deep CNN: upstream errors add up layer after layer."""

    def __init__(self, depth: int = 6, width: int = 16):
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def smooth_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Spatially correlated random images (blurred noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    kernel = torch.ones(3, 1, 3, 3) / 9
    return F.conv2d(x, kernel, padding=1, groups=3) * 3


def init_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic random weights and BN statistics."""
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()
