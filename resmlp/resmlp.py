"""ResMLP (Touvron et al., arXiv 2105.03404) in Paddle.

Parameter names follow PaddleViT (`patch_embed.patch_embed`, `mixer_layers.i.*`, `norm`, `head`) so that its
released `.pdparams` load unchanged, and timm's checkpoints port with two prefix renames plus Linear transposes.
"""
import paddle.nn as nn

from common import init, layers
from common.layers import DropPath, Mlp
from common.models import register_model


class Affine(nn.Layer):
    """Per-channel scale and shift, the 'normalisation' of ResMLP (shape [1, 1, C] like timm)."""

    def __init__(self, dim):
        super().__init__()
        self.alpha = self.create_parameter([1, 1, dim], default_initializer=nn.initializer.Constant(1.0))
        self.beta = self.create_parameter([1, 1, dim], default_initializer=nn.initializer.Constant(0.0))

    def forward(self, x):
        return layers.scale_shift(x, self.alpha, self.beta)


class PatchEmbedding(nn.Layer):
    """Non-overlapping patches -> tokens [B, N, C]."""

    def __init__(self, image_size, patch_size, in_channels, embed_dim):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2D(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        x = self.patch_embed(x)  # [B, C, H', W']
        return x.flatten(2).transpose([0, 2, 1])


class ResBlock(nn.Layer):
    """Token-mixing Linear and channel MLP, each behind an Affine pre-norm, a layer scale and drop path."""

    def __init__(self, dim, seq_len, mlp_ratio=4.0, init_values=1e-4, dropout=0.0, droppath=0.0):
        super().__init__()
        self.norm1 = Affine(dim)
        self.linear_tokens = nn.Linear(seq_len, seq_len)
        self.drop_path = DropPath(droppath)
        self.norm2 = Affine(dim)
        self.mlp_channels = Mlp(dim, int(dim * mlp_ratio), drop=dropout)
        self.ls1 = self.create_parameter([dim], default_initializer=nn.initializer.Constant(init_values))
        self.ls2 = self.create_parameter([dim], default_initializer=nn.initializer.Constant(init_values))

    def forward(self, x):
        tokens = layers.token_mix(self.norm1(x), self.linear_tokens)
        x = x + self.drop_path(layers.scale_shift(tokens, self.ls1))
        x = x + self.drop_path(layers.scale_shift(self.mlp_channels(self.norm2(x)), self.ls2))
        return x


class ResMlp(nn.Layer):
    def __init__(self, num_classes=1000, image_size=224, in_channels=3, patch_size=16, embed_dim=384, depth=12,
                 mlp_ratio=4.0, init_values=1e-4, dropout=0.0, droppath=0.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = embed_dim
        self.patch_embed = PatchEmbedding(image_size, patch_size, in_channels, embed_dim)
        seq_len = self.patch_embed.num_patches
        self.mixer_layers = nn.Sequential(*[
            ResBlock(embed_dim, seq_len, mlp_ratio=mlp_ratio, init_values=init_values, dropout=dropout,
                     droppath=droppath)
            for _ in range(depth)
        ])
        self.norm = Affine(embed_dim)
        self.head_drop = layers.dropout(dropout)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights()

    def _init_weights(self):
        # timm's scheme for from-scratch training: xavier Linears (mlp biases ~N(0, 1e-6)), lecun-normal patch conv,
        # zero head.
        for name, layer in self.named_sublayers():
            if isinstance(layer, nn.Linear):
                if name.startswith("head"):
                    init.zeros_(layer.weight)
                    init.zeros_(layer.bias)
                else:
                    init.xavier_uniform_(layer.weight, linear=True)
                    if "mlp" in name:
                        init.normal_(layer.bias, std=1e-6)
                    else:
                        init.zeros_(layer.bias)
            elif isinstance(layer, nn.Conv2D):
                init.lecun_normal_(layer.weight)
                init.zeros_(layer.bias)

    def no_weight_decay(self):
        """Names of parameters that take no weight decay besides biases and 1-D tensors: layer scales, Affine."""
        return {n for n, _ in self.named_parameters() if n.rsplit(".", 1)[-1] in ("ls1", "ls2", "alpha", "beta")}

    def classifier_keys(self):
        return ["head.weight", "head.bias"]

    def forward_features(self, x):
        x = self.mixer_layers(self.patch_embed(x))
        return self.norm(x).mean(axis=1)

    def forward(self, x):
        return self.head(self.head_drop(self.forward_features(x)))


# name -> architecture; layer-scale init values from the paper (0.1 for 12 blocks, 1e-5 for 24, 1e-6 deeper/bigger).
RESMLP_VARIANTS = {
    "resmlp_12_224": dict(patch_size=16, embed_dim=384, depth=12, init_values=0.1),
    "resmlp_24_224": dict(patch_size=16, embed_dim=384, depth=24, init_values=1e-5),
    "resmlp_36_224": dict(patch_size=16, embed_dim=384, depth=36, init_values=1e-6),
    "resmlp_big_24_224": dict(patch_size=8, embed_dim=768, depth=24, init_values=1e-6),
}
# Zoo entries that share an architecture with a base variant (distilled / in22k weights).
RESMLP_ALIASES = {
    "resmlp_12_distilled_224": "resmlp_12_224",
    "resmlp_24_distilled_224": "resmlp_24_224",
    "resmlp_36_distilled_224": "resmlp_36_224",
    "resmlp_big_24_distilled_224": "resmlp_big_24_224",
    "resmlp_big_24_22k_224": "resmlp_big_24_224",
}


def resmlp_arch(name):
    base = RESMLP_ALIASES.get(name, name)
    if base not in RESMLP_VARIANTS:
        known = sorted(RESMLP_VARIANTS) + sorted(RESMLP_ALIASES)
        raise KeyError(f"unknown ResMLP variant '{name}'; known: {', '.join(known)}")
    return dict(RESMLP_VARIANTS[base])


def create_resmlp(name, **overrides):
    """Build a registered variant; keyword arguments override its architecture (e.g. num_classes)."""
    kwargs = resmlp_arch(name)
    kwargs.update(overrides)
    return ResMlp(**kwargs)


for _name in list(RESMLP_VARIANTS) + list(RESMLP_ALIASES):
    register_model(_name, "resmlp", image_size=224, crop_pct=0.875, interpolation="bicubic", num_classes=1000,
                   description=f"ResMLP {resmlp_arch(_name)['depth']} blocks, width {resmlp_arch(_name)['embed_dim']}")
