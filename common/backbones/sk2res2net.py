"""SK-Res2Net (the backbone of the Dynamic MLP paper's best results): a ResNet-D style network whose bottleneck
splits its 3x3 stage into `scales` hierarchical groups (Res2Net) and blends the block input with the multi-scale
output through a selective-kernel gate.

Layout and parameter names follow the authors' PyTorch code (an mmdetection-style ResNet):

* deep stem ``stem.{0,3,6}`` (3x3 convs 3->32->32->64, the first with stride 2) with BatchNorms ``stem.{1,4,7}``,
  then a 3x3 / stride 2 max pool;
* ``layer{1..4}.{i}``: ``conv1``/``bn1`` (1x1 to scales x width), ``convs.{0..scales-2}``/``bns.*`` (3x3 on the
  groups), ``sk`` (``alpha`` [1, 1, 1, 1] and ``sk_proj.{0,1,3}``), ``conv3``/``bn3``;
  width = floor(planes * base_width / 64): 26 / 52 / 104 / 208 for base width 26;
* the first block of each stage ("stage" block) feeds every group its own split (no hierarchy) and, with stride 2,
  average-pools (3x3, padding counted) after the SK gate; its shortcut is ``downsample.{0: AvgPool (k = s = stride,
  ceil mode, padding not counted), 1: 1x1 conv, 2: BN}``.

No explicit initialisation in the reference: PyTorch defaults (conv/Linear U(+-1/sqrt(fan_in)), BN 1/0, alpha 0).
"""
import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from common import init
from common.backbones.resnet import batch_norm, run_stages
from common.layers import dropout


def _conv(cin, cout, kernel, stride=1, padding=0, bias=False):
    return nn.Conv2D(cin, cout, kernel, stride=stride, padding=padding, bias_attr=None if bias else False)


class SKLayer(nn.Layer):
    """Selective-kernel blend of x (the block's split input) and fx (its multi-scale output):
    s = sigmoid(proj(a * GAP(x) + (1 - a) * GAP(fx))), a = sigmoid(alpha); out = x + (fx - x) * s."""

    def __init__(self, channels, ratio=4):
        super().__init__()
        hidden = max(32, channels // ratio)
        self.sk_proj = nn.Sequential(_conv(channels, hidden, 1), batch_norm(hidden), nn.ReLU(),
                                     _conv(hidden, channels, 1, bias=True))
        self.alpha = self.create_parameter([1, 1, 1, 1], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x, fx):
        a = F.sigmoid(self.alpha)
        # global average pool as a pool op: oneDNN's spatial mean (reduce) was 36% of the exported model's time
        fuse = a * F.adaptive_avg_pool2d(x, 1) + (1.0 - a) * F.adaptive_avg_pool2d(fx, 1)
        gate = F.sigmoid(self.sk_proj(fuse))
        return (fx - x) * gate + x


class Bottle2neck(nn.Layer):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, scales=4, base_width=26, base_channels=64,
                 ratio=4, stage_block=False):
        super().__init__()
        if scales < 2:
            raise ValueError("SK-Res2Net needs scales >= 2 (with 1 it is a plain ResNet)")
        width = int(math.floor(planes * base_width / base_channels))
        self.width, self.scales, self.stage_block = width, scales, stage_block
        self.conv1 = _conv(inplanes, width * scales, 1)
        self.bn1 = batch_norm(width * scales)
        self.convs = nn.LayerList([_conv(width, width, 3, padding=1) for _ in range(scales - 1)])
        self.bns = nn.LayerList([batch_norm(width) for _ in range(scales - 1)])
        self.sk = SKLayer(width * scales, ratio)
        # padding counts in this pool (torch's count_include_pad=True default), hence exclusive=False
        self.pool = nn.AvgPool2D(3, stride=stride, padding=1, exclusive=False) \
            if stage_block and stride != 1 else None
        self.conv3 = _conv(width * scales, planes * self.expansion, 1)
        self.bn3 = batch_norm(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        splits = paddle.split(out, self.scales, axis=1)
        branch = None
        pieces = []
        for i in range(self.scales - 1):
            branch = splits[i] if (i == 0 or self.stage_block) else branch + splits[i]
            branch = self.relu(self.bns[i](self.convs[i](branch)))
            pieces.append(branch)
        pieces.append(splits[-1])  # the last group passes unchanged
        out = self.sk(out, paddle.concat(pieces, axis=1))
        if self.pool is not None:
            out = self.pool(out)
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


SK2RES2NET_DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class SK2Res2Net(nn.Layer):
    """`forward` gives logits; `forward_features` the pooled 2048-d feature; `stage_features` the stage outputs."""

    def __init__(self, depth=101, num_classes=1000, in_channels=3, scales=4, base_width=26, ratio=4,
                 stem_channels=64, drop_rate=0.0):
        super().__init__()
        if depth not in SK2RES2NET_DEPTHS:
            raise KeyError(f"SK-Res2Net depth {depth} is not one of {sorted(SK2RES2NET_DEPTHS)}")
        half = stem_channels // 2
        self.stem = nn.Sequential(
            _conv(in_channels, half, 3, stride=2, padding=1), batch_norm(half), nn.ReLU(),
            _conv(half, half, 3, padding=1), batch_norm(half), nn.ReLU(),
            _conv(half, stem_channels, 3, padding=1), batch_norm(stem_channels), nn.ReLU())
        self.maxpool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        inplanes = stem_channels
        self.stage_channels = []
        for i, blocks in enumerate(SK2RES2NET_DEPTHS[depth]):
            planes = 64 * 2 ** i
            stage = self._make_stage(inplanes, planes, blocks, 1 if i == 0 else 2, scales, base_width, ratio)
            setattr(self, f"layer{i + 1}", stage)
            inplanes = planes * Bottle2neck.expansion
            self.stage_channels.append(inplanes)
        self.num_features = inplanes
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.drop = dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    @staticmethod
    def _make_stage(inplanes, planes, blocks, stride, scales, base_width, ratio):
        out = planes * Bottle2neck.expansion
        downsample = None
        if stride != 1 or inplanes != out:
            # pool first (ResNet-D), so the 1x1 conv sees every position; padding is not counted here
            downsample = nn.Sequential(nn.AvgPool2D(stride, stride=stride, ceil_mode=True, exclusive=True),
                                       _conv(inplanes, out, 1), batch_norm(out))
        layers = [Bottle2neck(inplanes, planes, stride, downsample, scales, base_width, ratio=ratio,
                              stage_block=True)]
        layers += [Bottle2neck(out, planes, 1, None, scales, base_width, ratio=ratio) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_parameters(self):
        """PyTorch's default initialisation (the reference sets none of its own)."""
        init.reset_like_torch(self)
        for layer in self.sublayers():
            if isinstance(layer, SKLayer):
                init.zeros_(layer.alpha)

    def stage_features(self, x):
        return run_stages(self.maxpool(self.stem(x)), (self.layer1, self.layer2, self.layer3, self.layer4))

    def forward_features(self, x):
        return self.avgpool(self.stage_features(x)[-1]).flatten(1)

    def forward(self, x):
        return self.fc(self.drop(self.forward_features(x)))

    def classifier_keys(self):
        return ["fc.weight", "fc.bias"]


def create_sk2res2net(name="sk2res2net101", **kwargs):
    depths = {f"sk2res2net{d}": d for d in SK2RES2NET_DEPTHS}
    if name not in depths:
        raise KeyError(f"unknown SK-Res2Net '{name}'; known: {', '.join(depths)}")
    return SK2Res2Net(depth=depths[name], **kwargs)
