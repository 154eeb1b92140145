"""Inception v4 (Szegedy et al. 2016, arXiv 1602.07261) in Paddle, with timm's parameter names.

The module tree follows timm's `inception_v4` (and the non-binary transfer fork built on it): a 22-entry
`features` sequence (three stem convolutions, Mixed3a/4a/5a, 4 x InceptionA, ReductionA, 7 x InceptionB,
ReductionB, 3 x InceptionC), global average pooling and the classifier `last_linear` (1536 -> classes). Every
convolution is `conv` (no bias) + `bn` (BatchNorm, eps 1e-3) + ReLU, so a timm state dict ports with the BatchNorm
renames and the transpose of `last_linear.weight`. The 3x3 average pools do not count padding (torch
`count_include_pad=False` == Paddle `exclusive=True`).

Initialisation is PyTorch's default (the reference adds none): convolutions and the Linear uniform in
+-1/sqrt(fan_in), Linear bias likewise, BatchNorm scale 1 / shift 0.
"""
import paddle
import paddle.nn as nn

from common import init
from common.layers import dropout

NUM_FEATURES = 1536


class BasicConv2d(nn.Layer):
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2D(cin, cout, kernel_size, stride=stride, padding=padding, bias_attr=False)
        # torch BatchNorm2d(eps=1e-3, momentum=0.1) == Paddle BatchNorm2D(epsilon=1e-3, momentum=0.9)
        self.bn = nn.BatchNorm2D(cout, momentum=0.9, epsilon=1e-3)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


def avg_pool_3x3():
    return nn.AvgPool2D(3, stride=1, padding=1, exclusive=True)


class Mixed3a(nn.Layer):
    def __init__(self):
        super().__init__()
        self.maxpool = nn.MaxPool2D(3, stride=2)
        self.conv = BasicConv2d(64, 96, 3, stride=2)

    def forward(self, x):
        return paddle.concat([self.maxpool(x), self.conv(x)], axis=1)


class Mixed4a(nn.Layer):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(160, 64, 1), BasicConv2d(64, 96, 3))
        self.branch1 = nn.Sequential(
            BasicConv2d(160, 64, 1),
            BasicConv2d(64, 64, (1, 7), padding=(0, 3)),
            BasicConv2d(64, 64, (7, 1), padding=(3, 0)),
            BasicConv2d(64, 96, 3),
        )

    def forward(self, x):
        return paddle.concat([self.branch0(x), self.branch1(x)], axis=1)


class Mixed5a(nn.Layer):
    def __init__(self):
        super().__init__()
        self.conv = BasicConv2d(192, 192, 3, stride=2)
        self.maxpool = nn.MaxPool2D(3, stride=2)

    def forward(self, x):
        return paddle.concat([self.conv(x), self.maxpool(x)], axis=1)


class InceptionA(nn.Layer):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(384, 96, 1)
        self.branch1 = nn.Sequential(BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1))
        self.branch2 = nn.Sequential(BasicConv2d(384, 64, 1), BasicConv2d(64, 96, 3, padding=1),
                                     BasicConv2d(96, 96, 3, padding=1))
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(384, 96, 1))

    def forward(self, x):
        return paddle.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)


class ReductionA(nn.Layer):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(384, 384, 3, stride=2)
        self.branch1 = nn.Sequential(BasicConv2d(384, 192, 1), BasicConv2d(192, 224, 3, padding=1),
                                     BasicConv2d(224, 256, 3, stride=2))
        self.branch2 = nn.MaxPool2D(3, stride=2)

    def forward(self, x):
        return paddle.concat([self.branch0(x), self.branch1(x), self.branch2(x)], axis=1)


class InceptionB(nn.Layer):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(1024, 384, 1)
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 192, 1),
            BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
            BasicConv2d(224, 256, (7, 1), padding=(3, 0)),
        )
        self.branch2 = nn.Sequential(
            BasicConv2d(1024, 192, 1),
            BasicConv2d(192, 192, (7, 1), padding=(3, 0)),
            BasicConv2d(192, 224, (1, 7), padding=(0, 3)),
            BasicConv2d(224, 224, (7, 1), padding=(3, 0)),
            BasicConv2d(224, 256, (1, 7), padding=(0, 3)),
        )
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(1024, 128, 1))

    def forward(self, x):
        return paddle.concat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], axis=1)


class ReductionB(nn.Layer):
    def __init__(self):
        super().__init__()
        self.branch0 = nn.Sequential(BasicConv2d(1024, 192, 1), BasicConv2d(192, 192, 3, stride=2))
        self.branch1 = nn.Sequential(
            BasicConv2d(1024, 256, 1),
            BasicConv2d(256, 256, (1, 7), padding=(0, 3)),
            BasicConv2d(256, 320, (7, 1), padding=(3, 0)),
            BasicConv2d(320, 320, 3, stride=2),
        )
        self.branch2 = nn.MaxPool2D(3, stride=2)

    def forward(self, x):
        return paddle.concat([self.branch0(x), self.branch1(x), self.branch2(x)], axis=1)


class InceptionC(nn.Layer):
    def __init__(self):
        super().__init__()
        self.branch0 = BasicConv2d(1536, 256, 1)
        self.branch1_0 = BasicConv2d(1536, 384, 1)
        self.branch1_1a = BasicConv2d(384, 256, (1, 3), padding=(0, 1))
        self.branch1_1b = BasicConv2d(384, 256, (3, 1), padding=(1, 0))
        self.branch2_0 = BasicConv2d(1536, 384, 1)
        self.branch2_1 = BasicConv2d(384, 448, (3, 1), padding=(1, 0))
        self.branch2_2 = BasicConv2d(448, 512, (1, 3), padding=(0, 1))
        self.branch2_3a = BasicConv2d(512, 256, (1, 3), padding=(0, 1))
        self.branch2_3b = BasicConv2d(512, 256, (3, 1), padding=(1, 0))
        self.branch3 = nn.Sequential(avg_pool_3x3(), BasicConv2d(1536, 256, 1))

    def forward(self, x):
        b1 = self.branch1_0(x)
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return paddle.concat([
            self.branch0(x),
            self.branch1_1a(b1), self.branch1_1b(b1),
            self.branch2_3a(b2), self.branch2_3b(b2),
            self.branch3(x),
        ], axis=1)



class InceptionV4(nn.Layer):
    """`forward` gives logits, `forward_features` the pooled 1536-d feature."""

    def __init__(self, num_classes=1000, in_channels=3, drop_rate=0.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = NUM_FEATURES
        self.features = nn.Sequential(
            BasicConv2d(in_channels, 32, 3, stride=2),
            BasicConv2d(32, 32, 3),
            BasicConv2d(32, 64, 3, padding=1),
            Mixed3a(),
            Mixed4a(),
            Mixed5a(),
            *[InceptionA() for _ in range(4)],
            ReductionA(),      # Mixed6a
            *[InceptionB() for _ in range(7)],
            ReductionB(),      # Mixed7a
            *[InceptionC() for _ in range(3)],
        )
        self.global_pool = nn.AdaptiveAvgPool2D(1)
        self.head_drop = dropout(drop_rate)
        self.last_linear = nn.Linear(NUM_FEATURES, num_classes) if num_classes > 0 else nn.Identity()
        init.reset_like_torch(self)

    def ordered_blocks(self):
        """The body, input side first, as (block name, [owned sublayer paths]): features.0 ... features.21."""
        return [(f"features.{i}", [f"features.{i}"]) for i in range(len(self.features))]

    def classifier_keys(self):
        return ["last_linear.weight", "last_linear.bias"]

    def forward_features(self, x):
        return self.global_pool(self.features(x)).flatten(1)

    def forward(self, x):
        return self.last_linear(self.head_drop(self.forward_features(x)))


def inception_v4(num_classes=1000, in_channels=3, drop_rate=0.0):
    return InceptionV4(num_classes=num_classes, in_channels=in_channels, drop_rate=drop_rate)
