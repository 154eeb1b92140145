"""Dynamic MLP (Yang et al., CVPR 2022): a location/date encoder and the fusion module that lets the encoded
metadata generate the weights of an MLP applied to the pooled image feature.

Parameter names follow the authors' PyTorch code (``loc_net.feats.{i}``, ``loc_att.conv2.{j}.dynamic_conv...``), so
their checkpoints port with the generic rules (2-D weights transposed, BatchNorm statistics renamed).

Shapes (paper defaults d=256, h=64, N=2, image feature 2048):

* ``FCNet``: metadata [B, cin] -> Linear(cin, 256) -> ReLU -> 4 residual blocks -> Linear(256, d, no bias) [B, d].
* ``FusionModule``: feature [B, C] -> Linear(C, d) -> N dynamic blocks (d -> h -> ... -> h -> d; d -> d when N=1)
  -> Linear(d, C) -> LayerNorm(C) -> + feature. Each block turns its input row into a [cin, cout] matrix product
  whose matrix is generated per sample.
"""

import paddle
import paddle.nn as nn

from common import layers

VARIANTS = ("a", "b", "c")



class FCResLayer(nn.Layer):
    """x + ReLU(w2(Dropout(ReLU(w1 x)))): note the ReLU after w2, before the residual sum."""

    def __init__(self, width=256, dropout=0.5):
        super().__init__()
        self.w1 = nn.Linear(width, width)
        self.w2 = nn.Linear(width, width)
        self.dropout1 = layers.dropout(dropout)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.w2(self.dropout1(self.relu(self.w1(x)))))
        return x + y


class FCNet(nn.Layer):
    """Location/date encoder: the encoded metadata vector -> a `out_dim` embedding (the fusion's loc feature)."""

    def __init__(self, in_dim=6, out_dim=256, width=256, num_blocks=4, dropout=0.5):
        super().__init__()
        self.in_dim = in_dim
        self.feats = nn.Sequential(nn.Linear(in_dim, width), nn.ReLU(),
                                   *[FCResLayer(width, dropout) for _ in range(num_blocks)])
        self.class_emb = nn.Linear(width, out_dim, bias_attr=False)

    def forward(self, loc):
        return self.class_emb(self.feats(loc))


class Basic1d(nn.Layer):
    """Linear -> [LayerNorm when the Linear has no bias] -> ReLU, under the reference's names `conv.0` / `conv.ln`."""

    def __init__(self, in_dim, out_dim, bias=True):
        super().__init__()
        steps = [("0", nn.Linear(in_dim, out_dim, bias_attr=None if bias else False))]
        if not bias:
            steps.append(("ln", nn.LayerNorm(out_dim)))
        steps.append(("relu", nn.ReLU()))
        self.conv = nn.Sequential(*steps)

    def forward(self, x):
        return self.conv(x)


def _dynamic_product(row, flat_weight, cin, cout):
    """Per-sample [1, cin] x [cin, cout]; `flat_weight` [B, cin * cout] is read row-major as (cin, cout)."""
    matrix = flat_weight.reshape([-1, cin, cout])
    return paddle.bmm(row.unsqueeze(1), matrix).squeeze(1)


class DynamicMLPA(nn.Layer):
    """A: the loc feature alone generates the matrix; out = ReLU(LN(x W(loc)))."""

    def __init__(self, cin, cout, loc_dim):
        super().__init__()
        self.cin, self.cout = cin, cout
        self.get_weight = nn.Linear(loc_dim, cin * cout)
        self.norm = nn.LayerNorm(cout)
        self.relu = nn.ReLU()

    def forward(self, x, loc):
        return self.relu(self.norm(_dynamic_product(x, self.get_weight(loc), self.cin, self.cout)))


class DynamicMLPB(nn.Layer):
    """B: the image row goes through a small MLP, the loc feature through another that generates the matrix; the
    product is normalised and passes a bias-free Linear + LayerNorm + ReLU."""

    concat_inputs = False

    def __init__(self, cin, cout, loc_dim):
        super().__init__()
        self.cin, self.cout = cin, cout
        image_in = cin + loc_dim if self.concat_inputs else cin
        weight_in = cin + loc_dim if self.concat_inputs else loc_dim
        self.conv11 = Basic1d(image_in, cin, True)
        self.conv12 = nn.Linear(cin, cin)
        self.conv21 = Basic1d(weight_in, cin, True)
        self.conv22 = nn.Linear(cin, cin * cout)
        self.br = nn.Sequential(nn.LayerNorm(cout), nn.ReLU())
        self.conv3 = Basic1d(cout, cout, False)

    def branch_inputs(self, x, loc):
        return x, loc

    def forward(self, x, loc):
        image_in, weight_in = self.branch_inputs(x, loc)
        row = self.conv12(self.conv11(image_in))
        flat = self.conv22(self.conv21(weight_in))
        return self.conv3(self.br(_dynamic_product(row, flat, self.cin, self.cout)))


class DynamicMLPC(DynamicMLPB):
    """C (the paper's default): like B, but both branches see the concatenation [image row, loc feature]."""

    concat_inputs = True

    def branch_inputs(self, x, loc):
        both = paddle.concat([x, loc], axis=1)
        return both, both


_BLOCKS = {"a": DynamicMLPA, "b": DynamicMLPB, "c": DynamicMLPC}


class RecursiveBlock(nn.Layer):
    """Holds one dynamic block as `dynamic_conv` (the reference's nesting, kept for the parameter names)."""

    def __init__(self, cin, cout, loc_dim, mlp_type="c"):
        super().__init__()
        kind = str(mlp_type).lower()
        if kind not in _BLOCKS:
            raise ValueError(f"unknown Dynamic MLP type '{mlp_type}'; use one of {', '.join(VARIANTS)}")
        self.dynamic_conv = _BLOCKS[kind](cin, cout, loc_dim)

    def forward(self, x, loc):
        return self.dynamic_conv(x, loc)


class FusionModule(nn.Layer):
    """The pooled image feature [B, in_dim] and the loc feature [B, planes] -> a fused feature [B, in_dim]."""

    def __init__(self, in_dim=2048, planes=256, hidden=64, num_layers=2, mlp_type="c"):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the Dynamic MLP needs at least one layer (N), got {num_layers}")
        self.conv1 = nn.Linear(in_dim, planes)
        if num_layers == 1:
            dims = [(planes, planes)]
        else:
            dims = [(planes, hidden)] + [(hidden, hidden)] * (num_layers - 2) + [(hidden, planes)]
        self.conv2 = nn.LayerList([RecursiveBlock(cin, cout, planes, mlp_type) for cin, cout in dims])
        self.conv3 = nn.Linear(planes, in_dim)
        self.norm3 = nn.LayerNorm(in_dim)

    def forward(self, feature, loc):
        x = self.conv1(feature)
        for block in self.conv2:
            x = block(x, loc)
        return self.norm3(self.conv3(x)) + feature


def build_fusion(in_dim, mlp_type="c", d=256, h=64, n=2):
    return FusionModule(in_dim=in_dim, planes=d, hidden=h, num_layers=n, mlp_type=mlp_type)
