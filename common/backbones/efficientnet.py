"""EfficientNet (B0-B7) backbone for PIM with torchvision parameter names (``features.i...``).

PIM reads the outputs of ``features.4`` .. ``features.7`` (strides 16, 16, 32, 32) as maps [B, C, H, W]; the final
1x1 conv (``features.8``) and the classifier are not built. Block layout per torchvision: ``features.0`` the stem
(``.0`` conv, ``.1`` BatchNorm), then stages of MBConv blocks ``features.s.b.block.{j}`` where j runs over the
optional 1x1 expansion, the depthwise conv, squeeze-and-excitation (``fc1``/``fc2`` 1x1 convs) and the 1x1
projection; residual blocks apply per-sample stochastic depth growing linearly to 0.2 over the network.
"""
import math

import paddle.nn as nn

from common import init
from common.layers import DropPath

__all__ = ["EfficientNet", "EFFICIENTNET_VARIANTS", "create_efficientnet"]

# expand ratio, kernel, stride, in channels, out channels, layers (B0; scaled by width / depth)
_BASE_STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]

# name -> (width multiplier, depth multiplier, BatchNorm epsilon, BatchNorm momentum as torch defines it)
EFFICIENTNET_VARIANTS = {
    "efficientnet_b0": (1.0, 1.0, 1e-5, 0.1),
    "efficientnet_b1": (1.0, 1.1, 1e-5, 0.1),
    "efficientnet_b2": (1.1, 1.2, 1e-5, 0.1),
    "efficientnet_b3": (1.2, 1.4, 1e-5, 0.1),
    "efficientnet_b4": (1.4, 1.8, 1e-5, 0.1),
    "efficientnet_b5": (1.6, 2.2, 1e-3, 0.01),
    "efficientnet_b6": (1.8, 2.6, 1e-3, 0.01),
    "efficientnet_b7": (2.0, 3.1, 1e-3, 0.01),
}


def make_divisible(value, divisor=8):
    """Round channels to a multiple of `divisor`, never more than 10% below `value`."""
    out = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * value else out


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm -> optional SiLU; sublayers '0', '1' (and '2') like torchvision."""

    def __init__(self, cin, cout, kernel, stride=1, groups=1, act=True, bn_eps=1e-5, bn_momentum=0.1):
        layers = [nn.Conv2D(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups,
                            bias_attr=False),
                  nn.BatchNorm2D(cout, momentum=1.0 - bn_momentum, epsilon=bn_eps)]
        if act:
            layers.append(nn.Silu())
        super().__init__(*layers)


class SqueezeExcite(nn.Layer):
    def __init__(self, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.fc1 = nn.Conv2D(channels, squeeze, 1)
        self.fc2 = nn.Conv2D(squeeze, channels, 1)
        self.act = nn.Silu()
        self.gate = nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))


class MBConv(nn.Layer):
    def __init__(self, cin, cout, expand, kernel, stride, drop_path, bn):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        hidden = make_divisible(cin * expand)
        layers = []
        if hidden != cin:
            layers.append(ConvBNAct(cin, hidden, 1, **bn))
        layers.append(ConvBNAct(hidden, hidden, kernel, stride, groups=hidden, **bn))
        layers.append(SqueezeExcite(hidden, max(1, cin // 4)))
        layers.append(ConvBNAct(hidden, cout, 1, act=False, **bn))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = DropPath(drop_path) if (self.residual and drop_path > 0) else nn.Identity()

    def forward(self, x):
        y = self.block(x)
        return x + self.stochastic_depth(y) if self.residual else y


class EfficientNet(nn.Layer):
    """`forward(x)` -> list of the outputs of `features[i]` for i in `return_stages` (default 4..7), [B, C, H, W]."""

    def __init__(self, width_mult=1.0, depth_mult=1.0, bn_eps=1e-5, bn_momentum=0.1, stochastic_depth_prob=0.2,
                 in_chans=3, return_stages=(4, 5, 6, 7)):
        super().__init__()
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum)
        stages = [(e, k, s, make_divisible(ci * width_mult), make_divisible(co * width_mult),
                   int(math.ceil(n * depth_mult))) for e, k, s, ci, co, n in _BASE_STAGES]
        self.return_stages = list(return_stages)
        if min(self.return_stages) < 1 or max(self.return_stages) > len(stages):
            raise ValueError(f"return_stages {self.return_stages} outside features.1..{len(stages)}")
        total = sum(s[-1] for s in stages)
        features = [ConvBNAct(in_chans, stages[0][3], 3, stride=2, **bn)]
        block_id = 0
        self.stage_channels_all, self.stage_strides = [stages[0][3]], [2]
        stride = 2
        for e, k, s, ci, co, n in stages[:max(self.return_stages)]:
            blocks = []
            for j in range(n):
                blocks.append(MBConv(ci if j == 0 else co, co, e, k, s if j == 0 else 1,
                                     stochastic_depth_prob * block_id / total, bn))
                block_id += 1
            features.append(nn.Sequential(*blocks))
            stride *= s
            self.stage_channels_all.append(co)
            self.stage_strides.append(stride)
        self.features = nn.LayerList(features)
        self.reset_parameters()

    def reset_parameters(self):
        """torchvision's initialisation: He-normal (fan_out) convs with zero bias, unit BatchNorm."""
        for layer in self.sublayers():
            if isinstance(layer, nn.Conv2D):
                init.kaiming_normal_(layer.weight, mode="fan_out")
                if layer.bias is not None:
                    init.zeros_(layer.bias)
            elif isinstance(layer, nn.BatchNorm2D):
                init.ones_(layer.weight)
                init.zeros_(layer.bias)

    @property
    def stage_channels(self):
        return [self.stage_channels_all[i] for i in self.return_stages]

    def feature_shapes(self, img_size):
        out = []
        for i in self.return_stages:
            h = img_size
            for _ in range(int(round(math.log2(self.stage_strides[i])))):
                h = (h + 1) // 2  # a stride-2 conv with "same" padding rounds up
            out.append(("map", (self.stage_channels_all[i], h, h)))
        return out

    def forward(self, x):
        outs = []
        wanted = set(self.return_stages)
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in wanted:
                outs.append(x)
        return outs


def create_efficientnet(name, **overrides):
    if name not in EFFICIENTNET_VARIANTS:
        raise KeyError(f"unknown EfficientNet '{name}'; known: {', '.join(EFFICIENTNET_VARIANTS)}")
    width, depth, eps, momentum = EFFICIENTNET_VARIANTS[name]
    kwargs = dict(width_mult=width, depth_mult=depth, bn_eps=eps, bn_momentum=momentum)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return EfficientNet(**kwargs)
