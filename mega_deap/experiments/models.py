"""Models for the experiments: CIFAR ResNets as He et al. (2016) define them for CIFAR-10, a small CNN
and an MLP that train in seconds on a CPU."""

from torch import nn
import torch.nn.functional as F

__all__ = ["SmallCNN", "MLP", "CifarResNet", "resnet_cifar", "build_model", "MODELS"]


class SmallCNN(nn.Module):
    """conv-BN-ReLU x 2 (pooling between), global average pooling, linear. ``(B, C, H, W)`` -> logits."""

    def __init__(self, in_channels=3, num_classes=10, width=16):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class MLP(nn.Module):
    """Flatten, then Linear-ReLU layers. ``hidden``: the widths of the hidden layers."""

    def __init__(self, in_features, num_classes, hidden=(64,)):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x.flatten(1))


class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        short = x
        if self.stride != 1 or self.pad:  # option A: subsample, zero-pad the new channels (no parameters)
            short = x[:, :, :: self.stride, :: self.stride]
            short = F.pad(short, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + short)


class CifarResNet(nn.Module):
    """ResNet for CIFAR (He et al. 2016, section 4.2): 6n+2 layers, three stages of 16/32/64 channels."""

    def __init__(self, depth=20, num_classes=10, in_channels=3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers (20, 32, 44, 56, 110, ...), got depth={depth}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(x.mean((2, 3)))


def resnet_cifar(depth, num_classes=10, in_channels=3):
    return CifarResNet(depth, num_classes, in_channels)


MODELS = ("smallcnn", "resnet20", "resnet56", "resnet110", "mlp")


def build_model(name, in_channels=3, num_classes=10, image_size=32):
    """A model by name: one of ``MODELS``."""
    if name == "smallcnn":
        return SmallCNN(in_channels, num_classes)
    if name.startswith("resnet") and name[6:].isdigit():
        return resnet_cifar(int(name[6:]), num_classes, in_channels)
    if name == "mlp":
        return MLP(in_channels * image_size * image_size, num_classes, hidden=(128,))
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")
