"""The Plug-in Module (Chou et al., "A Novel Plug-in Module for Fine-grained Visual Classification", 2022).

A backbone gives L feature levels (``layer1`` .. ``layerL``, tokens [B, S, C] or maps [B, C, H, W]). On top:

* **FPN** (`FPN`): every level is projected to `fpn_size` channels (``Proj_<name>``: Linear-ReLU-Linear on tokens,
  or 1x1 conv-ReLU-1x1 conv on maps), then merged top-down, deepest level first: level i-1 += up(level i), where
  up is a 1x1 Conv1d over the TOKEN axis (``Up_<name>``, S_i -> S_{i-1} tokens; identity when equal) or bilinear
  resizing of maps (half-pixel centres, i.e. torch's ``align_corners=False``).
* **Per-level heads** (``fpn_classifier_<name>``): Conv1d-BatchNorm1d-ReLU-Conv1d applied to every token, giving
  per-token logits [B, S, num_classes]; the level's prediction is their mean over tokens.
* **Weakly supervised selector** (`select_tokens`): per level, the `num_selects` tokens whose softmax is most
  confident (largest maximum class probability) are kept for the combiner; their logits and those of the dropped
  tokens are returned as ``select_<name>`` / ``drop_<name>``. Vectorised over the batch (one stable argsort), so no
  per-sample Python loop. Order: most confident first -- the reference's selector sorts the same way, and the
  order matters because the combiner's first layer is a Linear over token positions. Ties (equal confidences) go
  to the lower token index, which makes the choice deterministic (the reference's unstable sort leaves them to the
  sorting kernel). Without the FPN the selector owns a Linear classifier per level (``selector.classifier_l_*``).
* **GCN combiner** (`GCNCombiner`): all selected tokens [B, sum n_i, D] are pooled to J = sum(n_i) // 32 graph
  nodes by a Linear over positions (``param_pool0``), connected by a learned adjacency plus a data-dependent term
  ``alpha1 * tanh(q_i - k_j)``, mixed by one graph convolution (``conv1``, then BatchNorm), pooled to one node
  (``param_pool1``) and classified (``classifier``) -> ``comb_outs`` [B, num_classes]. Without the FPN, every level is
  first projected to a common width (``combiner.proj_<name>``).
* **Backbone only** (no FPN, no selector, no combiner): a Linear on the average of the last level -> ``ori_out``.

Parameter names follow the official code, so its checkpoints port by rule (`pim/port_weights.py`). Unlike the
reference, every switch combination works (its non-FPN paths fail), the combiner can be turned off, and shapes are
derived from the backbone's geometry instead of a trial forward pass.

Losses (`pim_loss`): lambda_b * CE(mean-over-tokens logits) per level, lambda_s * CE of every selected token,
lambda_n * MSE(tanh(dropped-token logits), -1), lambda_c * CE(combiner), and a plain CE for ``ori_out``.
"""

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from common import init
from common.layers import resize_bilinear

__all__ = ["FeatureInfo", "FPN", "WeaklySelector", "GCNCombiner", "PluginModel", "select_tokens", "gather_tokens",
           "to_tokens", "pim_loss", "head_logits", "sum_of_softmax", "highest_k"]


class FeatureInfo:
    """One backbone level: `kind` 'tokens' ([B, S, C]) or 'map' ([B, C, H, W]); `grid` the (rows, columns) of its
    spatial tokens; `prefix` the number of non-spatial tokens in front (1 for a ViT class token)."""

    def __init__(self, name, kind, channels, grid, prefix=0):
        if kind not in ("tokens", "map"):
            raise ValueError(f"feature kind must be 'tokens' or 'map', got {kind!r}")
        self.name, self.kind, self.channels = name, kind, int(channels)
        self.grid = (int(grid[0]), int(grid[1]))
        self.prefix = int(prefix)

    @property
    def tokens(self):
        return self.prefix + self.grid[0] * self.grid[1]

    def __repr__(self):
        return f"FeatureInfo({self.name}, {self.kind}, C={self.channels}, grid={self.grid}, prefix={self.prefix})"



def to_tokens(x):
    """[B, C, H, W] -> [B, H*W, C] (row-major); token tensors pass through."""
    if x.ndim == 4:
        b, c, h, w = x.shape
        return x.reshape([b, c, h * w]).transpose([0, 2, 1])
    return x


# torch BatchNorm1d(momentum=0.1, eps=1e-5) == Paddle BatchNorm1D(momentum=0.9, epsilon=1e-5)
TORCH_BATCH_NORM_1D = dict(momentum=0.9, epsilon=1e-5)


def batch_norm_1d(channels):
    return nn.BatchNorm1D(channels, **TORCH_BATCH_NORM_1D)


# ------------------------------------------------------------------------------------------------------------ FPN
class FPN(nn.Layer):
    def __init__(self, infos, fpn_size, proj_type="Linear", upsample_type="Conv"):
        super().__init__()
        if proj_type not in ("Linear", "Conv"):
            raise ValueError(f"FPN projection '{proj_type}' is not 'Linear' or 'Conv'")
        if upsample_type not in ("Conv", "Bilinear"):
            raise ValueError(f"FPN upsampling '{upsample_type}' is not 'Conv' or 'Bilinear'")
        self.proj_type, self.upsample_type = proj_type, upsample_type
        self.names = [f.name for f in infos]
        for i, f in enumerate(infos):
            c = f.channels
            if proj_type == "Conv":
                if f.kind != "map":
                    raise ValueError(f"FPN 'Conv' projection needs feature maps; {f.name} is a token sequence "
                                     "(use PROJ_TYPE Linear)")
                proj = nn.Sequential(nn.Conv2D(c, c, 1), nn.ReLU(), nn.Conv2D(c, fpn_size, 1))
            else:
                proj = nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, fpn_size))
            self.add_sublayer("Proj_" + f.name, proj)
            if upsample_type == "Conv" and i > 0:
                s_in, s_out = f.tokens, infos[i - 1].tokens
                self.add_sublayer("Up_" + f.name, nn.Conv1D(s_in, s_out, 1) if s_in != s_out else nn.Identity())
        if upsample_type == "Bilinear" and (proj_type != "Conv"):
            raise ValueError("FPN 'Bilinear' upsampling needs feature maps (PROJ_TYPE Conv)")
        init.reset_like_torch(self)

    def forward(self, feats):
        """list of levels -> list of projected, top-down merged levels (maps stay maps, tokens stay tokens)."""
        out = []
        for name, x in zip(self.names, feats):
            if self.proj_type == "Linear":
                x = to_tokens(x)
            out.append(getattr(self, "Proj_" + name)(x))
        if self.upsample_type == "Conv":  # merged along the token axis
            out = [to_tokens(x) for x in out]
        for i in range(len(out) - 1, 0, -1):
            upper = out[i]
            if self.upsample_type == "Conv":
                upper = getattr(self, "Up_" + self.names[i])(upper)
            elif list(upper.shape[-2:]) != list(out[i - 1].shape[-2:]):
                upper = resize_bilinear(upper, out[i - 1].shape[-2:])   # exported graphs keep oneDNN
            out[i - 1] = out[i - 1] + upper
        return out


class TokenwiseConv1D(nn.Conv1D):
    """A kernel-1 Conv1d (weight [out, in, 1]: the reference's keys and shapes) applied to tokens [B, S, C_in] as
    one matrix product, which spares the transposes to and from [B, C, S] around every per-level head."""

    def __init__(self, in_channels, out_channels):
        super().__init__(in_channels, out_channels, 1)

    def forward(self, tokens):
        return paddle.matmul(tokens, self.weight.squeeze(-1), transpose_y=True) + self.bias


class TokenwiseBatchNorm1D(nn.BatchNorm1D):
    """BatchNorm1d over the channels of tokens [B, S, C] (statistics over batch and tokens, as BatchNorm1d over
    [B, C, S]), run on the [B * S, C] view: Paddle Inference's oneDNN batch_norm rejects 3-D channels-last input."""

    def __init__(self, channels):
        super().__init__(channels, **TORCH_BATCH_NORM_1D)

    def forward(self, tokens):
        return super().forward(tokens.reshape([-1, tokens.shape[-1]])).reshape(tokens.shape)


def fpn_head(fpn_size, num_classes):
    """Conv1d-BatchNorm1d-ReLU-Conv1d over every token, on tokens [B, S, D] -> [B, S, num_classes]."""
    head = nn.Sequential(TokenwiseConv1D(fpn_size, fpn_size),
                         TokenwiseBatchNorm1D(fpn_size), nn.ReLU(),
                         TokenwiseConv1D(fpn_size, num_classes))
    init.reset_like_torch(head)
    return head


# ------------------------------------------------------------------------------------------------------- selector
def select_tokens(logits, num_select):
    """Token indices (selected [B, n], dropped [B, S - n]) ranked by the largest softmax probability of each token
    [B, S, K], most confident first; equal confidences keep token order (stable sort)."""
    if paddle.in_dynamic_mode():
        logits = logits.detach()   # only the ranking is used: no softmax kept for a backward
    conf = F.softmax(logits.astype("float32"), axis=-1).max(axis=-1)
    order = paddle.argsort(conf, axis=1, descending=True, stable=True)
    return order[:, :num_select], order[:, num_select:]


def gather_tokens(x, index):
    """x [B, S, D], index [B, n] -> [B, n, D]. In dygraph, rows of the [B * S, D] view, or (for tokens that are a
    transposed view of feature maps [B, D, S]) columns of the maps: take_along_axis with a broadcast index copies x in
    full (paddle.broadcast_to) and its backward keeps the copy and the index broadcast to [B, n, D] in int64 (~250 MB
    per step for PIM ResNet-50's FPN at batch 16); a row gather keeps only the B * n ids. Same values and gradients;
    graphs traced for export keep take_along_axis."""
    if not paddle.in_dynamic_mode():
        return paddle.take_along_axis(x, index.unsqueeze(-1), axis=1, broadcast=True)
    return _gather_tokens_eager(x, index)


@paddle.jit.not_to_static
def _gather_tokens_eager(x, index):
    b, s, d = x.shape
    if x.is_contiguous():
        ids = index + (paddle.arange(b, dtype=index.dtype) * s).unsqueeze(-1)
        return paddle.gather(x.reshape([b * s, d]), ids.flatten()).reshape([b, -1, d])
    maps = x.transpose([0, 2, 1])
    if maps.is_contiguous():
        ids = index.unsqueeze(1).expand([b, d, index.shape[1]])
        return paddle.take_along_axis(maps, ids, axis=2, broadcast=False).transpose([0, 2, 1])
    return paddle.take_along_axis(x, index.unsqueeze(-1), axis=1, broadcast=True)


class WeaklySelector(nn.Layer):
    """Keeps `num_selects[i]` tokens per level. With the FPN it has no parameters (it ranks the FPN heads' logits);
    without, ``classifier_l_<name>`` (Linear C -> num_classes) gives the per-token logits."""

    def __init__(self, infos, num_classes, num_selects, own_classifiers):
        super().__init__()
        self.names = [f.name for f in infos]
        self.num_selects = dict(zip(self.names, num_selects))
        self.own_classifiers = own_classifiers
        if own_classifiers:
            for f in infos:
                self.add_sublayer("classifier_l_" + f.name, nn.Linear(f.channels, num_classes))
            init.reset_like_torch(self)

    def classify(self, name, tokens):
        return getattr(self, "classifier_l_" + name)(tokens)

    def forward(self, tokens, logits):
        """tokens, logits: lists per level ([B, S, D], [B, S, K]) -> (selected tokens, selected ids, dropped ids)."""
        selected, sel_ids, drop_ids = [], [], []
        for name, t, lg in zip(self.names, tokens, logits):
            keep, drop = select_tokens(lg, self.num_selects[name])
            selected.append(gather_tokens(t, keep))
            sel_ids.append(keep)
            drop_ids.append(drop)
        return selected, sel_ids, drop_ids


# ------------------------------------------------------------------------------------------------------- combiner
class GCNCombiner(nn.Layer):
    def __init__(self, total_num_selects, num_classes, width, in_channels=None, dropout=0.1):
        """`width`: the FPN size, or the projection size when `in_channels` ({name: C}) asks for projections."""
        super().__init__()
        num_joints = total_num_selects // 32
        if num_joints < 1:
            raise ValueError(f"the GCN combiner pools the selected tokens into (their number // 32) nodes and "
                             f"needs at least 32 of them; the selector keeps {total_num_selects}")
        self.names = list(in_channels) if in_channels else None
        if in_channels:
            for name, c in in_channels.items():
                self.add_sublayer("proj_" + name, nn.Sequential(nn.Linear(c, width), nn.ReLU(),
                                                                nn.Linear(width, width)))
        self.param_pool0 = nn.Linear(total_num_selects, num_joints)
        self.adj1 = self.create_parameter([num_joints, num_joints],
                                          default_initializer=nn.initializer.Constant(0.0))
        self.conv1 = nn.Conv1D(width, width, 1)
        self.batch_norm1 = batch_norm_1d(width)
        self.conv_q1 = nn.Conv1D(width, width // 4, 1)
        self.conv_k1 = nn.Conv1D(width, width // 4, 1)
        self.alpha1 = self.create_parameter([1], default_initializer=nn.initializer.Constant(0.0))
        self.param_pool1 = nn.Linear(num_joints, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_classes)
        init.reset_like_torch(self)
        eye = paddle.eye(num_joints, dtype=self.adj1.dtype)     # float64 models too (default dtype)
        self.adj1.set_value(eye / 100 + 1 / 100)

    def forward(self, selections):
        if self.names:
            selections = [getattr(self, "proj_" + n)(s) for n, s in zip(self.names, selections)]
        h = paddle.concat(selections, axis=1).transpose([0, 2, 1])   # B, D, sum(n)
        h = self.param_pool0(h)                                        # B, D, J
        q = self.conv_q1(h).mean(axis=1)                               # B, J
        k = self.conv_k1(h).mean(axis=1)
        adj = self.adj1 + paddle.tanh(q.unsqueeze(-1) - k.unsqueeze(1)) * self.alpha1   # B, J, J
        h = self.batch_norm1(paddle.matmul(self.conv1(h), adj))      # B, D, J
        h = self.dropout(self.param_pool1(h)).flatten(1)              # B, D
        return self.classifier(h)


# ---------------------------------------------------------------------------------------------------------- model
class PluginModel(nn.Layer):
    """Backbone + plug-in module. `forward(x)` returns a dict (the reference's keys and order): ``layerK`` per-token
    logits [B, S_K, C], then ``select_layerK`` / ``drop_layerK`` per level, then ``comb_outs`` [B, C]; or only
    ``ori_out`` for the bare backbone. With ``details=True`` it adds ``backbone_layerK`` (backbone output),
    ``fpn_layerK`` (FPN output as tokens) and ``select_idx_layerK`` / ``drop_idx_layerK`` (token indices)."""

    def __init__(self, backbone, infos, num_classes, use_fpn=True, fpn_size=512, proj_type="Linear",
                 upsample_type="Conv", use_selection=True, num_selects=None, use_combiner=True,
                 comb_proj_size=None):
        super().__init__()
        self.backbone = backbone
        self.infos = list(infos)
        self.layer_names = [f.name for f in self.infos]
        self.num_classes = num_classes
        self.use_fpn, self.use_selection, self.use_combiner = use_fpn, use_selection, use_combiner
        if use_combiner and not use_selection:
            raise ValueError("the GCN combiner works on the selector's tokens: USE_COMBINER needs USE_SELECTION")
        if use_selection:
            num_selects = list(num_selects or [])
            if len(num_selects) != len(self.infos):
                raise ValueError(f"NUM_SELECTS has {len(num_selects)} entries for {len(self.infos)} feature levels "
                                 f"({', '.join(self.layer_names)})")
            for f, n in zip(self.infos, num_selects):
                if not 1 <= n <= f.tokens:
                    raise ValueError(f"NUM_SELECTS for {f.name} is {n}, but that level has {f.tokens} tokens")
            self.num_selects = num_selects
        self.backbone_only = not (use_fpn or use_selection or use_combiner)
        if self.backbone_only:
            self.classifier = nn.Linear(self.infos[-1].channels, num_classes)
            init.reset_like_torch(self.classifier)
        if use_fpn:
            self.fpn = FPN(self.infos, fpn_size, proj_type, upsample_type)
            for f in self.infos:
                self.add_sublayer("fpn_classifier_" + f.name, fpn_head(fpn_size, num_classes))
        self.fpn_size = fpn_size if use_fpn else None
        if use_selection:
            self.selector = WeaklySelector(self.infos, num_classes, num_selects, own_classifiers=not use_fpn)
        if use_combiner:
            total = sum(num_selects)
            if use_fpn:
                self.combiner = GCNCombiner(total, num_classes, fpn_size)
            else:
                width = comb_proj_size or fpn_size
                self.combiner = GCNCombiner(total, num_classes, width, {f.name: f.channels for f in self.infos})

    # ----- helpers used by the method, tools and tests
    def head_names(self):
        """The per-image predictions `head_logits` can form from the outputs."""
        if self.backbone_only:
            return ["original"]
        names = list(self.layer_names)
        if self.use_combiner:
            names.append("combiner")
        return names + ["sum"]

    def classifier_keys(self):
        """Everything but the backbone: what is new when fine-tuning a backbone or a model with other classes."""
        return [k for k in self.state_dict() if not k.startswith("backbone.")]

    def no_weight_decay(self):
        inner = self.backbone.no_weight_decay() if hasattr(self.backbone, "no_weight_decay") else []
        return ["backbone." + n for n in inner]

    def forward_backbone(self, x):
        feats = self.backbone.stage_features(x) if hasattr(self.backbone, "stage_features") else self.backbone(x)
        if len(feats) != len(self.infos):
            raise RuntimeError(f"the backbone gave {len(feats)} feature levels, expected {len(self.infos)}")
        return list(feats)

    def forward(self, x, details=False):
        return self.forward_head(self.forward_backbone(x), details)

    def forward_head(self, feats, details=False):
        """Everything after the backbone, from its feature levels (a list)."""
        out = {}
        if details:
            for name, f in zip(self.layer_names, feats):
                out["backbone_" + name] = f
        if self.backbone_only:
            last = feats[-1]
            pooled = last.mean(axis=[2, 3]) if last.ndim == 4 else last.mean(axis=1)
            out["ori_out"] = self.classifier(pooled)
            return out
        if self.use_fpn:
            tokens = [to_tokens(f) for f in self.fpn(feats)]
            logits = [getattr(self, "fpn_classifier_" + n)(t) for n, t in zip(self.layer_names, tokens)]
        else:
            tokens = [to_tokens(f) for f in feats]
            logits = [self.selector.classify(n, t) for n, t in zip(self.layer_names, tokens)]
        if details:
            for name, t in zip(self.layer_names, tokens):
                out["fpn_" + name] = t
        for name, lg in zip(self.layer_names, logits):
            out[name] = lg
        if self.use_selection:
            selected, keep, drop = self.selector(tokens, logits)
            for name, lg, k, d in zip(self.layer_names, logits, keep, drop):
                out["select_" + name] = gather_tokens(lg, k)
                out["drop_" + name] = gather_tokens(lg, d)
                if details:
                    out["select_idx_" + name] = k
                    out["drop_idx_" + name] = d
            if self.use_combiner:
                out["comb_outs"] = self.combiner(selected)
        return out


# ----------------------------------------------------------------------------------------------- losses and heads
def _cross_entropy(logits, targets):
    return F.cross_entropy(logits.astype("float32"), targets.astype("int64").reshape([-1]))


def _repeat_targets(targets, n):
    """Targets for every one of n tokens per sample: int64 [B] -> [B*n]; soft [B, C] -> [B*n, C]."""
    if targets.ndim == 2:
        c = targets.shape[-1]
        return targets.unsqueeze(1).expand([targets.shape[0], n, c]).reshape([-1, c])
    return targets.reshape([-1, 1]).expand([targets.shape[0], n]).reshape([-1])


def pim_loss(outputs, targets, layer_names, lambda_b=0.5, lambda_s=0.0, lambda_n=5.0, lambda_c=1.0,
             criterion=None):
    """(total, {term: weighted value}) from the model's outputs. `criterion(logits, targets)` defaults to plain
    cross-entropy; the engine passes its own (label smoothing, soft mixup targets). Terms with a zero weight are
    neither computed nor logged; the logged terms add up to the total."""
    ce = criterion or _cross_entropy
    terms = {}
    if "ori_out" in outputs:
        terms["loss_ori"] = ce(outputs["ori_out"], targets)
    levels = [n for n in layer_names if n in outputs]
    if lambda_b and levels:
        terms["loss_b"] = lambda_b * paddle.add_n([ce(outputs[n].mean(axis=1), targets) for n in levels])
    selected = [outputs["select_" + n] for n in layer_names if "select_" + n in outputs]
    if lambda_s and selected:
        parts = [ce(s.reshape([-1, s.shape[-1]]), _repeat_targets(targets, s.shape[1])) for s in selected]
        terms["loss_s"] = lambda_s * paddle.add_n(parts)
    dropped = [outputs["drop_" + n] for n in layer_names if "drop_" + n in outputs]
    dropped = [d for d in dropped if d.shape[1] > 0]
    if lambda_n and dropped:
        # MSE between tanh(logits) of every dropped token and -1 for every class
        parts = [((paddle.tanh(d.astype("float32")) + 1.0) ** 2).mean() for d in dropped]
        terms["loss_n"] = lambda_n * paddle.add_n(parts)
    if lambda_c and "comb_outs" in outputs:
        terms["loss_c"] = lambda_c * ce(outputs["comb_outs"], targets)
    if not terms:
        raise ValueError("PIM loss: every term is switched off (all lambdas zero for the enabled modules)")
    total = paddle.add_n(list(terms.values()))
    return total, terms


def sum_of_softmax(logit_list):
    """log of the mean of the heads' softmax: the same arg-max as their sum, and a proper log-probability."""
    probs = paddle.stack([F.softmax(lg.astype("float32"), axis=-1) for lg in logit_list], axis=0).mean(axis=0)
    return paddle.log(paddle.clip(probs, min=1e-12))


def highest_k(logit_list, k):
    """Per sample, the k heads with the most confident softmax (largest max probability), their probabilities
    averaged (log). The reference's "highest-k" sorted ascending, i.e. used the k LEAST confident heads."""
    probs = paddle.stack([F.softmax(lg.astype("float32"), axis=-1) for lg in logit_list], axis=1)  # B, H, C
    conf = probs.max(axis=-1)
    order = paddle.argsort(conf, axis=1, descending=True, stable=True)[:, :k]
    top = paddle.take_along_axis(probs, order.unsqueeze(-1), axis=1, broadcast=True)
    return paddle.log(paddle.clip(top.mean(axis=1), min=1e-12))


def head_logits(outputs, layer_names, highest=()):
    """{head: [B, C]} for evaluation: each level (mean of its token logits), ``combiner``, ``sum`` (all of those
    averaged as probabilities), ``highest-k`` for k in `highest`, or ``original`` for the bare backbone."""
    if "ori_out" in outputs:
        return {"original": outputs["ori_out"]}
    heads = {n: outputs[n].mean(axis=1) for n in layer_names if n in outputs}
    if "comb_outs" in outputs:
        heads["combiner"] = outputs["comb_outs"]
    fused = list(heads.values())
    heads["sum"] = sum_of_softmax(fused)
    for k in highest:
        heads[f"highest-{k}"] = highest_k(fused, min(int(k), len(fused)))
    return heads
