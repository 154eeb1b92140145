"""Vision Transformer (ViT-B/16) backbone for PIM with timm parameter names.

PIM uses the outputs of the last four blocks (``blocks.8`` .. ``blocks.11`` for ViT-B), class token included, as
token sequences [B, 1 + N, C]; the final LayerNorm and the classifier are not part of the backbone. The position
embedding is sized for the training resolution; checkpoints made at another resolution are resampled when ported
(`resize_pos_embed`, bilinear with the grid corners aligned, which is what the reference's
``scipy.ndimage.zoom(order=1)`` does).
"""
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from common import init
from common.layers import DropPath, LayerNorm, Mlp, dropout

__all__ = ["VisionTransformer", "VIT_VARIANTS", "create_vit", "resize_pos_embed"]


class Attention(nn.Layer):
    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias_attr=None if qkv_bias else False)
        self.attn_drop = dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = dropout(proj_drop)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape([b, n, 3, self.num_heads, c // self.num_heads]).transpose([2, 0, 3, 1, 4])
        attn = paddle.matmul(qkv[0] * self.scale, qkv[1], transpose_y=True)
        attn = self.attn_drop(F.softmax(attn, axis=-1))
        x = paddle.matmul(attn, qkv[2]).transpose([0, 2, 1, 3]).reshape([b, n, c])
        return self.proj_drop(self.proj(x))


class Block(nn.Layer):
    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=True, drop=0.0, attn_drop=0.0, drop_path=0.0):
        super().__init__()
        self.norm1 = LayerNorm(dim, epsilon=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim, epsilon=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Layer):
    def __init__(self, patch_size, in_chans, embed_dim):
        super().__init__()
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose([0, 2, 1])


class VisionTransformer(nn.Layer):
    """`forward(x)` -> list of the outputs of `return_blocks` (default: the last four), each [B, 1 + N, C]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                 return_blocks=None):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch_size}")
        self.img_size, self.patch_size = img_size, patch_size
        self.grid = img_size // patch_size
        self.embed_dim = embed_dim
        self.return_blocks = list(return_blocks) if return_blocks else list(range(depth - 4, depth))
        if min(self.return_blocks) < 0 or max(self.return_blocks) >= depth:
            raise ValueError(f"return_blocks {self.return_blocks} outside the {depth} blocks")
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=nn.initializer.Constant(0.0))
        self.pos_embed = self.create_parameter([1, 1 + self.grid ** 2, embed_dim],
                                               default_initializer=nn.initializer.Constant(0.0))
        self.pos_drop = dropout(drop_rate)
        dpr = np.linspace(0, drop_path_rate, depth).tolist()
        # blocks after the last returned one are never used: not built (they would only carry dead parameters)
        last = max(self.return_blocks)
        self.blocks = nn.LayerList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate,
                                          dpr[i]) for i in range(last + 1)])
        self.reset_parameters()

    def reset_parameters(self):
        """timm's ViT initialisation: truncated normal (0.02) position embedding and Linear weights, zero biases,
        tiny normal class token, torch-default patch conv."""
        init.trunc_normal_(self.pos_embed, std=0.02)
        init.normal_(self.cls_token, std=1e-6)
        init.init_transformer_(self, nn.Linear, nn.LayerNorm)
        conv = self.patch_embed.proj
        init.kaiming_uniform_torch_default_(conv.weight)
        fan_in = int(np.prod(conv.weight.shape[1:]))
        init.uniform_(conv.bias, -fan_in ** -0.5, fan_in ** -0.5)

    @property
    def stage_channels(self):
        return [self.embed_dim] * len(self.return_blocks)

    def feature_shapes(self):
        return [("tokens", (1 + self.grid ** 2, self.embed_dim))] * len(self.return_blocks)

    def token_grids(self):
        """(rows, columns) of the patch tokens; every output also carries the class token first."""
        return [(self.grid, self.grid)] * len(self.return_blocks)

    def no_weight_decay(self):
        return ["pos_embed", "cls_token"]

    def forward(self, x):
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"this ViT was built for {self.img_size}x{self.img_size} inputs, got "
                             f"{x.shape[-2]}x{x.shape[-1]} (set DATA.IMAGE_SIZE)")
        x = self.patch_embed(x)
        cls = self.cls_token.expand([x.shape[0], -1, -1]).astype(x.dtype)
        x = self.pos_drop(paddle.concat([cls, x], axis=1) + self.pos_embed.astype(x.dtype))
        wanted = set(self.return_blocks)
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in wanted:
                outs.append(x)
        return outs


def _linear_resize_axis(a, new, axis):
    """Linear interpolation along `axis` to `new` samples, the end points of old and new grids coinciding."""
    old = a.shape[axis]
    if old == new:
        return a
    if old == 1:
        return np.repeat(a, new, axis=axis)
    pos = np.arange(new, dtype=np.float64) * (old - 1) / max(new - 1, 1)
    lo = np.clip(np.floor(pos).astype(int), 0, old - 1)
    hi = np.clip(lo + 1, 0, old - 1)
    frac = pos - lo
    shape = [1] * a.ndim
    shape[axis] = new
    frac = frac.reshape(shape)
    return np.take(a, lo, axis=axis) * (1 - frac) + np.take(a, hi, axis=axis) * frac


def resize_pos_embed(pos_embed, new_tokens):
    """[1, 1 + g*g, C] -> [1, new_tokens, C]: the class token's row is kept, the g x g grid is resampled to the
    new square grid (bilinear, corners aligned; the reference uses scipy.ndimage.zoom with order=1)."""
    pe = np.asarray(pos_embed, dtype=np.float64)
    old_grid = int(round(math.sqrt(pe.shape[1] - 1)))
    new_grid = int(round(math.sqrt(new_tokens - 1)))
    if old_grid ** 2 + 1 != pe.shape[1] or new_grid ** 2 + 1 != new_tokens:
        raise ValueError(f"position embedding of {pe.shape[1]} tokens cannot be resized to {new_tokens}: "
                         "both must be 1 class token + a square grid")
    grid = pe[0, 1:].reshape(old_grid, old_grid, -1)
    grid = _linear_resize_axis(_linear_resize_axis(grid, new_grid, 0), new_grid, 1)
    out = np.concatenate([pe[:, :1], grid.reshape(1, new_grid * new_grid, -1)], axis=1)
    return out.astype(np.asarray(pos_embed).dtype)


# name -> (patch, embed_dim, depth, heads, qkv_bias, image size)
VIT_VARIANTS = {
    "vit_base_patch16_224": (16, 768, 12, 12, True, 224),
    # ImageNet-21K-P (Alibaba MIIL) weights, the reference's ViT; no qkv bias
    "vit_base_patch16_224_miil": (16, 768, 12, 12, False, 224),
}


def create_vit(name, **overrides):
    if name not in VIT_VARIANTS:
        raise KeyError(f"unknown ViT '{name}'; known: {', '.join(VIT_VARIANTS)}")
    patch, dim, depth, heads, qkv_bias, size = VIT_VARIANTS[name]
    kwargs = dict(img_size=size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, qkv_bias=qkv_bias)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    return VisionTransformer(**kwargs)
