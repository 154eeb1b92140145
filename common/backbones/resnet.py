"""ResNet (v1.5: stride on the 3x3 conv) with torchvision parameter names, shared by every method.

Keys match torchvision's `resnet50` state dict after the usual BatchNorm renames (`running_mean` -> `_mean`,
`running_var` -> `_variance`) and the `fc.weight` transpose, so torchvision and timm checkpoints port by rule.
"""
import re

import paddle.nn as nn

from common import init
from common.layers import dropout


def batch_norm(channels):
    # torch BatchNorm2d(momentum=0.1, eps=1e-5) == Paddle BatchNorm2D(momentum=0.9, epsilon=1e-5)
    return nn.BatchNorm2D(channels, momentum=0.9, epsilon=1e-5)


def conv3x3(cin, cout, stride=1, groups=1, dilation=1):
    return nn.Conv2D(cin, cout, 3, stride=stride, padding=dilation, groups=groups, dilation=dilation,
                     bias_attr=False)


def conv1x1(cin, cout, stride=1):
    return nn.Conv2D(cin, cout, 1, stride=stride, bias_attr=False)


class BasicBlock(nn.Layer):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = batch_norm(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = batch_norm(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Layer):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = batch_norm(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = batch_norm(planes)
        self.conv3 = conv1x1(planes, planes * 4)
        self.bn3 = batch_norm(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def run_stages(x, stages):
    """The output of every stage, each fed the previous one's (multi-scale features for FPN-like heads)."""
    feats = []
    for stage in stages:
        x = stage(x)
        feats.append(x)
    return feats


class ResNet(nn.Layer):
    """`forward` gives logits; `forward_features` the pooled feature; `stage_features` the four stage outputs."""

    def __init__(self, block, layers, num_classes=1000, in_channels=3, drop_rate=0.0):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2D(in_channels, 64, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = batch_norm(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2D(1)
        self.num_features = 512 * block.expansion
        self.stage_channels = [64 * block.expansion, 128 * block.expansion, 256 * block.expansion,
                               512 * block.expansion]
        self.drop = dropout(drop_rate)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       batch_norm(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def reset_parameters(self):
        reset_like_torchvision(self)

    def stem(self, x):
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stage_features(self, x):
        return run_stages(self.stem(x), (self.layer1, self.layer2, self.layer3, self.layer4))

    def forward_features(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.avgpool(x).flatten(1)

    def forward(self, x):
        return self.fc(self.drop(self.forward_features(x)))

    def classifier_keys(self):
        return ["fc.weight", "fc.bias"]

    def ordered_blocks(self):
        """The body, input side first, as (block name, [owned sublayer paths]): ("stem", ["conv1", "bn1"]), then
        one entry per residual block ("layer1.0", ["layer1.0"]), ... The classifier `fc` is not included."""
        blocks = [("stem", ["conv1", "bn1"])]
        for s, stage in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), 1):
            blocks += [(f"layer{s}.{i}", [f"layer{s}.{i}"]) for i in range(len(stage))]
        return blocks


def reset_like_torchvision(layer):
    """torchvision's ResNet initialisation of `layer` and everything in it: He-normal (fan_out) convs, BatchNorm at
    unit scale, zero shift and fresh running statistics, torch-default Linear."""
    for sub in [layer] + list(layer.sublayers()):
        if isinstance(sub, nn.Conv2D):
            init.kaiming_normal_(sub.weight, mode="fan_out")
        elif isinstance(sub, nn.BatchNorm2D):
            init.reset_batch_norm_(sub)
        elif isinstance(sub, nn.Linear):
            init.reset_like_torch(sub)


RESNET_DEPTHS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


def create_resnet(name="resnet50", **kwargs):
    if name not in RESNET_DEPTHS:
        raise KeyError(f"unknown ResNet '{name}'; known: {', '.join(RESNET_DEPTHS)}")
    block, layers = RESNET_DEPTHS[name]
    return ResNet(block, layers, **kwargs)


def torchvision_resnet_rules(prefix=""):
    """torchvision / timm ResNet keys -> ours (optionally under `prefix`, e.g. 'backbone.'): BatchNorm statistics
    renamed, the classifier's Linear weight transposed; every other name is identical."""
    from common.porting import PrefixRename, Transpose, batchnorm_rules
    rules = list(batchnorm_rules())
    if prefix:
        rules.append(PrefixRename("", prefix))
    rules.append(Transpose(re.escape(prefix) + r"fc\.weight", ndim=2))
    return rules
