"""Swin Transformer backbone for PIM, in the original (timm 0.4.12 / Microsoft) parameter layout.

Layout: each stage (``layers.i``) runs its blocks and then, except for the last stage, merges 2x2 patches
(``layers.i.downsample``: LayerNorm over 4C, then a bias-free Linear 4C -> 2C). timm >= 0.9 moved the merge to the
START of the next stage (``layers.i+1.downsample``); `pim/port_weights.py` shifts those keys back, so both kinds of
checkpoint port.

PIM reads the output of every stage as a token sequence [B, S, C] (no final LayerNorm, no pooling, no head): with
the merge at the end of a stage, the stage outputs of Swin-L at 384 are 48x48 -> 2304 tokens of 384 channels,
576 x 768, 144 x 1536 and again 144 x 1536 (the last stage does not merge).

Relative-position indices and shifted-window masks are recomputed from the geometry (not stored in checkpoints).
Windows larger than a stage's resolution shrink to it and stop shifting, as in the reference.
"""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from common import init
from common.layers import DropPath, LayerNorm, Linear, Mlp, add_over_batch, dropout, permute_tokens

__all__ = ["SwinTransformer", "SWIN_VARIANTS", "create_swin"]


def window_partition(x, ws):
    """[B, H, W, C] -> [B * nW, ws * ws, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape([b, h // ws, ws, w // ws, ws, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, ws * ws, c])


def window_merge(windows, ws, h, w):
    """Inverse of `window_partition`: [B * nW, ws * ws, C] -> [B, H, W, C]."""
    c = windows.shape[-1]
    x = windows.reshape([-1, h // ws, w // ws, ws, ws, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, h, w, c])


def window_order(h, w, ws, shift):
    """Row-major token indices in the order of the cyclically shifted window partition: the sequence
    x[:, order] is roll(x, -shift) cut into windows, window after window (what window_partition returns)."""
    grid = np.roll(np.arange(h * w).reshape(h, w), (-shift, -shift), (0, 1))
    return grid.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1).astype("int64")


def merge_order(h, w):
    """Row-major token indices that put each 2x2 neighbourhood's tokens next to each other in PatchMerging's channel
    order (0,0), (1,0), (0,1), (1,1): x[:, order] reshaped to [B, H/2 * W/2, 4C] is the merged input."""
    grid = np.arange(h * w).reshape(h, w)
    return np.stack([grid[0::2, 0::2], grid[1::2, 0::2], grid[0::2, 1::2], grid[1::2, 1::2]], -1).reshape(-1)


def _register_order(layer, name, order):
    """`order` and its inverse as non-persistable int64 buffers `name` and `name`_inverse."""
    order = np.asarray(order, dtype="int64")
    layer.register_buffer(name, paddle.to_tensor(order), persistable=False)
    layer.register_buffer(name + "_inverse", paddle.to_tensor(np.argsort(order)), persistable=False)


def relative_position_index(ws):
    """[ws*ws, ws*ws] int64: index into the (2ws-1)^2 bias table for every (query, key) pair of a window."""
    ys, xs = np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij")
    coords = np.stack([ys.ravel(), xs.ravel()])              # 2, N
    rel = coords[:, :, None] - coords[:, None, :] + (ws - 1)  # 2, N, N in [0, 2ws-2]
    return (rel[0] * (2 * ws - 1) + rel[1]).astype("int64")


def shifted_window_mask(h, w, ws, shift):
    """[nW, ws*ws, ws*ws] float32: 0 inside a region, -100 between tokens that the cyclic shift brought together."""
    region = np.zeros((h, w), dtype="float32")
    bounds = ((0, -ws), (-ws, -shift), (-shift, None))
    label = 0
    for ys in bounds:
        for xs in bounds:
            region[slice(*ys), slice(*xs)] = label
            label += 1
    win = region.reshape(h // ws, ws, w // ws, ws).transpose(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = win[:, None, :] - win[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype("float32")


class WindowAttention(nn.Layer):
    def __init__(self, dim, window_size, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.window_size = window_size
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = self.create_parameter(
            [(2 * window_size - 1) ** 2, num_heads], default_initializer=nn.initializer.Constant(0.0))
        self.register_buffer("relative_position_index",
                             paddle.to_tensor(relative_position_index(window_size).reshape(-1)), persistable=False)
        self.qkv = Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = dropout(proj_drop)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape([bw, n, 3, self.num_heads, c // self.num_heads]).transpose([2, 0, 3, 1, 4])
        if paddle.in_dynamic_mode():   # one gradient (a stack) instead of three zero-padded slice gradients
            q, k, v = paddle.unbind(qkv, 0)
        else:                          # the exported graph keeps its slices
            q, k, v = qkv[0], qkv[1], qkv[2]
        q = q * self.scale
        attn = paddle.matmul(q, k, transpose_y=True)              # bw, heads, n, n
        bias = paddle.gather(self.relative_position_bias_table, self.relative_position_index)
        bias = bias.reshape([n, n, self.num_heads]).transpose([2, 0, 1]).unsqueeze(0)   # 1, heads, n, n
        if mask is None:
            attn = add_over_batch(attn, bias)
        else:
            # bias and shift mask summed per window first, so that the big tensor sees one add broadcast over the
            # images only (a 5-D add broadcast on two axes is ~30x slower in oneDNN: 342 vs 12 ms at Swin-T stage 1)
            nw = mask.shape[0]
            bias = (bias + mask.unsqueeze(1)).reshape([1, nw * self.num_heads, n, n])
            attn = add_over_batch(attn.reshape([bw // nw, nw * self.num_heads, n, n]), bias)
            attn = attn.reshape([bw, self.num_heads, n, n])
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([bw, n, c])
        return self.proj_drop(self.proj(x))


class SwinBlock(nn.Layer):
    def __init__(self, dim, resolution, num_heads, window_size, shift, mlp_ratio=4.0, qkv_bias=True, drop=0.0,
                 attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.resolution = resolution
        if min(resolution) <= window_size:  # one window covers the stage: no partition, no shift
            window_size, shift = min(resolution), 0
        self.window_size, self.shift = window_size, shift
        self.norm1 = LayerNorm(dim, epsilon=1e-5)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, epsilon=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        if shift > 0:
            self.register_buffer("attn_mask", paddle.to_tensor(shifted_window_mask(*resolution, window_size, shift)),
                                 persistable=False)
        else:
            self.attn_mask = None
        self.partitioned = shift > 0 or window_size < max(resolution)
        if self.partitioned:
            _register_order(self, "window_order", window_order(*resolution, window_size, shift))

    def forward(self, x):
        if not paddle.in_dynamic_mode():
            return self.forward_windows(x)
        b, length, c = x.shape
        y = self.norm1(x)
        if self.partitioned:   # roll + partition as one token gather (and its inverse after the attention)
            y = permute_tokens(y, self.window_order, self.window_order_inverse)
        y = self.attn(y.reshape([-1, self.window_size ** 2, c]), self.attn_mask).reshape([b, length, c])
        if self.partitioned:
            y = permute_tokens(y, self.window_order_inverse, self.window_order)
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_windows(self, x):
        """The same block with roll and window reshapes: the form traced for export (plain ops that Paddle Inference
        runs with oneDNN)."""
        h, w = self.resolution
        b, _, c = x.shape
        ws, s = self.window_size, self.shift
        y = self.norm1(x).reshape([b, h, w, c])
        if s > 0:
            y = paddle.roll(y, shifts=(-s, -s), axis=(1, 2))
        y = self.attn(window_partition(y, ws), self.attn_mask)
        y = window_merge(y, ws, h, w)
        if s > 0:
            y = paddle.roll(y, shifts=(s, s), axis=(1, 2))
        x = x + self.drop_path(y.reshape([b, h * w, c]))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Layer):
    """2x2 neighbours -> one token: channels concatenated in the order (0,0), (1,0), (0,1), (1,1) (row, column)."""

    def __init__(self, resolution, dim):
        super().__init__()
        self.resolution = resolution
        self.norm = LayerNorm(4 * dim, epsilon=1e-5)
        self.reduction = Linear(4 * dim, 2 * dim, bias_attr=False)
        _register_order(self, "merge_order", merge_order(*resolution))

    def forward(self, x):
        h, w = self.resolution
        b, _, c = x.shape
        if paddle.in_dynamic_mode():   # one gather instead of four strided slices and a concat
            x = permute_tokens(x, self.merge_order, self.merge_order_inverse)
            return self.reduction(self.norm(x.reshape([b, (h // 2) * (w // 2), 4 * c])))
        x = x.reshape([b, h, w, c])
        x = paddle.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
        return self.reduction(self.norm(x.reshape([b, (h // 2) * (w // 2), 4 * c])))


class SwinStage(nn.Layer):
    def __init__(self, dim, resolution, depth, num_heads, window_size, mlp_ratio, qkv_bias, drop, attn_drop,
                 drop_paths, downsample):
        super().__init__()
        self.blocks = nn.LayerList([
            SwinBlock(dim, resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio,
                      qkv_bias, drop, attn_drop, drop_paths[i]) for i in range(depth)])
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x):
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Layer):
    def __init__(self, patch_size, in_chans, embed_dim, norm=True):
        super().__init__()
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=patch_size)
        self.norm = LayerNorm(embed_dim, epsilon=1e-5) if norm else None

    def forward(self, x):
        x = self.proj(x).flatten(2).transpose([0, 2, 1])  # B, H*W, C (row-major)
        return self.norm(x) if self.norm is not None else x


class SwinTransformer(nn.Layer):
    """`forward(x)` -> list of the stage outputs [B, S_i, C_i] (merge at the end of stages 1..3)."""

    def __init__(self, img_size=224, patch_size=4, in_chans=3, embed_dim=96, depths=(2, 2, 6, 2),
                 num_heads=(3, 6, 12, 24), window_size=7, mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0,
                 attn_drop_rate=0.0, drop_path_rate=0.1, patch_norm=True):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        grid = img_size // patch_size
        n = len(depths)
        if grid % (2 ** (n - 1)):
            raise ValueError(f"Swin: the {grid}x{grid} patch grid cannot be halved {n - 1} times "
                             f"(image size {img_size}, patch {patch_size})")
        self.img_size, self.patch_size = img_size, patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim, patch_norm)
        self.pos_drop = dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages = []
        self.resolutions, self.stage_channels = [], []
        for i in range(n):
            res = grid // 2 ** i
            dim = int(embed_dim * 2 ** i)
            last = i == n - 1
            ws = min(window_size, res)
            if res % ws:
                raise ValueError(f"Swin stage {i}: resolution {res} is not a multiple of the window {ws}")
            stages.append(SwinStage(dim, (res, res), depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias,
                                    drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])],
                                    downsample=not last))
            out_res, out_dim = (res // 2, dim * 2) if not last else (res, dim)
            self.resolutions.append((out_res, out_res))
            self.stage_channels.append(out_dim)
        self.layers = nn.LayerList(stages)
        self.reset_parameters()

    def reset_parameters(self):
        """timm's Swin initialisation: truncated normal (0.02) Linear weights and bias tables, zero biases, unit
        LayerNorm; the patch-embedding conv keeps torch's default."""
        init.init_transformer_(self, nn.Linear, nn.LayerNorm)
        for layer in self.sublayers():
            if isinstance(layer, WindowAttention):
                init.trunc_normal_(layer.relative_position_bias_table, std=0.02)
        conv = self.patch_embed.proj
        init.kaiming_uniform_torch_default_(conv.weight)
        fan_in = int(np.prod(conv.weight.shape[1:]))
        init.uniform_(conv.bias, -fan_in ** -0.5, fan_in ** -0.5)

    def feature_shapes(self):
        """[(kind, shape)] per stage output without the batch axis: ('tokens', (S, C))."""
        return [("tokens", (r[0] * r[1], c)) for r, c in zip(self.resolutions, self.stage_channels)]

    def no_weight_decay(self):
        return [n for n, _ in self.named_parameters() if n.endswith("relative_position_bias_table")]

    def token_grids(self):
        """(rows, columns) of every stage output's token grid (for heat maps)."""
        return list(self.resolutions)

    def forward(self, x):
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"this Swin was built for {self.img_size}x{self.img_size} inputs, got "
                             f"{x.shape[-2]}x{x.shape[-1]} (set DATA.IMAGE_SIZE)")
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for stage in self.layers:
            x = stage(x)
            outs.append(x)
        return outs


# name -> (embed_dim, depths, num_heads, window_size, image size)
SWIN_VARIANTS = {
    "swin_tiny_patch4_window7_224": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7, 224),
    "swin_small_patch4_window7_224": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7, 224),
    "swin_base_patch4_window7_224": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7, 224),
    "swin_base_patch4_window12_384": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12, 384),
    "swin_large_patch4_window7_224": (192, (2, 2, 18, 2), (6, 12, 24, 48), 7, 224),
    "swin_large_patch4_window12_384": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12, 384),
}


def create_swin(name, **overrides):
    """A named Swin; keyword overrides (img_size, embed_dim, depths, num_heads, window_size, patch_size,
    drop_path_rate, ...) replace the variant's values."""
    if name not in SWIN_VARIANTS:
        raise KeyError(f"unknown Swin '{name}'; known: {', '.join(SWIN_VARIANTS)}")
    embed, depths, heads, window, size = SWIN_VARIANTS[name]
    kwargs = dict(img_size=size, embed_dim=embed, depths=depths, num_heads=heads, window_size=window)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return SwinTransformer(**kwargs)
